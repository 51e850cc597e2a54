import pytest

from zs_llm.testing import char_tokenizer, tiny_model


@pytest.fixture(scope="session")
def tok():
    return char_tokenizer()


@pytest.fixture
def make_lm(tok):
    """make_lm(arch="llama", **AdaptConfig fields) -> ZeroSiamLM on a fresh tiny random model."""
    from zs_llm import AdaptConfig, ZeroSiamLM

    def make(arch="llama", seed=0, **cfg):
        cfg.setdefault("max_new_tokens", 6)
        return ZeroSiamLM(tiny_model(arch, seed=seed), tok, AdaptConfig.from_dict(cfg))

    return make


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama and the character tokenizer saved as a local model folder."""
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d
