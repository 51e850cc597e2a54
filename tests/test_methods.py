import dataclasses
import math

import pytest
import torch

from zs_llm import METHODS
from zs_llm.adapt import adapt_on_problem
from zs_llm.methods.come import opinion_entropy
from zs_llm.methods.eminf import EntropyMinLogitsProcessor
from zs_llm.objective import entropy
from zs_llm.registry import Registry

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)

# what each method declares it changes, by parameter-name prefix
DECLARED = {
    "noadapt": set(),
    "eminf": set(),
    "slot": {"slot"},
    "tent": {"lora"},
    "come": {"lora"},
    "sar": {"lora"},
    "zerosiam": {"lora", "predictor"},
    "zerosiam+sar": {"lora", "predictor"},
    "zerosiam+eata": {"lora", "predictor"},
}


def test_every_registered_method_is_covered():
    assert set(METHODS) == set(DECLARED)


def everything(lm):
    d = {n: p.detach().clone() for n, p in lm.hf.named_parameters()}
    d.update({f"predictor.{n}": p.detach().clone() for n, p in lm.predictor.named_parameters()})
    return d


def kind(name):
    return "lora" if "lora_" in name else "predictor" if name.startswith("predictor.") else "base"


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_method_runs_and_changes_exactly_what_it_declares(name, make_lm):
    # filter_margin 1.01 keeps every token for SAR-type filters on a near-uniform random model
    own = {f.name for f in dataclasses.fields(METHODS[name].config_class)}
    extra = {k: v for k, v in {"predictor_lr": 5e-2, "filter_margin": 1.01}.items() if k in own}
    lm = make_lm(method=name, lr=5e-2, **extra)
    assert set(lm.method.trains) == DECLARED[name]
    before = everything(lm)
    res = adapt_on_problem(lm, "What is 1 + 2?")
    assert isinstance(res.answer, str)
    moved = {kind(n) for n, p in everything(lm).items() if not torch.equal(p, before[n])}
    assert "base" not in moved
    assert moved == DECLARED[name] - {"slot"}
    if name == "slot":
        first = lm.method.delta.clone()
        assert first.abs().sum() > 0 and res.method_stats["slot_loss_last"] < res.method_stats["slot_loss_first"]
        adapt_on_problem(lm, "A different prompt entirely")
        second = lm.method.delta.clone()
        assert not torch.equal(first, second)
        # reset between prompts: the vector for a prompt does not depend on what came before
        fresh = make_lm(method="slot")
        adapt_on_problem(fresh, "A different prompt entirely")
        torch.testing.assert_close(fresh.method.delta, second)


def test_method_settings_do_not_share_a_name_with_a_shared_field():
    """A spec's key=value goes to the shared AdaptConfig field when both have the name, so a method
    setting called `lr` or `steps` could never be set that way (as SLOT's and EM-INF's once were)."""
    from zs_llm import AdaptConfig

    shared = set(AdaptConfig.field_names())
    for name, cls in METHODS.items():
        clash = {f.name for f in dataclasses.fields(cls.config_class)} & shared
        assert not clash, f"{name}: {sorted(clash)}"
    assert AdaptConfig.from_spec("eminf:logit_lr=0.5:logit_steps=2").method_config.logit_lr == 0.5
    assert AdaptConfig.from_spec("slot:delta_lr=0.05:delta_steps=2").method_config.delta_steps == 2


def test_come_loss_equals_hand_computed():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    got = opinion_entropy(logits, eps=0.0)  # the exact opinion entropy, evidence constant K
    for row, g in zip(logits.tolist(), got.tolist()):
        k = len(row)
        e = [math.exp(x) for x in row]
        s = sum(e)
        probs = [x / (s + k) for x in e] + [k / (s + k)]
        assert g == pytest.approx(-sum(p * math.log(p) for p in probs), rel=1e-6)


def test_come_only_turns_the_logits_direction():
    x = torch.tensor([[3.0, 1.0, 0.0]], requires_grad=True)
    opinion_entropy(x).sum().backward()
    # the norm is detached, so the gradient is orthogonal to x
    assert abs(float((x.grad * x.detach()).sum())) < 1e-5


def test_sar_filter_and_loss_equal_hand_computed(make_lm):
    lm = make_lm(method="sar", filter_margin=0.4)
    k = 10
    confident = torch.zeros(k)
    confident[0] = 10.0
    logits = torch.stack([confident, torch.zeros(k)])  # entropy ~0 and ln 10
    logp = torch.log_softmax(logits, -1)
    loss, w, _, grad = lm.method.token_loss(logits, logp, None)
    assert w.tolist() == [1.0, 0.0]  # ln 10 > 0.4 ln 10: the uniform row is unreliable
    p = torch.softmax(confident, 0)
    assert loss[0].item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    assert loss[1].item() == pytest.approx(math.log(k), rel=1e-5)
    x = logits.clone().requires_grad_(True)
    entropy(x).sum().backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-5, atol=1e-6)


def test_sar_applies_the_gradient_at_the_perturbed_point(make_lm):
    lm = make_lm(method="sar", filter_margin=1.01, lr=1e-2, optimizer="sgd", momentum=0.0, grad_clip=None)
    from zs_llm.adapt import make_batch

    ids = lm.encode("sharpness")
    batch = make_batch(ids, lm.generate_ids(ids)[0], "response")
    params = lm.trainable_parameters()
    p0 = [p.detach().clone() for p in params]
    lm.optimizer.zero_grad()
    stats = lm.method.backward(lm, batch)
    assert "loss_first_pass" in stats
    for p, q in zip(params, p0):
        assert torch.equal(p, q)  # the perturbation is undone before the step
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_eminf_lowers_entropy_of_high_entropy_rows():
    proc = EntropyMinLogitsProcessor(steps=3, lr=0.1, threshold=0.3, kl_weight=0.05)
    scores = torch.tensor([[1.0, 0.9, 0.8, 0.0], [20.0, 0.0, 0.0, 0.0]])
    out = proc(None, scores.clone())
    assert entropy(out[0:1]) < entropy(scores[0:1])
    assert torch.equal(out[1], scores[1])  # below the threshold: untouched


def test_registry_refuses_duplicates_and_lists_known():
    with pytest.raises(ValueError, match="already registered"):
        METHODS["tent"] = object
    with pytest.raises(KeyError, match="known: .*tent.*zerosiam"):
        METHODS["tnet"]
    r = Registry("thing")
    r.register("a")(1)
    with pytest.raises(ValueError):
        r.register("a")(2)


@pytest.mark.parametrize("overrides", [{"alpha": 0.0}, {"predictor": "fixed_random"}, {"predictor": "mlp"},
                                       {"divergence": "js"}, {"divergence": "mse"}, {"objective": "slr"}])
def test_zerosiam_ablations_run(overrides, make_lm):
    lm = make_lm(lr=1e-2, predictor_lr=1e-2, **overrides)
    res = adapt_on_problem(lm, "ablation")
    assert not res.steps[0]["skipped"] and math.isfinite(res.steps[0]["loss"])
