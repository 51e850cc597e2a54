"""Test-time adaptation of a `SiameseClassifier`: parameter selection, checks, and the loop.

`Adapter(model, method, config)` predicts each batch from the target branch and then
updates (predict, then update, as Tent). It selects the parameters the method updates
(`collect_params`), freezes the rest (`configure_model`), checks the setup early
(`check_model`), and `reset()` restores model, predictor, optimizer and method state
bitwise. BatchNorm layers run on batch statistics while adapting; their running
statistics are kept untouched (and restored by `reset`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from ..objective import logit_stats
from .methods import VisionMethod
from .model import Branches, SiameseClassifier

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class VisionAdaptConfig:
    """Optimizer and schedule of vision test-time adaptation. Method knobs live on the method."""

    lr: float = _f(1e-3, "SGD learning rate of the normalization affine parameters (the backbone).")
    predictor_lr: float | None = _f(
        None,
        "SGD learning rate of the predictor; None uses lr. Not the official default: the ZeroSiam "
        "scripts give the predictor 10x the backbone's rate for ResNet50-GN, ViT-S and ConvNeXt, 5x for "
        "Swin, 1x for ViT-B (set it to that multiple of lr to match).",
    )
    momentum: float = _f(0.9, "SGD momentum (0.9 in the paper's code).")
    weight_decay: float = _f(0.0, "SGD weight decay (0: decay would pull the predictor toward zero, not I).")
    schedule: str = _f("online", "online: state carries over batches; episodic: reset before each batch.")
    steps: int = _f(1, "Optimizer steps per batch; predictions come from the first forward.")

    def __post_init__(self):
        if self.schedule not in ("online", "episodic"):
            raise ValueError(f"schedule must be 'online' or 'episodic', got {self.schedule!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}; use the noadapt method to not adapt")
        if self.lr < 0 or (self.predictor_lr is not None and self.predictor_lr < 0):
            raise ValueError("learning rates must be >= 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    @classmethod
    def help(cls) -> str:
        return "\n".join(f"{f.name}: {f.metadata.get('help', '')}" for f in fields(cls))


def norm_layers(model: SiameseClassifier) -> list[tuple[str, nn.Module]]:
    """Normalization layers of the wrapped classifier (the predictor excluded), with names."""
    return [(n, m) for n, m in model.model.named_modules(prefix="model") if isinstance(m, NORM_TYPES)]


def collect_params(
    model: SiameseClassifier, norm: bool = True, predictor: bool = True
) -> tuple[list[nn.Parameter], list[str]]:
    """The parameters test-time adaptation updates, and their names: the affine weight and bias
    of every normalization layer (`norm`) and the predictor's parameters (`predictor`)."""
    params, names = [], []
    if norm:
        for nm, m in norm_layers(model):
            for pn, p in m.named_parameters(recurse=False):
                if pn in ("weight", "bias"):
                    params.append(p)
                    names.append(f"{nm}.{pn}")
    if predictor:
        for pn, p in model.predictor.named_parameters(prefix="predictor"):
            params.append(p)
            names.append(pn)
    return params, names


def configure_model(model: SiameseClassifier, norm: bool = True, predictor: bool = True) -> list[nn.Module]:
    """Freeze everything but the selected parameters; put the model in eval mode (no dropout)
    except BatchNorm layers, which normalize with batch statistics without updating their
    running statistics. Returns those BatchNorm layers (`Adapter` re-asserts their mode)."""
    model.eval()
    model.requires_grad_(False)
    for p in collect_params(model, norm, predictor)[0]:
        p.requires_grad_(True)
    bns = []
    if norm:
        for _, m in norm_layers(model):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
                m.train()
                bns.append(m)
    return bns


def check_model(model: SiameseClassifier, method: VisionMethod) -> None:
    """Fail early, saying what to fix, when `method` cannot adapt `model`."""
    if not isinstance(model, SiameseClassifier):
        raise TypeError(
            f"expected a SiameseClassifier, got {type(model).__name__}; wrap the classifier first: "
            "zs_llm.vision.wrap_classifier(model) (or wrap_classifier(features_fn, head))"
        )
    if not method.adapts:
        return
    params, names = collect_params(model, method.update_norm, method.uses_predictor)
    if method.update_norm and not any(n.startswith("model.") for n in names):
        hint = (
            " (its features are a plain function, whose layers are out of reach: pass them as an nn.Module)"
            if model.form == "parts" and "features" not in model.model
            else ""
        )
        raise ValueError(
            f"{method.name} updates the affine parameters of normalization layers, and the wrapped model has no "
            f"BatchNorm/GroupNorm/LayerNorm with affine parameters{hint}; use a model with normalization layers, "
            "or ZeroSiam(update_norm=False) to adapt only the predictor"
        )
    if not params:
        raise ValueError(
            f"{method.name} has no parameter to update: the {type(model.predictor).__name__} has none; "
            "use predictor='linear' or 'mlp', or update_norm=True"
        )
    chosen = {id(p) for p in params}
    if all(id(p) in chosen for p in model.model.parameters()):
        raise ValueError(
            f"{method.name} would update every parameter of the classifier (all of them are normalization "
            "parameters); test-time adaptation here expects a frozen backbone with a few norm layers"
        )


class Adapter(nn.Module):
    """Adapts `model` with `method` on each batch it is called on, returning the predictions.

    forward(x, y=None) -> (B, K) logits of the target branch, computed before this batch's
    update. Per-batch stats are appended to `history`: on those logits, accuracy when `y` is
    given, entropy, max probability, logit norm raw and centered; after the update, the
    predictor's deviation (||W - I||_F for the linear one) and the method's loss and stats.
    """

    def __init__(
        self, model: SiameseClassifier, method: VisionMethod, config: VisionAdaptConfig | None = None
    ):
        super().__init__()
        check_model(model, method)
        self.model = model
        self.method = method
        self.config = config or VisionAdaptConfig()
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: list[nn.Parameter] = []
        self.param_names: list[str] = []
        self._bns: list[nn.Module] = []
        if method.adapts:
            self._bns = configure_model(model, method.update_norm, method.uses_predictor)
            backbone, bnames = collect_params(model, method.update_norm, predictor=False)
            pred, pnames = collect_params(model, norm=False, predictor=method.uses_predictor)
            c = self.config
            groups = [
                {"params": backbone, "lr": c.lr, "name": "backbone"},
                {
                    "params": pred,
                    "lr": c.lr if c.predictor_lr is None else c.predictor_lr,
                    "name": "predictor",
                },
            ]
            groups = [g for g in groups if g["params"]]
            self.optimizer = torch.optim.SGD(
                groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            )
            self.params, self.param_names = backbone + pred, bnames + pnames
        else:
            model.eval()
        self._model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._optim_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None
        self.history: list[dict[str, float]] = []

    def reset(self) -> None:
        """Restore model, predictor, optimizer and method state to what they were at construction."""
        self.model.load_state_dict(self._model_state)
        if self.optimizer is not None:
            # a fresh copy each time: load_state_dict may keep references to the tensors it is given
            self.optimizer.load_state_dict(copy.deepcopy(self._optim_state))
        self.method.reset()

    def _set_modes(self) -> None:
        if self.method.adapts:
            self.model.eval()
            for m in self._bns:
                m.train()

    def branches(self, x: torch.Tensor) -> Branches:
        """One forward of both branches as the method sees them (used by multi-pass updates)."""
        return self.model.branches(x, online=self.method.uses_predictor)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Target-branch logits without updating. (B, ...) -> (B, K)."""
        self._set_modes()
        return self.model(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.schedule == "episodic":
            self.reset()
        self._set_modes()
        info: dict[str, float] = {}
        if not self.method.adapts:
            with torch.no_grad():
                logits = self.model(x)
        else:
            with torch.enable_grad():
                out = self.branches(x)
                logits = out.target.detach()
                for step in range(self.config.steps):
                    info = self.method.update(self, x, out if step == 0 else self.branches(x))
        self.history.append(self._stats(logits, y, info))
        return logits

    @torch.no_grad()
    def _stats(self, logits: torch.Tensor, y: torch.Tensor | None, info: dict) -> dict[str, float]:
        stats = {"n": float(len(logits))}
        if y is not None:
            stats["acc"] = float((logits.argmax(-1) == y).float().mean())
        stats.update({k: float(v.mean()) for k, v in logit_stats(logits).items()})
        stats["predictor_dev"] = float(self.model.predictor.deviation())
        stats.update(info)
        return stats
