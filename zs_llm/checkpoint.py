"""Exact, resumable checkpoints of an adapting stream: trained tensors, optimizer state and
learning rates, written atomically (a temp folder renamed into place) as safetensors + JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


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


def save_checkpoint(lm, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write `lm.snapshot()` and `extra` (JSON-serialisable) to `directory`, atomically."""
    d = Path(directory)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    snap = lm.snapshot()
    tensors = {f"t.{k}": v.contiguous().cpu() for k, v in snap["tensors"].items()}
    opt_meta = None
    if snap["optimizer"] is not None:
        opt_tensors, opt_meta = _flatten_optimizer(snap["optimizer"])
        tensors.update(opt_tensors)
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {"optimizer": opt_meta, "problems_seen": lm.problems_seen, "adapt_enabled": lm.adapt_enabled,
            "extra": extra or {}}
    (tmp / "state.json").write_text(json.dumps(meta))
    old = d.with_name(d.name + ".old")
    if d.exists():
        shutil.rmtree(old, ignore_errors=True)
        d.rename(old)
    tmp.rename(d)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(lm, directory: str | os.PathLike) -> dict[str, Any]:
    """Restore a checkpoint written by `save_checkpoint` into `lm`; returns its `extra`."""
    d = Path(directory)
    if not (d / "state.json").exists() and d.with_name(d.name + ".old").exists():
        d = d.with_name(d.name + ".old")  # died between the two renames
    meta = json.loads((d / "state.json").read_text())
    flat = load_file(str(d / "state.safetensors"), device=str(lm.device))
    snap = {"tensors": {k[2:]: v for k, v in flat.items() if k.startswith("t.")}, "optimizer": None}
    if meta["optimizer"] is not None:
        state = {}
        for pid, entry in meta["optimizer"]["state"].items():
            state[int(pid)] = {k: (flat[f"opt.{pid}.{k}"] if v == "__tensor__" else v) for k, v in entry.items()}
        snap["optimizer"] = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
    lm.restore(snap)
    lm.problems_seen = meta["problems_seen"]
    lm.adapt_enabled = meta.get("adapt_enabled", True)
    return meta["extra"]
