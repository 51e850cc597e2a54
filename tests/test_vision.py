"""The vision path: wrapping, parameter selection, reset, schedules, the shared objective, and
a smoke run of the digits benchmark. Hand-built models only; no download, no timm."""

from __future__ import annotations

import importlib.util
import inspect
import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import zs_llm.objective as objective
import zs_llm.vision.methods as vision_methods
from zs_llm.vision import (
    VISION_METHODS,
    Adapter,
    SiameseClassifier,
    VisionAdaptConfig,
    ZeroSiam,
    collect_params,
    wrap_classifier,
)

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)

ROOT = Path(__file__).resolve().parents[1]
K = 10
ADAPTING = ("tent", "sar", "eata", "zerosiam", "zerosiam+eata", "come", "deyo", "zerosiam+deyo", "come+deyo")


class FcNet(nn.Module):
    """torchvision-style: conv trunk with BatchNorm, GroupNorm and LayerNorm, then `fc`."""

    def __init__(self, bn: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        h = torch.relu(self.gn(self.conv2(h)))
        return self.fc(self.ln(self.pool(h).flatten(1)))


class TimmStyle(nn.Module):
    """The timm split without timm: forward_features / forward_head(pre_logits) / get_classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, K)

    def forward_features(self, x):
        return self.norm(self.embed(x.flatten(2).transpose(1, 2)))  # (B, T, 32)

    def forward_head(self, x, pre_logits=False):
        x = x.mean(1)
        return x if pre_logits else self.head(x)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    net = FcNet(**kw)
    with torch.no_grad():  # non-trivial norm parameters and running statistics
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _x(n=16, seed=1):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _methods(**over):
    """Every adapting method, with SAR/EATA margins wide enough to select samples of an untrained model."""
    deyo = {"margin": 1.0, "plpd_threshold": -1.0}
    kw = {"sar": {"margin": 1.0, "recovery": None}, "eata": {"margin": 1.0}, "zerosiam+eata": {"margin": 1.0},
          "deyo": deyo, "zerosiam+deyo": deyo, "come+deyo": deyo}
    return {
        name: VISION_METHODS[name](**{**kw.get(name, {}), **over.get(name, {})})
        for name in ADAPTING
    }


# --- wrapping: the identity predictor is a no-op --------------------------------------------


@pytest.mark.parametrize("predictor", ["linear", "mlp"])
def test_identity_predictor_gives_the_models_own_logits_fc_form(predictor):
    net = _net()
    x = _x()
    with torch.no_grad():
        ref = net(x)
        model = wrap_classifier(net, predictor=predictor)
        assert model.form == "fc"
        out = model.branches(x)
    assert torch.equal(out.target, ref)
    assert torch.equal(out.online, ref)
    assert torch.equal(model(x), ref)


def test_identity_predictor_two_callables_form():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 24), nn.LayerNorm(24), nn.GELU())
    head = nn.Linear(24, K)
    x = _x()
    with torch.no_grad():
        ref = head(features(x))
        for feats in (features, lambda t: features(t)):  # a module and a plain function
            out = wrap_classifier(feats, head).branches(x)
            assert torch.equal(out.online, ref) and torch.equal(out.target, ref)


def test_identity_predictor_timm_form_and_passthrough():
    torch.manual_seed(0)
    net = TimmStyle().eval()
    x = _x()
    model = wrap_classifier(net)
    assert model.form == "timm"
    with torch.no_grad():
        assert torch.equal(model.branches(x).online, net(x))
    assert model.get_classifier() is net.head  # unknown attributes pass through to the model


def test_fixed_random_predictor_breaks_symmetry_from_the_start():
    x = _x()
    with torch.no_grad():
        out = wrap_classifier(_net(), predictor="fixed_random").branches(x)
    assert not torch.equal(out.online, out.target)


def test_wrap_rejects_unknown_models_with_the_fix():
    with pytest.raises(TypeError, match="from_fc"):
        wrap_classifier(nn.Sequential(nn.Linear(4, 4)))


# --- parameter selection and checks --------------------------------------------------------


def test_collect_params_names():
    model = wrap_classifier(_net())
    _, names = collect_params(model)
    assert names == [
        "model.bn.weight", "model.bn.bias", "model.gn.weight", "model.gn.bias", "model.ln.weight", "model.ln.bias",
        "predictor.weight",
    ]  # fmt: skip
    assert collect_params(model, predictor=False)[1] == names[:-1]
    assert collect_params(model, norm=False)[1] == ["predictor.weight"]


@pytest.mark.parametrize("name", ADAPTING)
def test_only_norm_affine_and_predictor_move(name):
    model = wrap_classifier(_net())
    adapter = Adapter(model, _methods()[name], VisionAdaptConfig(lr=0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for seed in range(3):
        adapter(_x(seed=seed))
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = set(adapter.param_names)
    assert moved and moved <= allowed, (moved, allowed)
    assert not any(
        k.startswith("model.bn.running") or "num_batches" in k for k in moved
    )  # BN buffers untouched
    assert ("predictor.weight" in moved) == VISION_METHODS[name].uses_predictor
    assert any(k.startswith("model.") for k in moved)  # the norm parameters moved too
    assert all(p.requires_grad == (n in allowed) for n, p in model.named_parameters())


def test_batchnorm_uses_batch_statistics_while_adapting():
    net = _net()
    x = _x() * 3 + 1  # far from the running statistics
    with torch.no_grad():
        source = net(x)
    adapter = Adapter(wrap_classifier(net), VISION_METHODS["tent"](), VisionAdaptConfig(lr=0.0))
    logits = adapter(x)
    assert not torch.allclose(logits, source)
    ref = _net()
    ref.bn.train()
    with torch.no_grad():
        assert torch.allclose(logits, ref(x), atol=1e-5)


def test_check_model_fails_early_naming_the_fix():
    no_norm = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.ReLU())
    model = wrap_classifier(no_norm, nn.Linear(8, K))
    with pytest.raises(ValueError, match="normalization.*update_norm=False"):
        Adapter(model, VISION_METHODS["tent"]())
    Adapter(model, ZeroSiam(update_norm=False))  # predictor only is allowed
    frozen = wrap_classifier(no_norm, nn.Linear(8, K), predictor="fixed_random")
    with pytest.raises(ValueError, match="no parameter to update"):
        Adapter(frozen, ZeroSiam(update_norm=False))
    with pytest.raises(ValueError, match="out of reach"):
        Adapter(wrap_classifier(lambda t: _net().ln(t), nn.Linear(16, K)), VISION_METHODS["tent"]())
    with pytest.raises(TypeError, match="wrap_classifier"):
        Adapter(_net(), VISION_METHODS["tent"]())
    with pytest.raises(ValueError, match="schedule"):
        VisionAdaptConfig(schedule="sometimes")
    with pytest.raises(ValueError, match="divergence"):
        ZeroSiam(divergence="l1")


def test_separate_learning_rates():
    adapter = Adapter(
        wrap_classifier(_net()), ZeroSiam(), VisionAdaptConfig(lr=0.1, predictor_lr=0.01, momentum=0.5)
    )
    groups = {g["name"]: g for g in adapter.optimizer.param_groups}
    assert groups["backbone"]["lr"] == 0.1 and groups["predictor"]["lr"] == 0.01
    assert groups["predictor"]["momentum"] == 0.5
    assert len(groups["predictor"]["params"]) == 1


# --- reset and schedules ---------------------------------------------------------------------


def _run(adapter, n=3):
    return [adapter(_x(seed=s)) for s in range(n)]


@pytest.mark.parametrize("name", ["tent", "sar", "zerosiam", "deyo", "zerosiam+deyo"])
def test_reset_restores_bitwise(name):
    model = wrap_classifier(_net())
    adapter = Adapter(model, _methods()[name], VisionAdaptConfig(lr=0.3))
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    optim0 = adapter.optimizer.state_dict()
    first = _run(adapter)
    state1 = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(state0[k], state1[k]) for k in state0)
    assert adapter.optimizer.state_dict()["state"]  # momentum buffers exist
    adapter.reset()
    assert all(torch.equal(state0[k], v) for k, v in model.state_dict().items())  # incl. BN running stats
    assert adapter.optimizer.state_dict()["state"] == optim0["state"] == {}
    assert adapter.optimizer.state_dict()["param_groups"] == optim0["param_groups"]
    # the same stream again gives the same predictions and the same end state, bit for bit
    second = _run(adapter)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.equal(state1[k], v) for k, v in model.state_dict().items())


def test_episodic_predicts_like_the_source_online_does_not():
    net = _net(bn=False)
    source = wrap_classifier(_net(bn=False))
    episodic = Adapter(wrap_classifier(net), ZeroSiam(), VisionAdaptConfig(lr=0.5, schedule="episodic"))
    online = Adapter(wrap_classifier(_net(bn=False)), ZeroSiam(), VisionAdaptConfig(lr=0.5))
    for s in range(3):
        x = _x(seed=s)
        with torch.no_grad():
            ref = source(x)
        assert torch.equal(episodic(x), ref)
        got = online(x)
        assert torch.equal(got, ref) == (s == 0)
    # the deviation is measured after each update: one step from identity when episodic
    assert episodic.history[0]["predictor_dev"] == online.history[0]["predictor_dev"] > 0.0
    episodic.reset()
    assert episodic.model.predictor.deviation() == 0.0


def test_noadapt_changes_nothing_and_records_stats():
    model = wrap_classifier(_net())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = Adapter(model, VISION_METHODS["noadapt"]())
    y = torch.arange(16) % K
    logits = adapter(_x(), y)
    assert adapter.optimizer is None and adapter.param_names == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stats = adapter.history[-1]
    for key in ("acc", "entropy", "max_prob", "logit_norm", "logit_norm_centered", "predictor_dev"):
        assert math.isfinite(stats[key]), key
    assert stats["acc"] == float((logits.argmax(-1) == y).float().mean())
    assert stats["logit_norm"] == pytest.approx(float(logits.norm(dim=-1).mean()), rel=1e-5)


def test_sar_and_eata_leave_a_fresh_model_unchanged_on_a_batch_with_no_reliable_sample():
    # EATA skips the step; SAR steps on zero gradients, which moves nothing before momentum exists
    for method in (VISION_METHODS["sar"](margin=1e-4), VISION_METHODS["eata"](margin=1e-4),
                   VISION_METHODS["zerosiam+eata"](margin=1e-4), VISION_METHODS["deyo"](margin=1e-4),
                   VISION_METHODS["zerosiam+deyo"](margin=1.0, plpd_threshold=0.999),
                   VISION_METHODS["come+deyo"](margin=1.0, plpd_threshold=0.999)):
        model = wrap_classifier(_net())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        adapter = Adapter(model, method, VisionAdaptConfig(lr=1.0))
        _run(adapter)
        assert adapter.history[-1]["selected"] == 0.0
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sar_steps_on_momentum_when_no_sample_is_reliable_as_official(seed):
    """The official `forward_and_adapt_sar` calls the optimizer on every batch: with no reliable
    sample the gradients are zero and SGD moves each parameter by lr * momentum * its buffer."""
    lr, momentum = 0.3, 0.9
    model = wrap_classifier(_net(seed))
    sar = VISION_METHODS["sar"](margin=1.0, recovery=None)
    adapter = Adapter(model, sar, VisionAdaptConfig(lr=lr, momentum=momentum))
    adapter(_x(seed=seed))  # every sample reliable: builds momentum
    ema = sar._ema
    before = [p.detach().clone() for p in adapter.params]
    bufs = [adapter.optimizer.state[p]["momentum_buffer"].clone() for p in adapter.params]
    sar.margin = 1e-4  # no sample reliable
    adapter(_x(seed=seed + 10))
    assert adapter.history[-1]["selected"] == 0.0
    for p, p0, b in zip(adapter.params, before, bufs):
        torch.testing.assert_close(p.detach(), p0 - lr * momentum * b)
    assert any(b.abs().max() > 0 for b in bufs)  # the step above did move something
    assert sar._ema == ema  # no second-pass loss: the average is unchanged


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sar_recovery_keeps_the_moving_average_as_official(seed):
    """Recovery restores model and optimizer and keeps the average (the official loop sets
    `self.ema = ema` after `reset()`); an explicit reset clears it, as the official `reset()`."""
    model = wrap_classifier(_net(seed))
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    sar = VISION_METHODS["sar"](margin=1.0, recovery=1e3)  # every average is below: recover each batch
    adapter = Adapter(model, sar, VisionAdaptConfig(lr=0.3))
    adapter(_x(seed=seed))
    first = adapter.history[-1]
    assert first["recovered"] == 1.0 and sar._ema == pytest.approx(first["loss"])
    assert all(torch.equal(state0[k], v) for k, v in model.state_dict().items())
    adapter(_x(seed=seed + 1))
    second = adapter.history[-1]
    assert sar._ema == pytest.approx(0.9 * first["loss"] + 0.1 * second["loss"])
    adapter.reset()
    assert sar._ema is None


def test_sar_two_step_update_differs_from_a_plain_step():
    def end_state(rho):
        model = wrap_classifier(_net())
        Adapter(model, VISION_METHODS["sar"](margin=1.0, rho=rho, recovery=None), VisionAdaptConfig(lr=0.5))(
            _x()
        )
        return model.state_dict()["model.gn.weight"]

    assert not torch.equal(end_state(0.05), end_state(1e-9))


# --- one objective module for text and vision -----------------------------------------------


def test_vision_losses_come_from_zs_llm_objective(monkeypatch):
    for name in ("zerosiam_token_loss", "confidence_objective", "sar_weights", "eata_weights"):
        assert getattr(vision_methods, name) is getattr(objective, name)
    calls = []

    def spy(*args, **kw):
        calls.append(kw or args[2:])
        return objective.zerosiam_token_loss(*args, **kw)

    monkeypatch.setattr(vision_methods, "zerosiam_token_loss", spy)
    adapter = Adapter(wrap_classifier(_net()), ZeroSiam(alpha=0.5, divergence="js"))
    adapter(_x())
    assert calls == [(0.5, "js", "entropy")]
    # no second copy of the math in the vision package
    for path in (ROOT / "zs_llm" / "vision").glob("*.py"):
        src = path.read_text()
        assert "log_softmax" not in src and ".log()" not in src, path


@pytest.mark.parametrize("name", ["deyo", "zerosiam+deyo", "come+deyo"])
def test_deyo_selection_comes_from_zs_llm_objective_and_moves_with_momentum_only_when_kept(name, monkeypatch):
    calls = []

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return objective.deyo_weights(*args, **kw)

    monkeypatch.setattr(vision_methods, "deyo_weights", spy)
    method = _methods()[name]
    adapter = Adapter(wrap_classifier(_net()), method, VisionAdaptConfig(lr=0.3))
    adapter(_x())  # every sample kept: a step, momentum built
    assert calls == [(16,)] and adapter.history[-1]["selected"] == 1.0
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    method.plpd_threshold = 0.999  # no shuffle drops a probability that far: nothing kept
    adapter(_x(seed=5))
    assert adapter.history[-1]["selected"] == 0.0 and adapter.history[-1]["selected_entropy"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())  # no momentum step


def test_zerosiam_loss_matches_the_objective_at_init():
    model = wrap_classifier(_net())
    out = model.branches(_x())
    loss, stats = ZeroSiam().loss(out)
    assert torch.allclose(loss, objective.entropy(out.target).mean())  # divergence is 0 at identity
    assert stats["divergence"] == pytest.approx(0.0, abs=1e-6)


# --- the benchmark, shrunk ------------------------------------------------------------------


def _bench():
    spec = importlib.util.spec_from_file_location("vision_collapse", ROOT / "studies" / "vision_collapse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corruptions_keep_shape_and_range():
    bench = _bench()
    x = torch.rand(4, 1, bench.SIZE, bench.SIZE)
    for name in bench.CORRUPTIONS:
        for s in (1, 5):
            y = bench.corrupt(x, name, s, seed=0)
            assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name
            assert torch.equal(y, bench.corrupt(x, name, s, seed=0)), name  # a seed fixes the draw
        assert not torch.equal(bench.corrupt(x, name, 5, seed=0), x), name


def test_benchmark_quick_runs_end_to_end(tmp_path):
    bench = _bench()
    threads = torch.get_num_threads()
    out = bench.main(["--quick", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads
    res = out["results"]
    assert set(res) == set(bench.SCENARIOS)
    for scenario, per_model in res.items():
        assert set(per_model) == set(bench.MODELS)
        for model, per_method in per_model.items():
            assert list(per_method) == list(bench.METHODS)
            for method, r in per_method.items():
                assert 0.0 <= r["acc"] <= 1.0
                assert len(r["n"]) == len(r["logit_norm"]) == len(r["batch_acc"]) > 0
                assert all(math.isfinite(v) for v in r["logit_norm"] + r["entropy"] + r["predictor_dev"])
                uses = VISION_METHODS[method].uses_predictor
                # a plug-in that selected no sample in the first seed's streams has not moved its predictor
                assert (max(r["predictor_dev"]) > 0) == (uses and r["selected"] > 0), (scenario, model, method)
                # every (seed, stream) holds one outcome per sample; acc pools them
                assert {seed for seed, _ in r["outcomes"]} == {0, 1}
                flat = [c for o in r["outcomes"].values() for c in o]
                assert r["acc"] == pytest.approx(sum(flat) / len(flat))
                assert r["sec_per_sample"] > 0
            if scenario == "bs1":
                assert set(per_method["tent"]["n"]) == {1.0}
            # the same samples in the same order for every method of a seed: paired outcomes
            lengths = {m: {k: len(o) for k, o in r["outcomes"].items()} for m, r in per_method.items()}
            assert len({tuple(sorted(v.items())) for v in lengths.values()}) == 1
            # the study's change from noadapt: the mean over (seed, stream) of the paired differences
            tent, base = per_method["tent"]["outcomes"], per_method["noadapt"]["outcomes"]
            diff = sum(sum(tent[k]) / len(tent[k]) - sum(base[k]) / len(base[k]) for k in tent) / len(tent)
            row = next(r for r in out["study"].splitlines() if r.startswith(f"| {scenario} | {model} | tent |"))
            assert row.split(" | ")[5].startswith(f"{100 * diff:+.1f} [")
    assert out["table"].count("\n") == 1 + len(bench.SCENARIOS) * len(bench.MODELS)
    assert out["study"].count("\n") == 1 + len(bench.SCENARIOS) * len(bench.MODELS) * len(bench.METHODS)
    assert out["overhead"].count("\n") == 1 + len(bench.METHODS)
    assert out["plugins"].count("\n") == 1 + len(bench.SCENARIOS) * len(bench.MODELS)
    for scenario, per_model in res.items():  # a plug-in's change from its host: paired, as from noadapt
        for model, per_method in per_model.items():
            plug, host = per_method["zerosiam+deyo"]["outcomes"], per_method["deyo"]["outcomes"]
            diff = sum(sum(plug[k]) / len(plug[k]) - sum(host[k]) / len(host[k]) for k in plug) / len(plug)
            row = next(r for r in out["plugins"].splitlines() if r.startswith(f"| {scenario} | {model} |"))
            assert row.split(" | ")[3].startswith(f"{100 * diff:+.1f} [")
    text = (tmp_path / "results.md").read_text()
    assert text.count("| label_shift |") == 3 * len(bench.MODELS) + len(bench.MODELS) * len(bench.METHODS)
    assert len(out["plots"]) == len(bench.SCENARIOS) * len(bench.MODELS)
    assert all(p.exists() and p.stat().st_size > 0 for p in out["plots"])


def test_registry_lists_every_method():
    assert set(VISION_METHODS) == {"noadapt", *ADAPTING}
    assert isinstance(wrap_classifier(_net()), SiameseClassifier)
    for cls in VISION_METHODS.values():
        assert inspect.getdoc(cls)


def test_eata_redundancy_filter_drops_samples_like_the_running_mean():
    adapter = Adapter(wrap_classifier(_net()), VISION_METHODS["eata"](margin=1.0, d_margin=0.0))
    _run(adapter, 2)
    first, second = (h["selected"] for h in adapter.history)
    assert first == 1.0  # no running mean yet
    assert second == 0.0  # |cos| < 0 holds for no sample
    adapter.reset()
    assert adapter.method._mean_probs is None


def test_benchmark_resumes_finished_cells(tmp_path, capsys):
    """Each (scenario, model, method) result is kept when it finishes: a rerun reads it back (the same
    outcomes) and runs only what is new; a changed setting runs again."""
    bench = _bench()
    base = ["--quick", "--out", str(tmp_path), "--scenarios", "bs1", "--models", "gn_cnn"]
    first = bench.main(base + ["--methods", "noadapt", "tent"])["results"]["bs1"]["gn_cnn"]
    capsys.readouterr()
    second = bench.main(base + ["--methods", "noadapt", "tent", "zerosiam"])["results"]["bs1"]["gn_cnn"]
    log = capsys.readouterr().out
    assert "noadapt: reused" in log and "tent: reused" in log and "zerosiam: reused" not in log
    for m in ("noadapt", "tent"):
        assert second[m]["outcomes"] == first[m]["outcomes"]
        assert second[m]["acc"] == first[m]["acc"]
    assert set(second) == {"noadapt", "tent", "zerosiam"}
    bench.main(base + ["--methods", "tent", "--severity", "2"])
    assert "reused" not in capsys.readouterr().out
    assert not list((tmp_path / "cells").glob("*.tmp"))


@pytest.mark.parametrize("seed", range(4))
def test_collapse_summary_judges_by_the_paired_interval(seed):
    """Below/above NoAdapt only where the paired interval excludes 0: a method equal to NoAdapt on
    every sample is level with it, one that loses a third of NoAdapt's right answers is below it,
    one that gains a third of its wrong ones is above it, whatever the streams' sizes."""
    bench = _bench()
    rng = random.Random(seed)
    base = {(s, i): [rng.random() < 0.5 for _ in range(rng.randint(80, 200))] for s in range(3) for i in range(2)}

    def flip(outcomes, frm: bool, share: float):
        return {k: [(not c) if c == frm and rng.random() < share else c for c in o] for k, o in outcomes.items()}

    def res(outcomes):
        flat = [c for o in outcomes.values() for c in o]
        return {"outcomes": outcomes, "acc": sum(flat) / len(flat)}

    for tent, zs, words in [(flip(base, True, 0.33), base, ("below", "level with")),
                            (base, flip(base, False, 0.33), ("level with", "above"))]:
        results = {"mixed": {"m": {"noadapt": res(base), "tent": res(tent), "zerosiam": res(zs)}}}
        (line,) = bench.collapse_summary(results, ["m"])
        assert f"{words[0]} NoAdapt; ZeroSiam" in line and line.endswith(f"{words[1]} NoAdapt"), line
