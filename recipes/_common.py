"""Shared plumbing of the recipes: YAML defaults, command-line overrides, multi-process runs.

A recipe's fields are the harness's `RunConfig` fields plus every `AdaptConfig` field (flat:
`lr: 1e-4` in YAML, `--lr 1e-4` on the command line) plus `out` and `overwrite`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from eval.cli import coerce, error_line, read_yaml
from eval.rows import merge_shards
from eval.runner import RunConfig, Runner
from zs_llm.config import AdaptConfig, all_settings, check_overrides, parse_value

RUN_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if f.name != "adapt"]
ADAPT_FIELDS = [n for n in all_settings() if n not in RUN_FIELDS]
EXTRA_FIELDS = {"out": str, "overwrite": bool}


def valid_fields() -> list[str]:
    return sorted(RUN_FIELDS + ADAPT_FIELDS + list(EXTRA_FIELDS))


def _annotation(name: str):
    if name in EXTRA_FIELDS:
        return EXTRA_FIELDS[name].__name__
    return RunConfig.__dataclass_fields__[name].type if name in RUN_FIELDS else all_settings()[name].type


def _parse_value(name: str, text: str) -> Any:
    try:
        return parse_value(text, _annotation(name))
    except ValueError as e:
        raise ValueError(f"--{name} {text}: {e}") from None


def read_config(path: str | Path) -> dict[str, Any]:
    """A recipe YAML file's fields, each checked: unknown names and values of the wrong type are
    one-line errors naming the file, the field and the fix."""
    data = read_yaml(path)
    bad = sorted(set(data) - set(valid_fields()))
    if bad:
        raise ValueError(f"unknown field(s) {bad} in {path}; valid fields: {', '.join(valid_fields())}")
    return {k: coerce(k, v, _annotation(k), str(path)) for k, v in data.items()}


def resolve(yaml_path: str | Path, argv: list[str] | None = None) -> dict[str, Any]:
    """YAML defaults overridden by `--config FILE` (more YAML) and `--field value` (or
    `--field=value`) pairs. Unknown fields, in a file or on the command line, are errors that
    list the valid ones."""
    data = read_config(yaml_path)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML file")
        data.update(read_config(argv[i + 1]))
        del argv[i : i + 2]
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --field value")
        name, _, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in valid_fields():
            raise ValueError(f"unknown field --{name}; valid fields: {', '.join(valid_fields())}")
        if not value:
            if name == "overwrite" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                value = "true"
            else:
                i += 1
                if i >= len(argv):
                    raise ValueError(f"--{name} needs a value")
                value = argv[i]
        data[name] = _parse_value(name, value) if isinstance(value, str) else value
        i += 1
    return data


def split(cfg: dict[str, Any]) -> tuple[RunConfig, str, bool]:
    """(RunConfig with its AdaptConfig overrides, out folder, overwrite) from a resolved dict."""
    run = {k: v for k, v in cfg.items() if k in RUN_FIELDS}
    adapt = {k: v for k, v in cfg.items() if k in ADAPT_FIELDS}
    methods = run.get("methods") or RunConfig().methods
    methods = methods.split(",") if isinstance(methods, str) else methods
    check_overrides(adapt, methods)  # validate now, before any model is loaded
    for spec in methods:
        AdaptConfig.from_spec(spec, adapt)
    if "out" not in cfg:
        raise ValueError("set out: (the run folder) in the YAML or with --out")
    return RunConfig(**run, adapt=adapt), cfg["out"], bool(cfg.get("overwrite", False))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def process_rank() -> tuple[int, int]:
    """(rank, world size) from the variables torchrun / `accelerate launch` set; (0, 1) alone.

    accelerate's `--cpu` flag starts one process (it spreads CPU runs only through mpirun);
    `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N` start N
    processes on CPUs or GPUs alike.
    """
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_distributed(run_cfg: RunConfig, out: str, overwrite: bool = False, progress: bool = True,
                    poll_s: float = 2.0) -> Path:
    """Run this process's share of the work, then (rank 0) wait for every rank, merge, report.

    Online adapting streams are sequential, so each rank takes whole (method, dataset)
    streams; other units split their problems by index. Every rank flushes its own rows, so
    a failed rank loses nothing finished, and a rerun resumes every rank where it stopped.
    Ranks meet through marker files, not a collective, so a long stream on one rank cannot
    hit a communication timeout on another.
    """
    rank, world = process_rank()
    if world > 1:
        log(f"rank {rank} of {world}")
        if run_cfg.device is None and os.environ.get("LOCAL_RANK") is not None:
            import torch

            if torch.cuda.is_available():
                run_cfg.device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    if overwrite and rank != 0:
        while (Path(out) / "run.json").exists() and not (Path(out) / f".overwritten.{os.getppid()}").exists():
            time.sleep(poll_s)  # let rank 0 clear the folder first
    runner = Runner(run_cfg, out, rank=rank, world=world, progress=progress and rank == 0,
                    overwrite=overwrite and rank == 0)
    path = Path(out)
    if overwrite and rank == 0 and world > 1:
        path.mkdir(parents=True, exist_ok=True)
        (path / f".overwritten.{os.getppid()}").touch()
    marker = path / f".done.rank{rank}of{world}"
    marker.unlink(missing_ok=True)
    runner.run()
    marker.touch()
    if rank == 0:
        if world > 1:
            log("waiting for the other ranks")
        while not all((path / f".done.rank{r}of{world}").exists() for r in range(world)):
            time.sleep(poll_s)
        merge_shards(path)
        for r in range(world):
            (path / f".done.rank{r}of{world}").unlink(missing_ok=True)
        for m in path.glob(".overwritten.*"):
            m.unlink()
        from eval.report import write_report

        log(f"report: {write_report(path)}")
    return path


def cli(main, config: Path) -> None:
    """The recipes' `__main__`: resolve YAML + command line, run, and turn bad input into exit 2."""
    try:
        main(resolve(config))
    except (ValueError, KeyError, TypeError, OSError) as e:  # OSError: files, folders, the run lock
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
