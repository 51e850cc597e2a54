"""The vision path's COME, DeYO and the ZeroSiam plug-ins against their official code, transcribed
here independently in float64 with autograd: BlueWhaleLab/COME `tent_come.py` (`dirichlet_entropy`);
Jhyun17/DeYO `methods/deyo.py` (`forward_and_adapt_deyo`, the `patch` transformation, `config.py`
defaults); the ZeroSiam repository's `deyo_come.py` (COME inside DeYO) and `zerosiam.py` (the loss);
mr-eggplant/EATA `eata.py` (the weighting). Our side runs the methods through `Adapter` in fp32 on a
small hand-built network; the transcription runs the same network in float64, with the same random
numbers for DeYO's shuffles. Losses, gradients and parameters are compared step by step.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zs_llm.objective import deyo_weights, plpd
from zs_llm.vision import VISION_METHODS, Adapter, Branches, VisionAdaptConfig, patch_shuffle, wrap_classifier

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)

U32 = 2.0**-24  # fp32 unit roundoff


def close(a, b, tol):
    """max |a - b| <= tol * max |b|."""
    err, scale = float((a.double() - b.double()).abs().max()), float(b.double().abs().max())
    assert err <= tol * max(scale, 1e-12), f"max abs difference {err:.3g} > {tol:g} x {scale:.3g}"


def rel(k, logit_max, depths=()):
    """Tolerance of fp32 against float64, as tests/test_official_baselines.py derives it: each
    log-probability is off by ulps of the largest logit, and every sum adds a rounding per level of
    its log2-deep reduction tree: 4 ulps x (levels of all reductions on the path) x max |logit|.
    `depths` are the widths of the network's own reductions before the logits."""
    levels = (math.log2(k) + 1) + sum(math.log2(d) + 1 for d in depths)
    return 4 * U32 * levels * max(1.0, logit_max)


# --- COME --------------------------------------------------------------------------------------


def come_official(x, c):
    # dirichlet_entropy: norm-detached logits; beliefs e / (S + C), uncertainty C / (S + C); 1e-7
    # added to all K + 1 entries, inside the log too; mean over the batch
    n = torch.norm(x, p=2, dim=-1, keepdim=True)
    x = x / n * n.detach()
    e = torch.exp(x)
    s = torch.sum(e, dim=1, keepdim=True)
    q = torch.cat([e / (s + c), c / (s + c)], dim=1) + 1e-7
    return (-(q * torch.log(q)).sum(1)).mean(0)


def logit_rows(k, seed=0, scales=(0.5, 1.0, 3.0, 8.0, 20.0)):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([s * torch.randn(k, generator=g) for s in scales]).double()  # fp32 holds them exactly


@pytest.mark.parametrize("k", [7, 10, 1000])
@pytest.mark.parametrize("evidence", [None, 1000.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_come_loss_and_gradient_equal_official(k, evidence, seed):
    x = logit_rows(k, seed)
    u = x.float().clone().requires_grad_(True)
    loss, _ = VISION_METHODS["come"](evidence=evidence).loss(Branches(u, u, u))
    loss.backward()
    ref_x = x.clone().requires_grad_(True)
    ref = come_official(ref_x, float(k) if evidence is None else evidence)
    ref.backward()
    tol = rel(k, float(x.abs().max()))
    close(loss.detach(), ref.detach(), tol)
    close(u.grad, ref_x.grad, tol)


# --- DeYO's transformation and weights ---------------------------------------------------------


def shuffle_official(x, perm, patches):
    """The `patch` transformation, tile by tile: slot j of the grid (row-major) receives tile perm[j]."""
    out = torch.empty_like(x)
    ph, pw = x.shape[-2] // patches, x.shape[-1] // patches
    for i in range(len(x)):
        for j, src in enumerate(perm[i].tolist()):
            (dr, dc), (sr, sc) = divmod(j, patches), divmod(src, patches)
            out[i, :, dr * ph : (dr + 1) * ph, dc * pw : (dc + 1) * pw] = x[i, :, sr * ph : (sr + 1) * ph,
                                                                         sc * pw : (sc + 1) * pw]
    return out


@pytest.mark.parametrize("shape,patches", [((3, 1, 32, 32), 4), ((2, 3, 8, 12), 2), ((4, 2, 16, 16), 4),
                                           ((1, 3, 12, 12), 3), ((5, 1, 8, 8), 8)])
@pytest.mark.parametrize("seed", [0, 7])
def test_patch_shuffle_equals_official_rearrangement(shape, patches, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed))
    got = patch_shuffle(x, patches, torch.Generator().manual_seed(seed))
    # the official draw: torch.rand(B, patches^2) argsorted, one permutation per image
    perm = torch.rand(shape[0], patches * patches, generator=torch.Generator().manual_seed(seed)).argsort(-1)
    assert torch.equal(got, shuffle_official(x, perm, patches))
    assert torch.equal(got.flatten(1).sort(-1).values, x.flatten(1).sort(-1).values)  # the same pixels


def test_patch_shuffle_resizes_a_side_the_grid_does_not_divide():
    x = torch.rand(2, 1, 10, 13)
    y = patch_shuffle(x, 4, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.isfinite(y).all()


def deyo_weights_official(ent, drop, log_k, margin=0.5, margin_e0=0.4, threshold=0.2, rw_ent=1, rw_plpd=1):
    """{row index: coefficient} of the rows that reach the loss, by the official two-stage indexing."""
    ids1 = torch.where(ent < margin * log_k)[0]
    ent1, drop1 = ent[ids1], drop[ids1]
    ids2 = torch.where(drop1 > threshold)[0]
    e, d = ent1[ids2], drop1[ids2]
    coeff = rw_ent * (1 / torch.exp(e - margin_e0 * log_k)) + rw_plpd * (1 / torch.exp(-1.0 * d))
    if not (rw_ent or rw_plpd):
        coeff = torch.ones_like(e)
    return dict(zip(ids1[ids2].tolist(), coeff.tolist()))


@pytest.mark.parametrize("k", [10, 1000])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("flags", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_deyo_weights_equal_official(k, seed, flags):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(64, k, generator=g, dtype=torch.float64) * torch.rand(64, 1, generator=g, dtype=torch.float64) * 12
    u_shuffled = u + 4 * torch.randn(64, k, generator=g, dtype=torch.float64)
    ent = -(u.softmax(1) * u.log_softmax(1)).sum(1)
    p, pt = u.softmax(1), u_shuffled.softmax(1)
    cls = p.argmax(1).reshape(-1, 1)
    drop_ref = (torch.gather(p, 1, cls) - torch.gather(pt, 1, cls)).reshape(-1)
    drop = plpd(u, u_shuffled)
    close(drop, drop_ref, rel(k, float(torch.cat([u, u_shuffled]).abs().max())))  # fp32 softmax
    ref = deyo_weights_official(ent, drop_ref, math.log(k), rw_ent=flags[0], rw_plpd=flags[1])
    w = deyo_weights(ent, drop_ref, math.log(k), reweight_ent=bool(flags[0]), reweight_plpd=bool(flags[1]))
    kept = (ent < 0.5 * math.log(k)).sum()
    assert 0 < len(ref) < int(kept) < 64  # both filters drop rows
    assert sorted(w.nonzero().flatten().tolist()) == sorted(ref)
    # fp32 exp: relative error of a few ulps times the exponent's magnitude (at most ln K + 1)
    assert w[list(ref)].tolist() == pytest.approx(list(ref.values()), rel=4 * U32 * (math.log(k) + 2))


# --- the update loops --------------------------------------------------------------------------

SIDE, HIDDEN, K = 8, 16, 10


class TinyNet(nn.Module):
    """flatten -> linear -> LayerNorm -> tanh -> fc: one normalization layer to adapt."""

    def __init__(self, seed, head_scale):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(SIDE * SIDE, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN)
        self.fc = nn.Linear(HIDDEN, K)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.2, 0.2)
            self.fc.weight.mul_(head_scale)

    def forward(self, x):
        return self.fc(torch.tanh(self.ln(self.embed(x.flatten(1)))))


def entropy_official(x):
    return -(x.softmax(1) * x.log_softmax(1)).sum(1)


def sym_kl_official(uo, ur):
    # the ZeroSiam repository's get_loss_js: KLDivLoss(log p_o, p_r) + KLDivLoss(log p_r, p_o), summed per row
    kl = nn.KLDivLoss(reduction="none")
    return kl(uo.log_softmax(1), ur.softmax(1)).sum(1) + kl(ur.log_softmax(1), uo.softmax(1)).sum(1)


def dirichlet_entropy_official(x):
    n = torch.norm(x, p=2, dim=-1, keepdim=True)
    x = x / n * n.detach()
    e = torch.exp(x)
    q = torch.cat([e / (e.sum(1, keepdim=True) + 1000), 1000 / (e.sum(1, keepdim=True) + 1000)], 1) + 1e-7
    return -(q * torch.log(q)).sum(1)


def official_loop(net, xs, method, lr, seed, patches=4):
    """The official update loops on a float64 copy of `net`, SGD momentum 0.9. Per batch: (loss or
    None when no step, [grads], [params after], samples passing the first filter, samples in the loss,
    the smallest distance of a filtered value from its threshold)."""
    p = {n: t.detach().double().clone() for n, t in net.state_dict().items()}
    ln_w, ln_b = (nn.Parameter(p[f"ln.{n}"]) for n in ("weight", "bias"))
    params = [ln_w, ln_b]
    pred = None
    if method.startswith("zerosiam"):
        pred = nn.Parameter(torch.eye(HIDDEN, dtype=torch.float64))
        params.append(pred)
    opt = torch.optim.SGD(params, lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    log_k = math.log(K)

    def features(x):
        h = x.double().flatten(1) @ p["embed.weight"].T + p["embed.bias"]
        return torch.tanh(F.layer_norm(h, (HIDDEN,), ln_w, ln_b, 1e-5))

    def head(z):
        return z @ p["fc.weight"].T + p["fc.bias"]

    trace = []
    for x in xs:
        opt.zero_grad()
        z = features(x)
        outputs = head(z)
        if method == "zerosiam+eata":
            e0 = 0.4 * log_k
            ent_r = entropy_official(outputs.detach())
            ids = torch.where(ent_r < e0)
            rows = entropy_official(head(z @ pred.T)) + sym_kl_official(head(z @ pred.T), outputs.detach())
            coeff = 1 / torch.exp(ent_r[ids] - e0)
            loss = (rows[ids] * coeff).mean(0)
            n1 = n2 = len(ids[0])
            gap = float((ent_r - e0).abs().min())
        else:  # deyo, zerosiam+deyo, come+deyo: forward_and_adapt_deyo with the method's entropy and loss
            if method == "come+deyo":
                entropys = dirichlet_entropy_official(outputs)
            else:
                entropys = entropy_official(outputs if method == "deyo" else outputs.detach())
            filter_ids_1 = torch.where(entropys < 0.5 * log_k)
            gap = float((entropys.detach() - 0.5 * log_k).abs().min())
            n1, n2, loss = len(filter_ids_1[0]), 0, None
            if n1:
                x_prime = x[filter_ids_1].detach()
                perm_idx = torch.argsort(torch.rand(x_prime.shape[0], patches * patches, generator=gen), dim=-1)
                x_prime = shuffle_official(x_prime, perm_idx, patches)
                with torch.no_grad():
                    outputs_prime = head(features(x_prime))
                prob_outputs = outputs[filter_ids_1].softmax(1)
                prob_outputs_prime = outputs_prime.softmax(1)
                cls1 = prob_outputs.argmax(dim=1)
                drop = (torch.gather(prob_outputs, 1, cls1.reshape(-1, 1))
                        - torch.gather(prob_outputs_prime, 1, cls1.reshape(-1, 1))).reshape(-1)
                gap = min(gap, float((drop.detach() - 0.2).abs().min()))
                filter_ids_2 = torch.where(drop > 0.2)
                if method == "zerosiam+deyo":
                    uo = head(z @ pred.T)
                    rows = entropy_official(uo) + sym_kl_official(uo, outputs.detach())
                    rows = rows[filter_ids_1][filter_ids_2]
                else:
                    rows = entropys[filter_ids_1][filter_ids_2]
                ent = entropys[filter_ids_1][filter_ids_2].detach()
                n2 = len(rows)
                if n2:
                    coeff = (1 / torch.exp(ent - 0.4 * log_k)) + (1 / torch.exp(-1.0 * drop[filter_ids_2].detach()))
                    loss = rows.mul(coeff).mean(0)
        grads = None
        if n2:
            loss.backward()
            grads = [t.grad.detach().clone() for t in params]
            opt.step()
        trace.append((None if not n2 else loss.detach(), grads, [t.detach().clone() for t in params], n1, n2, gap))
    return trace


def our_loop(net, xs, method, lr, seed):
    import copy

    adapter = Adapter(wrap_classifier(copy.deepcopy(net)), VISION_METHODS[method](**({} if method == "zerosiam+eata"
                                                                                       else {"seed": seed})),
                      VisionAdaptConfig(lr=lr))
    if method == "come+deyo":
        adapter.method.evidence = 1000.0  # the official code's constant
    trace = []
    for x in xs:
        adapter(x)
        h = adapter.history[-1]
        n = len(x)
        trace.append((h["loss"], [t.grad.detach().clone() if t.grad is not None else None for t in adapter.params],
                      [t.detach().clone() for t in adapter.params], round(h.get("selected_entropy", h["selected"]) * n),
                      round(h["selected"] * n)))
    return trace, adapter


PLUG_INS = ["deyo", "zerosiam+deyo", "come+deyo", "zerosiam+eata"]


def loop_case(method, seed):
    """A network, a stream of 3 batches of 16 images and a learning rate at which, in the first
    batch, each filter keeps some samples and drops others (a fixed search: deterministic)."""
    for trial in range(40):
        # C = 1000 leaves an uncertainty mass near 1 unless the evidence sum is far above it: larger logits
        scale = (3.0 + trial % 5) * (4 if method == "come+deyo" else 1)
        net = TinyNet(seed * 100 + trial, head_scale=scale).eval()
        g = torch.Generator().manual_seed(seed * 100 + trial)
        xs = [torch.rand(16, 1, SIDE, SIDE, generator=g) for _ in range(3)]
        ref = official_loop(net, xs, method, 0.5, seed)
        n1, n2 = ref[0][3], ref[0][4]
        if 0 < n2 < 16 and (method == "zerosiam+eata" or n2 < n1 < 16) and all(t[4] and t[5] > 1e-3 for t in ref):
            return net, xs, ref
    raise AssertionError("no informative case in the search range")


@pytest.mark.parametrize("method", PLUG_INS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_loop_equals_official(method, seed):
    """Three batches through the official loop (float64) and ours (fp32): the same samples pass each
    filter, and the loss, the gradient of every adapted parameter and the parameters after each step
    agree within the fp32 bound (selection values are asserted to sit farther than it from their
    thresholds, so either side's decision is the exact one)."""
    net, xs, ref = loop_case(method, seed)
    got, adapter = our_loop(net, xs, method, 0.5, seed)
    assert adapter.param_names[:2] == ["model.ln.weight", "model.ln.bias"]
    with torch.no_grad():
        logit_max = float(max(net(x).abs().max() for x in xs))
    for step, ((loss, grads, params, n1, n2), (rloss, rgrads, rparams, rn1, rn2, gap)) in enumerate(zip(got, ref), 1):
        tol = rel(K, logit_max, (SIDE * SIDE, HIDDEN, HIDDEN)) * (2 * step)  # errors carried by the parameters
        assert gap > tol, "a selection value within rounding of its threshold"
        assert (n1, n2) == (rn1, rn2)
        close(torch.tensor(loss), rloss, tol)
        for g, rg in zip(grads, rgrads):
            close(g, rg, tol)
        for t, rt in zip(params, rparams):
            close(t, rt, tol)
