"""Pure tensor functions for test-time objectives, shared by the text and the vision path.

Every function takes logits of shape (..., V) and works per row; reductions over rows are
left to the caller. `zerosiam_loss` is the reference, unchunked form of the objective;
`head_loss` computes the same thing from hidden states in chunks of rows so that its peak
memory grows with chunk x vocabulary, never with sequence x vocabulary.

Row sums over a vocabulary run in blocks of `ROW_BLOCK` columns, each block summed by
`torch.sum` (a cascade: its rounding grows with log V) and the blocks' partial sums summed
again, so fp32 keeps its precision at 262,144 columns (Gemma 3). A single matrix product over
the row, or `F.log_softmax`'s own sum of exponentials, accumulates long sequential runs: at
262,144 columns they lost 3e-4 (dot products) and 2.6e-5 (log-sum-exp) of the result, an
entropy error of 2.5e-3 nats (tests/test_objective.py bounds ours from fp32's rounding unit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# precise row reductions

ROW_BLOCK = 16_384  # columns per block of a row reduction: a (rows, ROW_BLOCK) scratch, never (rows, V)


def _tracked(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _blocks(v: int):
    return [(s, min(v, s + ROW_BLOCK)) for s in range(0, v, ROW_BLOCK)]


def _dot(a: torch.Tensor, b: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise sum(a * (b - shift)) over the last dimension of (..., V) tensors (either may be
    an expanded view; `shift`: (...) per row, or None for 0), in blocks of ROW_BLOCK columns: no
    (..., V) temporary, and a rounding error that grows with log V (see the module docstring).
    The shift is subtracted before the product, so the rounding scales with |b - shift|: logits
    shifted by their row maximum lose nothing to an offset shared by the vocabulary."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    v = shape[-1]
    a2, b2 = a.expand(shape).reshape(-1, v), b.expand(shape).reshape(-1, v)
    c = None if shift is None else shift.expand(shape[:-1]).reshape(-1, 1)
    spans = _blocks(v)
    if _tracked(a, b, shift):  # differentiable: block-sized temporaries instead of a scratch written in place
        parts = [(a2[:, s:e] * (b2[:, s:e] if c is None else b2[:, s:e] - c)).sum(-1) for s, e in spans]
        return torch.stack(parts).sum(0).view(shape[:-1])
    scratch = torch.empty(a2.shape[0], min(v, ROW_BLOCK), dtype=torch.result_type(a2, b2), device=a2.device)
    parts = scratch.new_empty(len(spans), a2.shape[0])
    for j, (s, e) in enumerate(spans):
        blk = scratch[:, : e - s]
        if c is None:
            torch.mul(a2[:, s:e], b2[:, s:e], out=blk)
        else:
            torch.sub(b2[:, s:e], c, out=blk).mul_(a2[:, s:e])
        torch.sum(blk, -1, out=parts[j])
    return (parts[0] if len(spans) == 1 else parts.sum(0)).view(shape[:-1])


def _lse_parts(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, log s) per row of (..., V) logits, m the row's maximum and s = sum exp(u - m), the sum
    in blocks of ROW_BLOCK columns (no (..., V) temporary): log-sum-exp = m + log s. Kept apart so
    that log-probabilities come out as (u - m) - log s, rounded at their own scale."""
    v = u.shape[-1]
    u2 = u.reshape(-1, v)
    m = u2.detach().amax(-1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # as torch.logsumexp: an all -inf row stays -inf
    spans = _blocks(v)
    if _tracked(u):
        parts = [(u2[:, s:e] - m.unsqueeze(-1)).exp().sum(-1) for s, e in spans]
        log_s = torch.stack(parts).sum(0).log()
    else:
        scratch = torch.empty(u2.shape[0], min(v, ROW_BLOCK), dtype=u2.dtype, device=u2.device)
        parts = scratch.new_empty(len(spans), u2.shape[0])
        for j, (s, e) in enumerate(spans):
            blk = scratch[:, : e - s]
            torch.sub(u2[:, s:e], m.unsqueeze(-1), out=blk).exp_()
            torch.sum(blk, -1, out=parts[j])
        log_s = parts.sum(0).log_()
    return m.view(u.shape[:-1]), log_s.view(u.shape[:-1])


def logsumexp_rows(u: torch.Tensor) -> torch.Tensor:
    """log sum exp over the last dimension, (..., V) -> (...), summed in blocks (`_lse_parts`).
    Rows of -inf give -inf."""
    m, log_s = _lse_parts(u)
    return m + log_s


def log_softmax_rows(u: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dimension, its sum of exponentials in blocks (`_lse_parts`)."""
    return _log_softmax_lse(u)[0]


def _log_softmax_lse(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`log_softmax_rows(u)`, the rows' log-sum-exp), from one pass of `_lse_parts`."""
    m, log_s = _lse_parts(u)
    return (u - m.unsqueeze(-1)).sub_(log_s.unsqueeze(-1)), m + log_s


def _log_softmax(u: torch.Tensor) -> torch.Tensor:
    """Differentiable log_softmax with torch.logsumexp's cascade sum (for the reference forms), in
    float32 at least: float64 input stays float64, so a test's float64 reference is one."""
    u = u if u.dtype == torch.float64 else u.float()
    return u - torch.logsumexp(u, -1, keepdim=True)


# ---------------------------------------------------------------------------------------
# per-row quantities


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row, in nats. (..., V) -> (...)."""
    logp = _log_softmax(logits)
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
    return DIVERGENCES[kind](_log_softmax(online_logits), _log_softmax(target_logits))


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
    return OBJECTIVES[kind](_log_softmax(logits))


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
    logp_o = _log_softmax(online_logits)
    logp_r = _log_softmax(target_logits.detach())
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
# the same terms with their gradients in closed form (used by the adaptation loop)
#
# Each returns (value (c,), d value / d online logits (c, V)) from log-probabilities, with no
# autograd graph: one log_softmax and one exp per chunk instead of a graph of (c, V)
# temporaries. For a function f of p = softmax(u): df/du = p * (g - sum(p * g)), g = df/dp.
# Objectives take `inplace`: when true, the gradient may be built in `lp`'s storage (the
# caller's scratch), which saves a (c, V) allocation. On CPU a fresh (c, V) tensor costs about
# as much as a full pass over it (its pages are faulted in), so the fast paths count them.
# Tests check every term against autograd on the reference functions above.


def _through_softmax(p, g):
    return p * (g - (p * g).sum(-1, keepdim=True))


def _fast_entropy(lp, p, inplace=False):
    h = -_dot(p, lp)
    g = lp.add_(h.unsqueeze(-1)) if inplace else lp.add(h.unsqueeze(-1))
    return h, g.mul_(p).neg_()


def _fast_slr(lp, p, inplace=False):
    pc = p.clamp(max=1 - 1e-6)
    l1 = torch.log1p(-pc)
    v = -(p * (lp - l1)).sum(-1)
    return v, _through_softmax(p, -(lp + 1 - l1 + pc / (1 - pc)))


def _fast_ce_argmax(lp, p, inplace=False):
    v, idx = lp.max(-1)
    g = p.clone()
    g.scatter_add_(-1, idx.unsqueeze(-1), -torch.ones_like(v).unsqueeze(-1))
    return -v, g


def _fast_neg_p2(lp, p, inplace=False):
    return -(p * p).sum(-1), _through_softmax(p, -2 * p)


FAST_OBJECTIVES = {"entropy": _fast_entropy, "slr": _fast_slr, "ce_argmax": _fast_ce_argmax, "neg_p2": _fast_neg_p2}


def _fast_kl(lp, p, lq, q):
    v = (p * (lp - lq)).sum(-1)
    return v, p * (lp - lq - v.unsqueeze(-1))


def _fast_rkl(lp, p, lq, q):
    return (q * (lq - lp)).sum(-1), p - q


def _fast_sym_kl(lp, p, lq, q):
    a, ga = _fast_kl(lp, p, lq, q)
    b, gb = _fast_rkl(lp, p, lq, q)
    return a + b, ga + gb


def _fast_js(lp, p, lq, q):
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    v = 0.5 * (p * (lp - lm)).sum(-1) + 0.5 * (q * (lq - lm)).sum(-1)
    return v, _through_softmax(p, 0.5 * (lp - lm))


def _fast_mse(lp, p, lq, q):
    d = p - q
    return (d * d).sum(-1), _through_softmax(p, 2 * d)


FAST_DIVERGENCES = {"sym_kl": _fast_sym_kl, "kl": _fast_kl, "rkl": _fast_rkl, "js": _fast_js, "mse": _fast_mse}


def _fused_entropy_sym_kl(u, lq, q, alpha, inplace=False):
    """H(p) + alpha * (KL(p||q) + KL(q||p)) and its gradient w.r.t. the online logits `u`, with
    p = softmax(u) and the online log-probabilities never materialised (lp = u - lse): four
    row-wise dot products s_ab = sum(a * log b) give
    value = -s_pp + alpha * (s_pp - s_pq + s_qq - s_qp) and
    gradient = p * ((alpha - 1) * lp - alpha * lq + (1 - alpha) * s_pp + alpha * (s_pq + 1)) - alpha * q.
    With `inplace` the gradient is built in `lq`'s storage. Also returns the target's entropy
    (-s_qq), which the statistics reuse."""
    m, log_s = _lse_parts(u)  # log-sum-exp = m + log_s
    lse = m + log_s
    p = u.sub(m.unsqueeze(-1)).sub_(log_s.unsqueeze(-1)).exp_()  # softmax(u), normalised by the blocked sum
    # sum(p * log p) = sum(p * (u - m)) - log_s: the dot runs on logits shifted to their maximum
    s_pp, s_pq, s_qq, s_qp = _dot(p, u, m) - log_s, _dot(p, lq), _dot(q, lq), _dot(q, u, m) - log_s
    div = s_pp - s_pq + s_qq - s_qp
    # the lp term as (alpha - 1) * u, its -(alpha - 1) * lse folded into the per-row constant
    const = ((1 - alpha) * s_pp + alpha * (s_pq + 1) - (alpha - 1) * lse).unsqueeze(-1)
    g = lq.mul_(-alpha) if inplace else lq.mul(-alpha)
    if alpha != 1:
        g.add_(u, alpha=alpha - 1)
    g.add_(const).mul_(p).sub_(q, alpha=alpha)
    return -s_pp + alpha * div, g, {"objective": -s_pp, "divergence": div, "entropy": -s_qq}


@torch.no_grad()
def confidence_rows(online_logits, objective: str = "entropy"):
    """(per-row confidence term, its gradient w.r.t. the online logits), closed form."""
    lp = log_softmax_rows(online_logits.float())
    return FAST_OBJECTIVES[objective](lp, lp.exp(), inplace=True)


@torch.no_grad()
def zerosiam_rows(online_logits, target_logp, alpha=1.0, divergence="sym_kl", objective="entropy", target_p=None,
                  inplace=False):
    """Closed-form `zerosiam_token_loss`: returns (loss (c,), grad w.r.t. online logits (c, V),
    extras). `target_logp` are the target branch's log-probabilities (already detached);
    `target_p`, their exponent, when the caller has it; `inplace`: `target_logp` is scratch and
    may be overwritten (the default pair builds the gradient in it). The default pair
    (entropy, sym_kl) takes a fused path; extras then include the target's entropy."""
    u = online_logits.float()
    if alpha != 0 and objective == "entropy" and divergence == "sym_kl":
        q = target_logp.exp() if target_p is None else target_p
        return _fused_entropy_sym_kl(u, target_logp, q, alpha, inplace)
    lp = log_softmax_rows(u)
    p = lp.exp()
    if alpha == 0:  # the target branch does not enter
        conf, g = FAST_OBJECTIVES[objective](lp, p, inplace=True)
        return conf, g, {"objective": conf, "divergence": torch.zeros_like(conf)}
    q = target_logp.exp() if target_p is None else target_p
    div, gd = FAST_DIVERGENCES[divergence](lp, p, target_logp, q)
    conf, g = FAST_OBJECTIVES[objective](lp, p, inplace=True)  # lp is ours and no longer needed
    return conf + alpha * div, g.add_(gd, alpha=alpha), {"objective": conf, "divergence": div}


# ---------------------------------------------------------------------------------------
# token filters (SAR, EATA): weights per row from the target's entropy


def sar_weights(target_logits: torch.Tensor, margin: float = 0.4) -> torch.Tensor:
    """SAR's reliable-sample filter: 1 where entropy < margin * ln K, else 0. (..., V) -> (...).
    Log-probabilities work as well as logits (softmax is shift-invariant)."""
    ent = entropy(target_logits.detach())
    return (ent < margin * math.log(target_logits.shape[-1])).float()


def eata_weights(target_logits: torch.Tensor, margin: float = 0.4, ent: torch.Tensor | None = None) -> torch.Tensor:
    """EATA's entropy weighting: exp(-(H - H0)) on rows with H < H0 = margin * ln K, else 0.
    Log-probabilities work as well as logits; `ent`, the rows' entropy when the caller has it."""
    ent = entropy(target_logits.detach()) if ent is None else ent
    h0 = margin * math.log(target_logits.shape[-1])
    return torch.where(ent < h0, torch.exp(h0 - ent), torch.zeros_like(ent))


def eata_redundant(probs: torch.Tensor, mean_probs: torch.Tensor, d_margin: float) -> torch.Tensor:
    """EATA's redundancy test: |cos(p, m)| >= d_margin, p each row's probabilities (c, V), m the
    moving mean of the probabilities of the rows selected before (V,). (c, V) -> (c,) bool."""
    cos = _dot(probs, mean_probs.expand_as(probs)) / (probs.norm(dim=-1) * mean_probs.norm()).clamp(min=1e-8)
    return cos.abs() >= d_margin


# ---------------------------------------------------------------------------------------
# DeYO (Lee et al., ICLR 2024; Jhyun17/DeYO `forward_and_adapt_deyo`): an entropy filter,
# then a filter on the pseudo-label probability difference (PLPD) between a sample and its
# object-destroying transformation, and a weight from both. Pure functions of per-row values,
# so each path brings its own entropy (softmax, opinion) and its own transformation (image
# patches, token order). Thresholds are fractions of ln K, as in the official `main.py`.


def deyo_entropy_mask(ent: torch.Tensor, log_k: float, margin: float = 0.5) -> torch.Tensor:
    """DeYO's first filter: rows with entropy < margin * ln K (official `deyo_margin` 0.5). (...) -> (...) bool.
    Only these rows need the transformed forward."""
    return ent.detach() < margin * log_k


def plpd(logits: torch.Tensor, transformed_logits: torch.Tensor) -> torch.Tensor:
    """Pseudo-label probability difference per row: p(y_hat | x) - p(y_hat | x'), y_hat the argmax of
    softmax(logits), x' the transformed input. (..., K), (..., K) -> (...), in [-1, 1], detached."""
    p = F.softmax(logits.detach().float(), -1)
    p_t = F.softmax(transformed_logits.detach().float(), -1)
    y_hat = p.argmax(-1, keepdim=True)
    return (p.gather(-1, y_hat) - p_t.gather(-1, y_hat)).squeeze(-1)


def deyo_weights(ent: torch.Tensor, drop: torch.Tensor, log_k: float, margin: float = 0.5,
                 margin_e0: float = 0.4, plpd_threshold: float = 0.2, reweight_ent: bool = True,
                 reweight_plpd: bool = True) -> torch.Tensor:
    """DeYO's per-row coefficient, 0 off the selection. (...), (...) -> (...).

    Selected: entropy < margin * ln K and PLPD (`drop`) > plpd_threshold (official 0.5, 0.2).
    Coefficient: reweight_ent * exp(E0 - H) + reweight_plpd * exp(PLPD), E0 = margin_e0 * ln K
    (official 0.4); 1 when neither reweighting is on. The official loss is the mean of
    coefficient * entropy over the selected rows (`_selected_mean`-style), with no step when
    none is selected. `drop` may hold anything (NaN) on rows the entropy filter drops.
    """
    ent, drop = ent.detach().float(), drop.detach().float()
    keep = deyo_entropy_mask(ent, log_k, margin) & (drop > plpd_threshold)
    coeff = torch.zeros_like(ent)
    if reweight_ent:
        coeff = coeff + torch.exp(margin_e0 * log_k - ent)
    if reweight_plpd:
        coeff = coeff + torch.exp(drop)
    if not (reweight_ent or reweight_plpd):
        coeff = torch.ones_like(ent)
    return torch.where(keep, coeff, torch.zeros_like(ent))


# ---------------------------------------------------------------------------------------
# baselines' own per-row losses, as their official code computes them (constants included):
# a reference form (autograd) and a closed form, tested against each other and against a
# transcription of the official code (tests/test_official_baselines.py)


def opinion_entropy(logits: torch.Tensor, evidence: float | None = None, eps: float = 1e-7,
                    tau: float = 1.0) -> torch.Tensor:
    """COME's entropy of the (K+1)-way opinion, per row. (..., K) -> (...).

    The logits keep their value but their norm is detached (gradients only turn their
    direction); `tau` rescales them (1 in the official code). Evidence e_k = exp(logit_k),
    S = sum e_k; belief b_k = e_k / (S + C), uncertainty u = C / (S + C), C = `evidence`
    (None: the number of classes K); the entropy is of (b, u) + eps, eps inside the log too.
    Computed in log space, so large logits do not overflow exp().
    """
    x = logits.float()
    norm = x.norm(dim=-1, keepdim=True)
    x = tau * x / norm.clamp(min=1e-12) * norm.detach()
    log_c = torch.full_like(x[..., :1], math.log(x.shape[-1] if evidence is None else evidence))
    log_z = torch.logsumexp(torch.cat([x, log_c], -1), -1, keepdim=True)  # log(S + C)
    q = torch.cat([x - log_z, log_c - log_z], -1).exp() + eps  # (..., K+1)
    return -(q * q.log()).sum(-1)


@torch.no_grad()
def opinion_entropy_rows(logits: torch.Tensor, evidence: float | None = None, eps: float = 1e-7,
                         tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form `opinion_entropy`: (value (c,), d value / d logits (c, K)).

    With q = (b, u) + eps and g = d H / d q = -(log q + 1), the softmax over [y, log C]
    (y = tau * logits) gives dH/dy_k = -b_k (log q_k - sum_j b_j log q_j), the sum over all
    K + 1 entries; the detached norm then removes the component along the logits:
    dH/dx = tau * (G - x_hat (x_hat . G))."""
    x = logits.float()
    y = x * tau if tau != 1 else x
    log_c = math.log(x.shape[-1] if evidence is None else evidence)
    log_z = torch.logaddexp(torch.logsumexp(y, -1), torch.tensor(log_c, device=x.device))  # (c,) log(S + C)
    log_u = log_c - log_z  # (c,)
    b = (y - log_z.unsqueeze(-1)).exp_()  # (c, K) beliefs
    lq = b.add(eps).log_()  # (c, K) log q
    u = log_u.exp()  # (c,) uncertainty mass
    lqu = (u + eps).log()
    s_bq = _dot(b, lq)
    value = -(s_bq + eps * lq.sum(-1)) - (u + eps) * lqu
    mean = s_bq + u * lqu  # sum_j b_j log q_j over the K + 1 entries
    g = lq.sub_(mean.unsqueeze(-1)).mul_(b).neg_()  # (c, K) dH/dy, built in lq
    sq = (x * x).sum(-1).clamp(min=1e-24)
    g.addcmul_(x, (_dot(x, g) / sq).unsqueeze(-1), value=-1.0)  # drop the part along x (detached norm)
    return value, g.mul_(tau) if tau != 1 else g


def _eps_entropy(lp: torch.Tensor, p: torch.Tensor, eps: float) -> torch.Tensor:
    # -sum p * log(p + eps): EM-INF's entropy, eps inside the log as in its code
    return -_dot(p, p.add(eps).log_())


def eminf_loss(logits: torch.Tensor, logp0: torch.Tensor, kl_weight: float = 0.05,
               eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """EM-INF's objective on one decoding step's logits, per row: `H_eps(p) + kl_weight * KL(p0 || p)`,
    p = softmax(logits) at temperature 1, H_eps = -sum p log(p + eps), p0 the logits' starting
    distribution (`logp0`, its log, detached). (..., V) -> (loss (...), H_eps (...))."""
    lp = _log_softmax(logits)
    p = lp.exp()
    h = -(p * (p + eps).log()).sum(-1)
    lp0 = logp0.detach().float()
    return h + kl_weight * (lp0.exp() * (lp0 - lp)).sum(-1), h


@torch.no_grad()
def eminf_rows(logits: torch.Tensor, logp0: torch.Tensor, kl_weight: float = 0.05,
               eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form `eminf_loss`: (loss (c,), H_eps (c,), d loss / d logits (c, V)).
    dH_eps/dp = -(log(p + eps) + p / (p + eps)) taken through the softmax; d KL(p0||p) / d logits = p - p0."""
    lp = log_softmax_rows(logits.float())
    p = lp.exp()
    lq = p.add(eps).log_()  # (c, V) log(p + eps)
    h = -_dot(p, lq)
    p0 = logp0.float().exp()
    kl = _dot(p0, logp0.float() - lp)
    g = lq.add_(p / (p + eps)).neg_()  # (c, V) dH/dp
    g = _through_softmax(p, g)
    return h + kl_weight * kl, h, g.add_(p.sub_(p0), alpha=kl_weight)


# ---------------------------------------------------------------------------------------
# chunked head + loss

# token_loss(online_logits (c, V) fp32, target_logp (c, V) fp32 detached, labels (c,) | None,
#            target_p (c, V), the exponent of target_logp)
#   -> (loss (c,), weight (c,) | None, extras {name: (c,)})            autograd on the loss
#   or (loss (c,), weight (c,) | None, extras, grad (c, V))             closed-form gradient
# target_logp are the target branch's log-probabilities; without a predictor (z_target None)
# they equal the online branch's, detached. target_logp is the caller's scratch: nothing reads
# it after the call, so a method may overwrite it (after reading what it needs from it, its
# weights included), e.g. to return its gradient in that storage. target_p is read afterwards
# and must stay intact.
TokenLoss = Callable[..., tuple]


def logit_stats(logits: torch.Tensor, logp: torch.Tensor | None = None, probs: torch.Tensor | None = None,
                skip: Iterable[str] = (), lse: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Collapse diagnostics per row of (c, V) logits: entropy, max-probability, L2 norm raw
    and centered. The raw norm is dominated by an offset shared by the whole vocabulary;
    the centered one (mean logit removed) tracks how far the logits spread. `logp`/`probs`
    reuse what the caller computed, or `probs` with `lse` (the rows' log-sum-exp) when the
    log-probabilities are gone; names in `skip` are not computed (the caller has them)."""
    logits = logits.float()
    if logp is None and (lse is None or probs is None):
        logp = log_softmax_rows(logits)
    out = {}
    if "entropy" not in skip:
        if logp is not None:
            out["entropy"] = -_dot(logp.exp() if probs is None else probs, logp)
        else:  # H = lse - sum(p * u), since log p = u - lse and sum(p) = 1
            out["entropy"] = lse - _dot(probs, logits)
    out["max_prob"] = (logp.amax(-1) if logp is not None else logits.amax(-1) - lse).exp()
    out["logit_norm"] = logits.norm(dim=-1)
    # subtracted, not |u|^2 - V mean^2: the shared offset dominates |u|^2 and fp32 sums lose it
    out["logit_norm_centered"] = (logits - logits.mean(-1, keepdim=True)).norm(dim=-1)
    return out


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum_i w_i * loss_i / sum_i w_i over rows of hidden states, one chunk of rows at a time.

    Forward computes each chunk's logits, loss and the gradient with respect to that chunk's
    online hidden states, keeps only that (N, H) gradient, and frees the logits. Backward
    scales the stored gradient. The head's own parameters must be frozen.
    """

    @staticmethod
    def forward(ctx, z_online, z_target, target_logits, mask, labels, head_fn, token_loss, chunk_size, stats_out):
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
                uo = head_fn(zo)  # (c, V)
                uo32 = uo.float()
            with torch.no_grad():
                if target_logits is not None:
                    ur = target_logits[s:e].to(uo32.device, torch.float32)
                elif z_target is not None:
                    ur = head_fn(z_target[s:e]).float()
                else:
                    ur = uo32.detach()
                lr, lse = _log_softmax_lse(ur)  # lse for the statistics: token_loss may overwrite lr
                qr = lr.exp()
            with torch.enable_grad():  # autograd.Function.forward runs with grad mode off
                out = token_loss(uo32, lr, None if labels is None else labels[s:e], qr)
                loss, weight, extras = out[:3]
                uniform = weight is None and mask is None
                w = torch.ones_like(loss) if weight is None else weight.detach().float()
                if mask is not None:
                    w = w * mask[s:e].float()
                if len(out) == 4:  # closed-form gradient w.r.t. the online logits
                    chunk_loss = (loss.detach() * w).sum()
                    if need_grad:
                        gu = (out[3] if uniform else out[3] * w.unsqueeze(-1)).to(uo.dtype)
                        (g,) = torch.autograd.grad(uo, zo, grad_outputs=gu)
                        grad[s:e] = g.float()
                else:
                    chunk_loss = (loss * w).sum()
                    if need_grad and chunk_loss.requires_grad:
                        (g,) = torch.autograd.grad(chunk_loss, zo)
                        grad[s:e] = g.float()
            loss_sum += chunk_loss.detach()
            weight_sum += w.sum()
            with torch.no_grad():
                rows = {**logit_stats(ur, probs=qr, lse=lse, skip=extras), **extras}
                valid = torch.ones_like(w) if mask is None else mask[s:e].float()
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
        return (grad_out * grad).to(ctx.in_dtype), None, None, None, None, None, None, None, None


def head_loss(
    z_online: torch.Tensor,
    z_target: torch.Tensor | None,
    head_fn: Callable[[torch.Tensor], torch.Tensor],
    token_loss: TokenLoss,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    chunk_size: int = 512,
    stats: dict | None = None,
    target_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss from hidden states through a frozen head, computed in chunks of rows.

    z_online: (N, H), carries gradients (predictor output, or the hidden state itself);
    z_target: (N, H) or None (the target branch equals the online one, detached);
    target_logits: (N, V), the target branch's logits already computed (the draft's, when the
    state has not changed since it was generated): used instead of the head on z_target, which
    saves one head matmul per chunk;
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
    if target_logits is not None:
        if target_logits.dim() != 2 or target_logits.shape[0] != z_online.shape[0]:
            raise ValueError(f"target_logits must be (N, V) with N = {z_online.shape[0]} rows of z_online, got shape "
                             f"{tuple(target_logits.shape)}")
        target_logits = target_logits.detach()
    return _ChunkedHeadLoss.apply(z_online, z_target, target_logits, mask, labels, head_fn, token_loss, chunk_size,
                                  stats)
