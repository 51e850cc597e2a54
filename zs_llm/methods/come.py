import math
from dataclasses import dataclass

import torch

from ..config import setting
from ..objective import entropy
from .base import METHODS, Method, MethodConfig


@dataclass
class COMEConfig(MethodConfig):
    tau: float = setting(1.0, "Scale of the norm-detached logits before the evidence exp().", min=0.0)


def opinion_entropy(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """COME's entropy of the (K+1)-way opinion, per row. (..., K) -> (...).

    The logits keep their value but their norm is detached, so gradients only turn their
    direction; `tau` rescales them. Evidence e_k = exp(logit_k), S = sum e_k; belief
    b_k = e_k / (S + K) and uncertainty mass u = K / (S + K). Computed in log space so large
    logits do not overflow exp().
    """
    x = logits.float()
    norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    x = tau * x / norm * norm.detach()
    k = x.shape[-1]
    log_k = torch.full_like(x[..., :1], math.log(k))
    log_z = torch.logsumexp(torch.cat([x, log_k], -1), -1, keepdim=True)  # log(S + K)
    log_b, log_u = x - log_z, log_k - log_z
    return -(log_b.exp() * log_b).sum(-1) - (log_u.exp() * log_u).squeeze(-1)


@METHODS.register("come")
class COME(Method):
    """COME (Zhang et al., ICLR 2025): minimize the entropy of a Dirichlet opinion with an
    explicit uncertainty mass K / (S + K), K the vocabulary size, instead of the softmax
    entropy; the logit norm is detached. Paper defaults follow Tent's (SGD, one step)."""

    name = "come"
    trains = ("lora",)
    config_class = COMEConfig

    def token_loss(self, online_logits, target_logp, labels, target_p=None):
        return opinion_entropy(online_logits, self.cfg.tau), None, {"softmax_entropy": entropy(online_logits)}
