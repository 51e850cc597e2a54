"""Exact, resumable checkpoints of an adapting stream, and the atomic writes every saved file uses.

A checkpoint is one folder: `state.safetensors` (trained tensors, optimizer state) and
`state.json` (optimizer metadata, the sha256 of the tensor file, and the caller's `extra`).
It is written into a temporary sibling, fsynced and renamed into place, so a folder under
its final name is complete. Loading checks the hash, the tensor names and shapes, and that
every value is finite and below `MAX_ABS` (except the non-finite markers a method declares for
its own state, `Method.nonfinite_state`), before anything in the model changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

#: Largest magnitude a saved trained tensor or optimizer moment may hold. A sane stream stays
#: many orders below (LoRA and predictor entries are O(1), SGD momentum is O(gradient), Adam's
#: second moment O(gradient^2)); a larger value is a damaged file or a diverged run.
MAX_ABS = 1e20


# --- atomic files ---------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a kill -9) sees the old file or the new one,
    never a part: a temporary file in the same folder, fsync, rename, fsync of the folder."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_path(p) as tmp: save_something(tmp)`: the file appears at `p` complete, or not at all."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_folder(p) as tmp: write_files_into(tmp)`: the folder appears at `p` complete,
    replacing an old one by renames, or not at all (a kill leaves a hidden `.p.tmp-PID`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    old = tmp.with_name(tmp.name + "-old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under `folder` (before renaming it into place)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- tensor checks --------------------------------------------------------------------------
#: what a declared state entry may hold besides finite values (`Method.nonfinite_state`)
NONFINITE_KINDS = ("nan", "+inf", "-inf")


def check_tensors(tensors: dict[str, torch.Tensor], source: str, max_abs: float = MAX_ABS,
                  allowed: Mapping[str, Collection[str]] | None = None) -> None:
    """Refuse NaN, infinity or a magnitude above `max_abs` in any floating tensor, naming it.
    `allowed` maps a tensor name to the non-finite kinds (`NONFINITE_KINDS`) it may hold, as a
    method declares them for its own state (SAR's moving average is NaN until its first loss);
    its finite entries are still checked."""
    allowed = allowed or {}
    for name, t in tensors.items():
        if not torch.is_tensor(t) or not t.is_floating_point() or not t.numel():
            continue
        x = t.detach().float()
        kinds = allowed.get(name, ())
        marker = torch.zeros_like(x, dtype=torch.bool)
        if "nan" in kinds:
            marker |= torch.isnan(x)
        if "+inf" in kinds:
            marker |= x == float("inf")
        if "-inf" in kinds:
            marker |= x == float("-inf")
        bad = ~torch.isfinite(x) & ~marker
        if bool(bad.any()):
            kind = "NaN" if bool(torch.isnan(x[bad]).any()) else "an infinite value"
            raise ValueError(f"{source}: tensor {name} holds {kind} ({int(bad.sum())} of {t.numel()} entries); "
                             "the file is damaged or was saved from a diverged state: do not load it")
        finite = x[torch.isfinite(x)]
        peak = float(finite.abs().max()) if finite.numel() else 0.0
        if peak > max_abs:
            raise ValueError(f"{source}: tensor {name} holds |x| = {peak:.3g}, above {max_abs:g}; the file is damaged "
                             "or was saved from a diverged state: do not load it")


# --- checkpoints ----------------------------------------------------------------------------
def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, s in state["state"].items():
        entry = {}
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().contiguous().cpu()
                entry[k] = "__tensor__"
            else:
                entry[k] = v
        meta["state"][str(pid)] = entry
    return tensors, meta


def save_checkpoint(lm, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `lm.snapshot()` and `extra` (JSON-serialisable) to the folder `directory`, atomically."""
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(f".{d.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    snap = lm.snapshot()
    tensors = {f"t.{k}": v.contiguous().cpu() for k, v in snap["tensors"].items()}
    opt_meta = None
    if snap["optimizer"] is not None:
        opt_tensors, opt_meta = _flatten_optimizer(snap["optimizer"])
        tensors.update(opt_tensors)
    data = save_bytes(tensors)
    (tmp / "state.safetensors").write_bytes(data)
    meta = {"format": 2, "sha256": hashlib.sha256(data).hexdigest(), "optimizer": opt_meta,
            "problems_seen": lm.problems_seen, "adapt_enabled": lm.adapt_enabled, "extra": extra or {}}
    (tmp / "state.json").write_text(json.dumps(meta))
    fsync_tree(tmp)
    old = d.with_name(f".{d.name}.old-{os.getpid()}")
    if d.exists():  # replacing a checkpoint of the same name: the old one stays loadable until the swap
        d.rename(old)
    tmp.rename(d)
    fsync_dir(d.parent)
    shutil.rmtree(old, ignore_errors=True)
    return d


def read_checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The `state.json` of a checkpoint folder; ValueError naming the file when it is unreadable."""
    p = Path(directory) / "state.json"
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p} is missing: {p.parent} is not a complete checkpoint") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} is damaged ({e}); delete {p.parent} to resume from an earlier state") from None
    if not isinstance(meta, dict) or "extra" not in meta:
        raise ValueError(f"{p} is not a zs_llm checkpoint record; delete {p.parent}")
    return meta


def load_checkpoint(lm, directory: str | os.PathLike) -> dict[str, Any]:
    """Restore a checkpoint written by `save_checkpoint` into `lm`; returns its `extra`.
    Everything is checked before `lm` changes: a damaged checkpoint raises ValueError naming
    the file (or tensor) and leaves `lm` as it was."""
    d = Path(directory)
    if not d.exists():
        olds = sorted(d.parent.glob(f".{d.name}.old-*"))
        if olds:
            d = olds[-1]  # killed between the two renames of a replacement
    meta = read_checkpoint_meta(d)
    f = d / "state.safetensors"
    try:
        data = f.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{f} is missing: {d} is not a complete checkpoint") from None
    if meta.get("sha256") and hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ValueError(f"{f} is damaged (its sha256 differs from the one state.json recorded: truncated or "
                         "overwritten); delete the folder to resume from an earlier state")
    try:
        flat = load_bytes(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged header
        raise ValueError(f"{f} is not a readable safetensors file ({e}); delete the folder") from None
    check_tensors(flat, str(f), allowed={f"t.method.{k}": v for k, v in lm.method.nonfinite_state.items()})
    live = lm.state_tensors()
    saved = {k[2:]: v for k, v in flat.items() if k.startswith("t.")}
    check_fits(f, saved, live, "it was written by another configuration", "it was written for another model")
    snap = {"tensors": saved, "optimizer": None}
    if meta["optimizer"] is not None:
        state = {}
        try:
            for pid, entry in meta["optimizer"]["state"].items():
                state[int(pid)] = {k: (flat[f"opt.{pid}.{k}"] if v == "__tensor__" else v) for k, v in entry.items()}
        except KeyError as e:
            raise ValueError(f"{f} lacks optimizer tensor {e}; the checkpoint is damaged") from None
        snap["optimizer"] = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
        groups = lm.optimizer.state_dict()["param_groups"] if lm.optimizer is not None else []
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in snap["optimizer"]["param_groups"]]:
            raise ValueError(f"{d / 'state.json'}: its optimizer groups do not fit this model and method")
    elif lm.optimizer is not None:
        snap["optimizer"] = {"state": {}, "param_groups": lm.optimizer.state_dict()["param_groups"]}
    lm.restore(snap)
    lm.problems_seen = meta["problems_seen"]
    lm.adapt_enabled = meta.get("adapt_enabled", True)
    return meta["extra"]


def check_fits(path, saved: Mapping[str, torch.Tensor], live: Mapping[str, torch.Tensor], fix_names: str,
               fix_shape: str) -> None:
    """Refuse saved tensors that do not fit the live ones they would replace: other names (`fix_names` says
    why and what to do), or a tensor of another shape (`fix_shape`); one line naming the first."""
    missing, unknown = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
    if missing or unknown:
        raise ValueError(f"{path} does not fit this model and method (missing {missing[:3]}, unknown {unknown[:3]}); "
                         f"{fix_names}")
    for k, v in saved.items():
        if tuple(v.shape) != tuple(live[k].shape):
            raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, this model's is "
                             f"{tuple(live[k].shape)}: {fix_shape}")
