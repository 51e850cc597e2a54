"""An adapter loads only on the base it was saved on (`base_probe`), and from_pretrained refuses
options it would ignore."""

import json
import random

import pytest
import torch

from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.adapt import adapt_on_problem
from zs_llm.saving import CONFIG_NAME, base_probe, probe_mismatch
from zs_llm.testing import ARCHS, MORE_ARCHS, char_tokenizer, tiny_model

METHODS = ["tent", "zerosiam", "sar", "slot", "come"]


@pytest.mark.parametrize("seed", range(6))
def test_an_adapter_loads_on_its_own_base_and_is_refused_on_another(seed, tmp_path):
    rng = random.Random(seed)
    arch, method = rng.choice(ARCHS + MORE_ARCHS), rng.choice(METHODS)
    tok = char_tokenizer()
    lm = ZeroSiamLM(tiny_model(arch, seed=seed), tok, AdaptConfig(method=method, max_new_tokens=3, lr=0.05))
    adapt_on_problem(lm, "What is 2 + 3?")
    lm.save_pretrained(tmp_path / "a")
    back = ZeroSiamLM.from_pretrained(tmp_path / "a", model=tiny_model(arch, seed=seed), tokenizer=tok)
    assert back.zs_config.method == method
    # the same base in bf16 is the same base
    ZeroSiamLM.from_pretrained(tmp_path / "a", model=tiny_model(arch, seed=seed).to(torch.bfloat16), tokenizer=tok)
    other = tiny_model(arch, seed=seed + 100)  # same architecture and shapes, other weights
    with pytest.raises(ValueError, match="saved on another base model than this one \\(other weights") as e:
        ZeroSiamLM.from_pretrained(tmp_path / "a", model=other, tokenizer=tok)
    assert "\n" not in str(e.value) and "check_base=False" in str(e.value)
    assert not any("lora_" in n for n, _ in other.named_parameters())  # refused before it was wrapped
    ZeroSiamLM.from_pretrained(tmp_path / "a", model=other, tokenizer=tok, check_base=False)
    another = rng.choice([a for a in ARCHS + MORE_ARCHS if a != arch])
    m = tiny_model(another, seed=seed)
    if m.config.hidden_size == lm.hidden_size:  # a wider base is refused by its width first
        with pytest.raises(ValueError, match="architecture"):
            ZeroSiamLM.from_pretrained(tmp_path / "a", model=m, tokenizer=tok)


@pytest.mark.parametrize("arch", ARCHS + MORE_ARCHS)
def test_a_wrapped_model_gives_its_bases_probe(arch):
    model = tiny_model(arch)
    plain = base_probe(model)
    ZeroSiamLM(model, char_tokenizer(), AdaptConfig(method="zerosiam"))
    assert probe_mismatch(plain, base_probe(model)) is None
    assert json.loads(json.dumps(plain)) == plain  # it is stored in zs_llm_config.json


@pytest.mark.parametrize("kw", [{"method": "tent"}, {"lr": 5.0}, {"bogus": 1}])
def test_from_pretrained_refuses_options_it_would_ignore(kw, tmp_path):
    tok = char_tokenizer()
    ZeroSiamLM(tiny_model("llama"), tok, AdaptConfig(method="zerosiam")).save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match=f"from_pretrained got \\['{next(iter(kw))}'\\]"):
        ZeroSiamLM.from_pretrained(tmp_path / "a", model=tiny_model("llama"), tokenizer=tok, **kw)
    with pytest.raises(ValueError, match="not loading options of zs_llm.load_model"):
        ZeroSiamLM.from_pretrained(tmp_path / "a", **kw)
    meta = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert meta["base_probe"]["model_type"] == "llama"


@pytest.mark.parametrize("seed", range(5))
def test_probe_indices_stay_inside_tensors_of_any_size(seed):
    """The SmolLM2 export failed here: a float32 linspace rounded index 28,311,551 up to 28,311,552."""
    from zs_llm.saving import spread

    rng = random.Random(seed)
    for n in [1, 2, 7, 2**24 + 1, 28311552, rng.randrange(2**24, 2**34), rng.randrange(1, 10**6)]:
        idx = spread(n, 8)
        assert idx[0] == 0 and idx[-1] == n - 1 and all(0 <= i < n for i in idx)
        assert idx == sorted(idx)
