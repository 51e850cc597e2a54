"""Shared plumbing of the recipes: options, multi-process runs.

A recipe's options are those of `python -m eval run` (`eval.options`): its YAML file gives the
defaults, `--config FILE` more of them, and `--field value` flags override any (`--help` lists
them all). A recipe's YAML is a valid `--config` for `python -m eval run`, and the other way round.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from eval.cli import error_line
from eval.options import Launch, parse_options, run_config
from eval.rows import merge_shards
from eval.runner import RunConfig, Runner


def resolve(yaml_path: str | Path, argv: list[str] | None = None, prog: str | None = None,
            description: str | None = None) -> dict[str, Any]:
    """The recipe's YAML, then `--config FILE`s, then `--field value` (or `--field=value`) flags:
    the options given, each checked. Unknown fields, in a file or on the command line, are errors
    that list the valid ones."""
    return parse_options(argv, base=yaml_path, prog=prog, description=description)


def split(cfg: dict[str, Any]) -> tuple[RunConfig, str, bool]:
    """(RunConfig with its AdaptConfig overrides, out folder, overwrite) from resolved options."""
    run_cfg, launch = run_config(cfg)
    if not launch.out:
        raise ValueError("set out: (the run folder) in the YAML or with --out")
    return run_cfg, launch.out, launch.overwrite


def launch_options(cfg: dict[str, Any]) -> Launch:
    """The `Launch` part of resolved options (progress bars, report)."""
    return run_config(cfg)[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def process_rank() -> tuple[int, int]:
    """(rank, world size) from the variables torchrun / `accelerate launch` set (or mpirun's, Open
    MPI's and MPICH's); (0, 1) alone.

    `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N` start N
    processes on CPUs or GPUs alike. `accelerate launch --cpu --num_processes N` starts one (it
    spreads CPU processes only through mpirun, given --mpirun_hostfile) and only sets the rendezvous
    address: refused, naming the torchrun command that starts N, rather than run alone silently.
    """
    env = os.environ
    for rank, size in (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE")):
        if size in env:
            return int(env.get(rank, 0)), int(env[size])
    if env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes") and env.get("MASTER_ADDR"):
        script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "recipes/<recipe>.py"
        raise ValueError(f"accelerate launch --cpu --num_processes N starts one process, not N (accelerate spreads CPU "
                         f"processes only through mpirun): run `torchrun --nproc_per_node N {script} ...` for N CPU "
                         "processes, or drop --num_processes for one")
    return 0, 1


def run_distributed(run_cfg: RunConfig, out: str, overwrite: bool = False, progress: bool = True, report_to: str = "none",
                    poll_s: float = 2.0, report: bool = True, draft_lookup: int = 0) -> Path:
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
                    overwrite=overwrite and rank == 0, report_to=report_to, draft_lookup=draft_lookup)
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
        if report:
            from eval.report import write_report

            log(f"report: {write_report(path)}")
    return path


def cli(main, config: Path) -> None:
    """The recipes' `__main__`: resolve YAML + command line, run, and turn bad input into exit 2.
    `--help` prints the recipe's docstring and every option with the default in force."""
    module = sys.modules.get(main.__module__)
    try:
        main(resolve(config, prog=Path(sys.argv[0]).name, description=getattr(module, "__doc__", None)))
    except (ValueError, KeyError, TypeError, OSError) as e:  # OSError: files, folders, the run lock
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
