"""What a run ran on, so that a resume never mixes two: fingerprints of the model, the data and the
prompt template, recorded in run.json under "identity" and checked when a run folder is resumed.

The model, by what it is:
- a local folder: the sha256 of each file transformers reads from it, top level only (the weight
  files its safetensors/bin index names, else model.safetensors or pytorch_model.bin, plus the
  config, tokenizer and chat-template files), so that an `original/` copy of the weights beside
  them costs nothing;
- a GGUF file (`--model x.gguf`, `--gguf-file`, the embedded default's package file): its sha256;
- a hub id: the commit its cached snapshot holds, read after the model loads (the revision
  transformers resolved);
- anything else (no files, no revision): the sha256 of the loaded tensors.
A file's sha256 is cached in $ZS_LLM_CACHE/file_sha256.json (default ~/.cache/zs_llm) under its
resolved path with (device, inode, size, mtime_ns, ctime_ns): a resume of an 8B model (16 GB)
reads no weights, and the first run hashes each file once, files in parallel. A folder re-saved
with other weights of the same shapes writes new files (new mtime and ctime, which no user call
can set back), so it is hashed again and found different.

The data: the sha256 of each local set file (run.json's "data", recorded before this module),
the data dir and where it came from (--data-dir, $ZS_LLM_DATA_DIR, the default), and per set the
number of problems the run streams and a sha256 of their ids, questions and golds (which also
covers hub and generated sets). The prompt: the style's template sha256 (run.json's "prompt") and
the sha256 of a probe question rendered through the tokenizer's chat template.

A run.json from before identities were recorded is adopted: the resume records what it runs on,
with one warning line, and trusts that the rows already there came from the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zs_llm.checkpoint import atomic_write_text

from .datasets import ENV_DATA_DIR, load_problems, parse_subsets, resolve_data_dir

#: files of a model folder that transformers reads besides its weights
MODEL_SIDE_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken", ".py")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PROBE_QUESTION = "What is 12 + 30?"
_CHUNK = 8 << 20


class RunChanged(FileExistsError):
    """A resume would run on another model, data or prompt template than the folder's rows."""


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


# --- file hashes, cached by stat -------------------------------------------------------------
def hash_cache_path() -> Path:
    return Path(os.environ.get("ZS_LLM_CACHE", Path.home() / ".cache" / "zs_llm")) / "file_sha256.json"


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)  # releases the GIL: files hash in parallel threads
    return h.hexdigest()


def _read_cache(path: Path) -> dict:
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def file_sha256s(paths: list[Path]) -> dict[Path, str]:
    """{path: sha256} of `paths`, from the cache where a file's stat is unchanged."""
    resolved = {p: Path(p).resolve() for p in paths}
    keys = {p: _stat_key(r) for p, r in resolved.items()}
    cache_file = hash_cache_path()
    cache = _read_cache(cache_file)
    out, todo = {}, []
    for p, r in resolved.items():
        hit = cache.get(str(r))
        if isinstance(hit, dict) and hit.get("key") == keys[p] and isinstance(hit.get("sha256"), str):
            out[p] = hit["sha256"]
        else:
            todo.append(p)
    if not todo:
        return out
    size = sum(keys[p][2] for p in todo)
    if size > 1 << 30:
        _log(f"fingerprinting {len(todo)} model file(s), {size / 2**30:.1f} GiB (once per file version)")
    with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
        for p, digest in zip(todo, pool.map(lambda q: _sha256_file(resolved[q]), todo)):
            out[p] = digest
    fresh = _read_cache(cache_file)  # another process may have added entries meanwhile
    for p in todo:
        if _stat_key(resolved[p]) == keys[p]:  # not rewritten while it was read
            fresh[str(resolved[p])] = {"key": keys[p], "sha256": out[p]}
    for name in list(fresh):  # entries of files that are gone or changed can never hit again
        try:
            if fresh[name].get("key") != _stat_key(Path(name)):
                del fresh[name]
        except (OSError, AttributeError):
            del fresh[name]
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file, json.dumps({"files": fresh}, indent=0))
    except OSError:
        pass  # a read-only cache only costs the hashing again
    return out


# --- the model ---------------------------------------------------------------------------------
def model_files(model: str, gguf_file: str | None = None) -> tuple[Path, list[Path]] | None:
    """(folder, the files transformers reads from it) for a local model; None for a hub id."""
    from zs_llm.loading import cache_complete, model_cache, named_model

    named = named_model(model)
    if named is not None:
        try:
            files = [Path(f) for f in named.sources()]
        except FileNotFoundError:
            if not cache_complete(model_cache(named.name)):
                raise
            return model_files(str(model_cache(named.name)))  # the packages are gone, the converted cache loads
        return files[0].parent, files
    p = Path(model).expanduser()
    if gguf_file is None and str(model).endswith(".gguf") and p.is_file():
        return p.parent, [p]
    if not p.is_dir():
        return None
    if gguf_file:
        return p, [p / gguf_file]
    files = [f for f in p.iterdir() if f.is_file() and f.suffix in MODEL_SIDE_SUFFIXES]
    weights: list[Path] = []
    for index in WEIGHT_INDEXES:
        if (p / index).is_file():
            try:
                shards = set(json.loads((p / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards = set()
            weights = [p / s for s in sorted(shards) if (p / s).is_file()]
            if weights:
                break
    if not weights:
        weights = [p / w for w in WEIGHT_FILES if (p / w).is_file()][:1]
    if not weights:
        weights = [f for f in p.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin")]
    return p, sorted(set(files) | set(weights))


def model_record(model: str, gguf_file: str | None = None) -> dict | None:
    """The fingerprint of a local model before it loads; None for a hub id (`loaded_model_record`)."""
    found = model_files(model, gguf_file)
    if found is None:
        return None
    folder, files = found
    digests = file_sha256s(files)
    return {"kind": "files", "folder": str(folder.resolve()),
            "files": {f.name: digests[f] for f in sorted(files, key=lambda f: f.name)}}


def hub_revision(model_id: str, revision: str | None = None) -> str | None:
    """The commit of `model_id`'s snapshot (at `revision`, default main) in the local hub cache
    (what transformers loaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except (ImportError, ValueError):
        return None
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def tensors_sha256(model) -> str:
    """sha256 over a loaded model's tensors (name, dtype, shape, bytes) in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def loaded_model_record(model_name: str, model, revision: str | None = None) -> dict:
    """The fingerprint of a model with no local files, once it is loaded."""
    rev = hub_revision(model_name, revision)
    if rev is not None:
        return {"kind": "hub", "id": model_name, "revision": rev}
    return {"kind": "tensors", "sha256": tensors_sha256(model)}


def rendered_prompt_sha256(tokenizer, style: str, template: str | None, system: str | None = None) -> str:
    """sha256 of a probe question in `style` (after the system message `system`) rendered through
    the tokenizer's chat template."""
    from zs_llm.model import render_prompt

    from .prompting import build_messages

    text = render_prompt(tokenizer, build_messages(PROBE_QUESTION, style, system=system, template=template))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- the data ----------------------------------------------------------------------------------
def problems_sha256(problems) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.gold]).encode("ascii") + b"\n")  # ASCII: no text can fail
    return h.hexdigest()


def data_dir_record(data_dir: str | None) -> dict:
    origin = "--data-dir" if data_dir is not None else f"${ENV_DATA_DIR}" if os.environ.get(ENV_DATA_DIR) else \
        "the default"
    return {"path": str(resolve_data_dir(data_dir).resolve()), "from": origin}


def run_identity(cfg, data: dict) -> dict:
    """What `cfg` runs on, as far as it is known before the model loads (`data`: run.json's
    per-set source records)."""
    subsets = parse_subsets(cfg.subset)
    sets = {}
    for d in cfg.dataset_names():
        problems = load_problems(d, data_dir=cfg.data_dir, limit=cfg.limit, seed=cfg.seed, source=cfg.source,
                                 subset=subsets.get(d))
        sets[d] = {"n": len(problems), "problems_sha256": problems_sha256(problems)}
    local = any(rec.get("source") == "local" for rec in data.values())
    return {"model": model_record(cfg.model, cfg.gguf_file), "data_dir": data_dir_record(cfg.data_dir) if local
            else None, "sets": sets}


# --- checks on resume --------------------------------------------------------------------------
def _short(h: str | None) -> str:
    return (h or "none")[:12]


def describe_model(rec: dict | None) -> str:
    if not rec:
        return "unknown"
    if rec["kind"] == "files":
        return f"files in {rec['folder']}"
    if rec["kind"] == "hub":
        return f"hub {rec['id']} at revision {_short(rec['revision'])}"
    return f"loaded tensors sha256 {_short(rec['sha256'])}"


def model_change(old: dict | None, new: dict | None) -> str | None:
    """What differs between two model records (None: the same, or one is not known)."""
    if not old or not new:
        return None
    if old["kind"] != new["kind"]:
        return f"the model was {describe_model(old)}, now {describe_model(new)}"
    if old["kind"] == "files":
        a, b = old["files"], new["files"]
        changed = [n for n in a if n in b and a[n] != b[n]]
        if changed:
            n = changed[0]
            kind = "chat template" if "chat_template" in n else "tokenizer file" if "token" in n else "model file"
            more = f" (and {', '.join(changed[1:4])}{', ...' if len(changed) > 4 else ''})" if changed[1:] else ""
            return f"{kind} {Path(new['folder']) / n} changed (sha256 {_short(a[n])}, now {_short(b[n])}){more}"
        if set(a) != set(b):
            return (f"the model folder {new['folder']} holds other files (gone: {sorted(set(a) - set(b))}, "
                    f"new: {sorted(set(b) - set(a))})")
        return None
    if old["kind"] == "hub":
        if old["revision"] != new["revision"]:
            return f"hub model {new['id']} is at another revision ({_short(old['revision'])}, now " \
                   f"{_short(new['revision'])})"
        return None
    if old["sha256"] != new["sha256"]:
        return f"the loaded model's tensors differ (sha256 {_short(old['sha256'])}, now {_short(new['sha256'])})"
    return None


def data_change(old_info: dict, data: dict, ident: dict) -> tuple[str | None, list[str]]:
    """(what differs in the data, warnings about what moved but did not change)."""
    old_ident = old_info.get("identity") or {}
    old_dir, new_dir = old_ident.get("data_dir"), ident.get("data_dir")
    moved = old_dir and new_dir and old_dir["path"] != new_dir["path"]
    where = f"the data dir is now {new_dir['path']} (from {new_dir['from']}), it was {old_dir['path']} (from " \
            f"{old_dir['from']}): " if moved else ""
    warnings = []
    old_data = old_info.get("data") or {}
    for d, rec in data.items():
        was = old_data.get(d) or {}
        if was.get("sha256") and rec.get("sha256") and was["sha256"] != rec["sha256"]:
            return (f"{where}{d} file {rec['path']} differs (sha256 {_short(was['sha256'])}, now "
                    f"{_short(rec['sha256'])})"), warnings
        if was.get("commit") and rec.get("commit") and was["commit"] != rec["commit"]:
            return (f"hub dataset {rec.get('hub')} of {d} is at another revision ({_short(was['commit'])}, now "
                    f"{_short(rec['commit'])})"), warnings
        if was.get("path") and rec.get("path") and was["path"] != rec["path"]:
            warnings.append(f"{d} is now read from {rec['path']} (it was {was['path']}); same sha256, so the "
                            "rows continue")
    old_sets = old_ident.get("sets") or {}
    for d, rec in ident["sets"].items():
        was = old_sets.get(d)
        if was and was["problems_sha256"] != rec["problems_sha256"]:
            return (f"{where}the {d} problems differ (sha256 of their ids, questions and golds "
                    f"{_short(was['problems_sha256'])}, now {_short(rec['problems_sha256'])})"), warnings
    return None, warnings


def refusal(out: Path, what: str, verb: str = "resume") -> RunChanged:
    return RunChanged(f"{out} cannot {verb}: {what}; its rows would mix two runs. Restore what changed, or start "
                      "anew with --overwrite (deletes its results) or another --out")


def check_resume(out: Path, old_info: dict, data: dict, ident: dict, has_results: bool,
                 verb: str = "resume") -> dict | None:
    """Compare what a resume runs on with what `old_info` (run.json of the same configuration)
    recorded: raises `RunChanged` naming the difference when the folder holds results ("cannot
    `verb`": a run that grows checks its folder the same way); returns the
    run.json to write when something is to be recorded (a folder from before identities, or one
    without results that this run takes over), else None."""
    old_ident = old_info.get("identity")
    if not has_results:  # nothing to mix with: this run takes the folder over
        same = old_ident is not None and all(old_ident.get(k) == v for k, v in ident.items())
        return None if same and old_info.get("data") == data else {**old_info, "data": data, "identity": ident}
    what, warnings = data_change(old_info, data, ident)
    if what is None and old_ident is not None:
        was_files, new = old_ident.get("model"), ident["model"]
        was = was_files or old_ident.get("loaded_model")
        if was and (was_files is None) != (new is None):  # local files then none, or the other way round
            what = f"the model was {describe_model(was)}, now " + (describe_model(new) if new else
                                                                    "a name with no local files (a hub id)")
        else:
            what = model_change(was_files, new)
    if what is not None:
        raise refusal(out, what, verb)
    for w in warnings:
        _log(f"WARNING {w}")
    if old_ident is None:
        _log(f"WARNING {out / 'run.json'} records no fingerprint of the model, data or prompt template (written "
             "before runs recorded them): recorded now from this resume, which trusts that the rows already there "
             "came from the same")
        return {**old_info, "identity": ident}
    filled = {k: v for k, v in ident.items() if old_ident.get(k) is None and v is not None}
    return {**old_info, "identity": {**old_ident, **filled}} if filled else None


def check_loaded(out: Path, info: dict, cfg, model, tokenizer, has_results: bool) -> dict | None:
    """After the model loads: the fingerprint of a model without local files and the rendered prompt,
    compared with run.json's `info` (raises `RunChanged`) or recorded (returns the run.json to write)."""
    ident = dict(info.get("identity") or {})
    update = {}
    if model_files(cfg.model, cfg.gguf_file) is None:
        update["loaded_model"] = loaded_model_record(cfg.model, model, cfg.revision)
    update["prompt"] = {"rendered_sha256": rendered_prompt_sha256(tokenizer, cfg.prompt_style, cfg.prompt_template,
                                                                  cfg.system_prompt)}
    if has_results:
        what = model_change(ident.get("loaded_model"), update.get("loaded_model"))
        old_p, new_p = (ident.get("prompt") or {}).get("rendered_sha256"), update["prompt"]["rendered_sha256"]
        if what is None and old_p and old_p != new_p:
            what = (f"the {cfg.prompt_style} prompt renders differently through the model's chat template (sha256 "
                    f"{_short(old_p)}, now {_short(new_p)})")
        if what is not None:
            raise refusal(out, what)
        update = {k: v for k, v in update.items() if not ident.get(k)}
    if all(ident.get(k) == v for k, v in update.items()):
        return None
    return {**info, "identity": {**ident, **update}}
