"""Experiment tracking: `--report_to tensorboard|wandb|none` (default none), as trl's.

Each problem a run computes is logged under `<method>/<dataset>/`, at step = its position in the
stream (1-based): `correct`, `running_accuracy` (the stream's accuracy so far, as the progress bar
shows it) and, for a method that adapts, its last update's `loss`, `entropy`, `divergence`,
`predictor_drift` (the predictor's distance from identity, rows' `predictor_dev`) and `grad_norm`.
When a stream finishes, its `accuracy` and its collapse `verdict` with the rule that fired
(`zs_llm.diagnostics.collapse_measures`, as report.md gives it).

Both work offline:
- tensorboard: event files in `<out>/tensorboard/` (`tensorboard --logdir <out>/tensorboard`);
- wandb: an offline run in `<out>/wandb/` (W&B's offline mode unless WANDB_MODE says otherwise; upload
  it later with `wandb sync <out>/wandb/offline-run-*`). Each stream has its own step axis
  (`<method>/<dataset>/problem`), since pooled streams finish problems in interleaved order.
Only rows computed in this invocation are logged: a resumed or grown run logs the rest, not again
what it had. Both need their package (`pip install 'zs_llm[track]'`, part of `dev`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .run_folder import _log

REPORT_TO = ("none", "tensorboard", "wandb")

#: rows' step statistics logged per problem, by the name they are logged under
STEP_STATS = {"loss": "loss", "entropy": "entropy", "divergence": "divergence", "predictor_drift": "predictor_dev",
              "grad_norm": "grad_norm"}
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}


def problem_values(row: dict, running_accuracy: float | None) -> dict[str, float]:
    """What is logged for one row (absent statistics are left out, not logged as NaN)."""
    from zs_llm.diagnostics import step_stat

    out = {}
    if row.get("correct") is not None:
        out["correct"] = float(bool(row["correct"]))
    if running_accuracy is not None:
        out["running_accuracy"] = running_accuracy
    for name, key in STEP_STATS.items():
        v = step_stat(row, key)
        if not math.isnan(v):
            out[name] = v
    return out


def verdict_text(rows: list[dict], adapts: bool) -> tuple[str, dict]:
    """(the verdict as report.md words it, {accuracy}) of a finished stream."""
    from zs_llm.diagnostics import collapse_measures

    m = collapse_measures(rows)
    text = f"{m['verdict']} ({m['verdict_rule']})" if adapts else "n/a (does not adapt)"
    return text, {"accuracy": m["accuracy"]}


def check_available(report_to: str) -> None:
    """Refuse, before a run starts, a tracker whose package is not installed (one line naming the fix)."""
    if report_to not in REPORT_TO:
        raise ValueError(f"--report_to must be one of {', '.join(REPORT_TO)}, not {report_to!r}")
    if report_to == "none":
        return
    import importlib.util

    if importlib.util.find_spec(_PACKAGE[report_to]) is None:
        raise ValueError(f"--report_to {report_to} needs the {_PACKAGE[report_to]} package, which is not installed "
                         "here: pip install 'zs_llm[track]' (or --report_to none)")


class Tracker:
    """One run's tracker; `log_problem` per computed row, `log_stream_end` per finished stream."""

    def log_problem(self, method: str, dataset: str, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def log_stream_end(self, method: str, dataset: str, step: int, verdict: str, values: dict[str, float]) -> None:
        """A finished stream (`step`: its length) and its verdict."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.logdir = SummaryWriter(log_dir=str(logdir)), logdir

    def log_problem(self, method, dataset, step, values):
        for k, v in values.items():
            self.writer.add_scalar(f"{method}/{dataset}/{k}", v, global_step=step)

    def log_stream_end(self, method, dataset, step, verdict, values):
        self.writer.add_text(f"{method}/{dataset}/verdict", verdict, global_step=step)
        for k, v in values.items():
            if not math.isnan(v):
                self.writer.add_scalar(f"{method}/{dataset}/final_{k}", v, global_step=step)
        self.writer.flush()

    def close(self):
        self.writer.close()
        _log(f"TensorBoard event files in {self.logdir} (tensorboard --logdir {self.logdir})")


class WandbTracker(Tracker):
    def __init__(self, folder: Path, name: str, config: dict):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "zs_llm"), dir=str(folder.parent), name=name,
                              config=config, mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", save_code=False,
                                                      x_disable_stats=True, x_disable_meta=True))
        self.axes: set[str] = set()

    def log_problem(self, method, dataset, step, values):
        prefix = f"{method}/{dataset}"
        if prefix not in self.axes:  # each stream its own step axis: pooled streams interleave
            self.run.define_metric(f"{prefix}/problem")
            self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/problem")
            self.axes.add(prefix)
        self.run.log({f"{prefix}/problem": step, **{f"{prefix}/{k}": v for k, v in values.items()}})

    def log_stream_end(self, method, dataset, step, verdict, values):
        self.run.summary[f"{method}/{dataset}/verdict"] = verdict
        for k, v in values.items():
            self.run.summary[f"{method}/{dataset}/final_{k}"] = v

    def close(self):
        where, offline = self.run.dir, self.run.settings.mode == "offline"
        self.run.finish()
        self.wandb.teardown()  # finish() can return before the service has written the run file: wait for it
        if offline:
            folder = Path(where).parent
            _log(f"W&B offline run in {folder} (upload it with: wandb sync {folder})")


def open_tracker(report_to: str, out: Path, config: dict, rank: int = 0, world: int = 1) -> Tracker | None:
    """The tracker `--report_to` names for a run writing into `out` (None for none); with several
    processes, each rank logs its own streams into its own files."""
    check_available(report_to)
    if report_to == "none":
        return None
    part = f"rank{rank}" if world > 1 else ""
    if report_to == "tensorboard":
        return TensorBoardTracker(out / "tensorboard" / part if part else out / "tensorboard")
    return WandbTracker(out / "wandb", out.name + (f"-{part}" if part else ""), config)
