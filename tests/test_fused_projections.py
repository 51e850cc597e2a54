"""Sibling projections (q, k, v; gate, up) laid side by side and run as one product in the draft
loop: packing changes no value and no parameter, folding LoRA keeps a packed group one block, a
fused product is used only where it equals the separate ones bit for bit (checked, not assumed),
and drafts through it equal `generate`'s."""

import pytest
import torch
from test_fast_decode import IDS, generate, model_of, moved_lora, with_early_eos
from torch import nn

import zs_llm.decode as decode
from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.decode import SIBLINGS, _adjacent, _dense, _fused, greedy_decode, pack_siblings
from zs_llm.testing import char_tokenizer, tiny_model

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)

FAMILIES = ["llama", "qwen2", "mistral", "qwen3", "gemma"]


def groups(model):
    """[(weights of one sibling group)] over the model's decoder layers (peft bases included)."""
    out = []
    for layer in model.base_model.layers:
        for parent, names in SIBLINGS:
            mods = [getattr(getattr(layer, parent), n) for n in names]
            out.append([(m.get_base_layer() if hasattr(m, "get_base_layer") else m).weight for m in mods])
    return out


def spy_fused(monkeypatch):
    """The number of groups `_fused` ran as one product, per call of the loop's layer builder."""
    taken = []
    real = decode._fused

    def spy(mods, batch):
        fn = real(mods, batch)
        taken.append(fn is not None)
        return fn

    monkeypatch.setattr(decode, "_fused", spy)
    return taken


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_changes_no_value_and_no_parameter(arch, dtype):
    m = model_of(arch, dtype)
    params = dict(m.named_parameters())
    values = {n: p.detach().clone() for n, p in params.items()}
    ids = IDS[1:2]
    before = m(ids).logits
    assert pack_siblings(m) == len(groups(m))
    assert all(_adjacent(g) for g in groups(m))
    assert dict(m.named_parameters()) == params  # the same Parameter objects
    assert all(torch.equal(p, values[n]) for n, p in params.items())
    assert all(w.data_ptr() % 64 == 0 for g in groups(m) for w in g)
    assert torch.equal(m(ids).logits, before)
    assert pack_siblings(m) == 0  # already packed


def test_packing_leaves_what_it_cannot_pack():
    m = tiny_model("gpt2")
    assert pack_siblings(m) == 0  # not a family the loop covers
    m = model_of("llama")
    attn = m.model.layers[0].self_attn
    attn.k_proj.weight.data = attn.k_proj.weight.data.t().contiguous().t()  # not contiguous
    m.model.layers[1].mlp.up_proj.weight.data = m.model.layers[1].mlp.up_proj.weight.data.double()
    assert pack_siblings(m) == len(groups(m)) - 2
    assert not _adjacent(groups(m)[0]) and not _adjacent(groups(m)[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(4))
def test_fused_product_equals_the_parts_wherever_it_is_used(dtype, seed):
    """The check `_fused` makes on one random input holds on others: drawn shapes, batch sizes,
    with and without bias."""
    gen = torch.Generator().manual_seed(seed)
    width = int(torch.randint(1, 9, (1,), generator=gen)) * 32
    outs = [int(x) * 32 for x in torch.randint(1, 9, (int(torch.randint(2, 4, (1,), generator=gen)),), generator=gen)]
    bias = seed % 2 == 1
    block = torch.randn(sum(outs) * width, generator=gen).to(dtype)
    lins, at = [], 0
    for o in outs:
        lin = nn.Linear(width, o, bias=bias).to(dtype)
        lin.weight.data = block[at: at + o * width].view(o, width)
        at += o * width
        lins.append(lin)
    for batch in (1, 2, 5):
        fn = _fused(lins, batch)
        if fn is None:  # the kernel rounds the wide product differently here: nothing to check
            continue
        for _ in range(3):
            x = torch.randn(batch, width, generator=gen).to(dtype)
            parts = [_dense(m.weight, m.bias)(x) for m in lins]
            assert torch.equal(fn(x), torch.cat(parts, 1))


def test_fused_is_refused_when_not_adjacent_or_mixed():
    a, b = nn.Linear(32, 32), nn.Linear(32, 16)
    assert _fused([a, b], 1) is None  # separate storages
    block = torch.randn(48 * 32)
    a.weight.data, b.weight.data = block[: 32 * 32].view(32, 32), block[32 * 32:].view(16, 32)
    assert _fused([a, b], 1) is not None or False in decode._FUSE_OK.values()  # adjacent: used if the kernel agrees
    b.bias = None
    assert _fused([a, b], 1) is None  # one with a bias, one without


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_drafts_equal_generate(arch, dtype, monkeypatch):
    m = model_of(arch, dtype)
    with_early_eos(m, IDS, (IDS != 0).long())
    pack_siblings(m)
    taken = spy_fused(monkeypatch)
    for ids in (IDS[1:2], IDS):
        mask = (ids != 0).long()
        ref, ref_logits = generate(m, ids, mask, 24)
        got, logits = greedy_decode(m, ids, mask, 24, 0, return_logits=True)
        assert torch.equal(got, ref) and torch.equal(logits, ref_logits)
    assert taken and (dtype == torch.bfloat16 or all(taken))  # fp32 mm: one product over a group agrees here


def test_drafts_equal_generate_when_the_check_refuses(monkeypatch):
    m = model_of("llama")
    pack_siblings(m)
    monkeypatch.setattr(decode, "_FUSE_OK", {})
    monkeypatch.setattr(decode, "_same_values", lambda *a: False)
    taken = spy_fused(monkeypatch)
    mask = (IDS != 0).long()
    ref, ref_logits = generate(m, IDS, mask, 16)
    got, logits = greedy_decode(m, IDS, mask, 16, 0, return_logits=True)
    assert torch.equal(got, ref) and torch.equal(logits, ref_logits)
    assert taken and not any(taken)


EVERY = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("targets", [None, EVERY, ["k_proj", "up_proj"]])  # None: the default, q and v
def test_folding_keeps_a_packed_group_one_block(targets, monkeypatch):
    cfg = AdaptConfig(method="zerosiam", max_new_tokens=20, lora_target_modules=targets)
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), cfg)
    moved_lora(lm, 0)
    outside = [[(w, w.detach().clone()) for w in g] for g in groups(lm.hf)]
    attn = lm.hf.model.layers[0].self_attn
    adapted = {n: hasattr(getattr(attn, n), "get_delta_weight") for n in ("q_proj", "k_proj")}
    delta = {n: getattr(attn, n).get_delta_weight("default") if a else 0 for n, a in adapted.items()}
    with lm.lora_merged():
        inside = groups(lm.hf)
        assert all(_adjacent(g) for g in inside)
        for i, (g_in, g_out) in enumerate(zip(inside, outside)):
            layer = lm.hf.model.layers[i // 2]
            parent, names = SIBLINGS[i % 2]
            if any(hasattr(getattr(getattr(layer, parent), n), "get_delta_weight") for n in names):
                assert all(w is not o for w, (o, _) in zip(g_in, g_out))  # a copy of the whole group
            else:
                assert all(w is o for w, (o, _) in zip(g_in, g_out))  # no LoRA in it: nothing copied
        q, k, _ = inside[0]
        assert torch.equal(q, outside[0][0][1] + delta["q_proj"])  # the update folded in, or none
        assert torch.equal(k, outside[0][1][1] + delta["k_proj"])
    for g_out, g_now in zip(outside, groups(lm.hf)):
        assert all(w is o and torch.equal(w, v) for w, (o, v) in zip(g_now, g_out))
    assert all(_adjacent(g) for g in groups(lm.hf))
    taken = spy_fused(monkeypatch)
    ids = lm.encode("Compute 17*3 please")
    fast = lm.generate_ids(ids, return_logits=True)
    assert taken and all(taken)
    lm.fast_greedy_drafts = False
    slow = lm.generate_ids(ids, return_logits=True)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_folding_copies_one_weight_when_its_storage_holds_more():
    """Weights that are views into one larger buffer (a loader's single blob) are folded one by one:
    the blob is never copied whole."""
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam"))
    lins = [m for m in lm.hf.modules() if type(m) is nn.Linear and m.weight.shape[1] == 32 and m.weight.shape[0] <= 64]
    blob = torch.zeros(sum(m.weight.numel() for m in lins) + 4096)
    at = 0
    for m in lins:
        n = m.weight.numel()
        blob[at: at + n] = m.weight.detach().reshape(-1)
        m.weight.data = blob[at: at + n].view(m.weight.shape)
        at += n
    moved_lora(lm, 1)
    q = lm.hf.model.layers[0].self_attn.q_proj
    with lm.lora_merged():
        w = q.get_base_layer().weight
        assert w.untyped_storage().nbytes() == w.nbytes
    ids = lm.encode("2+2")
    fast = lm.generate_ids(ids, return_logits=True)
    lm.fast_greedy_drafts = False
    slow = lm.generate_ids(ids, return_logits=True)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_folding_puts_everything_back_when_it_fails(monkeypatch):
    lm = ZeroSiamLM(tiny_model("llama"), char_tokenizer(), AdaptConfig(method="zerosiam"))
    before = [w for g in groups(lm.hf) for w in g]
    calls = []
    q = lm.hf.model.layers[1].self_attn.q_proj

    def boom(name):
        calls.append(name)
        raise RuntimeError("boom")

    monkeypatch.setattr(q, "get_delta_weight", boom)
    with pytest.raises(RuntimeError, match="boom"), lm.lora_merged():
        pass
    assert calls and all(a is b for a, b in zip([w for g in groups(lm.hf) for w in g], before))
    assert not any(m.merged for m in lm.hf.modules() if hasattr(m, "merged_adapters"))
