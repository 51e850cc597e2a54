"""Each deviation from a method's official code that is a choice is a named setting, and the
setting reaches what it controls (docs/protocol.md, "Where we differ from the official code")."""

from __future__ import annotations

import pytest
import torch

from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.methods.eminf import EntropyMinLogitsProcessor
from zs_llm.testing import tiny_model

PREDICTOR_METHODS = ("zerosiam", "zerosiam+sar", "zerosiam+eata")


@pytest.mark.parametrize("method", PREDICTOR_METHODS)
@pytest.mark.parametrize("lr, scale", [(3e-4, 1.0), (1e-3, 10.0), (2e-2, 5.0), (5e-3, 0.0), (7e-4, 0.25)])
def test_predictor_lr_scale_reaches_the_optimizer_and_its_step(tok, method, lr, scale):
    """`<method>:predictor_lr_scale=s` gives the predictor lr * s (the official scripts: 10, 5 or 1),
    and a plain SGD step moves the predictor by that rate, LoRA by lr."""
    cfg = AdaptConfig.from_spec(f"{method}:lr={lr}:predictor_lr_scale={scale}:momentum=0", {"max_new_tokens": 4})
    lm = ZeroSiamLM(tiny_model("llama"), tok, cfg)
    groups = {g["name"]: g for g in lm.optimizer.param_groups}
    assert groups["lora"]["lr"] == lr
    assert groups["predictor"]["lr"] == pytest.approx(lr * scale, rel=1e-12)
    for g in groups.values():
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    before = {name: [p.detach().clone() for p in g["params"]] for name, g in groups.items()}
    lm.optimizer.step()
    for name, rate in (("lora", lr), ("predictor", lr * scale)):
        for p, p0 in zip(groups[name]["params"], before[name]):
            torch.testing.assert_close(p0 - p.detach(), torch.full_like(p, rate))


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_an_explicit_predictor_lr_takes_precedence_over_the_scale(make_lm, scale):
    lm = make_lm(method="zerosiam", lr=1e-3, predictor_lr=2e-2, predictor_lr_scale=scale)
    assert {g["name"]: g["lr"] for g in lm.optimizer.param_groups}["predictor"] == 2e-2


def test_predictor_lr_scale_default_is_the_lora_rate():
    # the protocol's choice (not the official per-backbone ratio): kept until a study says otherwise
    assert AdaptConfig(method="zerosiam").method_config.predictor_lr_scale == 1.0


@pytest.mark.parametrize("spec, expected", [
    ("tent", True), ("tent:nesterov=false", False), ("tent:nesterov=true", True),
    ("sar", False), ("come", False), ("zerosiam", False), ("zerosiam:nesterov=true", True),
    ("tent:momentum=0", False),  # SGD refuses Nesterov without momentum
])
def test_tent_nesterov_is_the_shared_setting_and_reaches_sgd(tok, spec, expected):
    """`tent:nesterov=false` is the shared `AdaptConfig.nesterov` (no method setting shadows it):
    Tent's repository steps with Nesterov, the SAR, COME and ZeroSiam repositories run their
    Tent baseline with plain momentum."""
    cfg = AdaptConfig.from_spec(spec, {"max_new_tokens": 4})
    assert "nesterov" not in cfg.method_args
    lm = ZeroSiamLM(tiny_model("llama"), tok, cfg)
    assert {g["nesterov"] for g in lm.optimizer.param_groups} == {expected}


class Recording(EntropyMinLogitsProcessor):
    """The EM-INF processor, keeping the scores it receives at each decoding step."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.detach().clone())
        return super().__call__(input_ids, scores)


def _recording_eminf(lm, monkeypatch) -> Recording:
    c = lm.method.cfg
    proc = Recording(c.logit_steps, c.logit_lr, c.threshold, c.kl_weight)
    monkeypatch.setattr(lm.method, "logits_processors", lambda _lm: [proc])
    return proc


@pytest.mark.parametrize("temperature", [0.0, 0.1, 0.7, 1.5])
def test_eminf_temperature_is_the_shared_setting_and_reaches_generate(tok, temperature, monkeypatch):
    """`eminf:temperature=0.1` (the official script's) samples; the default 0 is greedy."""
    cfg = AdaptConfig.from_spec(f"eminf:temperature={temperature}", {"max_new_tokens": 3})
    assert "temperature" not in cfg.method_args
    lm = ZeroSiamLM(tiny_model("llama"), tok, cfg)
    seen = {}

    def generate(**kw):
        seen.update(kw)
        return torch.cat([kw["input_ids"], kw["input_ids"][:, -1:].repeat(1, 3)], 1)

    monkeypatch.setattr(lm.hf, "generate", generate)
    lm.generate_ids(torch.tensor([[5, 6, 7]]))
    assert seen["do_sample"] is (temperature > 0)
    assert seen["temperature"] == (temperature if temperature > 0 else None)
    assert any(isinstance(p, EntropyMinLogitsProcessor) for p in seen["logits_processor"])


@pytest.mark.parametrize("temperature", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_eminf_sees_the_raw_logits_when_the_model_sets_no_processor(tok, temperature, seed, monkeypatch):
    """The order differs from the official code (HF's processors, then EM-INF; official: EM-INF
    first), and it changes nothing unless the model's generation config turns a processor on:
    the temperature and top-p warpers come after EM-INF in both."""
    lm = ZeroSiamLM(tiny_model("llama", seed=seed), tok,
                    AdaptConfig(method="eminf", temperature=temperature, top_p=0.9, max_new_tokens=4, seed=seed))
    proc = _recording_eminf(lm, monkeypatch)
    _, raw = lm.generate_ids(torch.tensor([[5, 6, 7, 8]]), return_logits=True)  # (1, n, V)
    assert len(proc.seen) == raw.shape[1]
    for step, scores in enumerate(proc.seen):
        torch.testing.assert_close(scores.float(), raw[:, step].float())


def test_eminf_sees_penalised_logits_when_the_model_sets_a_repetition_penalty(tok, monkeypatch):
    """Where the model's generation config sets a processor (Qwen2.5's repetition_penalty 1.05),
    it acts before EM-INF here and after it in the official code."""
    lm = ZeroSiamLM(tiny_model("llama"), tok, AdaptConfig(method="eminf", max_new_tokens=4))
    lm.hf.generation_config.repetition_penalty = 1.5
    proc = _recording_eminf(lm, monkeypatch)
    _, raw = lm.generate_ids(torch.tensor([[5, 6, 7, 8]]), return_logits=True)
    assert not torch.allclose(proc.seen[0].float(), raw[:, 0].float())
