"""Stability sweep: one harness run per grid point, then a table of collapse measures.

A grid is a YAML file (bench/configs/stability_*.yaml):

    base:                       # RunConfig fields shared by every point
      model: smollm2-135m-instruct
      datasets: [arith]
      limit: 300
      adapt: {max_new_tokens: 48, schedule: online, answer: draft, signal: response, guard: false}
    grid:                       # a list of blocks; each block is the product of its axes
      - {method: [noadapt], seed: [0, 1, 2]}
      - {method: [tent], optimizer: [adamw], lr: [1.0e-4, 1.0e-3]}
      - {method: [zerosiam, "zerosiam:alpha=0"], optimizer: [sgd], lr: [1.0e-2], predictor_lr_scale: [0.1, 1]}

An axis is a RunConfig field (seed, limit, datasets, model, dtype, prompt_style) or an
AdaptConfig field (optimizer, lr, predictor_lr_scale, steps, lora_target_modules, signal,
answer, guard, ...). `method` takes harness method specs (`zerosiam:alpha=0`). Setting
`predictor_lr_scale` sets `predictor_lr: null`, so the predictor's lr is lr x scale. The scale
is a plain multiple; it is not normalised by the hidden state's norm (the study reports the
predictor's distance from identity instead, see docs/stability.md).

Each point is a `Runner` run into `<out>/<point-name>/` (rows in `rows/<method>__<dataset>.jsonl`
like any harness run). A point with a `summary.json` and all its rows is skipped; a killed point
resumes from its last checkpoint. `--jobs 2` runs two points at a time as subprocesses with
one thread each.

    .venv/bin/python bench/stability_sweep.py bench/configs/stability_main.yaml --out runs/stability --jobs 2
    .venv/bin/python bench/stability_sweep.py bench/configs/stability_main.yaml --out runs/stability --list
    .venv/bin/python bench/stability_sweep.py bench/configs/stability_main.yaml --out runs/stability --summary-only
    .venv/bin/python bench/plot_stability.py runs/stability --out docs/stability

Writes `<out>/summary_<grid>.md`, `.csv` and `.json` (one record per point and stream; <grid> is
the YAML file's stem without `stability_`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.rows import read_rows, safe_name, stream_path  # noqa: E402
from eval.runner import RunConfig  # noqa: E402
from zs_llm.config import AdaptConfig, all_settings  # noqa: E402
from zs_llm.diagnostics import collapse_measures, has_answer  # noqa: E402

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"methods", "adapt"}
ADAPT_FIELDS = set(all_settings()) - {"method"}
# Short names in point names; any other axis appears under its field name.
ABBREV = {
    "optimizer": "",
    "lr": "lr",
    "predictor_lr_scale": "ps",
    "seed": "s",
    "steps": "st",
    "guard": "guard",
    "signal": "sig",
    "answer": "ans",
    "lora_target_modules": "lora",
    "datasets": "",
    "limit": "n",
    "alpha": "a",
    "predictor": "pred",
}


@dataclasses.dataclass
class Point:
    """One grid point: a name, the axis values that made it, and its RunConfig."""

    name: str
    axes: dict
    run: RunConfig


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "+".join(str(x) for x in v)
    return str(v)


def point_name(axes: dict) -> str:
    """`method` first, then the other axes in ABBREV's order (others by name) as <abbrev><value>,
    joined by '_': the name does not depend on the order of keys in the YAML file."""
    parts = [axes["method"].replace(":", "_")]
    order = list(ABBREV)
    for k in sorted(
        (k for k in axes if k != "method"), key=lambda k: (order.index(k) if k in order else len(order), k)
    ):
        parts.append(f"{ABBREV.get(k, k + '=')}{_fmt_value(axes[k])}")
    return safe_name("_".join(parts))


def expand_grid(spec: dict) -> list[Point]:
    """All points of a grid spec ({base: ..., grid: [block, ...]}), in file order, deduplicated."""
    base = dict(spec.get("base") or {})
    unknown = sorted(set(base) - RUN_FIELDS - {"adapt"})
    if unknown:
        raise ValueError(f"unknown base field(s) {unknown}; valid: {sorted(RUN_FIELDS | {'adapt'})}")
    base_adapt = dict(base.pop("adapt", None) or {})
    blocks = spec.get("grid") or []
    if isinstance(blocks, dict):
        blocks = [blocks]
    points: dict[str, Point] = {}
    for block in blocks:
        block = {
            k: (v if isinstance(v, list) and k != "lora_target_modules" or _is_list_of_lists(k, v) else [v])
            for k, v in block.items()
        }
        if "method" not in block:
            raise ValueError(f"grid block {block} has no 'method' axis")
        bad = sorted(set(block) - RUN_FIELDS - ADAPT_FIELDS - {"method"})
        if bad:
            raise ValueError(
                f"unknown axis {bad}; axes are RunConfig fields {sorted(RUN_FIELDS)} or AdaptConfig "
                f"fields {sorted(ADAPT_FIELDS)}"
            )
        keys = list(block)
        for values in itertools.product(*(block[k] for k in keys)):
            axes = dict(zip(keys, values))
            run_kw = dict(base)
            adapt = dict(base_adapt)
            for k, v in axes.items():
                if k == "method":
                    continue
                if k in RUN_FIELDS:
                    run_kw[k] = v
                else:
                    adapt[k] = v
            if "predictor_lr_scale" in axes:
                adapt["predictor_lr"] = None
            AdaptConfig.from_spec(axes["method"], adapt)  # fail early on bad values
            run = RunConfig(methods=[axes["method"]], adapt=adapt, **run_kw)
            p = Point(point_name(axes), axes, run)
            if p.name in points and points[p.name].run.hash() != run.hash():
                raise ValueError(
                    f"two grid points share the name {p.name} but differ; add the differing field as an axis"
                )
            points.setdefault(p.name, p)
    return list(points.values())


def _is_list_of_lists(key: str, v) -> bool:
    return key == "lora_target_modules" and isinstance(v, list) and all(isinstance(x, list) or x is None for x in v)


def load_grid(path: str | os.PathLike) -> list[Point]:
    import yaml

    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec, dict) or "grid" not in spec:
        raise ValueError(f"{path} must hold a mapping with 'base' and 'grid'")
    return expand_grid(spec)


# ------------------------------------------------------------------------------ running


def n_expected(point: Point) -> dict[str, int]:
    """Problems per stream of a point, by dataset."""
    from eval.datasets import load_problems

    c = point.run
    return {d: len(load_problems(d, data_dir=c.data_dir, limit=c.limit, seed=c.seed)) for d in c.datasets}


def is_finished(point: Point, out: Path) -> bool:
    """A point is finished when its run folder holds this config, a summary.json and all rows."""
    d = out / point.name
    run_json = d / "run.json"
    if not (d / "summary.json").exists() or not run_json.exists():
        return False
    if json.loads(run_json.read_text()).get("config_hash") != point.run.hash():
        return False
    expected = n_expected(point)
    return all(len(read_rows(stream_path(d, m, ds))) >= expected[ds] for m in point.run.methods for ds in expected)


def run_point(point: Point, out: Path, threads: int = 1, progress: bool = False) -> Path:
    """Run one point in this process (Runner resumes a partial run)."""
    import torch

    from eval.runner import Runner

    torch.set_num_threads(threads)
    return Runner(point.run, out / point.name, progress=progress).run()


def run_points(
    points: list[Point], out: Path, grid_file: str, jobs: int = 1, threads: int = 1, progress: bool = False
) -> None:
    todo = [p for p in points if not is_finished(p, out)]
    for p in points:
        if p not in todo:
            print(f"[sweep] {p.name}: finished, skipped", flush=True)
    if jobs <= 1:
        for p in todo:
            t = time.time()
            print(f"[sweep] {p.name}: running", flush=True)
            run_point(p, out, threads, progress)
            print(f"[sweep] {p.name}: done in {time.time() - t:.0f}s", flush=True)
        return
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    queue = list(todo)
    failed = []
    while queue or running:
        while queue and len(running) < jobs:
            p = queue.pop(0)
            (out / p.name).mkdir(parents=True, exist_ok=True)
            log = open(out / p.name / "sweep.log", "a")
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                grid_file,
                "--out",
                str(out),
                "--only",
                p.name,
                "--jobs",
                "1",
                "--threads",
                str(threads),
            ]
            running[p.name] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO),
                time.time(),
            )
            print(f"[sweep] {p.name}: started (log {out / p.name / 'sweep.log'})", flush=True)
        time.sleep(2)
        for name, (proc, t) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                if proc.returncode:
                    failed.append(name)
                print(f"[sweep] {name}: {status} in {time.time() - t:.0f}s", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} point(s) failed: {failed}; see their sweep.log")


# ------------------------------------------------------------------------------ summary

FEW_ANSWERS = 10  # the table flags a constant-answer verdict resting on fewer extracted answers

COLUMNS = [
    "point",
    "method",
    "dataset",
    "problems",
    "accuracy",
    "accuracy_last_half",
    "answered",
    "answered_first",
    "answered_last",
    "entropy_first",
    "entropy_trend",
    "logit_norm_centered_trend",
    "top_answer_share_last_half",
    "answers_last_half",
    "degenerate_share_last_half",
    "predictor_dev_final",
    "guard_events",
    "s_per_problem",
    "verdict",
]


def summarize_rows(rows: list[dict]) -> dict:
    """collapse_measures of one stream plus the guard's events and the time per problem."""
    m = collapse_measures(rows)
    # m["answers_last_half"] (from collapse_measures): how many answers the top-answer share rests on
    # format, apart from arithmetic: SmolLM2 often copies the prompt's empty `\boxed{}`
    m["answered"] = sum(map(has_answer, rows)) / max(1, len(rows))
    m["guard_events"] = sum(1 for r in rows for e in r.get("events") or [] if str(e).startswith("guard"))
    times = [r.get("timings", {}).get("total_s") for r in rows]
    times = [t for t in times if t is not None]
    m["s_per_problem"] = sum(times) / len(times) if times else float("nan")
    return m


def summarize(points: list[Point], out: Path, stem: str = "summary") -> list[dict]:
    """One record per (point, stream) that has rows; writes <stem>.{json,csv,md} under `out`."""
    records = []
    for p in points:
        for method in p.run.methods:
            for ds in p.run.datasets:
                rows = read_rows(stream_path(out / p.name, method, ds))
                if not rows:
                    continue
                rec = {
                    "point": p.name,
                    "method": method,
                    "dataset": ds,
                    "axes": p.axes,
                    "finished": is_finished(p, out),
                    **summarize_rows(rows),
                }
                records.append(rec)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(records, indent=1, default=_json_default))
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + ["finished"], extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    (out / f"{stem}.md").write_text(markdown_table(records))
    return records


def _json_default(x):
    return float(x) if hasattr(x, "__float__") else str(x)


def _cell(k: str, v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if k.startswith(("accuracy", "top_answer", "degenerate", "answered")):
            return f"{v:.1%}"
        return f"{v:.3g}"
    return str(v)


def markdown_table(records: list[dict]) -> str:
    cols = [c for c in COLUMNS if c != "method"]
    head = [
        "point",
        "data",
        "n",
        "acc",
        "acc 2nd half",
        "answered",
        "answered first / last window",
        "H first",
        "H trend",
        "norm trend",
        "top ans (2nd half)",
        "answers (2nd half)",
        "loops (2nd half)",
        "pred dev",
        "guard",
        "s/prob",
        "verdict",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = r["point"] + ("" if r.get("finished", True) else " (running)")
        cells = [name] + [_cell(c, r.get(c)) for c in cols[1:]]
        i = cols.index("answered_first")  # one cell for the pair
        cells[i:i + 2] = [f"{cells[i]} / {cells[i + 1]}"]
        if r.get("verdict") == "collapsed-constant" and r.get("answers_last_half", FEW_ANSWERS) < FEW_ANSWERS:
            cells[-1] += f" (on {r['answers_last_half']} answers)"  # a share of a handful of answers is noise
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("grid", help="YAML grid (bench/configs/stability_*.yaml)")
    ap.add_argument("--out", default="runs/stability", help="folder of the point folders and the summary")
    ap.add_argument("--jobs", type=int, default=1, help="points run at a time (>1: one subprocess each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per point")
    ap.add_argument("--only", nargs="*", help="run only these point names")
    ap.add_argument("--list", action="store_true", help="print the points and whether they are finished, then exit")
    ap.add_argument("--summary-only", action="store_true", help="only (re)write the summary of what exists")
    ap.add_argument("--progress", action="store_true", help="show a progress bar (jobs=1)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    points = load_grid(args.grid)
    if args.only:
        unknown = sorted(set(args.only) - {p.name for p in points})
        if unknown:
            raise SystemExit(f"unknown point(s) {unknown}; --list shows the names")
        points = [p for p in points if p.name in args.only]
    if args.list:
        for p in points:
            print(f"{'done ' if is_finished(p, out) else 'todo '} {p.name}  {p.run.methods} adapt={p.run.adapt}")
        return
    if not args.summary_only:
        run_points(points, out, args.grid, args.jobs, args.threads, args.progress)
    if args.only and not args.summary_only:
        return  # a worker; the parent writes the summary
    stem = "summary_" + Path(args.grid).stem.removeprefix("stability_")
    records = summarize(points, out, stem)
    print(markdown_table(records))
    print(f"[sweep] wrote {out / stem}.md, .csv and .json", flush=True)


if __name__ == "__main__":
    main()
