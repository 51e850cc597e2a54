"""A study's tables, from the rows of its run folders (`eval.study` runs and assembles them):

- `streams_tables`: the methods x streams x seeds table of docs/wild_streams.md (accuracy with its
  Wilson interval, the paired change from noadapt with its stratified bootstrap interval, McNemar
  with Holm's adjustment, the collapse verdicts and diagnostics), from `eval.report` and `eval.stats`;
- `selection_table` and `choose`: the protocol's learning-rate rule (docs/protocol.md);
- `expand_grid` and `sweep_table`: a stability sweep's points and its table of collapse measures.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from collections import Counter
from pathlib import Path

from zs_llm.config import AdaptConfig, all_settings
from zs_llm.diagnostics import collapse_measures, has_answer

from .rows import read_rows, safe_name, stream_path
from .runner import RunConfig


# ------------------------------------------------------------------ the streams table
def short(label: str) -> str:
    """`tent+clip:lr=0.001` -> `tent+clip` (the lr is stated once, beside the table)."""
    return label.split(":lr=")[0]


def streams_tables(folders: list[Path]) -> str:
    """The study's tables (markdown) from the assembled per-seed run folders: per method, pooled
    over streams and seeds and per stream pooled over seeds: n, accuracy with its 95% interval,
    the paired difference from noadapt with its stratified 95% bootstrap interval (problems
    resampled within each (stream, seed)) and the exact McNemar p, and the collapse verdicts."""
    from .report import load_run, outcomes
    from .stats import holm, paired_difference_over_sets, wilson_interval

    runs = {f.name: load_run(f) for f in folders}
    methods = sorted(dict.fromkeys(m for streams in runs.values() for m, _ in streams), key=lambda m: m != "noadapt")
    datasets = list(dict.fromkeys(d for streams in runs.values() for _, d in streams))
    base = next((m for m in methods if m == "noadapt"), None)
    # each stream's collapse measures, once: the verdict columns and the diagnostics table read them
    measures = {(s, key): collapse_measures(rows) for s, streams in runs.items() for key, rows in streams.items()}
    pooled_p = {}  # each method's McNemar p over all streams and seeds: the family Holm adjusts

    def cells(m: str, ds: list[str], seeds: list[str] | None = None) -> str:
        keys = [(s, d) for s in (seeds or runs) for d in ds if (m, d) in runs[s]]
        outs = [outcomes(runs[s][(m, d)]) for s, d in keys]
        marks = [[bool(c) for c in o.values() if c is not None] for o in outs]
        n, k = sum(map(len, marks)), sum(map(sum, marks))
        lo, hi = wilson_interval(k, n)
        row = f"{n} | {100 * k / max(1, n):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        if base and m != base:
            pairs = [(o, outcomes(runs[s][(base, d)])) for o, (s, d) in zip(outs, keys) if (base, d) in runs[s]]
            v = paired_difference_over_sets(pairs)
            if ds == datasets and seeds is None:
                pooled_p[m] = v.p_mcnemar
            row += (f" | {100 * v.diff:+.1f} [{100 * v.ci_low:+.1f}, {100 * v.ci_high:+.1f}] | "
                    f"{v.only_method}/{v.only_baseline} | {v.p_mcnemar:.3g}")
        else:
            row += " | - | - | -"
        verdicts = Counter(measures[s, (m, d)]["verdict"] for s, d in keys)
        return row + " | " + ", ".join(f"{v} {c}" for v, c in verdicts.most_common())

    head = ("| method | n | accuracy % [95% CI] | change from noadapt, points [95% CI] | gained/lost | McNemar p "
            "| verdicts (streams x seeds) |\n|---|---|---|---|---|---|---|")
    lines = ["### All streams and seeds", "", head]
    lines += [f"| {short(m)} | {cells(m, datasets)} |" for m in methods]
    if pooled_p:
        adj = holm(pooled_p)
        below = [m for m in pooled_p if pooled_p[m] < 0.05]
        lines += ["", f"Holm-adjusted over the {len(adj)} comparisons with {base} above (McNemar p under 0.05 "
                  "before adjustment): " + (", ".join(f"{short(m)} {pooled_p[m]:.3g} -> {adj[m]:.3g}" for m in below)
                                            or "none") + "."]
    for d in datasets:
        lines += ["", f"### {d}", "", head]
        lines += [f"| {short(m)} | {cells(m, [d])} |" for m in methods if any((m, d) in r for r in runs.values())]
    lines += ["", "### Every stream and seed", "", "| stream | seed | " + head.split("\n")[0][2:],
              "|---|---|" + head.split("\n")[1][1:]]
    lines += [f"| {d} | {s} | {short(m)} | {cells(m, [d], [s])} |" for d in datasets for s in runs for m in methods
              if (m, d) in runs[s]]
    lines += ["", *diagnostics_table(runs, methods, datasets, base, measures)]
    lrs = sorted({m.split(":lr=")[1] + " (" + short(m).split("+")[0] + ")" for m in methods if ":lr=" in m})
    lines += ["", f"Seeds: {', '.join(runs)}. Learning rates: {', '.join(lrs) or 'the methods defaults'}. The change "
              "is paired on the same problems; its interval resamples problems within each (stream, seed); "
              "gained/lost: problems the method got right and noadapt wrong, and the reverse."]
    return "\n".join(lines) + "\n"


def diagnostics_table(runs: dict, methods: list[str], datasets: list[str], base: str | None,
                      measures: dict) -> list[str]:
    """Per stream and adapting method, seeds in order: the entropy trend, the predictor's final
    distance from identity (ZeroSiam rows) and the verdicts."""
    lines = ["### Collapse diagnostics", "",
             "Per stream, seeds in order: the entropy trend (last quarter's mean over the first's); `pred`: the "
             "predictor's final distance from identity; the verdicts.", "",
             "| stream | " + " | ".join(short(m) for m in methods if m != base) + " |",
             "|---|" + "---|" * sum(m != base for m in methods)]
    for d in datasets:
        row = []
        for m in (m for m in methods if m != base):
            ms = [measures[s, (m, d)] for s in runs if (m, d) in runs[s]]
            cell = "/".join(f"{x['entropy_trend']:.2f}" for x in ms)
            if "zerosiam" in m:
                cell += "; pred " + "/".join(f"{x['predictor_dev_final']:.2f}" for x in ms)
            row.append(cell + "; " + ",".join(sorted({x["verdict"] for x in ms})))
        lines.append(f"| {d} | " + " | ".join(row) + " |")
    return lines


# ------------------------------------------------------------------ the learning-rate selection


def choose(scores: dict[float, tuple[int, int]]) -> float:
    """The lr with the highest accuracy (correct / graded); a tie goes to the smaller lr.

    >>> choose({1e-3: (10, 40), 3e-4: (10, 40), 3e-3: (4, 40)})
    0.0003
    """
    def key(lr):
        k, n = scores[lr]
        return (-(k / n if n else -math.inf), lr)

    return min(scores, key=key)


def _longest_stream(outs: list[Path], method: str, dataset: str) -> list[dict]:
    """The longest copy of a stream among run folders (streams of one grid may run in several processes)."""
    return max((read_rows(stream_path(o, method, dataset)) for o in outs), key=len)


def selection(outs: list[Path], methods, grid, grade, dataset: str = "arith_dev") -> dict:
    """Per method: {lr: (correct, graded)} from the rows, regraded with `grade`, and the choice."""
    noadapt = [grade(r["response"], r["gold"]) for r in _longest_stream(outs, "noadapt", dataset)]
    table: dict = {"noadapt": {"correct": sum(bool(c) for c in noadapt), "graded": sum(c is not None for c in noadapt)}}
    for m in methods:
        scores, rows_by_lr = {}, {}
        for lr in grid:
            rows = _longest_stream(outs, f"{m}:lr={lr:g}", dataset)
            marks = [grade(r["response"], r["gold"]) for r in rows]
            scores[lr] = (sum(bool(c) for c in marks), sum(c is not None for c in marks))
            rows_by_lr[lr] = len(rows)
        table[m] = {"scores": {f"{lr:g}": list(v) for lr, v in scores.items()}, "rows": rows_by_lr,
                    "chosen": choose(scores) if len(set(rows_by_lr.values())) == 1 and all(v[1] for v in scores.values())
                    else None}
    return table


def selection_table(table: dict, methods, grid, limit: int, dataset: str = "arith_dev") -> str:
    base = table["noadapt"]
    lines = [f"Dev stream `{dataset}`, first {limit} problems (each cell: correct / graded rows present); noadapt "
             f"{base['correct']}/{base['graded']}. A method is chosen only when all its streams have rows.", "",
             "| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |", "|---" * (len(grid) + 2) + "|"]
    for m in methods:
        cells = [f"{k}/{n}" for k, n in (table[m]["scores"][f"{lr:g}"] for lr in grid)]
        chosen = table[m]["chosen"]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'-' if chosen is None else f'{chosen:g}'} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ a stability sweep's grid

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


def n_expected(point: Point) -> dict[str, int]:
    """Problems per stream of a point, by dataset."""
    from .datasets import load_problems

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


# ------------------------------------------------------------------ a stability sweep's table

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


def sweep_table(points: list[Point], out: Path, stem: str = "summary") -> list[dict]:
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


