"""EATA, DeYO and ZeroSiam+DeYO against their official code, transcribed here independently (the
style and helpers of tests/test_official_baselines.py).

The transcriptions restate, in float64 with autograd, what mr-eggplant/EATA `eata.py`
(`forward_and_adapt_eata`, `update_model_probs`; the `eta` algorithm, without the Fisher term)
and Jhyun17/DeYO `methods/deyo.py` (`forward_and_adapt_deyo`) compute: one batch's loss and
gradient, and a few full steps of their update loop (SGD momentum 0.9) on logits x + b. A token
row stands for an image; DeYO's transformed input enters as its logits x' (the official code's
`model(x_prime)`), which on our side come from the prompt-shuffled sequence.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from test_official_baselines import SCALES, SIZES, BiasLM, close, entropy64, method, official, ours, rel, rows

from zs_llm.adapt import adapt_on_problem, adapt_step
from zs_llm.methods import LossBatch
from zs_llm.methods.deyo import shuffle_prompt

pytestmark = pytest.mark.numerical


def gap_midpoint(values, first_wider_than=None):
    """A threshold halfway across the widest gap between sorted `values` (or the first gap wider
    than `first_wider_than`): far from each, so fp32 and float64 agree on which side every value
    falls."""
    v = sorted(float(x) for x in values)
    gaps = range(len(v) - 1)
    i = (max(gaps, key=lambda k: v[k + 1] - v[k]) if first_wider_than is None
         else next(k for k in gaps if v[k + 1] - v[k] > first_wider_than))
    return (v[i] + v[i + 1]) / 2


# --- EATA --------------------------------------------------------------------------------


def update_model_probs(current, new):
    # the moving mean of probabilities, momentum 0.9; unchanged by an empty batch
    if new.size(0) == 0:
        return current
    return new.mean(0) if current is None else 0.9 * current + (1 - 0.9) * new.mean(0)


def zerosiam_rows64(uo, ur):
    # ZeroSiam's per-row loss: H(p_o) + KL(p_o || p_r) + KL(p_r || p_o), p_r detached
    lo, lr = uo.log_softmax(1), ur.detach().log_softmax(1)
    return -(lo.exp() * lo).sum(1) + (lo.exp() * (lo - lr)).sum(1) + (lr.exp() * (lr - lo)).sum(1)


def eata_official(uo, ur, e0, mean, d_margin, per_row=None):
    """forward_and_adapt_eata on one batch: (loss, the updated mean, rows kept). `ur` are the
    predictions (the target branch; `uo` itself for EATA); `per_row` None: their entropy."""
    ent = entropy64(ur.detach() if per_row else uo)
    ids1 = torch.where(ent < e0)
    probs = ur.detach()[ids1].softmax(1)
    if mean is not None:
        cos = F.cosine_similarity(mean.unsqueeze(0), probs, dim=1)
        ids2 = torch.where(torch.abs(cos) < d_margin)
        updated = update_model_probs(mean, probs[ids2])
    else:
        ids2 = (torch.arange(len(ids1[0])),)
        updated = update_model_probs(mean, probs)
    values = (per_row(uo, ur) if per_row else ent)[ids1][ids2]
    h = entropy64(ur.detach())[ids1][ids2]
    coeff = 1 / torch.exp(h - e0)
    return values.mul(coeff).mean(0), updated, len(ids2[0])


def a_mean(x, e0):
    """A moving mean against which some reliable rows of x are redundant and others not: half
    the probabilities of the most peaked row, half uniform."""
    p = x.softmax(1)
    return 0.5 * p[int(entropy64(x).argmin())] + 0.5 / x.shape[1]


@pytest.mark.parametrize("v", SIZES)
@pytest.mark.parametrize("spec", ["eata", "zerosiam+eata"])
def test_eata_selection_and_loss_equal_official(v, spec):
    ur = rows(v)
    uo = ur if spec == "eata" else ur + 0.3 * rows(v, seed=1) / torch.tensor(SCALES, dtype=torch.float64).view(-1, 1)
    e0 = 0.4 * math.log(v)
    mean = a_mean(ur, e0)
    reliable = entropy64(ur) < e0
    cos = F.cosine_similarity(mean.unsqueeze(0), ur.softmax(1), dim=1)[reliable]
    d = gap_midpoint(cos)
    m = method(f"{spec}:d_margin={d!r}")
    m.mean_probs = mean.float()  # the state after earlier steps
    loss, grad = ours(m, uo, target=None if spec == "eata" else ur)
    per_row = None if spec == "eata" else zerosiam_rows64
    ref_loss, ref_grad = official(lambda x: eata_official(x, ur, e0, mean, d, per_row)[0], uo)
    kept = eata_official(uo, ur, e0, mean, d, per_row)[2]
    assert 0 < kept < int(reliable.sum())  # both filters bite
    close(loss, ref_loss, rel(v))
    close(grad, ref_grad, rel(v))


class HeadBiasLM(BiasLM):
    """BiasLM (logits x + b) with a head of the vocabulary's size, attached to its method as
    ZeroSiamLM attaches one; `prime`, when given, are the logits of any sequence other than
    `ids` (DeYO's transformed one), + b as well."""

    def __init__(self, x, spec, lr, prime=None, ids=None):
        super().__init__(x, spec, lr)
        self.head = torch.nn.Linear(1, x.shape[1], bias=False)  # only its shape is read: the vocabulary
        self.method.attach(self)
        self.prime, self.ids = (None if prime is None else prime.float()), ids

    def features(self, input_ids, positions):
        rows = positions - int(positions.min())
        base = self.x if self.ids is None or torch.equal(input_ids, self.ids) else self.prime
        return base[rows] + self.b


def eata_loop_official(x, steps, lr, e0, d_margin):
    b = torch.nn.Parameter(torch.zeros(x.shape[1], dtype=torch.float64))
    opt = torch.optim.SGD([b], lr=lr, momentum=0.9)
    mean, trace = None, []
    for _ in range(steps):
        loss, updated, kept = eata_official(x + b, x + b, e0, mean, d_margin)
        if kept != 0:  # x[ids1][ids2].size(0) != 0
            loss.backward()
            opt.step()
        opt.zero_grad()
        mean = updated
        trace.append((b.detach().clone(), None if mean is None else mean.detach().clone(), kept))
    return trace


def eata_case():
    """7-way rows and a d_margin under which some step keeps some reliable rows and drops others
    as redundant (found by a fixed search: deterministic)."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 7, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 3, 4, 5, 6, 7, 8.0]).view(8, 1)
        e0 = 0.4 * math.log(7)
        first = eata_loop_official(x, 1, 0.5, e0, 1.0)
        reliable = entropy64(x + first[0][0]) < e0
        if reliable.sum() < 3:
            continue
        cos = F.cosine_similarity(first[0][1].unsqueeze(0), (x + first[0][0]).softmax(1), dim=1)[reliable]
        d = gap_midpoint(cos)
        trace = eata_loop_official(x, 4, 0.5, e0, d)
        if 0 < trace[1][2] < int(reliable.sum()) and all(t[2] > 0 for t in trace):
            return x, d
    raise AssertionError("no informative EATA case in the search range")


def run_ours(lm, n, steps, prompt_len=1):
    ids = torch.arange(prompt_len + n).view(1, -1)
    batch = LossBatch(ids, torch.arange(prompt_len - 1, prompt_len - 1 + n), ids[0, prompt_len:])
    out = []
    for _ in range(steps):
        stats = adapt_step(lm, batch)
        mean = getattr(lm.method, "mean_probs", None)
        out.append((lm.b.detach().double().clone(), stats, None if mean is None else mean.double().clone()))
    return out


def test_eata_update_loop_equals_official():
    """Four full steps: selection at the moving weights, the mean of probabilities moving with the
    kept rows, the weighted loss and SGD momentum 0.9."""
    x, d = eata_case()
    ref = eata_loop_official(x, 4, 0.5, 0.4 * math.log(7), d)
    lm = HeadBiasLM(x, f"eata:d_margin={d!r}", 0.5)
    got = run_ours(lm, len(x), 4)
    for (b, stats, mean), (rb, rmean, kept) in zip(got, ref):
        assert stats["tokens_selected"] == kept
        close(b, rb, 1e-6)
        close(mean, rmean, 1e-6)


def test_eata_takes_no_step_when_every_row_is_redundant():
    x, _ = eata_case()
    ref = eata_loop_official(x, 3, 0.5, 0.4 * math.log(7), 0.0)  # |cos| < 0: nothing passes after step 1
    lm = HeadBiasLM(x, "eata:d_margin=0.0", 0.5)
    got = run_ours(lm, len(x), 3)
    assert [t[2] for t in ref][1:] == [0, 0] and ref[0][2] > 0
    for (b, stats, _), (rb, _, kept) in zip(got, ref):
        assert stats["tokens_selected"] == kept
        close(b, rb, 1e-6)
    assert torch.equal(got[1][0], got[2][0])  # no momentum step either


# --- DeYO --------------------------------------------------------------------------------


def deyo_official(uo, ur, ur_prime, margin, e0, threshold, per_row=None):
    """forward_and_adapt_deyo on one batch: (loss, rows after the entropy filter, rows after
    PLPD). `ur` the predictions, `ur_prime` their logits on the transformed input; `per_row`
    None: the entropy of `uo` (DeYO itself)."""
    ent = entropy64(ur.detach() if per_row else uo)
    ids1 = torch.where(ent < margin)
    if len(ids1[0]) == 0:
        return None, 0, 0
    prob = ur.detach()[ids1].softmax(1)
    prob_prime = ur_prime[ids1].softmax(1)
    cls1 = prob.argmax(dim=1)
    plpd = (torch.gather(prob, 1, cls1.reshape(-1, 1)) - torch.gather(prob_prime, 1, cls1.reshape(-1, 1))).reshape(-1)
    ids2 = torch.where(plpd > threshold)
    if len(ids2[0]) == 0:
        return None, len(ids1[0]), 0
    values = (per_row(uo, ur) if per_row else ent)[ids1][ids2]
    h = entropy64(ur.detach())[ids1][ids2]
    coeff = 1 / torch.exp(h - e0) + 1 / torch.exp(-1.0 * plpd[ids2])
    return values.mul(coeff).mean(0), len(ids1[0]), len(ids2[0])


FLATTEN = torch.tensor([1.0, 0.6, 0.1, 1.0, 0.3, 0.05], dtype=torch.float64).view(-1, 1)


@pytest.mark.parametrize("v", SIZES)
@pytest.mark.parametrize("spec", ["deyo", "zerosiam+deyo"])
def test_deyo_selection_and_loss_equal_official(v, spec):
    ur = rows(v)
    uo = ur if spec == "deyo" else ur + 0.3 * rows(v, seed=1) / torch.tensor(SCALES, dtype=torch.float64).view(-1, 1)
    prime = ur * FLATTEN  # the transformed input flattens some rows (their pseudo-label loses probability)
    margin, e0 = 0.5 * math.log(v), 0.4 * math.log(v)
    reliable = entropy64(ur) < margin
    p, pp = ur.softmax(1), prime.softmax(1)
    label = p.argmax(1, keepdim=True)
    plpd = (p.gather(1, label) - pp.gather(1, label)).view(-1)[reliable]
    # drop only the rows the transformation left alone: the near one-hot row is not the only one kept (its
    # loss, some 1e-4, is all fp32 rounding at logits near 160)
    threshold = gap_midpoint(plpd, first_wider_than=0.05)
    m = method(f"{spec}:plpd_threshold={threshold!r}")
    m.set_transformed(prime.float(), lambda h: h)
    loss, grad = ours(m, uo, target=None if spec == "deyo" else ur)
    per_row = None if spec == "deyo" else zerosiam_rows64
    ref_loss, ref_grad = official(lambda x: deyo_official(x, ur, prime, margin, e0, threshold, per_row)[0], uo)
    _, n1, n2 = deyo_official(uo, ur, prime, margin, e0, threshold, per_row)
    assert 0 < n2 < n1 < len(ur)  # both filters bite
    close(loss, ref_loss, rel(v))
    close(grad, ref_grad, rel(v))


def deyo_loop_official(x, prime, steps, lr, margin, e0, threshold):
    b = torch.nn.Parameter(torch.zeros(x.shape[1], dtype=torch.float64))
    opt = torch.optim.SGD([b], lr=lr, momentum=0.9)
    trace = []
    for _ in range(steps):
        opt.zero_grad()
        with torch.no_grad():
            outputs_prime = prime + b  # model(x_prime), no gradient
        loss, n1, n2 = deyo_official(x + b, x + b, outputs_prime, margin, e0, threshold)
        if n2 != 0:
            loss.backward()
            opt.step()
        opt.zero_grad()
        trace.append((b.detach().clone(), n1, n2))
    return trace


def deyo_case():
    """7-way rows, their transformed logits and a PLPD threshold under which the first step keeps
    some reliable rows and drops others, and a later step keeps none (a fixed search)."""
    flatten = torch.tensor([1.0, 0.2, 1.0, 0.5, 0.1, 1.0, 0.3, 0.05], dtype=torch.float64).view(-1, 1)
    margin, e0 = 0.5 * math.log(7), 0.4 * math.log(7)
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 7, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 3, 4, 5, 6, 7, 8.0]).view(8, 1)
        prime = x * flatten
        reliable = entropy64(x) < margin
        if reliable.sum() < 3:
            continue
        p, pp = x.softmax(1), prime.softmax(1)
        label = p.argmax(1, keepdim=True)
        threshold = gap_midpoint((p.gather(1, label) - pp.gather(1, label)).view(-1)[reliable])
        trace = deyo_loop_official(x, prime, 4, 1.0, margin, e0, threshold)
        if 0 < trace[0][2] < trace[0][1] and all(t[2] > 0 for t in trace):
            return x, prime, threshold
    raise AssertionError("no informative DeYO case in the search range")


def test_deyo_update_loop_equals_official():
    """Four full steps: both filters and the weights at the moving weights, PLPD from the
    transformed input's logits at those weights (no gradient), SGD momentum 0.9."""
    x, prime, threshold = deyo_case()
    ref = deyo_loop_official(x, prime, 4, 1.0, 0.5 * math.log(7), 0.4 * math.log(7), threshold)
    prompt_len = 20
    ids = torch.arange(prompt_len + len(x)).view(1, -1)
    lm = HeadBiasLM(x, f"deyo:plpd_threshold={threshold!r}", 1.0, prime=prime, ids=ids)
    got = run_ours(lm, len(x), 4, prompt_len=prompt_len)
    for (b, stats, _), (rb, _, n2) in zip(got, ref):
        assert stats["tokens_selected"] == n2
        close(b, rb, 1e-6)


def test_deyo_takes_no_step_without_a_selected_row():
    x, prime, _ = deyo_case()
    ids = torch.arange(20 + len(x)).view(1, -1)
    lm = HeadBiasLM(x, "deyo:plpd_threshold=-1.0", 1.0, prime=prime, ids=ids)
    run_ours(lm, len(x), 1, prompt_len=20)  # every reliable row: a step, momentum built
    lm.method.cfg.plpd_threshold = 1.0  # no probability drops by more than 1
    before = lm.b.detach().clone()
    ((_, stats, _),) = run_ours(lm, len(x), 1, prompt_len=20)
    assert stats["tokens_selected"] == 0 and torch.equal(lm.b, before)


# --- the transformation ------------------------------------------------------------------


def cases(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt_len = int(torch.randint(1, 60, (1,), generator=g))
        out.append((prompt_len, int(torch.randint(0, 8, (1,), generator=g)), int(torch.randint(2, 40, (1,), generator=g))))
    return out


@pytest.mark.parametrize(("prompt_len", "response", "patches"), cases())
def test_shuffle_keeps_the_tokens_and_moves_whole_pieces(prompt_len, response, patches):
    ids = torch.arange(100, 100 + prompt_len + response).view(1, -1)
    out = shuffle_prompt(ids, prompt_len, patches, torch.Generator().manual_seed(prompt_len * 7 + patches))
    assert torch.equal(out[0, prompt_len:], ids[0, prompt_len:])  # the response stays
    assert sorted(out[0, :prompt_len].tolist()) == ids[0, :prompt_len].tolist()  # the same tokens
    pieces = torch.tensor_split(ids[0, :prompt_len], min(patches, prompt_len))
    assert len(pieces) == min(patches, prompt_len)
    assert max(len(p) for p in pieces) - min(len(p) for p in pieces) <= 1
    text = out[0, :prompt_len].tolist()
    for piece in pieces:  # each piece lands whole, in its own order
        start = text.index(int(piece[0]))
        assert text[start : start + len(piece)] == piece.tolist()


def test_deyo_transform_is_seeded_by_the_sequence_and_keeps_the_response(make_lm):
    lm = make_lm(method="deyo")
    ids = lm.encode("What is 12 + 30? Answer with a number.")
    p = ids.shape[1]
    seq = torch.cat([ids, torch.tensor([[40, 41, 42]])], 1)
    batch = LossBatch(seq, torch.arange(p - 1, p + 2), seq[0, p:])
    a, b = lm.method.transformed(batch), lm.method.transformed(copy.deepcopy(batch))
    assert torch.equal(a, b)  # a rerun or a resume draws the same order
    assert torch.equal(a[0, p:], seq[0, p:]) and not torch.equal(a[0, :p], seq[0, :p])
    assert sorted(a[0, :p].tolist()) == sorted(seq[0, :p].tolist())
    other = method("deyo:seed=1").transformed(batch)
    assert not torch.equal(other, a)  # another seed, another order
    token = method("deyo:transform=token").transformed(batch)
    assert sorted(token[0, :p].tolist()) == sorted(seq[0, :p].tolist())


# --- on a model --------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "none"), [("eata", {"filter_margin": 0.0}), ("deyo", {"plpd_threshold": 1.0}),
                                             ("zerosiam+deyo", {"plpd_threshold": 1.0})])
def test_no_step_without_a_selected_token_on_a_model(spec, none, make_lm):
    keep = {"eata": {"filter_margin": 1.01, "d_margin": None},
            "deyo": {"deyo_margin": 1.01, "plpd_threshold": -1.0}}[spec.replace("zerosiam+", "")]
    extra = {"predictor_lr": 5e-2} if spec.startswith("zerosiam") else {}
    lm = make_lm(method=spec, lr=5e-2, **keep, **extra)
    adapt_on_problem(lm, "What is 1 + 2?")  # every token selected: a step, momentum built
    assert lm.optimizer.state
    for k, v in none.items():
        setattr(lm.zs_config.method_config, k, v)
    before = {n: p.detach().clone() for n, p in lm.named_trainable()}
    res = adapt_on_problem(lm, "What is 1 + 2?")
    assert res.steps[0]["tokens_selected"] == 0
    assert all(torch.equal(p, before[n]) for n, p in lm.named_trainable())


def test_eata_mean_of_probabilities_is_state(make_lm):
    lm = make_lm(method="eata", lr=5e-2, filter_margin=1.01)
    state = lm.method.extra_state()["eata_mean_probs"]
    assert state.shape == (lm.head.weight.shape[0],) and not state.any()  # nothing recorded yet
    adapt_on_problem(lm, "What is 1 + 2?")
    assert float(state.sum()) == pytest.approx(1.0, abs=1e-5)  # a mean of probability vectors
    lm.reset()
    assert not lm.method.extra_state()["eata_mean_probs"].any()
    assert "eata_mean_probs" not in make_lm(method="zerosiam+eata").method.extra_state()  # off there by default
