"""Pure tensor functions for test-time objectives, shared by the text and the vision path.

Every function takes logits of shape (..., V) and works per row; reductions over rows are
left to the caller. `zerosiam_loss` is the reference, unchunked form of the objective;
`head_loss` computes the same thing from hidden states in chunks of rows so that its peak
memory grows with chunk x vocabulary, never with sequence x vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# per-row quantities


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row, in nats. (..., V) -> (...)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities. (..., V) -> (...)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _div_kl(logp_o, logp_r):
    return kl(logp_o, logp_r)


def _div_rkl(logp_o, logp_r):
    return kl(logp_r, logp_o)


def _div_sym_kl(logp_o, logp_r):
    # Jeffreys divergence: the sum of both directions.
    return kl(logp_o, logp_r) + kl(logp_r, logp_o)


def _div_js(logp_o, logp_r):
    logm = torch.logaddexp(logp_o, logp_r) - math.log(2.0)
    return 0.5 * kl(logp_o, logm) + 0.5 * kl(logp_r, logm)


def _div_mse(logp_o, logp_r):
    # squared distance between the probability vectors, summed over the vocabulary
    return (logp_o.exp() - logp_r.exp()).pow(2).sum(-1)


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sym_kl": _div_sym_kl,
    "kl": _div_kl,
    "rkl": _div_rkl,
    "js": _div_js,
    "mse": _div_mse,
}


def divergence(online_logits: torch.Tensor, target_logits: torch.Tensor, kind: str = "sym_kl") -> torch.Tensor:
    """D(p_o || p_r) per row. No stop-gradient here: `zerosiam_loss` applies it."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {sorted(DIVERGENCES)}")
    return DIVERGENCES[kind](F.log_softmax(online_logits.float(), -1), F.log_softmax(target_logits.float(), -1))


# Entropy and the replacements for it that the paper shows the mechanism carries to.
# Each maps logits (..., V) to a per-row value that minimization makes more confident.


def _obj_entropy(logp):
    return -(logp.exp() * logp).sum(-1)


def _obj_slr(logp):
    # soft likelihood ratio: -sum p * log(p / (1 - p)); log1p(-p) is clamped where p -> 1
    p = logp.exp()
    return -(p * (logp - torch.log1p(-p.clamp(max=1 - 1e-6)))).sum(-1)


def _obj_ce_argmax(logp):
    # cross-entropy to the row's own argmax (a hard pseudo-label)
    return -logp.max(-1).values


def _obj_neg_p2(logp):
    return -logp.exp().pow(2).sum(-1)


OBJECTIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "entropy": _obj_entropy,
    "slr": _obj_slr,
    "ce_argmax": _obj_ce_argmax,
    "neg_p2": _obj_neg_p2,
}


def confidence_objective(logits: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """The per-row term that is minimized to sharpen predictions (entropy by default)."""
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown objective {kind!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[kind](F.log_softmax(logits.float(), -1))


def zerosiam_token_loss(
    online_logits: torch.Tensor,
    target_logits: torch.Tensor,
    alpha: float = 1.0,
    divergence: str = "sym_kl",
    objective: str = "entropy",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-row ZeroSiam loss `H(p_o) + alpha * D(p_o || sg[p_r])`. (..., V) -> (...).

    The stop-gradient on the target branch is applied here. Returns the loss and the two
    terms, detached, for logging.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {sorted(DIVERGENCES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}")
    logp_o = F.log_softmax(online_logits.float(), -1)
    logp_r = F.log_softmax(target_logits.detach().float(), -1)
    conf = OBJECTIVES[objective](logp_o)
    if alpha == 0:
        return conf, {"objective": conf.detach(), "divergence": torch.zeros_like(conf).detach()}
    div = DIVERGENCES[divergence](logp_o, logp_r)
    return conf + alpha * div, {"objective": conf.detach(), "divergence": div.detach()}


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is true (all when mask is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def zerosiam_loss(
    online_logits: torch.Tensor,
    target_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: float = 1.0,
    divergence: str = "sym_kl",
    objective: str = "entropy",
) -> torch.Tensor:
    """Mean over unmasked rows of `H(p_o) + alpha * D(p_o || sg[p_r])`.

    online_logits, target_logits: (..., V); mask: (...) bool or None. Gradients flow only
    into `online_logits`.
    """
    per_row, _ = zerosiam_token_loss(online_logits, target_logits, alpha, divergence, objective)
    return masked_mean(per_row, mask)


# ---------------------------------------------------------------------------------------
# token filters (SAR, EATA): weights per row from the target's entropy


def sar_weights(target_logits: torch.Tensor, margin: float = 0.4) -> torch.Tensor:
    """SAR's reliable-sample filter: 1 where entropy < margin * ln K, else 0. (..., V) -> (...)."""
    ent = entropy(target_logits.detach())
    return (ent < margin * math.log(target_logits.shape[-1])).float()


def eata_weights(target_logits: torch.Tensor, margin: float = 0.4) -> torch.Tensor:
    """EATA's entropy weighting: exp(-(H - H0)) on rows with H < H0 = margin * ln K, else 0."""
    ent = entropy(target_logits.detach())
    h0 = margin * math.log(target_logits.shape[-1])
    return torch.where(ent < h0, torch.exp(h0 - ent), torch.zeros_like(ent))


# ---------------------------------------------------------------------------------------
# chunked head + loss

# token_loss(online_logits (c, V) fp32, target_logits (c, V) fp32 detached, labels (c,) | None)
#   -> (loss (c,), weight (c,) | None, extras {name: (c,)})
TokenLoss = Callable[
    [torch.Tensor, torch.Tensor, "torch.Tensor | None"],
    "tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]",
]


def logit_stats(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Collapse diagnostics per row of (c, V) logits: entropy, max-probability, L2 norm raw
    and centered. The raw norm is dominated by an offset shared by the whole vocabulary;
    the centered one (mean logit removed) tracks how far the logits spread."""
    logits = logits.float()
    logp = F.log_softmax(logits, -1)
    return {
        "entropy": -(logp.exp() * logp).sum(-1),
        "max_prob": logp.max(-1).values.exp(),
        "logit_norm": logits.norm(dim=-1),
        "logit_norm_centered": (logits - logits.mean(-1, keepdim=True)).norm(dim=-1),
    }


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum_i w_i * loss_i / sum_i w_i over rows of hidden states, one chunk of rows at a time.

    Forward computes each chunk's logits, loss and the gradient with respect to that chunk's
    online hidden states, keeps only that (N, H) gradient, and frees the logits. Backward
    scales the stored gradient. The head's own parameters must be frozen.
    """

    @staticmethod
    def forward(ctx, z_online, z_target, mask, labels, head_fn, token_loss, chunk_size, stats_out):
        n = z_online.shape[0]
        need_grad = z_online.requires_grad
        grad = torch.zeros_like(z_online, dtype=torch.float32) if need_grad else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=z_online.device)
        weight_sum = torch.zeros((), dtype=torch.float32, device=z_online.device)
        sums: dict[str, torch.Tensor] = {}
        for s in range(0, n, chunk_size):
            e = min(n, s + chunk_size)
            with torch.enable_grad():
                zo = z_online[s:e].detach().requires_grad_(need_grad)
                uo = head_fn(zo).float()  # (c, V)
                with torch.no_grad():
                    ur = uo.detach() if z_target is None else head_fn(z_target[s:e]).float()
                loss, weight, extras = token_loss(uo, ur, None if labels is None else labels[s:e])
                w = torch.ones_like(loss) if weight is None else weight.detach().float()
                if mask is not None:
                    w = w * mask[s:e].float()
                chunk_loss = (loss * w).sum()
                if need_grad and chunk_loss.requires_grad:
                    (g,) = torch.autograd.grad(chunk_loss, zo)
                    grad[s:e] = g.float()
            loss_sum += chunk_loss.detach()
            weight_sum += w.sum()
            with torch.no_grad():
                rows = {**logit_stats(ur), **extras}
                valid = torch.ones_like(loss) if mask is None else mask[s:e].float()
                for k, v in rows.items():
                    sums[k] = sums.get(k, 0.0) + (v.detach().float() * valid).sum()
                sums["_count"] = sums.get("_count", 0.0) + valid.sum()
                sums["_selected"] = sums.get("_selected", 0.0) + (w > 0).float().sum()
        denom = weight_sum.clamp(min=1e-12)
        if stats_out is not None:
            count = float(sums.pop("_count", 0.0))
            stats_out["tokens"] = int(count)
            stats_out["tokens_selected"] = int(float(sums.pop("_selected", 0.0)))
            for k, v in sums.items():
                stats_out[k] = float(v) / max(count, 1.0)
        if need_grad:
            ctx.save_for_backward(grad / denom)
            ctx.in_dtype = z_online.dtype
        return (loss_sum / denom) if float(weight_sum) > 0 else loss_sum * 0

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad_out * grad).to(ctx.in_dtype), None, None, None, None, None, None, None


def head_loss(
    z_online: torch.Tensor,
    z_target: torch.Tensor | None,
    head_fn: Callable[[torch.Tensor], torch.Tensor],
    token_loss: TokenLoss,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    chunk_size: int = 512,
    stats: dict | None = None,
) -> torch.Tensor:
    """Loss from hidden states through a frozen head, computed in chunks of rows.

    z_online: (N, H), carries gradients (predictor output, or the hidden state itself);
    z_target: (N, H) or None (the target branch equals the online one, detached);
    head_fn: hidden (c, H) -> logits (c, V), including any post-processing (soft-capping);
    token_loss: see `TokenLoss`; mask: (N,) rows that count; labels: (N,) for losses that
    need them. Returns the weighted mean over rows; `stats`, when given, receives means of
    `logit_stats` on the target logits and of the token loss's extras.
    Peak memory grows with chunk_size x V.
    """
    if z_online.dim() != 2:
        raise ValueError(f"head_loss expects (N, H) hidden states, got shape {tuple(z_online.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if z_target is not None:
        z_target = z_target.detach()
    return _ChunkedHeadLoss.apply(z_online, z_target, mask, labels, head_fn, token_loss, chunk_size, stats)
