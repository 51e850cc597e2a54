"""LoRA on any causal LM: architectures without a peft default get their attention projections
found by module type and name (fused or not), the choice is reported, and the user can override."""

import pytest
import torch
from torch import nn

from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.adapt import adapt_on_problem
from zs_llm.lora_targets import find_attention_projections, lora_target_modules
from zs_llm.testing import MORE_ARCHS, tiny_model

EXPECTED = {"phi3": ["qkv_proj"], "falcon": ["query_key_value"], "cohere": ["q_proj", "v_proj"],
            "olmo2": ["q_proj", "v_proj"], "starcoder2": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("arch", MORE_ARCHS)
def test_lora_lands_on_the_attention_projections_and_only_lora_moves(arch, tok):
    model = tiny_model(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lm = ZeroSiamLM(model, tok, AdaptConfig(method="tent", lr=5e-2, max_new_tokens=4))  # identity check passes
    assert lm.lora_targets == EXPECTED[arch]
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in lm.hf.named_parameters() if "lora_A" in n}
    assert adapted == set(EXPECTED[arch])
    lora_before = {n: p.detach().clone() for n, p in lm.hf.named_parameters() if "lora_" in n}
    adapt_on_problem(lm, "What is 2 + 3?")
    assert any(not torch.equal(p, lora_before[n]) for n, p in lm.hf.named_parameters() if "lora_" in n)
    for n, p in lm.hf.named_parameters():
        base = n.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" in n:
            continue
        assert torch.equal(p, before[base]), n  # base weights never move


def test_the_source_of_the_choice_is_recorded_and_the_user_can_override(tok):
    lm = ZeroSiamLM(tiny_model("phi3"), tok, AdaptConfig(method="tent", max_new_tokens=4))
    assert (lm.lora_targets, lm.lora_targets_source) == (["qkv_proj"], "found")
    lm = ZeroSiamLM(tiny_model("phi3"), tok, AdaptConfig(method="tent", lora_target_modules=["o_proj"]))
    assert (lm.lora_targets, lm.lora_targets_source) == (["o_proj"], "config")
    assert lora_target_modules(tiny_model("llama"))[1] == "peft default"


class _Attention(nn.Module):
    def __init__(self, names):
        super().__init__()
        for n in names:
            setattr(self, n, nn.Linear(4, 4))


class _Net(nn.Module):
    def __init__(self, names):
        super().__init__()
        self.block = nn.Module()
        self.block.MyAttention = None
        self.attn = type("WeirdAttention", (_Attention,), {})(names)


@pytest.mark.parametrize("names,want", [
    (["query", "key", "value", "dense"], ["query", "value"]),
    (["Wqkv", "out_proj"], ["Wqkv"]),
    (["c_attn", "c_proj"], ["c_attn"]),
    (["wq", "wk", "wv", "wo"], ["wq", "wv"]),
])
def test_projection_names_are_recognised(names, want):
    assert find_attention_projections(_Net(names)) == want


def test_an_unrecognisable_attention_names_its_layers():
    with pytest.raises(ValueError, match=r"among the attention's linear layers \['a', 'b'\]"):
        find_attention_projections(_Net(["a", "b"]))
    with pytest.raises(ValueError, match="no attention block"):
        find_attention_projections(nn.Sequential(nn.Linear(2, 2)))
