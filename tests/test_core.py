import json

import pytest
import torch

import zs_llm
from zs_llm import AdaptConfig, ZeroSiamLM, adapt_generate
from zs_llm.adapt import adapt_on_problem, adapt_step, make_batch
from zs_llm.predictor import PREDICTORS, build_predictor
from zs_llm.testing import ARCHS, tiny_model

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)

ARCH_LIST = list(ARCHS)


def base_state(lm):
    """Every base-model tensor (not LoRA) by name, cloned."""
    return {n: p.detach().clone() for n, p in lm.hf.named_parameters() if "lora_" not in n}


def adapted_state(lm):
    return {n: p.detach().clone() for n, p in lm.named_trainable()}


def prompt_batch(lm, text="What is 3 + 4? Answer: 7"):
    ids = lm.encode(text)
    draft = lm.generate_ids(ids)[0]
    return make_batch(ids, draft, "response")


@pytest.mark.parametrize("arch", ARCH_LIST)
def test_identity_predictor_reproduces_model_logits(arch, make_lm):
    lm = make_lm(arch)
    ids = lm.encode("Is 2 + 2 = 4?")
    with torch.no_grad():
        ref = lm.hf(input_ids=ids).logits[0]
        online = lm.head_logits(lm.predictor(lm.features(ids)))
        target = lm.head_logits(lm.features(ids))
    assert torch.equal(online, target)
    torch.testing.assert_close(online, ref, rtol=1e-5, atol=1e-5)


def test_gemma2_softcapping_is_applied_to_both_branches(make_lm):
    lm = make_lm("gemma2")
    assert lm._post == [("softcap", 5.0)]
    ids = lm.encode("softcap")
    with torch.no_grad():
        online = lm.head_logits(lm.predictor(lm.features(ids)))
    assert online.abs().max() <= 5.0
    torch.testing.assert_close(online, lm.hf(input_ids=ids).logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCH_LIST)
def test_step_moves_only_lora_and_predictor(arch, make_lm):
    lm = make_lm(arch, lr=1e-2, predictor_lr=1e-2)
    base0, ad0 = base_state(lm), adapted_state(lm)
    stats = adapt_step(lm, prompt_batch(lm))
    assert not stats["skipped"]
    for n, p in lm.hf.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base0[n]), f"base weight {n} changed"
    moved = {n for n, p in lm.named_trainable() if not torch.equal(p, ad0[n])}
    assert any(n.startswith("predictor.") for n in moved)
    assert any("lora_B" in n for n in moved)
    assert all("lora_" in n or n.startswith("predictor.") for n in moved)
    # tied embeddings and the head are frozen
    assert not lm.head.weight.requires_grad
    assert not lm.hf.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reset_restores_bitwise(arch, make_lm):
    lm = make_lm(arch, lr=1e-2, predictor_lr=1e-2)
    ad0 = adapted_state(lm)
    for _ in range(2):
        adapt_step(lm, prompt_batch(lm))
    assert any(not torch.equal(p, ad0[n]) for n, p in lm.named_trainable())
    lm.reset()
    for n, p in lm.named_trainable():
        assert torch.equal(p, ad0[n]), n
    assert len(lm.optimizer.state) == 0
    # a step after reset equals a step on a fresh wrapper
    fresh = make_lm(arch, lr=1e-2, predictor_lr=1e-2)
    adapt_step(lm, prompt_batch(lm))
    adapt_step(fresh, prompt_batch(fresh))
    for (n, p), (_, q) in zip(lm.named_trainable(), fresh.named_trainable()):
        assert torch.equal(p, q), n


def test_snapshot_restore_includes_optimizer_state(make_lm):
    lm = make_lm(lr=1e-2, predictor_lr=1e-2)
    adapt_step(lm, prompt_batch(lm))
    snap = lm.snapshot()
    opt0 = {k: {kk: vv.clone() for kk, vv in v.items() if torch.is_tensor(vv)} for k, v in lm.optimizer.state.items()}
    adapt_step(lm, prompt_batch(lm))
    lm.restore(snap)
    for k, v in lm.optimizer.state_dict()["state"].items():
        for kk, vv in v.items():
            if torch.is_tensor(vv):
                assert torch.equal(vv, list(opt0.values())[k][kk])
    for n, t in snap["tensors"].items():
        assert torch.equal(lm.state_tensors()[n], t)


@pytest.mark.parametrize("schedule,answer", [("online", "draft"), ("episodic", "regenerate")])
def test_online_carries_state_episodic_does_not(schedule, answer, make_lm):
    lm = make_lm(lr=1e-2, predictor_lr=1e-2, schedule=schedule, answer=answer)
    ad0 = adapted_state(lm)
    adapt_on_problem(lm, "first problem: 1 + 1")
    after_one = adapted_state(lm)
    adapt_on_problem(lm, "second problem: 2 + 2")
    after_two = adapted_state(lm)
    changed_from_start = any(not torch.equal(after_two[n], ad0[n]) for n in ad0)
    assert changed_from_start
    if schedule == "online":
        # the second update started from the first's state: differs from one update on a fresh model
        fresh = make_lm(lr=1e-2, predictor_lr=1e-2, schedule=schedule, answer=answer)
        adapt_on_problem(fresh, "second problem: 2 + 2")
        assert any(not torch.equal(after_two[n], p) for n, p in fresh.named_trainable())
        assert any(not torch.equal(after_two[n], after_one[n]) for n in ad0)
    else:
        fresh = make_lm(lr=1e-2, predictor_lr=1e-2, schedule=schedule, answer=answer)
        adapt_on_problem(fresh, "second problem: 2 + 2")
        for n, p in fresh.named_trainable():
            assert torch.equal(after_two[n], p), n


def test_predictions_come_from_target_branch(make_lm):
    lm = make_lm(lr=0.0, predictor_lr=1.0, optimizer="sgd", momentum=0.0, grad_clip=None)
    ids = lm.encode("target branch")
    before = lm.generate_ids(ids)
    with torch.no_grad():
        lm.predictor.weight.mul_(-3.0)  # a wildly different predictor changes nothing generated
    assert torch.equal(lm.generate_ids(ids), before)


@pytest.mark.parametrize("kind", sorted(PREDICTORS))
def test_predictors_init_and_reset(kind):
    p = build_predictor(kind, 5)
    z = torch.randn(4, 5)
    if kind == "fixed_random":
        assert not any(q.requires_grad for q in p.parameters())
        assert not torch.equal(p(z), z)
    else:
        assert torch.equal(p(z), z)
        with torch.no_grad():
            for q in p.parameters():
                q.add_(0.1)
        assert p.deviation() > 0
        p.reset()
        assert torch.equal(p(z), z) and p.deviation() == 0


def step_with_corrupted_loss(lm, monkeypatch, corrupt, **kw):
    """One adapt_step whose token loss output is passed through `corrupt` first; asserts the
    step was skipped and the adapted state and optimizer are bitwise as before it."""
    adapt_step(lm, prompt_batch(lm))
    before = lm.snapshot()
    orig = lm.method.token_loss
    monkeypatch.setattr(lm.method, "token_loss", lambda *a: corrupt(*orig(*a)))
    stats = adapt_step(lm, prompt_batch(lm), **kw)
    assert stats["skipped"]
    for n, t in before["tensors"].items():
        assert torch.equal(lm.state_tensors()[n], t)


def test_non_finite_loss_skips_and_restores(make_lm, monkeypatch):
    lm = make_lm(lr=1e-2, predictor_lr=1e-2)
    with pytest.warns(RuntimeWarning, match="problem 'p7'"):
        step_with_corrupted_loss(lm, monkeypatch, lambda loss, w, ex, grad: (loss * float("nan"), w, ex,
                                                                              grad * float("nan")), problem_id="p7")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_gradient_entry_skips_the_step(bad, make_lm, monkeypatch):
    """A finite loss whose gradient has a single NaN or infinite entry is skipped too."""
    from zs_llm.adapt import _all_finite

    def one_bad(loss, w, ex, grad):
        grad = grad.clone()
        grad[0, 3] = bad
        return loss, w, ex, grad

    with pytest.warns(RuntimeWarning, match="non-finite"):
        step_with_corrupted_loss(make_lm(lr=1e-2, predictor_lr=1e-2), monkeypatch, one_bad)
    t = torch.randn(5, 7)
    assert _all_finite([t, None, torch.empty(0)]) and _all_finite([])
    t[2, 4] = bad
    assert not _all_finite([torch.randn(3), t])


def test_clear_errors(make_lm, tok):
    lm = make_lm()
    with pytest.raises(ValueError, match="empty prompt"):
        adapt_on_problem(lm, "   ")
    with pytest.raises(ValueError, match="context is 2048"):
        adapt_on_problem(lm, "x" * 2100)
    with pytest.raises(ValueError, match="AutoModelForCausalLM"):
        ZeroSiamLM(tiny_model("llama").model, tok)
    with pytest.raises(ValueError, match="choose one of"):
        AdaptConfig().replace(divergence="l2")
    with pytest.raises(ValueError, match="choose one of"):
        AdaptConfig(optimizer="adam")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^lr=.* not a finite number"):
            AdaptConfig(lr=bad)
        with pytest.raises(ValueError, match="^alpha=.* not a finite number"):
            AdaptConfig().replace(alpha=bad)
    with pytest.raises(TypeError, match="tent's own: none"):
        AdaptConfig(method="tent").replace(alpha=0.5)
    with pytest.raises(ValueError, match="answer='regenerate'"):
        AdaptConfig(schedule="episodic", answer="draft")
    with pytest.raises(KeyError, match="known: .*zerosiam"):
        AdaptConfig(method="zerosim")
    with pytest.raises(TypeError, match="shared AdaptConfig fields"):
        AdaptConfig().replace(learning_rate=1)
    with pytest.raises(ValueError, match="lora_target_modules"):
        make_lm(lora_target_modules=["nonexistent_proj"])


def test_adapt_generate_plain_model_and_result(tok):
    model = tiny_model("qwen2")
    text = adapt_generate(model, [{"role": "user", "content": "2+2?"}], tokenizer=tok, max_new_tokens=5)
    assert isinstance(text, str)
    lm = ZeroSiamLM(tiny_model("llama"), tok, AdaptConfig(max_new_tokens=5))
    res = adapt_generate(lm, "2+2?", return_result=True, max_new_tokens=3)
    assert res.draft_tokens <= 3 and lm.zs_config.max_new_tokens == 5
    step = res.steps[0]
    for key in ("loss", "entropy", "divergence", "logit_norm", "logit_norm_centered", "max_prob", "predictor_dev",
                "tokens", "time_s"):
        assert key in step, key
    assert res.timings["total_s"] > 0
    with pytest.raises(ValueError, match="cannot change"):
        adapt_generate(lm, "2+2?", lr=1.0)


def test_prompt_signal_uses_prompt_tokens(make_lm):
    lm = make_lm(signal="prompt", answer="regenerate")
    res = adapt_on_problem(lm, "a prompt of some length")
    assert res.steps[0]["tokens"] == lm.encode("a prompt of some length").shape[1] - 1


def test_save_and_load_roundtrip(make_lm, tok, tmp_path):
    lm = make_lm(lr=1e-2, predictor_lr=1e-2)
    adapt_on_problem(lm, "adapt me")
    lm.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "predictor.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    meta = json.loads((tmp_path / "zs_llm_config.json").read_text())
    assert meta["adapt_config"]["lr"] == 1e-2
    again = ZeroSiamLM.from_pretrained(tmp_path, model=tiny_model("llama"), tokenizer=tok)
    for (n, p), (_, q) in zip(lm.named_trainable(), again.named_trainable()):
        assert torch.equal(p, q), n


def test_load_local_folder_and_unwrap(tok, tmp_path):
    model = tiny_model("gpt_neox")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = zs_llm.load(str(tmp_path), max_new_tokens=4)
    assert type(lm.hf).__name__ == "GPTNeoXForCausalLM"
    assert lm.head is lm.hf.get_output_embeddings()  # (embed_out in older transformers)
    plain = lm.unwrap()
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    with pytest.raises(FileNotFoundError):
        zs_llm.load_model("./no/such/model")


def test_linear_predictor_deviation_is_frobenius_distance_from_identity():
    p = build_predictor("linear", 6)
    with torch.no_grad():
        p.weight.add_(0.01 * torch.randn(6, 6))
    want = torch.linalg.matrix_norm(p.weight.detach() - torch.eye(6)).item()
    assert p.deviation() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_generation_with_lora_folded_in_matches_and_restores_exactly(arch, tok):
    """Generation runs LoRA folded into temporary weights: same logits as the unmerged layers,
    and the base weights are the very same tensors, bitwise unchanged, afterwards."""
    lm = ZeroSiamLM(tiny_model(arch), tok, AdaptConfig(lr=0.5, predictor_lr=0.5, guard=False, max_new_tokens=4))
    with torch.no_grad():  # a LoRA far from zero
        for n, p in lm.hf.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = lm.encode("what is 2 + 3?")
    before = {n: (p, p.detach().clone()) for n, p in lm.hf.named_parameters()}
    with torch.no_grad():
        unmerged = lm.hf(ids).logits
        with lm.lora_merged():
            merged = lm.hf(ids).logits
            assert any(m.merged for m in lm.hf.modules() if hasattr(m, "merged_adapters"))
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    after = dict(lm.hf.named_parameters())
    assert after.keys() == before.keys()
    for n, (p, v) in before.items():
        assert after[n] is p and torch.equal(p, v), n
    assert not any(m.merged for m in lm.hf.modules() if hasattr(m, "merged_adapters"))
    lm.generate_ids(ids)  # through the merged path, then a step still reaches the LoRA parameters
    stats = adapt_on_problem(lm, "what is 2 + 3?").steps[0]
    assert stats["grad_norm"] > 0


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_draft_logits_are_the_target_branch_at_the_response_positions(arch, temperature, make_lm):
    """The logits kept from generation are the raw target-branch logits (soft-capping included,
    no temperature) that the step would otherwise recompute from the features."""
    lm = make_lm(arch, max_new_tokens=5, temperature=temperature, top_p=0.9)
    with torch.no_grad():  # LoRA away from zero, so the kept logits include it
        for n, p in lm.hf.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = lm.encode("What is 3 + 4?")
    new, logits = lm.generate_ids(ids, return_logits=True)
    assert logits.shape == (1, new.shape[1], lm.head.weight.shape[0]) and logits.dtype == torch.float32
    batch = make_batch(ids, new[0], "response")
    with torch.no_grad():
        want = lm.head_logits(lm.features(batch.input_ids, batch.positions))
    torch.testing.assert_close(logits[0], want.float(), rtol=1e-4, atol=1e-4)


def count_head_calls(lm):
    calls = []
    lm.head.register_forward_hook(lambda m, a, o: calls.append(1))
    return calls


@pytest.mark.parametrize("steps", [1, 2])
def test_kept_draft_logits_save_a_head_matmul_and_change_nothing(steps, make_lm, monkeypatch):
    """With the draft's logits kept, each problem's first step runs the head once less (one
    chunk), later steps recompute the target, and the adapted state matches the recomputing
    run's."""
    kept = []
    orig = zs_llm.adapt.adapt_step

    def spy(lm_, batch, pid=None):
        kept.append(batch.target_logits is not None)
        return orig(lm_, batch, pid)

    monkeypatch.setattr(zs_llm.adapt, "adapt_step", spy)
    runs = {}
    for mib in (512.0, 0.0):
        lm = make_lm("llama", seed=3, steps=steps, lr=0.05, predictor_lr=0.05, guard=False, draft_logits_mib=mib)
        calls = count_head_calls(lm)
        kept.clear()
        results = [adapt_on_problem(lm, q) for q in ("What is 1 + 2?", "What is 5 * 3?", "Name a prime.")]
        runs[mib] = (len(calls), list(kept), adapted_state(lm), results)
    (calls_k, kept_k, state_k, res_k), (calls_r, kept_r, state_r, res_r) = runs[512.0], runs[0.0]
    assert kept_k == [True] + [False] * (steps - 1) + ([True] + [False] * (steps - 1)) * 2
    assert not any(kept_r)
    assert calls_r - calls_k == 3  # one head matmul fewer per problem
    for n in state_r:
        torch.testing.assert_close(state_k[n], state_r[n], rtol=1e-4, atol=1e-6)
    assert [r.answer for r in res_k] == [r.answer for r in res_r]
    assert res_k[0].steps[0]["loss"] == pytest.approx(res_r[0].steps[0]["loss"], rel=1e-4)
    assert res_k[0].steps[0]["entropy"] == pytest.approx(res_r[0].steps[0]["entropy"], rel=1e-4)


def test_draft_logits_kept_only_when_they_fit_and_the_method_has_a_target_branch(make_lm):
    from zs_llm.adapt import _keep_draft_logits

    lm = make_lm("llama", max_new_tokens=6)
    per_token_mib = lm.head.weight.shape[0] * 4 / 2**20
    assert _keep_draft_logits(lm)
    assert not _keep_draft_logits(make_lm("llama", max_new_tokens=6, draft_logits_mib=0))
    assert not _keep_draft_logits(make_lm("llama", max_new_tokens=6, draft_logits_mib=5.9 * per_token_mib))
    assert _keep_draft_logits(make_lm("llama", max_new_tokens=6, draft_logits_mib=6 * per_token_mib))
    assert not _keep_draft_logits(make_lm("llama", method="tent"))  # Tent's target is its online branch
    with pytest.raises(ValueError, match="draft_logits_mib"):
        AdaptConfig(draft_logits_mib=-1)


def checkpointing(model) -> bool:
    """Whether activations are recomputed: transformers 5.x's name (the older one warns), else the older."""
    new = hasattr(type(model), "is_activation_checkpointing")
    return model.is_activation_checkpointing if new else model.is_gradient_checkpointing


def test_gradient_checkpointing_gives_the_same_step(make_lm):
    """Recomputing activations in the backward pass changes memory, not the update."""
    states = []
    for on in (False, True):
        lm = make_lm("llama", lr=0.05, predictor_lr=0.05, guard=False, gradient_checkpointing=on)
        assert checkpointing(lm.hf) == on
        init = adapted_state(lm)
        adapt_step(lm, prompt_batch(lm))
        states.append(adapted_state(lm))
        assert any(not torch.equal(v, init[n]) for n, v in states[-1].items())
        lm.set_gradient_checkpointing(not on)
        assert checkpointing(lm.hf) == (not on)
    for n in states[0]:
        torch.testing.assert_close(states[1][n], states[0][n], rtol=1e-5, atol=1e-7)
