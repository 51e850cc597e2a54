"""An image classifier split into features z and head g, with a predictor h between them.

Three ways in, all by composition (the user's model is held, never subclassed or copied):

- timm models: z = `forward_head(forward_features(x), pre_logits=True)`, g = `get_classifier()`;
- torchvision-style models with an `fc` head: z is the input `fc` receives, caught by a
  forward pre-hook that lives only for the duration of one call;
- two callables: `features(x) -> z` and `head(z) -> logits`.

The target branch u_r = g(z) is the model's own output; the online branch u_o = g(h(z)) goes
through the predictor, which starts as the identity, so at init the two are equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..predictor import build_predictor


@dataclass
class Branches:
    """One forward through a `SiameseClassifier`."""

    z: torch.Tensor  # (B, D) features
    target: torch.Tensor  # (B, K) u_r = g(z): the predictions
    online: torch.Tensor  # (B, K) u_o = g(h(z)); the same tensor as `target` when the predictor is unused


def _feature_dim(head: Callable, feature_dim: int | None) -> int:
    if feature_dim is not None:
        return feature_dim
    if isinstance(head, nn.Linear):
        return head.in_features
    raise ValueError(
        f"cannot infer the feature dimension from a head of type {type(head).__name__}; "
        "pass feature_dim=<width of the features the head reads>"
    )


class SiameseClassifier(nn.Module):
    """A classifier as features -> predictor -> head, with the predictor used only by the online branch.

    `model` holds every parameter of the classifier: the user's model, or the two parts in a
    `ModuleDict`. Build it with `from_timm`, `from_fc`, `from_parts` or `wrap_classifier`.
    Attributes the wrapper lacks are looked up on `model`.
    """

    FORMS = ("timm", "fc", "parts")

    def __init__(
        self,
        model: nn.Module,
        form: str,
        feature_dim: int,
        predictor: str = "linear",
        head_name: str = "fc",
        **predictor_kwargs,
    ):
        super().__init__()
        if form not in self.FORMS:
            raise ValueError(f"unknown form {form!r}; choose one of {self.FORMS}")
        self.model = model
        self.form = form
        self.head_name = head_name
        self._plain: dict[str, Callable] = {}
        self.predictor = build_predictor(predictor, feature_dim, **predictor_kwargs)
        device = next((p.device for p in model.parameters()), None)
        if device is not None:
            self.predictor.to(device)

    # --- constructors ---------------------------------------------------------------------
    @classmethod
    def from_timm(cls, model: nn.Module, predictor: str = "linear", **predictor_kwargs) -> SiameseClassifier:
        """A timm model: features are `forward_head(forward_features(x), pre_logits=True)`."""
        for attr in ("forward_features", "forward_head", "get_classifier"):
            if not hasattr(model, attr):
                raise TypeError(f"{type(model).__name__} has no {attr}(); it is not a timm-style model")
        head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"the classifier of {type(model).__name__} is {type(head).__name__}, not nn.Linear; "
                "create the timm model with num_classes > 0, or use SiameseClassifier.from_parts"
            )
        return cls(model, "timm", head.in_features, predictor, **predictor_kwargs)

    @classmethod
    def from_fc(
        cls, model: nn.Module, head_name: str = "fc", predictor: str = "linear", **predictor_kwargs
    ) -> SiameseClassifier:
        """A torchvision-style model whose last layer is the linear `model.<head_name>`."""
        head = model.get_submodule(head_name)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"model.{head_name} is {type(head).__name__}, not nn.Linear; pass head_name=")
        return cls(model, "fc", head.in_features, predictor, head_name=head_name, **predictor_kwargs)

    @classmethod
    def from_parts(
        cls,
        features: Callable[[torch.Tensor], torch.Tensor],
        head: Callable[[torch.Tensor], torch.Tensor],
        feature_dim: int | None = None,
        predictor: str = "linear",
        **predictor_kwargs,
    ) -> SiameseClassifier:
        """Two callables: `features(x) -> (B, D)` and `head(z) -> (B, K)`.

        Parts that are `nn.Module`s are registered (so their normalization layers can be
        adapted); a plain function's parameters are out of reach.
        """
        parts = nn.ModuleDict(
            {k: v for k, v in (("features", features), ("head", head)) if isinstance(v, nn.Module)}
        )
        wrapper = cls(parts, "parts", _feature_dim(head, feature_dim), predictor, **predictor_kwargs)
        # plain functions are kept outside the module tree
        wrapper._plain = {k: v for k, v in (("features", features), ("head", head)) if k not in parts}
        return wrapper

    # --- the split --------------------------------------------------------------------------
    def _part(self, name: str) -> Callable:
        return self.model[name] if name in self.model else self._plain[name]

    def head_module(self) -> Callable:
        """The head g (an nn.Linear for the timm and fc forms)."""
        if self.form == "timm":
            return self.model.get_classifier()
        if self.form == "fc":
            return self.model.get_submodule(self.head_name)
        return self._part("head")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """z, the input the head reads. (B, ...) -> (B, D)."""
        if self.form == "timm":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        if self.form == "parts":
            return self._part("features")(x)
        # fc: the model runs in full (its head included, a negligible cost) and the head's
        # input is kept; the hook lives only during this call.
        seen = []
        handle = self.head_module().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"model.{self.head_name} ran {len(seen)} times in one forward; expected once")
        return seen[0].flatten(1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.head_module()(z)  # (B, D) -> (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The target branch g(z): the wrapped model's own logits. (B, ...) -> (B, K)."""
        return self.head(self.features(x))

    def branches(self, x: torch.Tensor, online: bool = True) -> Branches:
        """Both branches from one pass through the features; `online=False` skips the predictor."""
        z = self.features(x)  # (B, D)
        target = self.head(z)  # (B, K)
        return Branches(z, target, self.head(self.predictor(z)) if online else target)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("model", "_plain"):
                raise
            return getattr(self.model, name)


def wrap_classifier(
    model: nn.Module | Callable,
    head: Callable | None = None,
    predictor: str = "linear",
    feature_dim: int | None = None,
    **predictor_kwargs,
) -> SiameseClassifier:
    """Wrap a classifier for test-time adaptation, picking the form from what it has.

    `head` given: `model` is the features callable (two-callables form). Otherwise a model
    with `forward_features`/`forward_head`/`get_classifier` is taken as timm, and one with a
    linear `fc` as torchvision-style.
    """
    if head is not None:
        return SiameseClassifier.from_parts(model, head, feature_dim, predictor, **predictor_kwargs)
    if all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_classifier")):
        return SiameseClassifier.from_timm(model, predictor, **predictor_kwargs)
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return SiameseClassifier.from_fc(model, "fc", predictor, **predictor_kwargs)
    raise TypeError(
        f"don't know how to split {type(model).__name__} into features and head: it is neither a timm model "
        "nor has a linear `fc`; use SiameseClassifier.from_fc(model, head_name=...) or "
        "wrap_classifier(features_fn, head)"
    )
