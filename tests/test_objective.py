import math

import pytest
import torch

from zs_llm.objective import (
    DIVERGENCES,
    FAST_DIVERGENCES,
    FAST_OBJECTIVES,
    OBJECTIVES,
    confidence_rows,
    divergence,
    entropy,
    head_loss,
    logit_stats,
    zerosiam_loss,
    zerosiam_rows,
    zerosiam_token_loss,
)

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)


def ref_loss(uo, ur, alpha, div):
    """Hand-written reference, row by row, in float64."""
    total = 0.0
    for a, b in zip(uo.double().tolist(), ur.double().tolist()):
        za, zb = sum(math.exp(x) for x in a), sum(math.exp(x) for x in b)
        p = [math.exp(x) / za for x in a]
        q = [math.exp(x) / zb for x in b]
        h = -sum(pi * math.log(pi) for pi in p)
        kl_pq = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        kl_qp = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
        m = [(pi + qi) / 2 for pi, qi in zip(p, q)]
        d = {
            "kl": kl_pq,
            "rkl": kl_qp,
            "sym_kl": kl_pq + kl_qp,
            "js": 0.5 * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m))
            + 0.5 * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m)),
            "mse": sum((pi - qi) ** 2 for pi, qi in zip(p, q)),
        }[div]
        total += h + alpha * d
    return total / len(uo)


@pytest.mark.parametrize("div", sorted(DIVERGENCES))
@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.5])
def test_loss_matches_hand_computed(div, alpha):
    torch.manual_seed(1)
    uo, ur = torch.randn(4, 7), torch.randn(4, 7)
    got = zerosiam_loss(uo, ur, alpha=alpha, divergence=div)
    assert got.item() == pytest.approx(ref_loss(uo, ur, alpha, div), rel=1e-5, abs=1e-6)


def test_entropy_of_uniform_and_onehot():
    assert entropy(torch.zeros(3, 10)).tolist() == pytest.approx([math.log(10)] * 3)
    assert entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_mask_excludes_rows():
    torch.manual_seed(0)
    uo, ur = torch.randn(5, 6), torch.randn(5, 6)
    mask = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    assert zerosiam_loss(uo, ur, mask).item() == pytest.approx(zerosiam_loss(uo[mask], ur[mask]).item(), rel=1e-6)


def test_no_gradient_reaches_target_branch():
    uo = torch.randn(3, 5, requires_grad=True)
    ur = torch.randn(3, 5, requires_grad=True)
    zerosiam_loss(uo, ur).backward()
    assert ur.grad is None
    assert uo.grad is not None and uo.grad.abs().sum() > 0


def test_constant_onehot_online_branch_gets_positive_alignment():
    # an online branch that already puts all mass on one token has ~zero entropy, so pure
    # entropy minimisation is satisfied; the alignment term must still be strictly positive
    online = torch.full((4, 6), -30.0)
    online[:, 2] = 30.0
    target = torch.randn(4, 6)
    for div in DIVERGENCES:
        _, extras = zerosiam_token_loss(online, target, divergence=div)
        assert (extras["divergence"] > 1e-3).all(), div
        assert (extras["objective"] < 1e-6).all()


def test_alignment_vanishes_at_identity():
    u = torch.randn(3, 8)
    for div in DIVERGENCES:
        assert divergence(u, u, div).abs().max() < 1e-6


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_loss_and_grads_equal_unchunked(objective, chunk):
    torch.manual_seed(0)
    n, h, v = 11, 6, 13
    head = torch.nn.Linear(h, v, bias=True).requires_grad_(False)
    pred = torch.nn.Linear(h, h, bias=False)
    with torch.no_grad():
        pred.weight.copy_(torch.eye(h) + 0.1 * torch.randn(h, h))
    z = torch.randn(n, h)
    mask = torch.rand(n) > 0.3

    def run(chunked):
        pred.zero_grad()
        zz = z.clone().requires_grad_(True)
        if chunked:
            def tl(uo, ur, labels, target_p=None):
                return zerosiam_token_loss(uo, ur, objective=objective)[0], None, {}

            loss = head_loss(pred(zz), zz, head, tl, mask=mask, chunk_size=chunk)
        else:
            loss = zerosiam_loss(head(pred(zz)), head(zz), mask=mask, objective=objective)
        loss.backward()
        return loss.detach(), zz.grad.clone(), pred.weight.grad.clone()

    a, b = run(True), run(False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_head_loss_weights_and_stats():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 9).requires_grad_(False)
    z = torch.randn(6, 4)
    w = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 0.0])
    stats = {}

    def tl(uo, ur, labels, target_p=None):
        return entropy(uo), w[: len(uo)] if len(uo) == 6 else None, {}

    got = head_loss(z, None, head, tl, chunk_size=6, stats=stats)
    ent = entropy(head(z))
    assert got.item() == pytest.approx(((ent * w).sum() / w.sum()).item(), rel=1e-6)
    assert stats["tokens"] == 6 and stats["tokens_selected"] == 3
    assert stats["entropy"] == pytest.approx(ent.mean().item(), rel=1e-5)
    u = head(z)
    assert stats["max_prob"] == pytest.approx(u.softmax(-1).amax(-1).mean().item(), rel=1e-5)
    assert stats["logit_norm"] == pytest.approx(u.norm(dim=-1).mean().item(), rel=1e-5)
    centered = (u - u.mean(-1, keepdim=True)).norm(dim=-1).mean().item()
    assert stats["logit_norm_centered"] == pytest.approx(centered, rel=1e-5)


def test_centered_norm_survives_a_large_shared_offset():
    """A shared offset much larger than the spread must not eat the centered norm."""
    torch.manual_seed(1)
    u = 2 * torch.randn(3, 50000) + 40.0
    got = logit_stats(u)["logit_norm_centered"]
    torch.testing.assert_close(got, (u - u.mean(-1, keepdim=True)).norm(dim=-1), rtol=1e-4, atol=0)


@pytest.mark.parametrize("method", ["tent", "come", "sar", "zerosiam", "zerosiam:alpha=0.3", "zerosiam:divergence=js",
                                    "zerosiam+eata"])
def test_loop_statistics_are_the_target_branchs(method):
    """Whatever a method's loss hands back for reuse, the logged statistics are those of the
    target logits computed directly."""
    from zs_llm import METHODS, AdaptConfig

    cfg = AdaptConfig.from_spec(method)
    m = METHODS[cfg.method](cfg)
    torch.manual_seed(2)
    head = torch.nn.Linear(5, 13).requires_grad_(False)
    z = torch.randn(7, 5)
    pred = torch.eye(5) + 0.3 * torch.randn(5, 5)
    stats = {}
    zo = (z @ pred.T if m.uses_predictor else z).requires_grad_(True)
    head_loss(zo, z if m.uses_predictor else None, head, m.token_loss, chunk_size=3, stats=stats)
    ref = {k: v.mean().item() for k, v in logit_stats(head(z)).items()}
    for k, v in ref.items():
        assert stats[k] == pytest.approx(v, rel=1e-5), k


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="sym_kl"):
        zerosiam_loss(torch.randn(2, 3), torch.randn(2, 3), divergence="nope")
    with pytest.raises(ValueError, match="entropy"):
        zerosiam_loss(torch.randn(2, 3), torch.randn(2, 3), objective="nope")


@pytest.mark.parametrize("div", sorted(FAST_DIVERGENCES))
@pytest.mark.parametrize("objective", sorted(FAST_OBJECTIVES))
@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_closed_form_gradients_equal_autograd(div, objective, alpha):
    # the fp32 closed form against autograd on the reference in float64 (an fp32 autograd reference
    # carries its own rounding, amplified where slr's 1 / (1 - p) is large)
    torch.manual_seed(3)
    uo = 3 * torch.randn(5, 11)
    ur = 3 * torch.randn(5, 11)
    uo64 = uo.double().requires_grad_(True)
    ref, ref_extras = zerosiam_token_loss(uo64, ur.double(), alpha, div, objective)
    ref.sum().backward()
    loss, grad, extras = zerosiam_rows(uo, torch.log_softmax(ur, -1), alpha, div, objective)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), uo64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(extras["divergence"].double(), ref_extras["divergence"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", sorted(FAST_OBJECTIVES))
def test_closed_form_confidence_equals_autograd(objective):
    torch.manual_seed(4)
    u = (2 * torch.randn(4, 9)).requires_grad_(True)
    from zs_llm.objective import confidence_objective

    confidence_objective(u, objective).sum().backward()
    value, grad = confidence_rows(u.detach(), objective)
    torch.testing.assert_close(value, confidence_objective(u.detach(), objective), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, u.grad, rtol=1e-4, atol=1e-6)


def test_chunked_closed_form_path_equals_unchunked_autograd():
    from zs_llm import METHODS, AdaptConfig

    torch.manual_seed(5)
    head = torch.nn.Linear(6, 17).requires_grad_(False)
    z = torch.randn(9, 6)
    pred = torch.eye(6) + 0.2 * torch.randn(6, 6)
    method = METHODS["zerosiam"](AdaptConfig())
    za = z.clone().requires_grad_(True)
    la = head_loss(za @ pred.T, za, head, method.token_loss, chunk_size=4)
    la.backward()
    zb = z.clone().requires_grad_(True)
    lb = zerosiam_loss(head(zb @ pred.T), head(zb))
    lb.backward()
    torch.testing.assert_close(la.detach(), lb.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-4, atol=1e-6)


def test_logit_stats_on_batched_rows_equal_flat_rows():
    torch.manual_seed(6)
    u = 3 * torch.randn(2, 3, 11)
    got, flat = logit_stats(u), logit_stats(u.reshape(6, 11))
    for k in flat:
        torch.testing.assert_close(got[k].reshape(6), flat[k])
    torch.testing.assert_close(got["entropy"], entropy(u))


def test_head_loss_from_known_target_logits_equals_recomputed():
    """Target logits given up front (the draft's) give the same loss, stats and gradients as the
    head applied to z_target, and the head runs only on the online rows."""
    from zs_llm import METHODS, AdaptConfig

    torch.manual_seed(0)
    w = torch.randn(40, 8)
    calls = []

    def head(x):
        calls.append(x.shape[0])
        return x @ w.T

    m = METHODS["zerosiam"](AdaptConfig())
    z = torch.randn(10, 8)
    pred = torch.eye(8) + 0.1 * torch.randn(8, 8)
    out = {}
    for known in (False, True):
        zo = z.clone().requires_grad_(True)
        stats = {}
        calls.clear()
        target = (z @ w.T) if known else None
        loss = head_loss(zo @ pred.T, z, head, m.token_loss, chunk_size=4, stats=stats, target_logits=target)
        loss.backward()
        out[known] = (loss.detach(), zo.grad.clone(), stats, list(calls))
    torch.testing.assert_close(out[True][0], out[False][0])
    torch.testing.assert_close(out[True][1], out[False][1])
    assert out[True][2] == pytest.approx(out[False][2])
    assert out[False][3] == [4, 4, 4, 4, 2, 2] and out[True][3] == [4, 4, 2]
    with pytest.raises(ValueError, match="target_logits"):
        head_loss(z @ pred.T, z, head, m.token_loss, target_logits=torch.zeros(9, 40))


@pytest.mark.parametrize("div,objective,alpha", [("sym_kl", "entropy", 1.0), ("sym_kl", "entropy", 0.3),
                                                 ("js", "entropy", 1.0), ("sym_kl", "slr", 1.0),
                                                 ("kl", "entropy", 0.0)])
def test_inplace_rows_equal_allocating_rows_and_only_touch_the_scratch(div, objective, alpha):
    """With inplace=True the result is the same; the online logits and the target
    probabilities are left as they were (only target_logp, the scratch, may change)."""
    torch.manual_seed(7)
    uo, lq = 3 * torch.randn(6, 23), torch.log_softmax(3 * torch.randn(6, 23), -1)
    q = lq.exp()
    want = zerosiam_rows(uo, lq.clone(), alpha, div, objective, q.clone())
    uo0, q0, scratch = uo.clone(), q.clone(), lq.clone()
    got = zerosiam_rows(uo, scratch, alpha, div, objective, q, inplace=True)
    assert torch.equal(uo, uo0) and torch.equal(q, q0)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for k in want[2]:
        torch.testing.assert_close(got[2][k], want[2][k])


def test_logit_stats_from_probs_and_lse_equal_from_logp():
    torch.manual_seed(8)
    u = 4 * torch.randn(5, 31) + 12.0
    lp = torch.log_softmax(u, -1)
    ref = logit_stats(u)
    got = logit_stats(u, probs=lp.exp(), lse=torch.logsumexp(u, -1))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5)


# --- a 262,144-token vocabulary (Gemma 3) ---------------------------------------------------------
# Each fp32 result against float64 on the same fp32 inputs, within a bound derived from fp32's unit
# roundoff u = 2^-24 (never from one machine's figures): a row sum of V terms through a reduction
# tree of depth d = log2 V + 1 is off by at most about d * u * (the sum of |terms|); a log-sum-exp
# is off by u * (d + |lse|) (the relative error of its sum, then the rounding of m + log); each
# log-probability inherits that, and the terms' probabilities the same relative error. So a row of
# log-probability dot products with |terms| summing to S is off by at most u * (d + |lse|) * (1 + S),
# the log-sum-exps of both branches counted; a factor 4 covers the few roundings per term.
# The blocked reductions pass with room to spare; one matrix product per row (the former `_dot`) or
# F.log_softmax's sum miss this bound by about ten times at this size.
GEMMA_V = 262_144
U32 = 2.0**-24


def gemma_rows(seed=0, offset=30.0):
    """(4, V) fp32 logits from flat to peaked, with an offset shared by the vocabulary (as real heads
    give), and a target branch near them."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 3.0, 8.0, 20.0]).unsqueeze(-1)
    uo = torch.randn(4, GEMMA_V, generator=g) * scales + offset
    ur = uo + 0.3 * torch.randn(4, GEMMA_V, generator=g)
    return uo, ur


def bound(v, lse_abs, scale):
    """4 u (log2 V + 1 + |lse|) (1 + scale), per row."""
    return 4 * U32 * (math.log2(v) + 1 + lse_abs) * (1 + scale)


def within(got, ref, tol, what):
    err = (got.double() - ref).abs()
    worst = int((err - tol).argmax())
    assert bool((err <= tol).all()), f"{what}: row {worst} off by {float(err[worst]):.3g} > bound {float(tol[worst]):.3g}"


def test_dot_at_262k_columns_within_the_log_depth_bound():
    from zs_llm.objective import _dot

    uo, _ = gemma_rows()
    p = torch.softmax(uo.double(), -1).float()
    terms = p.double() * uo.double()
    within(_dot(p, uo), terms.sum(-1), 4 * U32 * (math.log2(GEMMA_V) + 1) * terms.abs().sum(-1), "dot")
    m = uo.amax(-1)
    shifted = p.double() * (uo.double() - m.double().unsqueeze(-1))
    # shifted: the bound scales with |u - max|, not with the offset
    within(_dot(p, uo, m), shifted.sum(-1), 4 * U32 * (math.log2(GEMMA_V) + 2) * shifted.abs().sum(-1), "shifted dot")
    # an expanded operand (EATA's moving mean) reads the same
    mean = p.mean(0)
    within(_dot(p, mean.expand_as(p)), (p.double() * mean.double()).sum(-1),
           4 * U32 * (math.log2(GEMMA_V) + 1) * (p.double() * mean.double()).sum(-1), "expanded dot")


def test_logsumexp_rows_at_262k_columns_within_the_bound():
    from zs_llm.objective import logsumexp_rows

    uo, _ = gemma_rows()
    ref = torch.logsumexp(uo.double(), -1)
    within(logsumexp_rows(uo), ref, bound(GEMMA_V, ref.abs(), 0.0), "logsumexp")
    rows = torch.full((2, 40_000), float("-inf"))
    rows[1, 7] = 2.0
    assert logsumexp_rows(rows).tolist() == [float("-inf"), 2.0]


def _ref64(uo, ur):
    lp, lq = torch.log_softmax(uo.double(), -1), torch.log_softmax(ur.double(), -1)
    return lp, lp.exp(), lq, lq.exp(), torch.logsumexp(uo.double(), -1), torch.logsumexp(ur.double(), -1)


def test_closed_form_entropy_and_zerosiam_at_262k_within_the_bound():
    from zs_llm.objective import log_softmax_rows

    uo, ur = gemma_rows()
    lp, p, lq, q, lse_o, lse_r = _ref64(uo, ur)
    # Tent's entropy and its gradient (-p (log p + H))
    h_ref = -(p * lp).sum(-1)
    tol_h = bound(GEMMA_V, lse_o.abs(), h_ref)
    h, g = confidence_rows(uo)
    within(h, h_ref, tol_h, "entropy")
    g_ref = -p * (lp + h_ref.unsqueeze(-1))
    g_scale = (p * (2 + lp.abs() + h_ref.unsqueeze(-1))).amax(-1)
    within((g.double() - g_ref).abs().amax(-1), torch.zeros(4, dtype=torch.float64), tol_h * g_scale, "entropy grad")
    # ZeroSiam's fused H(p) + sym KL(p, sg q), from the target's log-probabilities as the loop gives them
    ref_o = uo.double().requires_grad_(True)
    ref_loss, _ = zerosiam_token_loss(ref_o, ur.double())
    ref_loss.sum().backward()
    scale = ((p + q) * (lp.abs() + lq.abs())).sum(-1)
    tol = bound(GEMMA_V, lse_o.abs() + lse_r.abs(), scale)
    loss, grad, extras = zerosiam_rows(uo, log_softmax_rows(ur))
    within(loss, ref_loss.detach(), tol, "zerosiam loss")
    within(extras["entropy"], -(q * lq).sum(-1), bound(GEMMA_V, lse_r.abs(), -(q * lq).sum(-1)), "target entropy")
    g_scale = ((p + q) * (2 + lp.abs() + lq.abs() + scale.unsqueeze(-1))).amax(-1)
    within((grad.double() - ref_o.grad).abs().amax(-1), torch.zeros(4, dtype=torch.float64), tol * g_scale,
           "zerosiam grad")
    # the statistics' entropy (logit_stats) on the target logits
    within(logit_stats(ur)["entropy"], -(q * lq).sum(-1), bound(GEMMA_V, lse_r.abs(), -(q * lq).sum(-1)),
           "stats entropy")


@pytest.mark.parametrize("method", ["tent", "zerosiam"])
def test_chunked_head_loss_at_262k_within_the_bound(method):
    """The loop's path: the chunked head loss (an identity head, so the logits are the hidden states),
    the target branch given as known logits (ZeroSiam's draft) or equal to the online one (Tent)."""
    from zs_llm import METHODS, AdaptConfig

    uo, ur = gemma_rows(seed=1)
    if method == "tent":
        ur = uo
    m = METHODS[method](AdaptConfig.from_spec(method))
    z = uo.clone().requires_grad_(True)
    stats = {}
    loss = head_loss(z, None, lambda h: h, m.token_loss, chunk_size=3, stats=stats,
                     target_logits=None if method == "tent" else ur)
    loss.backward()
    ref_o = uo.double().requires_grad_(True)
    lp, p, lq, q, lse_o, lse_r = _ref64(uo, ur)
    if method == "tent":
        ref = (-(torch.softmax(ref_o, -1) * torch.log_softmax(ref_o, -1)).sum(-1)).mean()
        scale = -(p * lp).sum(-1)
        lse_abs = lse_o.abs()
    else:
        ref = zerosiam_token_loss(ref_o, ur.double())[0].mean()
        scale = ((p + q) * (lp.abs() + lq.abs())).sum(-1)
        lse_abs = lse_o.abs() + lse_r.abs()
    ref.backward()
    tol = bound(GEMMA_V, lse_abs, scale)
    within(loss.detach().reshape(1), ref.detach().reshape(1), tol.max().reshape(1), f"{method} loss")
    g_scale = ((p + q) * (2 + lp.abs() + lq.abs() + scale.unsqueeze(-1))).amax(-1) / 4  # the mean over 4 rows
    within((z.grad.double() - ref_o.grad).abs().amax(-1), torch.zeros(4, dtype=torch.float64), tol * g_scale,
           f"{method} grad")
    h_q = float(-(q * lq).sum(-1).mean())
    assert abs(stats["entropy"] - h_q) <= float(bound(GEMMA_V, lse_r.abs().max(), h_q)), (stats["entropy"], h_q)


def test_blocked_reductions_carry_gradients_when_asked():
    from zs_llm.objective import ROW_BLOCK, _dot, logsumexp_rows

    torch.manual_seed(0)
    v = 2 * ROW_BLOCK + 5  # two full blocks and a ragged one
    a, b = torch.randn(3, v, dtype=torch.float64, requires_grad=True), torch.randn(3, v, dtype=torch.float64)
    shift = torch.randn(3, dtype=torch.float64)
    (_dot(a, b, shift).sum() + logsumexp_rows(a).sum()).backward()
    want = (b - shift.unsqueeze(-1)) + torch.softmax(a.detach(), -1)
    torch.testing.assert_close(a.grad, want)
    with torch.no_grad():
        torch.testing.assert_close(_dot(a, b, shift), (a * (b - shift.unsqueeze(-1))).sum(-1))
        torch.testing.assert_close(logsumexp_rows(a), torch.logsumexp(a, -1))
