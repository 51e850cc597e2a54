"""The learning-rate selection of the `paper` protocol: the same small grid on the same
development stream for every adapting LoRA method, never on an evaluation set.

    .venv/bin/python bench/select_lr.py --out runs/select_lr               # run (resumable), then the table
    .venv/bin/python bench/select_lr.py --out runs/select_lr --summary-only

No paper gives a learning rate for Tent, COME, SAR or ZeroSiam on an LLM's LoRA adapters, so each
gets one from this procedure: every (method, lr) of the grid runs as one online stream through the
harness under the `paper` protocol (no guard, no clipping, SGD momentum 0.9, one step per
problem) on the first `--limit` problems of `arith_dev` (the `arith` generator at another seed,
with every question of the evaluation stream removed). The rule, the same for every method: the
highest accuracy, graded again with the current grader; a tie goes to the smaller lr (the
smaller step is the one that can do less harm). The plug-ins (zerosiam+sar, zerosiam+eata,
zerosiam+deyo) take ZeroSiam's choice. Writes `selection.json` and `selection.md` into `--out`;
the chosen values are the methods' `default_lr` (docs/protocol.md records the run they came from).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import REPO  # noqa: F401  (puts the repo on sys.path)

from eval.rows import read_rows
from eval.runner import RunConfig, Runner, stream_path

GRID = (3e-4, 1e-3, 3e-3)
METHODS = ("tent", "come", "sar", "eata", "deyo", "zerosiam")


def specs(methods, grid) -> list[str]:
    return [f"{m}:lr={lr:g}" for m in methods for lr in grid]


def choose(scores: dict[float, tuple[int, int]]) -> float:
    """The lr with the highest accuracy (correct / graded); a tie goes to the smaller lr.

    >>> choose({1e-3: (10, 40), 3e-4: (10, 40), 3e-3: (4, 40)})
    0.0003
    """
    def key(lr):
        k, n = scores[lr]
        return (-(k / n if n else -math.inf), lr)

    return min(scores, key=key)


def stream_rows(outs: list[Path], method: str) -> list[dict]:
    """The longest copy of a stream among run folders (streams of one grid may run in several processes)."""
    return max((read_rows(stream_path(o, method, "arith_dev")) for o in outs), key=len)


def summarize(outs: list[Path], methods, grid, grade) -> dict:
    """Per method: {lr: (correct, graded)} from the rows, regraded with `grade`, and the choice."""
    noadapt = [grade(r["response"], r["gold"]) for r in stream_rows(outs, "noadapt")]
    table: dict = {"noadapt": {"correct": sum(bool(c) for c in noadapt), "graded": sum(c is not None for c in noadapt)}}
    for m in methods:
        scores, rows_by_lr = {}, {}
        for lr in grid:
            rows = stream_rows(outs, f"{m}:lr={lr:g}")
            marks = [grade(r["response"], r["gold"]) for r in rows]
            scores[lr] = (sum(bool(c) for c in marks), sum(c is not None for c in marks))
            rows_by_lr[lr] = len(rows)
        table[m] = {"scores": {f"{lr:g}": list(v) for lr, v in scores.items()}, "rows": rows_by_lr,
                    "chosen": choose(scores) if len(set(rows_by_lr.values())) == 1 and all(v[1] for v in scores.values())
                    else None}
    return table


def markdown(table: dict, methods, grid, limit: int) -> str:
    base = table["noadapt"]
    lines = [f"Dev stream `arith_dev`, first {limit} problems (each cell: correct / graded rows present); noadapt "
             f"{base['correct']}/{base['graded']}. A method is chosen only when all its streams have rows.", "",
             "| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |", "|---" * (len(grid) + 2) + "|"]
    for m in methods:
        cells = [f"{k}/{n}" for k, n in (table[m]["scores"][f"{lr:g}"] for lr in grid)]
        chosen = table[m]["chosen"]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'-' if chosen is None else f'{chosen:g}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/select_lr")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--grid", default=",".join(f"{x:g}" for x in GRID))
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--skip-noadapt", action="store_true", help="run only the grid's streams (when another folder "
                    "named with --also holds the noadapt reference)")
    ap.add_argument("--also", default="", help="comma-separated run folders holding more streams of the same grid "
                    "(the grid split over processes)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    grid = [float(x) for x in args.grid.split(",") if x]
    out = Path(args.out)
    if not args.summary_only:
        reference = [] if args.skip_noadapt else ["noadapt"]
        cfg = RunConfig(model=args.model, methods=[*reference, *specs(methods, grid)], datasets=["arith_dev"],
                        limit=args.limit, adapt={"max_new_tokens": args.max_new_tokens})
        Runner(cfg, out, progress=not args.no_progress).run()
    from eval.grading import grade

    table = summarize([out, *(Path(p) for p in args.also.split(",") if p)], methods, grid, grade)
    md = markdown(table, methods, grid, args.limit)  # --limit: the run's (pass the same one with --summary-only)
    (out / "selection.json").write_text(json.dumps(table, indent=2))
    (out / "selection.md").write_text(md)
    print(md)
    return table


if __name__ == "__main__":
    main()
