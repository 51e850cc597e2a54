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


# --- prompt-lookup speculation (greedy_decode's `lookup`, ZeroSiamLM.draft_lookup) -------------------------

def brute_candidates(ids: list[int], k: int, history=(), longest: int = 3) -> list[int]:
    """What `_Lookup` must propose, searched the slow way: for n from `longest` down, the latest
    earlier occurrence of the last n tokens (history first, then `ids`) that a token follows."""
    from zs_llm.decode import _Lookup

    full = [t for seq in history for t in [*seq, _Lookup.END]] + list(ids)
    for n in range(min(longest, len(ids)), 0, -1):
        tail = full[-n:]
        for s in range(len(full) - n - 1, -1, -1):
            if full[s: s + n] == tail and full[s + n] != _Lookup.END:
                out = full[s + n: s + n + k]
                return out[: out.index(_Lookup.END)] if _Lookup.END in out else out
    return []


@pytest.mark.parametrize("seed", range(40))
def test_lookup_candidates_equal_a_brute_force_search(seed):
    from zs_llm.decode import _Lookup

    gen = torch.Generator().manual_seed(seed)
    vocab = int(torch.randint(2, 8, (1,), generator=gen))  # small vocabularies: many repeats
    history = [torch.randint(vocab, (int(torch.randint(0, 12, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(int(torch.randint(0, 3, (1,), generator=gen)))]
    ids = torch.randint(vocab, (int(torch.randint(1, 30, (1,), generator=gen)),), generator=gen).tolist()
    index = _Lookup(ids[:1], history=history)
    for i in range(1, len(ids) + 1):  # the index grown token by token answers as a search over the prefix
        for k in (1, 2, 5):
            assert index.candidates(k) == brute_candidates(ids[:i], k, history), (ids[:i], k, history)
        if i < len(ids):
            index.add(ids[i])


class Passes:
    """Counts the decode loop's passes over the layers, and how many verified several rows."""

    def __init__(self, monkeypatch, layers: int):
        import zs_llm.decode as dec

        self.layers, self.single, self.chunks = layers, 0, []
        one, chunk = dec._layer_step, dec._chunk_step

        def one_spy(*a, **kw):
            self.single += 1
            return one(*a, **kw)

        def chunk_spy(lay, x, *a, **kw):
            self.chunks.append(x.shape[0])
            return chunk(lay, x, *a, **kw)

        monkeypatch.setattr(dec, "_layer_step", one_spy)
        monkeypatch.setattr(dec, "_chunk_step", chunk_spy)

    def passes(self) -> int:
        return (self.single + len(self.chunks)) // self.layers


def rounding_yardstick(m, seq: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """How far generate's logits are from the model's own forward over the finished sequence (all
    positions in one pass: the same ops on more rows at once, as a verifying pass does)."""
    width = seq.shape[1] - ref_logits.shape[1]
    with torch.no_grad():
        full = m(input_ids=seq).logits[:, width - 1: -1].float()
    return float((full - ref_logits).abs().max())


def lookup_tol(m, seq, ref_logits) -> float:
    """The distance a verifying pass's logits may have from generate's: 8 times the yardstick's,
    and at least 4 ulps of the largest logit (a yardstick that happens to round alike)."""
    eps = torch.finfo(ref_logits.dtype if ref_logits.dtype != torch.float32 else m.dtype).eps
    return max(8 * rounding_yardstick(m, seq, ref_logits), 4 * eps * float(ref_logits.abs().max()))


def assert_same_choices(got, got_logits, ref, ref_logits, width: int, tol: float):
    """Up to the first token where the two differ, the logits are within `tol`; there (if anywhere)
    generate's choice led the other token by at most twice that: a near-tie decided by rounding."""
    n = min(got.shape[1], ref.shape[1]) - width
    differ = (got[0, width: width + n] != ref[0, width: width + n]).nonzero()
    d = int(differ[0]) if differ.numel() else n
    upto = min(d + 1, n)
    assert float((got_logits[0, :upto] - ref_logits[0, :upto]).abs().max()) <= tol
    if d < n:
        row = ref_logits[0, d]
        assert float(row.max() - row[got[0, width + d]]) <= 2 * tol
    else:
        assert got.shape == ref.shape  # same tokens and the same stop (max_new_tokens or EOS)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3", "gemma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lookup", [1, 2, 4])
def test_lookup_keeps_the_models_greedy_choices(arch, dtype, lookup, monkeypatch):
    m = model_of(arch, dtype)
    m.generation_config.eos_token_id = None  # run to max_new_tokens: tiny random models loop, so candidates hit
    ids = IDS[1:2]
    ref, ref_logits = generate(m, ids, torch.ones_like(ids), 40)
    tol = lookup_tol(m, ref, ref_logits)
    spy = Passes(monkeypatch, m.config.num_hidden_layers)
    got, logits = greedy_decode(m, ids, torch.ones_like(ids), 40, 0, return_logits=True, lookup=lookup)
    assert_same_choices(got, logits, ref, ref_logits, ids.shape[1], tol)
    assert spy.chunks and max(spy.chunks) <= lookup + 1
    assert spy.passes() < 39  # some passes kept several tokens (39: the tokens after generate's first)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lookup_stops_where_generate_stops(arch, monkeypatch):
    """An EOS among a pass's kept tokens ends the draft there; max_new_tokens caps a pass's rows."""
    m = model_of(arch)
    ids = IDS[1:2]
    m.generation_config.eos_token_id = None
    free, _ = generate(m, ids, torch.ones_like(ids), 30)
    spy = Passes(monkeypatch, m.config.num_hidden_layers)
    tried = 0
    for eos in dict.fromkeys(free[0, ids.shape[1] + 1:].tolist()):  # every token the draft makes, as the EOS
        m.generation_config.eos_token_id = eos
        for n in (2, 5, 30):
            ref, ref_logits = generate(m, ids, torch.ones_like(ids), n)
            tol = lookup_tol(m, ref, ref_logits)
            got, logits = greedy_decode(m, ids, torch.ones_like(ids), n, 0, return_logits=True, lookup=3,
                                        history=[free[0].tolist()])  # the draft seen before: 4-row passes
            assert got.shape[1] - ids.shape[1] <= n
            assert_same_choices(got, logits, ref, ref_logits, ids.shape[1], tol)
            tried += 1
    assert tried >= 6 and spy.chunks.count(4) >= tried // 2  # several stops, most within 4-row passes


def test_lookup_leaves_batches_and_padding_bit_equal():
    """Speculation is for one unpadded row; a batch or a padded row decodes as without it."""
    m = model_of("llama")
    for ids in (IDS, IDS[2:3], torch.cat([IDS[1:2], IDS[1:2].flip(1)])):
        mask = (ids != 0).long()
        ref, ref_logits = generate(m, ids, mask, 16)
        got, logits = greedy_decode(m, ids, mask, 16, 0, return_logits=True, lookup=2)
        assert torch.equal(got, ref) and torch.equal(logits, ref_logits)


def test_lookup_history_changes_what_is_tried_not_what_is_kept(monkeypatch):
    m = model_of("llama")
    m.generation_config.eos_token_id = None
    ids = torch.tensor([[5, 9, 14, 3]])  # a prompt too short to find much in
    ref, ref_logits = generate(m, ids, torch.ones_like(ids), 32)
    tol = lookup_tol(m, ref, ref_logits)
    passes = []
    for history in ((), [[7, 7, 7], ref[0].tolist()]):  # the same draft made before: every candidate hits
        spy = Passes(monkeypatch, m.config.num_hidden_layers)
        got, logits = greedy_decode(m, ids, torch.ones_like(ids), 32, 0, return_logits=True, lookup=2,
                                    history=history)
        assert_same_choices(got, logits, ref, ref_logits, ids.shape[1], tol)
        passes.append(spy.passes())
    # 31 tokens after the first: 11 passes if each kept three; the draft's own repeats can send a pass
    # or two to an earlier continuation of the same tokens
    assert 11 <= passes[1] <= 13 and passes[1] < passes[0]
    # ids the model does not have (another tokenizer's history) are never tried: they end a sequence
    vocab = m.config.vocab_size
    foreign = [[vocab + 5, *ref[0, :20].tolist(), -7, vocab, *ref[0, 20:].tolist(), 10**9]]
    got, logits = greedy_decode(m, ids, torch.ones_like(ids), 32, 0, return_logits=True, lookup=2, history=foreign)
    assert_same_choices(got, logits, ref, ref_logits, ids.shape[1], tol)


def test_wrapper_lookup_streams_each_token_and_keeps_its_drafts():
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam", max_new_tokens=24))
    moved_lora(lm, 0)
    lm.hf.generation_config.eos_token_id = None
    ids = lm.encode("Compute 17*3 please")
    exact = lm.generate_ids(ids, return_logits=True)
    lm.draft_lookup = 2
    for round_ in range(2):  # the second draft finds the first in the stream's history
        rec = Recorder()
        got = lm.generate_ids(ids, return_logits=True, streamer=rec)
        seq = torch.cat([ids, exact[0]], 1)
        assert_same_choices(torch.cat([ids, got[0]], 1), got[1], seq, exact[1], ids.shape[1],
                            lookup_tol(lm.hf, seq, exact[1]))
        assert torch.equal(torch.cat(rec.got[1:]), got[0][0]) and rec.ended == 1
        assert len(lm._lookup_history) == round_ + 1
        assert lm._lookup_history[-1] == torch.cat([ids, got[0]], 1)[0].tolist()
    lm.reset()  # a reset stream starts with no drafts to search
    assert not getattr(lm, "_lookup_history", ())


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_lookup_refuses_what_is_not_a_count(bad):
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam", max_new_tokens=4))
    lm.draft_lookup = bad
    with pytest.raises(ValueError, match="draft_lookup"):
        lm.generate_ids(lm.encode("2+3"))


def test_lookup_below_fp32_warns_once_that_drafts_will_differ():
    import warnings

    lm = ZeroSiamLM(tiny_model("llama").to(torch.bfloat16), char_tokenizer(),
                    AdaptConfig(method="zerosiam", max_new_tokens=6))
    ids = lm.encode("2+3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.generate_ids(ids)  # lookup off: nothing to warn about
    lm.draft_lookup = 2
    with pytest.warns(UserWarning, match="draft_lookup=2 with torch.bfloat16"):
        lm.generate_ids(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.generate_ids(ids)  # once per wrapper
