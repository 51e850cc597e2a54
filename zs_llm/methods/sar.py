from dataclasses import dataclass

import torch

from ..config import setting
from ..objective import FAST_OBJECTIVES, sar_weights
from .base import METHODS, Method, MethodConfig


@dataclass
class SARConfig(MethodConfig):
    filter_margin: float = setting(0.4, "Keep tokens with entropy < filter_margin * ln(vocab) (paper: 0.4).",
                                   min=0.0)
    rho: float = setting(0.05, "Radius of the sharpness-aware perturbation (paper: 0.05).", min=0.0)


@METHODS.register("sar")
class SAR(Method):
    """SAR (Niu et al., ICLR 2023): entropy minimization on reliable tokens only (entropy below
    `filter_margin * ln K`, paper 0.4) with a sharpness-aware update: a first pass finds the
    gradient, the weights move by `sar_rho` (paper 0.05) along it, a second pass's gradient at
    the perturbed point is the one applied. The paper's model-recovery reset is left to the
    collapse guard."""

    name = "sar"
    trains = ("lora",)
    config_class = SARConfig

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        w = sar_weights(target_logp, self.cfg.filter_margin)
        q = target_logp.exp() if target_p is None else target_p
        value, grad = FAST_OBJECTIVES["entropy"](target_logp, q, inplace=True)
        return value, w, {}, grad

    def backward(self, lm, batch):
        params = [p for p in lm.trainable_parameters() if p.requires_grad]
        first = super().backward(lm, batch)
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            return first  # no reliable token: nothing to update
        norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads)).clamp(min=1e-12)
        eps = [self.cfg.rho * g / norm for g in grads]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
                p.grad = None
        second = super().backward(lm, batch)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        second["loss_first_pass"] = first["loss"]
        return second
