"""Pooled streams (zs_llm.Streams, the loop in zs_llm.adapt): several streams on one model, drafts
and updates batched, give every stream what it gets alone (tiny random models, fp32)."""

import math

import pytest
import torch

from zs_llm import AdaptConfig, Streams, ZeroSiamLM
from zs_llm.adapt import adapt_on_problem
from zs_llm.testing import tiny_model

PROMPTS = ["What is 2+3?", "Compute 17*3 please", "x", "Solve: 10 - 4 = ?", "hello there, add 5 and 9",
           "a much longer prompt, to make the padding of the pool matter: 12 + 30 = ?"]
STREAMS = {  # name: (config, number of problems)
    "zerosiam": (dict(method="zerosiam", lr=0.05, predictor_lr=0.05), 6),
    "tent": (dict(method="tent", lr=0.05), 4),
    "come": (dict(method="come", lr=0.05, optimizer="adamw"), 6),
    "zs_clip2": (dict(method="zerosiam", grad_clip=1.0, lr=0.05, steps=2, answer="regenerate"), 3),
    "sar": (dict(method="sar", lr=0.05), 5),  # sequential update fallback
    "eata": (dict(method="zerosiam+eata", lr=0.05), 2),  # sequential update fallback
    "slot": (dict(method="slot"), 6),
    "eminf": (dict(method="eminf"), 5),
    "tent_epi": (dict(method="tent", lr=0.05, schedule="episodic", answer="regenerate"), 4),
    "noadapt": (dict(method="noadapt"), 3),
}
STAT_KEYS = ("loss", "entropy", "grad_norm", "predictor_dev", "tokens_selected")


def config(d, **kw):
    return AdaptConfig.from_dict({"max_new_tokens": 7, **d, **kw})


def close(a, b, rtol=1e-4, atol=1e-5):
    if a is None or b is None or isinstance(a, bool):
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (math.isnan(a) and math.isnan(b))


def check_same(alone, pooled, name):
    assert alone.draft == pooled.draft, name
    assert alone.answer == pooled.answer, name
    assert len(alone.steps) == len(pooled.steps), name
    for sa, sb in zip(alone.steps, pooled.steps):
        for k in STAT_KEYS:
            assert close(sa.get(k), sb.get(k)), (name, k, sa.get(k), sb.get(k))
    assert alone.events == pooled.events, name


def check_state(a, b, name, atol=1e-5):
    ta, tb = a.state_tensors(), b.state_tensors()
    assert ta.keys() == tb.keys(), name
    for k in ta:
        assert torch.allclose(ta[k].float(), tb[k].float(), atol=atol, rtol=1e-4, equal_nan=True), (name, k)


def run_alone(tok, cfg, n, arch="llama"):
    lm = ZeroSiamLM(tiny_model(arch), tok, cfg)
    return [adapt_on_problem(lm, p, problem_id=str(i)) for i, p in enumerate(PROMPTS[:n])], lm


def test_a_new_stream_starts_as_a_new_wrapper(tok):
    cfg = config(STREAMS["zerosiam"][0])
    alone = ZeroSiamLM(tiny_model("llama"), tok, cfg)
    host = Streams(ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"})))
    for other in ("a", "b"):
        host.stream(other, config(STREAMS["tent"][0], seed=5))
    s = host.stream("math500/zerosiam", cfg)
    assert host.stream("math500/zerosiam") is s and set(host.streams) == {"a", "b", "math500/zerosiam"}
    a, b = alone.state_tensors(), s.state_tensors()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(s.trainable_parameters()) == len(alone.trainable_parameters())
    with pytest.raises(ValueError, match="another config"):
        host.stream("a", cfg)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_pooled_streams_match_streams_run_alone(tok, arch):
    names = list(STREAMS) if arch == "llama" else ["zerosiam", "tent", "slot"]
    host = Streams(ZeroSiamLM(tiny_model(arch), tok, config({"method": "noadapt"})))
    for n in names:
        host.stream(n, config(STREAMS[n][0]))
    pooled = {n: [] for n in names}
    for i in range(max(STREAMS[n][1] for n in names)):
        live = [n for n in names if i < STREAMS[n][1]]  # unequal lengths: finished streams leave the pool
        out = host.adapt_generate({n: PROMPTS[i] for n in live},
                                       {n: str(i) for n in live} if i % 2 else None)
        for n in live:
            pooled[n].append(out[n])
    for n in names:
        cfg, count = STREAMS[n]
        alone, lm = run_alone(tok, config(cfg), count, arch)
        for a, b in zip(alone, pooled[n]):
            b.problem_id = a.problem_id
            check_same(a, b, n)
        check_state(lm, host.stream(n), n)
        assert host.stream(n).problems_seen == lm.problems_seen


def test_updates_moved_each_stream_only_by_its_own_problems(tok):
    """A pooled stream's state does not depend on who else is in the pool (no cross-talk)."""
    cfg = config(STREAMS["zerosiam"][0])
    solo = Streams(ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"})))
    busy = Streams(ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"})))
    solo.stream("z", cfg), busy.stream("z", cfg), busy.stream("t", config(STREAMS["tent"][0]))
    for i in range(3):
        solo.adapt_generate({"z": PROMPTS[i]})
        busy.adapt_generate({"z": PROMPTS[i], "t": PROMPTS[5 - i]})
    check_state(solo.stream("z", cfg), busy.stream("z", cfg), "z")
    moved = solo.stream("z").state_tensors()
    init = ZeroSiamLM(tiny_model("llama"), tok, cfg).state_tensors()
    assert any(not torch.equal(moved[k], init[k]) for k in moved)


def test_a_pooled_update_is_exact_whatever_the_drafts_beside_it(tok):
    """A ZeroSiam stream's update is bit-identical whichever non-adapting stream (SLOT here, whose
    update does not join the pool's) shares its draft batch: a pooled row's draft logits round
    with the batch's left padding, so they never serve as the target branch (a rerun that
    replays the adapting streams while the others resume elsewhere repeats every row)."""
    out = []
    for other in (PROMPTS[2], PROMPTS[5]):  # the SLOT row's prompt sets the batch's padding
        host = Streams(ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"})))
        for n in ("zerosiam", "tent", "slot"):
            host.stream(n, config(STREAMS[n][0]))
        res = host.adapt_generate({"zerosiam": PROMPTS[0], "tent": PROMPTS[0], "slot": other})
        out.append((res["zerosiam"], host.stream("zerosiam").state_tensors()))
    (a, sa), (b, sb) = out
    assert a.draft == b.draft and len(a.steps) == len(b.steps) == 1
    for k in ("loss", "entropy", "divergence", "grad_norm"):
        assert a.steps[0][k] == b.steps[0][k], (k, a.steps[0][k], b.steps[0][k])
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pool_checkpoint_resumes_alone_and_back(tok, tmp_path):
    """A stream's checkpoint carries no adapter name: it resumes pooled or alone."""
    from zs_llm.checkpoint import load_checkpoint, save_checkpoint

    cfg = config(STREAMS["zerosiam"][0])
    host = Streams(ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"})))
    host.stream("other", config(STREAMS["tent"][0]))
    adapt_on_problem(host.stream("z", cfg), PROMPTS[0])  # alone, then pooled
    host.adapt_generate({"z": PROMPTS[1], "other": PROMPTS[1]})
    save_checkpoint(host.stream("z"), tmp_path / "ck")
    alone = ZeroSiamLM(tiny_model("llama"), tok, cfg)
    load_checkpoint(alone, tmp_path / "ck")
    check_state(alone, host.stream("z"), "z", atol=0)
    a = adapt_on_problem(alone, PROMPTS[2])
    b = host.adapt_generate({"z": PROMPTS[2], "other": PROMPTS[3]})["z"]
    check_same(a, b, "z")


def test_removed_stream_frees_its_adapter(tok):
    host = Streams(ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"})))
    a = host.stream("a", config(STREAMS["tent"][0]))
    b = host.stream("b", config(STREAMS["zerosiam"][0]))
    n_before = sum(1 for n, _ in host.host.hf.named_parameters() if "lora_" in n)
    host.remove("a")
    assert set(host.streams) == {"b"}
    assert sum(1 for n, _ in host.host.hf.named_parameters() if "lora_" in n) == n_before // 2
    assert all(p.requires_grad for p in b.trainable_parameters())
    adapt_on_problem(b, PROMPTS[0])  # still runs alone after the removal
    assert a.adapter_name not in {n.split(".")[-2] for n, _ in host.host.hf.named_parameters() if "lora_" in n}


def test_bf16_pool_never_folds_lora_into_weights(tok, monkeypatch):
    """In bf16 the pool runs the unmerged LoRA path (never folded into the weights) and agrees
    with a stream's own bf16 drafts, which take the same path."""
    cfg = config(STREAMS["tent"][0])
    host = Streams(ZeroSiamLM(tiny_model("llama").to(torch.bfloat16), tok, config({"method": "noadapt"})))
    host.stream("t", cfg), host.stream("z", config(STREAMS["zerosiam"][0]))
    weights = {n: p.detach().clone() for n, p in host.host.hf.named_parameters() if "lora_" not in n}

    def no_fold(self):
        raise AssertionError("the pool folded LoRA into the weights")

    for i in range(3):
        with monkeypatch.context() as m:
            m.setattr(ZeroSiamLM, "lora_merged", no_fold)
            host.adapt_generate({"t": PROMPTS[i], "z": PROMPTS[i + 1]})
    t = host.stream("t", cfg)
    for n, p in host.host.hf.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, weights[n]), n
    from zs_llm.pool import generate_rows

    ids = t.encode(PROMPTS[4])
    (row, logits), _ = generate_rows([t, host.stream("z")], [ids, host.stream("z").encode(PROMPTS[0])], [True, False])
    alone_ids, alone_logits = t.generate_ids(ids, return_logits=True)
    n = min(len(row), alone_ids.shape[1])
    assert torch.equal(row[:n].cpu(), alone_ids[0, :n].cpu())
    assert (logits[:n] - alone_logits[0, :n]).abs().max() < 0.1  # bf16 rounding of a padded batch


@pytest.mark.parametrize("name", ["adapt_generate", "stream", "streams", "remove_stream", "adapt_generate_pool"])
def test_what_left_the_wrapper_names_where_it_went(name, tok):
    lm = ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"}))
    with pytest.raises(AttributeError, match=rf"ZeroSiamLM\.{name} is gone: use zs_llm\."):
        getattr(lm, name)


def test_a_stream_is_removed_by_name_or_by_itself_and_an_unknown_one_is_named(tok):
    host = Streams(ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"})))
    a, b = host.stream("a", config(STREAMS["tent"][0])), host.stream("b", config(STREAMS["tent"][0]))
    host.remove(a)
    host.remove("b")
    assert host.streams == {} and a.optimizer is None and b.optimizer is None
    left = {n.split(".")[-2] for n, _ in host.host.hf.named_parameters() if "lora_" in n}
    assert not left & {a.adapter_name, b.adapter_name}
    with pytest.raises(KeyError, match="no stream 'a' here"):
        host.remove("a")


def test_sharing_another_models_wrapper_is_refused(tok):
    host = ZeroSiamLM(tiny_model("llama"), tok, config({"method": "noadapt"}))
    with pytest.raises(ValueError, match="share= must be a wrapper of this same model"):
        ZeroSiamLM(tiny_model("llama"), tok, config(STREAMS["tent"][0]), share=host)
