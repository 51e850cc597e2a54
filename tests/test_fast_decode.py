"""The fast greedy loop (zs_llm.decode) gives `generate`'s tokens and raw logits bit for bit, alone
and in a left-padded batch, with rows ending at different times, in fp32 and bf16, through folded,
unfolded and per-row-routed LoRA; what it does not cover goes through `generate` unchanged."""

import pytest
import torch
import transformers as tf

from zs_llm import AdaptConfig, Streams, ZeroSiamLM
from zs_llm.decode import greedy_decode, unsupported
from zs_llm.pool import generate_rows
from zs_llm.testing import char_tokenizer, tiny_config, tiny_model

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)

IDS = torch.tensor([[0, 0, 0, 17, 40, 41, 9], [21, 22, 23, 24, 25, 26, 27], [0, 0, 0, 0, 0, 30, 31]])


def model_of(arch: str, dtype=torch.float32):
    if arch in ("qwen3", "gemma"):  # built here: zs_llm.testing has no tiny config for them
        c = tiny_config("llama")
        cls = tf.Qwen3Config if arch == "qwen3" else tf.GemmaConfig
        kw = {k: getattr(c, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "num_key_value_heads", "bos_token_id",
                                         "eos_token_id", "pad_token_id")}
        torch.manual_seed(0)
        m = tf.AutoModelForCausalLM.from_config(cls(**kw, head_dim=8)).eval()
    else:
        m = tiny_model(arch)
    return m.to(dtype)


def generate(m, ids, mask, n):
    out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, temperature=None,
                     top_p=None, top_k=None, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    return out.sequences, torch.stack(out.logits, 1)


def with_early_eos(m, ids, mask, n=24):
    """Make a token that row 0 generates early the model's EOS: rows then stop at different times."""
    seqs, _ = generate(m, ids, mask, n)
    m.generation_config.eos_token_id = int(seqs[0, ids.shape[1] + 3])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3", "gemma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_generate(arch, dtype):
    m = model_of(arch, dtype)
    assert unsupported(m, 64) is None
    with_early_eos(m, IDS, (IDS != 0).long())
    # alone, two rows without padding (no mask either), left-padded rows ending at different steps
    for ids in (IDS[1:2], torch.cat([IDS[1:2], IDS[1:2].flip(1)]), IDS):
        mask = (ids != 0).long()
        ref, ref_logits = generate(m, ids, mask, 24)
        got, logits = greedy_decode(m, ids, mask, 24, 0, return_logits=True)
        assert torch.equal(got, ref)
        assert torch.equal(logits, ref_logits)
        assert torch.equal(greedy_decode(m, ids, mask, 24, 0), ref)
    assert (ref[:, IDS.shape[1]:] == 0).any() and ref.shape[1] > IDS.shape[1] + 4  # some rows ended, some ran on


@pytest.mark.parametrize("arch", ["gemma2", "gpt_neox", "gpt2"])
def test_other_architectures_fall_back_to_generate(arch, monkeypatch):
    m = tiny_model(arch)
    assert "architecture" in unsupported(m, 64)
    lm = ZeroSiamLM(m, char_tokenizer(), AdaptConfig(method="tent", max_new_tokens=12))
    ids = lm.encode("What is 2+3?")
    fast = lm.generate_ids(ids, return_logits=True)
    lm.fast_greedy_drafts = False
    slow = lm.generate_ids(ids, return_logits=True)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_unsupported_settings_named():
    m = tiny_model("llama")
    m.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in unsupported(m)
    m.generation_config.repetition_penalty = None
    m.generation_config.cache_implementation = "static"
    assert "cache_implementation" in unsupported(m)
    m = tiny_model("mistral")
    m.config.sliding_window = 16
    assert "sliding window" in unsupported(m, 40) and unsupported(m, 16) is None


def moved_lora(lm, seed: int):
    """Give the wrapper's LoRA a real update (B off zero), as after adaptation steps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in lm.named_trainable():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def count_generate(monkeypatch, model):
    """The max_new_tokens of every `generate` call on `model` (the fast loop calls it for 1)."""
    calls = []
    real = model.generate

    def spy(*a, **kw):
        calls.append(kw.get("max_new_tokens"))
        return real(*a, **kw)

    monkeypatch.setattr(model, "generate", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # LoRA folded (fp32) or unfolded (bf16)
@pytest.mark.parametrize("method", ["zerosiam", "slot"])  # slot: a hook before the head
def test_wrapper_drafts_equal_generate(dtype, method, monkeypatch):
    lm = ZeroSiamLM(tiny_model("llama").to(dtype), char_tokenizer(), AdaptConfig(method=method, max_new_tokens=20))
    if method == "slot":
        lm.method.on_problem_start(lm, lm.encode("warm the hook up"))
        assert lm.method._ensure(lm).abs().sum() > 0  # the hook moves the hidden state
    else:
        moved_lora(lm, 0)
    ids = lm.encode("Compute 17*3 please")
    calls = count_generate(monkeypatch, lm.hf)
    fast = lm.generate_ids(ids, return_logits=True)
    assert calls == [1]  # the fast loop ran (generate only for the prompt and first token)
    lm.fast_greedy_drafts = False
    slow = lm.generate_ids(ids, return_logits=True)
    assert calls == [1, 20]
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    lm.fast_greedy_drafts = True
    lm.zs_config.temperature = 0.7  # sampling goes through generate
    lm.generate_ids(ids)
    assert calls[-1] == 20


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooled_drafts_equal_generate(dtype, monkeypatch):
    lm = ZeroSiamLM(tiny_model("llama").to(dtype), char_tokenizer(), AdaptConfig(method="zerosiam", max_new_tokens=16))
    streams = Streams(lm)
    lms = [streams.stream(f"s{i}", AdaptConfig(method="zerosiam", max_new_tokens=16, seed=i)) for i in range(3)]
    for i, s in enumerate(lms):
        moved_lora(s, i)
    prompts = [s.encode(p) for s, p in zip(lms, ["What is 2+3?", "x", "a longer prompt: 12 + 30 = ?"])]
    calls = count_generate(monkeypatch, lm.hf)
    fast = generate_rows(lms, prompts, [True, False, True])
    assert calls == [1]
    lms[0].fast_greedy_drafts = False  # the pool's host decides
    slow = generate_rows(lms, prompts, [True, False, True])
    assert calls == [1, 16]
    for (a, la), (b, lb) in zip(fast, slow):
        assert torch.equal(a, b)
        assert (la is None and lb is None) or torch.equal(la, lb)


class Recorder:
    """A streamer that keeps what it is handed."""

    def __init__(self):
        self.got, self.ended = [], 0

    def put(self, value):
        self.got.append(value.clone())

    def end(self):
        self.ended += 1


def test_streamer_sees_what_generate_hands_it():
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="tent", max_new_tokens=12))
    ids = lm.encode("What is 2+3?")
    seen = []
    for fast in (True, False):
        lm.fast_greedy_drafts = fast
        rec = Recorder()
        lm.generate_ids(ids, streamer=rec)
        seen.append(rec)
    fast, slow = seen
    assert len(fast.got) == len(slow.got) == 13 and fast.ended == slow.ended == 1
    assert all(torch.equal(a, b) for a, b in zip(fast.got, slow.got))


def test_folding_puts_every_layer_back_when_it_fails_half_way(monkeypatch):
    """An error while folding LoRA for a draft (here in layer 1's update) leaves no layer folded:
    every base weight is the model's own tensor again, unchanged, and drafts still equal generate."""
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam", max_new_tokens=12))
    moved_lora(lm, 0)
    bases = [(m, m.get_base_layer()) for m in lm.hf.modules() if hasattr(m, "get_delta_weight")]
    before = [(b.weight, b.weight.detach().clone()) for _, b in bases]
    ids = lm.encode("Compute 17*3 please")
    ref = lm.generate_ids(ids, return_logits=True)
    q = lm.hf.model.layers[1].self_attn.q_proj
    real = q.get_delta_weight

    def boom(name):
        raise RuntimeError("boom")

    monkeypatch.setattr(q, "get_delta_weight", boom)
    with pytest.raises(RuntimeError, match="boom"):
        lm.generate_ids(ids)
    assert all(b.weight is w and torch.equal(w, v) for (_, b), (w, v) in zip(bases, before))
    assert not any(m.merged for m, _ in bases)
    monkeypatch.setattr(q, "get_delta_weight", real)
    again = lm.generate_ids(ids, return_logits=True)
    assert torch.equal(again[0], ref[0]) and torch.equal(again[1], ref[1])
