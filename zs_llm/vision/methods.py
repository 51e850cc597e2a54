"""Test-time methods for image classifiers, one small class each, in `VISION_METHODS`.

A method declares what it updates (`adapts`, `update_norm`, `uses_predictor`), its loss on
one forward (`loss`), and, when it needs more than one backward, its own `update`. All the
entropy and divergence math comes from `zs_llm.objective`, shared with the text path.
`Adapter` (zs_llm.vision.adapt) drives every method the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from ..objective import (
    DIVERGENCES,
    OBJECTIVES,
    confidence_objective,
    deyo_entropy_mask,
    deyo_weights,
    eata_weights,
    entropy,
    opinion_entropy,
    plpd,
    sar_weights,
    zerosiam_token_loss,
)
from ..registry import Registry
from .model import Branches

if TYPE_CHECKING:
    from .adapt import Adapter

VISION_METHODS = Registry("vision method")


class VisionMethod:
    """Base class: a loss on one forward and the parameters it updates."""

    name: ClassVar[str] = "base"
    #: whether the method updates anything (NoAdapt does not)
    adapts: ClassVar[bool] = True
    #: the online branch goes through the predictor, which is then trained
    uses_predictor: ClassVar[bool] = False
    #: update the affine parameters of the normalization layers
    update_norm: bool = True

    def loss(self, out: Branches) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and stats; stats["selected"] is the fraction of samples in the loss."""
        raise NotImplementedError(f"vision method {self.name!r} defines no loss")

    def update(self, adapter: Adapter, x: torch.Tensor, out: Branches) -> dict[str, float]:
        """One optimizer step from the forward `out` of batch `x`. Returns stats.

        The step is skipped when no sample is selected, so momentum does not move the
        parameters on a batch the method rejected.
        """
        loss, info = self.loss(out)
        info["loss"] = float(loss.detach())
        if info.get("selected", 1.0) > 0 and loss.requires_grad:
            adapter.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            adapter.optimizer.step()
        return info

    def reset(self) -> None:
        """Forget any state carried across batches (called by `Adapter.reset`)."""


def _selected_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # mean over the selected rows of values * weights (EATA's and SAR's normalisation)
    return (values * weights).sum() / (weights > 0).sum().clamp(min=1)  # ()


@VISION_METHODS.register("noadapt")
@dataclass
class NoAdapt(VisionMethod):
    """The source model, unchanged."""

    name: ClassVar[str] = "noadapt"
    adapts: ClassVar[bool] = False
    update_norm: bool = False


@VISION_METHODS.register("tent")
@dataclass
class Tent(VisionMethod):
    """Tent (Wang et al., ICLR 2021): minimize the entropy of the predictions, updating only
    the affine parameters of the normalization layers (BatchNorm on batch statistics)."""

    name: ClassVar[str] = "tent"
    objective: str = "entropy"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")

    def loss(self, out):
        conf = confidence_objective(out.online, self.objective)  # (B,)
        return conf.mean(), {"selected": 1.0, "objective": float(conf.detach().mean())}


@VISION_METHODS.register("eata")
@dataclass
class EATA(VisionMethod):
    """EATA (Niu et al., ICML 2022) without its Fisher regularizer: entropy on samples whose
    entropy is below `margin * ln K`, weighted by exp(H0 - H); optionally also dropping
    samples whose prediction is redundant (|cos(p, moving mean of p)| >= d_margin). The Fisher
    (EWC) term needs labelled or clean source data to estimate and guards against forgetting
    over very long streams; these benchmarks run without it.

    EATA's d_margin of 0.05 was set for 1000 classes; with 10 classes the cosine between
    probability vectors is rarely that small, so the redundancy filter is off by default.
    """

    name: ClassVar[str] = "eata"
    margin: float = 0.4
    d_margin: float | None = None
    probs_momentum: float = 0.9

    def __post_init__(self):
        if not 0 < self.margin <= 1:
            raise ValueError(f"margin is a fraction of ln K in (0, 1], got {self.margin}")
        self._mean_probs: torch.Tensor | None = None

    def reset(self):
        self._mean_probs = None

    def loss(self, out):
        w = eata_weights(out.target, self.margin)  # (B,) 0 off the reliable set
        probs = out.target.detach().float().softmax(-1)  # (B, K)
        if self.d_margin is not None:
            if self._mean_probs is not None:
                cos = F.cosine_similarity(self._mean_probs[None], probs, dim=-1)  # (B,)
                w = w * (cos.abs() < self.d_margin)
            kept = probs[w > 0]
            if len(kept):
                new = kept.mean(0)
                m = self.probs_momentum
                self._mean_probs = new if self._mean_probs is None else m * self._mean_probs + (1 - m) * new
        rows, stats = self._per_row(out)  # (B,)
        return _selected_mean(rows, w), {"selected": float((w > 0).float().mean()), **stats}

    def _per_row(self, out: Branches) -> tuple[torch.Tensor, dict[str, float]]:
        return confidence_objective(out.online, "entropy"), {}


@VISION_METHODS.register("sar")
@dataclass
class SAR(VisionMethod):
    """SAR (Niu et al., ICLR 2023) as `forward_and_adapt_sar` in mr-eggplant/SAR `sar.py` runs
    it: entropy on reliable samples (entropy < margin * ln K, paper 0.4) with a sharpness-aware
    update: the gradient at the parameters moved by `rho` (0.05) along the first gradient, on
    the samples that stay reliable there, is applied at the original parameters. The optimizer
    steps on every batch, also when no sample is reliable (zero gradients: momentum alone), as
    the official code does. Model recovery: when the moving average (0.9) of the second loss
    falls below `recovery` nats (paper 0.2), model and optimizer return to their initial state
    and the average is kept (the official loop reassigns it after its reset), so a low average
    resets again until new losses lift it; `Adapter.reset()` (episodic, or called by the user)
    clears it, as the official `reset()`. None disables recovery.

    Differs from the official code: every normalization layer is adapted (`update_norm`); the
    official `collect_params` leaves out the top of the network (ResNet `layer4`, ViT blocks
    9-11 and the final norm), names that exist only in those architectures."""

    name: ClassVar[str] = "sar"
    margin: float = 0.4
    rho: float = 0.05
    recovery: float | None = 0.2

    def __post_init__(self):
        if not 0 < self.margin <= 1:
            raise ValueError(f"margin is a fraction of ln K in (0, 1], got {self.margin}")
        if self.rho <= 0:
            raise ValueError(f"rho must be > 0, got {self.rho}")
        self._ema: float | None = None

    def reset(self):
        self._ema = None

    def loss(self, out):
        keep = sar_weights(out.target, self.margin)  # (B,) 0/1
        ent = confidence_objective(out.online, "entropy")
        return _selected_mean(ent, keep), {"selected": float(keep.mean())}

    def update(self, adapter, x, out):
        opt = adapter.optimizer
        keep = sar_weights(out.target, self.margin)  # (B,)
        info = {"selected": float(keep.mean())}
        # no early exit without a reliable sample: the official code steps anyway, on zero gradients
        opt.zero_grad(set_to_none=True)
        _selected_mean(confidence_objective(out.online, "entropy"), keep).backward()
        params = [p for p in adapter.params if p.grad is not None]
        norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in params)).clamp(min=1e-12)
        eps = [self.rho * p.grad / norm for p in params]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        out2 = adapter.branches(x)
        ent2 = confidence_objective(out2.online, "entropy")  # (B,)
        keep2 = keep * (ent2.detach() < self.margin * math.log(out2.target.shape[-1])).float()
        loss2 = _selected_mean(ent2, keep2)  # 0 with zero gradients when nothing is kept
        loss2.backward()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
        if keep2.any():
            value = float(loss2.detach())
            self._ema = value if self._ema is None else 0.9 * self._ema + 0.1 * value
        info.update(loss=float(loss2.detach()), selected_second=float(keep2.mean()))
        if self.recovery is not None and self._ema is not None and self._ema < self.recovery:
            ema = self._ema
            adapter.reset()  # model and optimizer; it also clears the average, which recovery keeps
            self._ema = ema
            info["recovered"] = 1.0
        return info


@VISION_METHODS.register("zerosiam")
@dataclass
class ZeroSiam(VisionMethod):
    """ZeroSiam (ICLR 2026): `H(p_o) + alpha * D(p_o || sg[p_r])`, with u_o = g(h(z)) through
    the identity-initialized predictor h and u_r = g(z); predictions come from u_r. Updates
    the predictor and (unless `update_norm=False`) the normalization affine parameters.
    Paper defaults: alpha 1, symmetric KL, entropy. The predictor learns at the backbone's rate
    unless `VisionAdaptConfig.predictor_lr` is set; the official scripts give it 10x (ResNet50-GN,
    ViT-S, ConvNeXt), 5x (Swin) or 1x (ViT-B)."""

    name: ClassVar[str] = "zerosiam"
    uses_predictor: ClassVar[bool] = True
    alpha: float = 1.0
    divergence: str = "sym_kl"
    objective: str = "entropy"
    update_norm: bool = True

    def __post_init__(self):
        _check_zerosiam(self)

    def loss(self, out):
        per_row, extras = zerosiam_token_loss(
            out.online, out.target, self.alpha, self.divergence, self.objective
        )
        stats = {"selected": 1.0, **{k: float(v.mean()) for k, v in extras.items()}}
        return per_row.mean(), stats


def _check_zerosiam(m) -> None:
    if m.divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {m.divergence!r}")
    if m.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {m.objective!r}")
    if m.alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {m.alpha}")


def _zerosiam_rows(m, out: Branches) -> tuple[torch.Tensor, dict[str, float]]:
    # ZeroSiam's per-sample loss for the plug-ins: H(p_o) + alpha * D(p_o || sg[p_r])
    rows, extras = zerosiam_token_loss(out.online, out.target, m.alpha, m.divergence, m.objective)
    return rows, {k: float(v.mean()) for k, v in extras.items()}


@VISION_METHODS.register("zerosiam+eata")
@dataclass
class ZeroSiamEATA(EATA):
    """ZeroSiam's loss weighted per sample as EATA weights samples (the paper's plug-in ablation,
    as the language `zerosiam+eata`): samples whose prediction entropy (target branch) is below
    `margin * ln K` count with weight exp(E0 - H); the mean is over those samples and no step is
    taken without one. The redundancy filter is off unless `d_margin` is set; no Fisher term."""

    name: ClassVar[str] = "zerosiam+eata"
    uses_predictor: ClassVar[bool] = True
    alpha: float = 1.0
    divergence: str = "sym_kl"
    objective: str = "entropy"

    def __post_init__(self):
        super().__post_init__()
        _check_zerosiam(self)

    def _per_row(self, out):
        return _zerosiam_rows(self, out)


@VISION_METHODS.register("come")
@dataclass
class COME(VisionMethod):
    """COME (Zhang et al., ICLR 2025) as `dirichlet_entropy` in BlueWhaleLab/COME `tent_come.py`
    runs it with Tent: minimize the mean entropy of the (K+1)-way opinion, beliefs
    exp(x_k) / (S + C) and uncertainty C / (S + C), the logits' norm detached, 1e-7 added to
    every entry; `zs_llm.objective.opinion_entropy`, the language path's formula. C = `evidence`,
    None: the number of classes (the code's 1000 is ImageNet's K, so None is the code on ImageNet).
    The ZeroSiam repository's COME baseline (`deyo_come.py`) runs this entropy inside DeYO's
    selection: that is `come+deyo`."""

    name: ClassVar[str] = "come"
    evidence: float | None = None
    eps: float = 1e-7
    tau: float = 1.0

    def __post_init__(self):
        if self.evidence is not None and self.evidence <= 0:
            raise ValueError(f"evidence must be > 0 (or None for the class count), got {self.evidence}")
        if self.eps < 0 or self.tau <= 0:
            raise ValueError(f"eps must be >= 0 and tau > 0, got eps={self.eps}, tau={self.tau}")

    def loss(self, out):
        h = opinion_entropy(out.online, self.evidence, self.eps, self.tau)  # (B,)
        return h.mean(), {"selected": 1.0, "objective": float(h.detach().mean())}


def patch_shuffle(x: torch.Tensor, patches: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """DeYO's object-destroying transformation: cut each image into a `patches` x `patches` grid
    and put the tiles back in a random order of its own. (B, C, H, W) -> (B, C, H, W).

    A side that `patches` does not divide is resized (bilinear, antialiased) to the nearest lower
    multiple and back, as the official code does for square images."""
    b, c, h, w = x.shape
    hh, ww = h // patches * patches, w // patches * patches
    if hh == 0 or ww == 0:
        raise ValueError(f"a {h}x{w} image has fewer pixels per side than patches={patches}")
    resized = (hh, ww) != (h, w)
    y = F.interpolate(x, size=(hh, ww), mode="bilinear", antialias=True) if resized else x
    n, ph, pw = patches * patches, hh // patches, ww // patches
    perm = torch.rand(b, n, generator=generator).argsort(-1).to(x.device)  # (B, n) a permutation per image
    tiles = y.reshape(b, c, patches, ph, patches, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, ph, pw)
    tiles = tiles[torch.arange(b, device=x.device)[:, None], perm]  # (B, n, C, ph, pw)
    y = tiles.reshape(b, patches, patches, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)
    return F.interpolate(y, size=(h, w), mode="bilinear", antialias=True) if resized else y


@VISION_METHODS.register("deyo")
@dataclass
class DeYO(VisionMethod):
    """DeYO (Lee et al., ICLR 2024) as `forward_and_adapt_deyo` in Jhyun17/DeYO `methods/deyo.py`
    runs it with its `config.py` defaults: samples with entropy < `margin` * ln K (0.5) are patch-
    shuffled (`patches` 4 per side, a permutation per image); the shuffled batch goes through the
    model without gradients; PLPD = p(y_hat | x) - p(y_hat | x') on the pseudo-label y_hat; samples
    with PLPD > `plpd_threshold` (0.2, the wild settings' value) are kept with coefficient
    exp(E0 - H) + exp(PLPD), E0 = `margin_e0` * ln K (0.4); the loss is the mean of coefficient x
    entropy over them, and no step is taken when none is kept (the formula:
    `zs_llm.objective.deyo_weights`, shared with the language path).

    Differs from the official code: every normalization layer is adapted (the official
    `collect_params` leaves out ResNet `layer4`, ViT blocks 9-11 and the final norm, as SAR's);
    the shuffles draw from a generator seeded with `seed` (None: torch's global generator, as
    the official code) so a run repeats; a non-square image is resized per side (the official
    code resizes both sides to the width). The official `main.py` doubles DeYO's learning rate
    at batch size 1; that is the caller's `VisionAdaptConfig.lr`."""

    name: ClassVar[str] = "deyo"
    margin: float = 0.5
    margin_e0: float = 0.4
    plpd_threshold: float = 0.2
    patches: int = 4
    reweight_ent: bool = True
    reweight_plpd: bool = True
    seed: int | None = 0

    def __post_init__(self):
        if not 0 < self.margin <= 1 or not 0 < self.margin_e0 <= 1:
            raise ValueError(f"margin and margin_e0 are fractions of ln K in (0, 1], got {self.margin}, {self.margin_e0}")
        if not -1 <= self.plpd_threshold < 1:
            raise ValueError(f"plpd_threshold is a probability difference in [-1, 1), got {self.plpd_threshold}")
        if self.patches < 2:
            raise ValueError(f"patches must be >= 2 (a 1x1 grid shuffles nothing), got {self.patches}")
        self.reset()

    def reset(self):
        self._gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)

    def _selection_entropy(self, out: Branches) -> torch.Tensor:
        return entropy(out.target.detach())  # (B,)

    def _per_row(self, out: Branches) -> tuple[torch.Tensor, dict[str, float]]:
        return confidence_objective(out.online, "entropy"), {}

    def weights(self, adapter: Adapter, x: torch.Tensor, out: Branches) -> tuple[torch.Tensor, dict[str, float]]:
        """(B,) DeYO coefficients of batch `x` (0 off the selection), and the two filters' pass rates."""
        ent = self._selection_entropy(out)  # (B,)
        log_k = math.log(out.target.shape[-1])
        first = deyo_entropy_mask(ent, log_k, self.margin)  # (B,)
        drop = torch.full_like(ent, float("nan"))
        if first.any():
            with torch.no_grad():  # only the entropy-selected samples are shuffled, as one batch
                shuffled = adapter.model(patch_shuffle(x[first], self.patches, self._gen))  # (B1, K) target branch
            drop[first] = plpd(out.target[first], shuffled)
        w = deyo_weights(ent, drop, log_k, self.margin, self.margin_e0, self.plpd_threshold,
                         self.reweight_ent, self.reweight_plpd)
        return w, {"selected_entropy": float(first.float().mean()), "selected": float((w > 0).float().mean())}

    def update(self, adapter, x, out):
        w, info = self.weights(adapter, x, out)
        rows, stats = self._per_row(out)  # (B,)
        loss = _selected_mean(rows, w)
        info.update(stats, loss=float(loss.detach()))
        if (w > 0).any():
            adapter.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            adapter.optimizer.step()
        return info


@VISION_METHODS.register("zerosiam+deyo")
@dataclass
class ZeroSiamDeYO(DeYO):
    """ZeroSiam's loss on DeYO's selection with DeYO's weights (the paper's plug-in ablation, as
    `zerosiam+eata`): entropy and PLPD from the predictions (target branch; the shuffled batch
    through the target branch too), the per-sample loss H(p_o) + alpha * D(p_o || sg[p_r])."""

    name: ClassVar[str] = "zerosiam+deyo"
    uses_predictor: ClassVar[bool] = True
    alpha: float = 1.0
    divergence: str = "sym_kl"
    objective: str = "entropy"

    def __post_init__(self):
        super().__post_init__()
        _check_zerosiam(self)

    def _per_row(self, out):
        return _zerosiam_rows(self, out)


@VISION_METHODS.register("come+deyo")
@dataclass
class COMEDeYO(DeYO):
    """COME's opinion entropy inside DeYO's selection, as the ZeroSiam repository's COME baseline
    (`tta_library/deyo_come.py`) runs it: the opinion entropy (C = `evidence`, None: K; 1e-7)
    replaces the softmax entropy in the entropy filter, the weight exp(E0 - H) and the loss;
    PLPD stays on the softmax probabilities."""

    name: ClassVar[str] = "come+deyo"
    evidence: float | None = None

    def _selection_entropy(self, out):
        return opinion_entropy(out.target.detach(), self.evidence)

    def _per_row(self, out):
        return opinion_entropy(out.online, self.evidence), {}
