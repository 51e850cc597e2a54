"""Tables and plots from a run folder: accuracy per method and set with its 95% interval, the
average over sets, the paired change from `noadapt` on the same problems (interval and McNemar p),
and collapse diagnostics along each stream; `write_combined_report` puts runs of one configuration
with different seeds side by side (per-seed values, mean, sd and range).

    python -m eval report runs/demo     # report.md, report.html, metrics.json, results.csv and plots/
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zs_llm.checkpoint import atomic_path, atomic_write_text
from zs_llm.diagnostics import (
    collapse_measures,
    has_answer,
    is_degenerate,
    rolling,
    rolling_top_share,
    step_stat,
)
from zs_llm.methods import METHODS

from .datasets import FOUR_SETS
from .identity import data_change, model_change
from .report_html import write_html
from .rows import lock_holder, read_rows_strict
from .runner import RESULT_FREE_FIELDS, without_later_defaults
from .stats import (
    N_RESAMPLES,
    PairedDiff,
    average_interval,
    combine_seeds,
    paired_difference,
    paired_difference_over_sets,
    wilson_interval,
)
from .userdata import set_name

BASELINE = "noadapt"
AVERAGE = "average"  # the dataset name of the average-over-sets rows in results.csv
CSV_COLUMNS = ("method", "dataset", "n", "correct", "accuracy", "ci_low", "ci_high", "diff_vs_noadapt",
               "diff_ci_low", "diff_ci_high", "p_mcnemar")
SEED_COLUMNS = ("n_runs", "accuracy_sd", "accuracy_min", "accuracy_max", "diff_sd", "diff_min", "diff_max")
SMALL_N = 30  # intervals over fewer problems than this are marked: wide, and only roughly 95%
SMALL_MARK = "†"


def method_adapts(label: str, info: dict | None = None) -> bool:
    """Whether the method behind a row label updates weights along its stream (the shared optimizer
    steps after each draft): run.json's `adapt_configs` names the method, else the label does
    (`tent+guard:alpha=0` -> tent). A name not registered here counts as adapting."""
    cls = _method_class(label, info)
    return cls is None or bool(cls.trains and cls.loop_update)


def _method_class(label: str, info: dict | None = None):
    c = ((info or {}).get("adapt_configs") or {}).get(label) or {}
    return METHODS.get(c.get("method") or label.partition(":")[0].partition("+")[0])


def method_order(streams: dict, info: dict | None = None, baseline: str = BASELINE) -> dict:
    """`streams` reordered: the baseline first, then the methods and sets in the order the run's
    configuration lists them (`--methods`, `--datasets`), then any others as found."""
    info = info or {}
    methods = [baseline, *(info.get("adapt_configs") or {}), *(m for m, _ in streams)]
    datasets = [*map(set_name, (info.get("config") or {}).get("datasets") or []), *(d for _, d in streams)]
    rank_m = {m: i for i, m in enumerate(dict.fromkeys(methods))}
    rank_d = {d: i for i, d in enumerate(dict.fromkeys(datasets))}
    return dict(sorted(streams.items(), key=lambda kv: (rank_m[kv[0][0]], rank_d[kv[0][1]])))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021): the chance that k of the
    n samples drawn without replacement hold a correct one, 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(extracted: Sequence[str | None], corrects: Sequence[bool | None], k: int) -> bool:
    """maj@k of one problem: whether the answer most of its first k samples give (the grader's
    extracted text, stripped; a tie goes to the one given first) is correct. Samples without an
    answer do not vote; none with one: False."""
    votes: dict[str, list[int]] = {}
    for i, a in enumerate(extracted[:k]):
        if a is not None and a.strip():
            votes.setdefault(a.strip(), []).append(i)
    if not votes:
        return False
    winner = max(votes.values(), key=lambda idx: (len(idx), -idx[0]))
    return bool(corrects[winner[0]])


def sample_metrics(rows: list[dict]) -> dict:
    """avg@n, pass@k (unbiased, k in 1, 4, n) and maj@k (k in 4, n; only rows that record each
    sample's extracted answer) of graded rows with n > 1 samples; {} without such rows."""
    multi = [r for r in rows if r.get("correct") is not None and r.get("corrects")]
    if not multi:
        return {}
    n = min(len(r["corrects"]) for r in multi)
    ks = sorted({1, min(n, 4), n})
    out = {"n_samples": n,
           "avg@n": float(np.mean([np.mean([bool(c) for c in r["corrects"] if c is not None]) for r in multi]))}
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(len(r["corrects"]), sum(bool(c) for c in r["corrects"]), k)
                                          for r in multi]))
    if all(r.get("extracteds") for r in multi):
        for k in ks[1:]:
            out[f"maj@{k}"] = float(np.mean([majority_correct(r["extracteds"], r["corrects"], k) for r in multi]))
    return out


def sample_columns(summary: dict) -> tuple[str, ...]:
    """The results.csv columns of the sampled metrics any stream of `summary` has."""
    keys = {k for a in summary["sets"].values() for k in a if "@" in k}
    if not keys:
        return ()

    def order(key):
        kind, _, k = key.partition("@")
        return ("avg", "pass", "maj").index(kind), int(k) if k.isdigit() else 0

    return ("n_samples", *sorted(keys, key=order))


def load_run(run_dir: str | Path, notes: list[str] | None = None) -> dict[tuple[str, str], list[dict]]:
    """{(method, dataset): rows in stream order}; shard files of a multi-process run included.
    A rows file with a corrupted line raises `eval.rows.DamagedRows` (naming file, line and fix);
    a torn last line or missing rows are appended to `notes`."""
    run_dir = Path(run_dir)
    if not (run_dir / "rows").is_dir():
        raise FileNotFoundError(f"{run_dir} has no rows/ folder: pass a folder written by `python -m eval run`")
    streams: dict[tuple[str, str], list[dict]] = {}
    for path in sorted((run_dir / "rows").glob("*.jsonl")):
        rows, found = read_rows_strict(path)
        if notes is not None:
            notes.extend(found)
        for row in rows:
            streams.setdefault((row["method"], row["dataset"]), []).append(row)
    for rows in streams.values():
        rows.sort(key=lambda r: r["index"])
    return streams


def accuracy(rows: list[dict]) -> dict:
    """pass@1 of each problem's first answer (greedy unless sampled) over gradable rows with its 95%
    Wilson interval, plus `sample_metrics` when rows hold several samples; ungradable rows
    (unparseable gold) are counted, not scored."""
    graded = [r for r in rows if r.get("correct") is not None]
    k = sum(bool(r["correct"]) for r in graded)
    out = {"n": len(rows), "graded": len(graded), "ungradable": len(rows) - len(graded), "correct": k}
    out["acc"] = k / len(graded) if graded else float("nan")
    out["ci_low"], out["ci_high"] = wilson_interval(k, len(graded))
    out.update(sample_metrics(graded))
    return out


def outcomes(rows: list[dict]) -> dict:
    """{problem id: correct (True/False/None)} of one stream, the key that pairs methods."""
    return {r.get("id", r["index"]): r.get("correct") for r in rows}


def average_sets(datasets: Sequence[str]) -> tuple[list[str], str]:
    """The sets averaged in the report and the column's name: the four paper sets when all are present."""
    four = [d for d in FOUR_SETS if d in datasets]
    return (four, "avg (4 sets)") if len(four) == len(FOUR_SETS) else (list(datasets), "avg")


def summarize(streams: dict, baseline: str = BASELINE, seed: int = 0) -> dict:
    """Every number of the accuracy section.

    sets[(method, dataset)]: `accuracy()` plus "vs" (a PairedDiff against `baseline`, except for the
    baseline); average[method]: the mean of its per-set accuracies over `avg_sets` with a bootstrap
    interval that resamples problems within each set, plus "vs". A method missing one of the sets
    has no average, and a run of one set has none.
    """
    methods = list(dict.fromkeys(m for m, _ in streams))
    methods.sort(key=lambda m: m != baseline)  # stable: the baseline first, the others as given
    datasets = list(dict.fromkeys(d for _, d in streams))
    avg_sets, avg_name = average_sets(datasets)
    outs = {k: outcomes(rows) for k, rows in streams.items()}
    sets = {k: accuracy(rows) for k, rows in streams.items()}
    for (m, d), a in sets.items():
        if m != baseline and (baseline, d) in outs:
            a["vs"] = paired_difference(outs[(m, d)], outs[(baseline, d)], seed=seed)
    average = {}
    for m in methods:
        if len(avg_sets) < 2 or not all((m, d) in sets for d in avg_sets):  # one set: its own row says it all
            continue
        groups = [[bool(c) for c in outs[(m, d)].values() if c is not None] for d in avg_sets]
        lo, hi = average_interval(groups, seed=seed)
        a = {"graded": sum(len(g) for g in groups), "correct": sum(sum(g) for g in groups),
             "acc": float(np.mean([sets[(m, d)]["acc"] for d in avg_sets])), "ci_low": lo, "ci_high": hi}
        if m != baseline and all((baseline, d) in outs for d in avg_sets):
            a["vs"] = paired_difference_over_sets([(outs[(m, d)], outs[(baseline, d)]) for d in avg_sets], seed=seed)
        average[m] = a
    return {"methods": methods, "datasets": datasets, "avg_sets": avg_sets, "avg_name": avg_name,
            "baseline": baseline, "sets": sets, "average": average}


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: float, sign: bool = False) -> str:
    return "-" if _nan(x) else f"{100 * x:{'+' if sign else ''}.1f}"


def _ci(x: float, lo: float, hi: float, sign: bool = False) -> str:
    """`27.5 [19.8, 36.1]` in %; `+2.5 [-1.0, +6.0]` for a change."""
    if _nan(x):
        return "-"
    return f"{_pct(x, sign)} [{_pct(lo, sign)}, {_pct(hi, sign)}]"


def _p(p: float) -> str:
    return "-" if _nan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _n_label(ns: set[int]) -> str:
    return f"n={min(ns)}" if len(ns) == 1 else f"n={min(ns)}-{max(ns)}"


def _small(n: int) -> str:
    return SMALL_MARK if n < SMALL_N else ""


def accuracy_table(summary: dict) -> str:
    """Methods x sets (and the average): accuracy in % with its 95% interval, n graded problems;
    an interval over fewer than SMALL_N problems (for the average: in any of its sets) is marked."""
    methods, datasets, sets, average = (summary[k] for k in ("methods", "datasets", "sets", "average"))
    ns = {d: {sets[(m, d)]["graded"] for m in methods if (m, d) in sets} for d in datasets}
    avg_ns = {a["graded"] for a in average.values()}
    heads = [f"{d} ({_n_label(ns[d])})" if len(ns[d]) == 1 else d for d in datasets]
    if average:
        heads.append(summary["avg_name"] + (f" ({_n_label(avg_ns)})" if len(avg_ns) == 1 else ""))
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for m in methods:
        cells = []
        for d in datasets:
            a = sets.get((m, d))
            cell = "-" if a is None else _ci(a["acc"], a["ci_low"], a["ci_high"]) + _small(a["graded"])
            cells.append(cell + (f", n={a['graded']}" if a is not None and len(ns[d]) > 1 else ""))
        a = average.get(m)
        if average:
            fewest = min((sets[(m, d)]["graded"] for d in summary["avg_sets"] if (m, d) in sets), default=0)
            cells.append("-" if a is None else _ci(a["acc"], a["ci_low"], a["ci_high"]) + _small(fewest)
                         + (f", n={a['graded']}" if len(avg_ns) > 1 else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def change_table(summary: dict) -> str:
    """Each method minus the baseline on the problems graded for both, per set and averaged."""
    base, sets, average = summary["baseline"], summary["sets"], summary["average"]
    lines = [f"| method | dataset | n paired | change vs {base} (points) [95% CI] | gained | lost | McNemar p |",
             "|---|---|---|---|---|---|---|"]
    for m in summary["methods"]:
        if m == base:
            continue
        keyed = [(d, sets[(m, d)].get("vs")) for d in summary["datasets"] if (m, d) in sets]
        keyed.append((summary["avg_name"], average.get(m, {}).get("vs")))
        for d, v in keyed:
            if v is not None:
                lines.append(f"| {m} | {d} | {v.n} | {_ci(v.diff, v.ci_low, v.ci_high, sign=True)}{_small(v.n)} | "
                             f"{v.only_method} | {v.only_baseline} | {_p(v.p_mcnemar)} |")
    return "\n".join(lines) if len(lines) > 2 else f"No `{base}` stream to compare with."


def accuracy_section(summary: dict) -> str:
    sets = summary["sets"]
    note = "Accuracy in % (greedy pass@1 unless sampled) with its 95% Wilson interval; n: problems graded."
    if summary["average"]:
        note += (f" {summary['avg_name']}: the mean of the accuracies on {', '.join(summary['avg_sets'])}, with a "
                 f"bootstrap interval ({N_RESAMPLES:,} resamples of problems within each set), widened where needed "
                 "to the Wilson interval at the effective number of problems (S^2 / sum of 1/n over the S sets), "
                 "so sets at 0% or 100% still leave it its width.")
    small = any(a["graded"] < SMALL_N for a in sets.values())
    if small:
        note += (f" {SMALL_MARK} fewer than {SMALL_N} problems (for the average: in one of its sets): the interval "
                 "is wide and its 95% only approximate; read such a cell as a rough range, not a measurement.")
    text = [accuracy_table(summary), "", note]
    ungr = {k: a["ungradable"] for k, a in sets.items() if a["ungradable"]}
    if ungr:
        where = ", ".join(f"{m} on {d}: {u}" for (m, d), u in ungr.items())
        k = sum(ungr.values())
        text[-1] += (f" {k} row{'s' * (k != 1)} with an unparseable gold answer {'are' if k != 1 else 'is'} excluded "
                     f"(not counted as wrong): {where}.")
    avg = summary["average"]
    text += ["", f"### Change from {summary['baseline']}", "", change_table(summary), "",
             "Paired on problem id, over the problems graded for both. Interval: paired bootstrap "
             f"({N_RESAMPLES:,} resamples of problems, seed 0{'; within each set for the average' * bool(avg)}), "
             "widened where needed to Newcombe's score interval for paired proportions (built from the two "
             "accuracies' Wilson intervals; for the average at the effective number of problems), so a change every "
             "resample repeats at a few problems still has its width. "
             f"gained / lost: problems only the method / only {summary['baseline']} solved. McNemar: exact two-sided "
             f"binomial test on those counts{' (for the average, pooled over the sets)' * bool(avg)}."
             + (f" {SMALL_MARK} fewer than {SMALL_N} paired problems: the interval is wide and its 95% only "
                "approximate; it is not a precise result." if small else "")]
    extra = [(k, a) for k, a in sets.items() if "avg@n" in a]
    if extra:
        cols = list(sample_columns(summary)[1:])
        n = extra[0][1]["n_samples"]
        text += ["", f"### Sampled: {n} answers per problem", "",
                 "| method | dataset | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        text += [f"| {m} | {d} | " + " | ".join(_pct(a.get(x)) for x in cols) + " |" for (m, d), a in extra]
        text += ["", "In %. avg@n: the mean share of correct samples. pass@k: the chance that k of the n samples "
                 "hold a correct one (the unbiased estimator, 1 - C(n-c, k) / C(n, k) with c correct). maj@k: the "
                 "answer most of the first k samples give (ties: the one given first) is correct. Sample 1 is the "
                 "method's answer (it adapted on that draft); samples 2..n are drawn after the problem's update, "
                 "each from its own seed (`sample_seeds` in the rows)."]
    return "\n".join(text)


def _vs_cells(v: PairedDiff | None) -> dict:
    if v is None:
        return {}
    return {"diff_vs_noadapt": v.diff, "diff_ci_low": v.ci_low, "diff_ci_high": v.ci_high, "p_mcnemar": v.p_mcnemar}


def results_rows(summary: dict) -> list[dict]:
    """One row per method x set plus one `average` row per method (fractions, not %); missing cells absent."""
    out = []
    for m in summary["methods"]:
        keyed = [(d, summary["sets"][(m, d)]) for d in summary["datasets"] if (m, d) in summary["sets"]]
        if m in summary["average"]:
            keyed.append((AVERAGE, summary["average"][m]))
        for d, a in keyed:
            out.append({"method": m, "dataset": d, "n": a["graded"], "correct": a["correct"], "accuracy": a["acc"],
                        "ci_low": a["ci_low"], "ci_high": a["ci_high"], **_vs_cells(a.get("vs")),
                        **{k: v for k, v in a.items() if "@" in k or k == "n_samples"}})
    return out


def write_csv(rows: list[dict], path: Path, columns: Sequence[str]) -> None:
    """Floats to 10 significant digits (p-values can be tiny); a missing or NaN value is an empty cell."""
    def cell(v):
        if _nan(v):
            return ""
        return f"{v:.10g}" if isinstance(v, float) else v

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([cell(r.get(c)) for c in columns])


def _jsonable(x):
    """PairedDiff/SeedSummary to dicts, tuple keys to "method|dataset", NaN to null (strict JSON)."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {("|".join(k) if isinstance(k, tuple) else k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return None if _nan(x) else x


def collapse_table(streams, info: dict | None = None) -> str:
    """The collapse measures of each stream, and for a method that adapts the verdict with the rule
    that gave it; one that does not adapt carries no state along its stream, so it gets none."""
    lines = ["| method | dataset | acc | acc last half | entropy trend | centered logit norm trend | top answer share "
             "| degenerate | predictor dev | guard events | verdict |", "|" + "---|" * 11]
    for (m, d), rows in streams.items():
        c = collapse_measures(rows)
        events = sum(any("guard" in e for e in r.get("events") or []) for r in rows)

        def f(x, pct=False):
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (
                f"{100 * x:.1f}%" if pct else f"{x:.2f}")

        lines.append(f"| {m} | {d} | {f(c['accuracy'], True)} | {f(c['accuracy_last_half'], True)} | "
                     f"{f(c['entropy_trend'])} | {f(c['logit_norm_centered_trend'])} | "
                     f"{f(c['top_answer_share'], True)} | {f(c['degenerate_share'], True)} | "
                     f"{f(c['predictor_dev_final'])} | {events} | {verdict_cell(m, c, info)} |")
    return "\n".join(lines)


def verdict_cell(label: str, measures: dict, info: dict | None = None) -> str:
    """`degenerate (entropy drift: trend 1.40 > 1.25)`; "n/a (does not adapt)" for a method that does not."""
    if not method_adapts(label, info):
        cls = _method_class(label, info)
        return "n/a (adapts each prompt afresh)" if cls is not None and cls.trains else "n/a (does not adapt)"
    return f"{measures['verdict']} ({measures['verdict_rule']})"


DIAGNOSTICS = [
    ("entropy", "entropy (nats)"),
    ("logit_norm_centered", "centered logit L2 norm"),
    ("max_prob", "mean max-probability"),
    ("predictor_dev", "||W - I||_F"),
    ("response_len", "response length (chars)"),
    ("top_share", "share of the most common answer (window)"),
    ("degenerate", "looping responses (window)"),
    ("running_acc", "accuracy (window)"),
    ("answered", "responses with an extracted answer (window)"),
]


def stream_series(rows: list[dict], window: int = 20) -> dict[str, np.ndarray]:
    s = {k: np.array([step_stat(r, k) for r in rows]) for k in ("entropy", "logit_norm_centered", "max_prob",
                                                                  "predictor_dev")}
    s["response_len"] = np.array([len(r.get("response") or "") for r in rows], dtype=float)
    s["top_share"] = rolling_top_share([r.get("extracted") for r in rows], window)
    s["degenerate"] = rolling([float(is_degenerate(r.get("response") or "")) for r in rows], window)
    s["running_acc"] = rolling([float(r["correct"]) if r.get("correct") is not None else np.nan for r in rows], window)
    s["answered"] = rolling([float(has_answer(r)) for r in rows], window)
    return s


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MAX_WIDTH_PX = 1600  # the accuracy plot's width whatever the number of methods and sets
BAR_DPI = 130
# 15 filled shapes, then line ones: 20 methods get 20 different markers
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "8", "H", "x", "+", "1", "2", "3")


def method_styles(n: int) -> list[tuple[tuple, str]]:
    """(RGBA colour, marker) for each of n methods: distinct colours (tab10, tab20 beyond 10, evenly
    spaced along a colour map beyond 20) and, up to 20, distinct markers, so that no two methods
    look alike even in grey."""
    from matplotlib import colormaps

    if n <= 10:
        colours = [colormaps["tab10"](i) for i in range(n)]
    elif n <= 20:  # the ten strong hues, then their light partners
        colours = [colormaps["tab20"](2 * i if i < 10 else 2 * (i - 10) + 1) for i in range(n)]
    else:
        colours = [colormaps["turbo"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]
    return [(c, METHOD_MARKERS[i % len(METHOD_MARKERS)]) for i, c in enumerate(colours)]


def _bar_chart(groups: list[str], labels: list[str], methods: list[str], value, path: Path, title: str) -> None:
    """Grouped bars on a 0-100 accuracy axis, one group per entry of `groups` (ticks: `labels`).

    value(method, group) -> (y, low, high, points) in %, or None for no bar: whiskers span
    low-high, points (per-run values) are dots on the bar.
    """
    from matplotlib.patches import Patch

    plt = _plt()
    # width grows with the bars up to MAX_WIDTH_PX, then the bars get thinner; height fits the legend
    width = min(MAX_WIDTH_PX / BAR_DPI, max(6.0, 0.45 * len(groups) * len(methods) + 3.5))
    fig, ax = plt.subplots(figsize=(width, max(3.8, 1.2 + 0.2 * len(methods))))
    w = 0.8 / max(1, len(methods))
    handles = []
    for i, (m, (colour, marker)) in enumerate(zip(methods, method_styles(len(methods)))):
        tops = []
        for j, g in enumerate(groups):
            v = value(m, g)
            if v is None or _nan(v[0]):
                continue
            y, lo, hi, points = v  # a mean of equal values may round a hair outside their range
            x = j - 0.4 + w * (i + 0.5)
            ax.bar(x, y, w, color=colour, edgecolor="black", lw=0.5)
            tops.append((x, y))
            ax.errorbar(x, y, yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none", ecolor="black", capsize=min(3, 40 * w), lw=1)
            if y == 0:  # a bar of height 0 looks like a missing one: a stroke on the axis and a label
                ax.hlines(0, x - w / 2, x + w / 2, color=colour, lw=4, clip_on=False, zorder=3)
                ax.text(x + w * 0.08, 1.5, "0%", ha="left", va="bottom", fontsize=7)
            if points:
                ax.scatter(np.full(len(points), x), points, s=12, color="white", edgecolor="black", lw=0.7, zorder=3)
        # the method's marker on top of each of its bars: told apart by shape as well as by colour
        xs, ys = zip(*tops) if tops else ((), ())
        line, = ax.plot(xs, ys, ls="none", marker=marker, ms=5, mfc=colour, mec="black", mew=0.6, color="black",
                        label=m, zorder=4, clip_on=False)
        handles.append((Patch(facecolor=colour, edgecolor="black", lw=0.5), line))
    ax.set_xticks(np.arange(len(groups)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0, 100)  # a share: no negative axis at 0%, no zoom that makes small gaps look large
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles, methods, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),  # outside: bars reach 100%
              ncol=1 if len(methods) <= 16 else 2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=BAR_DPI, format="png")
    plt.close(fig)


def plot_accuracy(summary: dict, path: Path) -> None:
    """Accuracy per method and set (and the average) with 95% interval whiskers; n under each set."""
    sets, average = summary["sets"], summary["average"]
    groups = summary["datasets"] + ([AVERAGE] if average else [])
    labels = [f"{d}\n{_n_label({a['graded'] for (_, dd), a in sets.items() if dd == d})}" for d in summary["datasets"]]
    if average:
        labels.append(f"{summary['avg_name']}\n{_n_label({a['graded'] for a in average.values()})}")

    def value(m, g):
        a = average.get(m) if g == AVERAGE else sets.get((m, g))
        return None if a is None else (100 * a["acc"], 100 * a["ci_low"], 100 * a["ci_high"], None)

    _bar_chart(groups, labels, summary["methods"], value, path,
               "whiskers: 95% interval\n(Wilson per set; bootstrap over problems for the average)")


# share panels are plotted in % on a fixed 0-100 axis; the other panels scale to their data
SHARE_PANELS = {"top_share", "degenerate", "running_acc", "answered"}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "x")


def plot_diagnostics(streams, dataset: str, path: Path, window: int = 20, title: str | None = None) -> None:
    """One panel per DIAGNOSTICS entry, one line per (label, dataset) stream of `dataset`.

    Streams differ in colour, dash and marker, and earlier ones are drawn wider, so a stream that
    follows another exactly (two methods that both stay at 0%) still shows under it."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    ncols = 3
    nrows = -(-len(DIAGNOSTICS) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.1 * nrows))
    mine = [(m, rows) for (m, d), rows in streams.items() if d == dataset]
    styles = []
    for i, (_m, rows) in enumerate(mine):
        s = stream_series(rows, window)
        every = max(1, len(rows) // 10)
        style = dict(color=f"C{i % 10}", ls=LINESTYLES[i % len(LINESTYLES)], marker=MARKERS[i % len(MARKERS)],
                     lw=1.0 + 1.6 * (len(mine) - 1 - i) / max(1, len(mine) - 1), ms=4,
                     markevery=(i % every, every))  # markers of overlapping lines fall on different problems
        styles.append(style)
        x = np.arange(1, len(rows) + 1)
        for ax, (key, _panel) in zip(axes.flat, DIAGNOSTICS):
            y = 100 * s[key] if key in SHARE_PANELS else s[key]
            if not np.all(np.isnan(y)):
                ax.plot(x, y, clip_on=False, zorder=3, **style)
    longest = max((len(rows) for _, rows in mine), default=1)
    for ax, (key, panel) in zip(axes.flat, DIAGNOSTICS):
        ax.set_title(panel + (" (%)" if key in SHARE_PANELS else ""), fontsize=9)
        ax.set_xlabel("problem", fontsize=8)
        ax.set_xlim(0.5, longest + 0.5)  # the same problem axis in every panel, empty ones included
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # problems are whole numbers
        if key in SHARE_PANELS:
            ax.set_ylim(0, 100)
        if not ax.lines:
            ax.text(0.5, 0.5, "not recorded for these streams", ha="center", va="center", fontsize=8,
                    color="0.4", transform=ax.transAxes)
    for ax in list(axes.flat)[len(DIAGNOSTICS):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], **{k: v for k, v in st.items() if k != "markevery"}) for st in styles]
    labels = [f"{m} (n={len(rows)})" for m, rows in mine]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(mine), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.suptitle(title or f"collapse diagnostics along the stream: {dataset} (rolling windows of {window})",
                 fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_status(run_dir: Path, streams: dict, info: dict) -> tuple[list[str], str | None]:
    """(one line per stream that is short of its size, who holds the run now or None).

    A stream's size is what run.json records (the problems of its set, subset and `limit`); a
    run.json from before sizes were recorded is measured against the longest stream of the set
    (and `limit`). Every (method, set) the configuration names is a stream, started or not."""
    cfg = info.get("config") or {}
    limit = cfg.get("limit")
    sizes = {d: s.get("n") for d, s in ((info.get("identity") or {}).get("sets") or {}).items()}
    first = info.get("first_rows_only")  # an assembled run keeps only each stream's first rows
    methods = list(info.get("adapt_configs") or {}) or list(dict.fromkeys(m for m, _ in streams))
    datasets = list(map(set_name, cfg.get("datasets") or [])) or list(dict.fromkeys(d for _, d in streams))
    lines = []
    for d in datasets:
        longest = max((len(rows) for (_, dd), rows in streams.items() if dd == d), default=0)
        n, known = sizes.get(d), True
        if n is None:
            n, known = (limit if limit and longest < limit else longest), False
        if first:
            n = min(n, first)
        for m in methods:
            k = len(streams.get((m, d), []))
            if k >= n:
                continue
            if known:
                size = f"the stream has {n} problems, " + (f"limit {limit}" if limit else "no limit")
            else:
                size = (f"limit {limit}" if limit and n == limit else "as the longest stream of this set") + \
                    "; run.json records no stream size"
            lines.append(f"{m} on {d}: {k} of {n} rows" + (" (not started)" if not k else "") + f" ({size})")
    return lines, lock_holder(run_dir)


def status_notes(incomplete: list[str], holder: str | None) -> list[str]:
    """What report.md and the command line say about an unfinished run (empty when finished)."""
    notes = [f"A live process holds this run ({holder}): it is still writing, so these numbers will change."] \
        if holder else []
    if incomplete:
        k = len(incomplete)
        notes.append(f"{k} stream{'s' * (k != 1)} incomplete, so the methods below are compared on unequal "
                     "problems: " + "; ".join(incomplete) + "." + ("" if holder else " No process holds the run: "
                     "it was stopped or cut short; resume it (`python -m eval run` with the same --out) to finish."))
    return notes


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); restore it, or delete it to report without it") from None


def prompt_format_note(info: dict) -> list[str]:
    """The report's line on how prompts became text when it is not the model's own chat template
    (run.json's `prompt_format`, written when the model loaded; a system prompt is named too)."""
    fmt, cfg = info.get("prompt_format") or {}, info.get("config") or {}
    lines = []
    if fmt.get("plain"):
        why = ("the model's tokenizer has no chat template (a base model?), so" if fmt.get("chat_template") == "auto"
               else "--chat_template none:")
        lines.append(f"**Prompt format:** {why} every prompt was given as plain `role: content` lines ending in "
                     "`assistant:`, not through a chat template (`--chat_template FILE` gives one).")
    elif fmt.get("chat_template") not in (None, "auto"):
        lines.append(f"**Prompt format:** the chat template of the file `{fmt['chat_template']}` (run.json records "
                     "its sha256), not the tokenizer's own.")
    if cfg.get("system_prompt"):
        lines.append(f"**System prompt:** {cfg['system_prompt']!r}, before every problem.")
    return [*lines, ""] if lines else []


def write_report(run_dir: str | Path | Sequence[str | Path], out: str | Path | None = None,
                 status: list[str] | None = None) -> Path:
    """Write report.md (and report.html, the same with its plots inline), metrics.json, results.csv and
    plots/ into `run_dir`, or into `out` when given (not another run's folder); returns the report's path.
    `status` gets a line per thing unfinished (a live writer, incomplete streams; `status_notes`).

    Several run folders (one configuration, different seeds) go to `write_combined_report`, into
    `out` (default: `combined_out`, a folder beside them named after them).
    """
    if not isinstance(run_dir, str | Path):
        runs = [Path(r) for r in run_dir]
        if len(runs) > 1:
            return write_combined_report(runs, out or combined_out(runs), status=status)
        run_dir = runs[0]
    run_dir = Path(run_dir)
    dest = Path(out) if out is not None else run_dir
    if dest.resolve() != run_dir.resolve() and ((dest / "run.json").exists() or (dest / "rows").is_dir()):
        raise FileExistsError(f"--out {dest} is another run's folder: its report would be overwritten; choose another "
                              "--out")
    notes: list[str] = []
    streams = load_run(run_dir, notes)
    if not streams:
        raise FileNotFoundError(f"{run_dir}/rows holds no rows yet")
    info, summ = _read_json(run_dir / "run.json"), _read_json(run_dir / "summary.json")
    streams = method_order(streams, info)
    summary = summarize(streams)
    plots = dest / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_accuracy(summary, plots / "accuracy.png")
    for d in summary["datasets"]:
        plot_diagnostics(streams, d, plots / f"diagnostics_{d}.png")
    incomplete, holder = run_status(run_dir, streams, info)
    unfinished = status_notes(incomplete, holder)
    if status is not None:
        status.extend(unfinished)
    md = _run_markdown(run_dir, info, summ, summary, streams, notes, unfinished)
    metrics = {k: summary[k] for k in ("baseline", "avg_sets", "sets", "average")}
    metrics |= {"incomplete_streams": incomplete, "held_by": holder}
    atomic_write_text(dest / "metrics.json", json.dumps(_jsonable(metrics), indent=2))
    write_csv(results_rows(summary), dest / "results.csv", CSV_COLUMNS + sample_columns(summary))
    path = dest / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    write_html(path)  # report.html beside it, plots inline
    return path


def _run_markdown(run_dir: Path, info: dict, summ: dict, summary: dict, streams: dict, notes: list[str],
                  unfinished: list[str]) -> list[str]:
    """A run report's lines: what ran, the accuracy, the settings, the collapse diagnostics, the plots."""
    cfg = info.get("config", {})
    md = [f"# Run report: {run_dir.name}", "",
          *([f"**Unfinished run:** {n}" for n in unfinished] + [""] if unfinished else []),
          f"Model `{cfg.get('model', '?')}`, prompt style `{cfg.get('prompt_style', '?')}`, "
          f"config hash `{info.get('config_hash', '?')}`, git `{(info.get('git_commit') or '?')[:10]}`"
          + (f", wall time {summ['wall_s'] / 60:.1f} min" if "wall_s" in summ else "") + ".", "",
          *[f"Subset of {name}: `{s['spec']}`, {s['n']} of {s['of']} problems, ids sha256 `{s['ids_sha256'][:16]}` "
            "(run.json has the full record)." for name, s in (info.get("subsets") or {}).items()],
          *([""] if info.get("subsets") else []),
          *([f"**Incomplete:** {n}" for n in notes] + [""] if notes else []),
          *prompt_format_note(info),
          "## Accuracy", "", accuracy_section(summary), "",
          "Every number above, as fractions: `results.csv` (one row per method x set, plus an `average` row per "
          "method when the run has several sets) and `metrics.json`.", "",
          "## Settings", "", f"Protocol `{cfg.get('protocol', 'paper')}`: each method as its authors' code runs "
          "it, except the deviations docs/protocol.md lists (no collapse guard, no gradient clipping) unless its "
          "name carries an add-on (`+guard`, `+clip`); the "
          "learning rate of every LoRA method comes from one selection on one development stream (docs/protocol.md).",
          "", settings_table(info), "",
          "## Collapse diagnostics", "", collapse_table(streams, info), "",
          "Verdict: the first rule that fires, with its values (`zs_llm.diagnostics.verdict_rule`; thresholds in "
          "`VERDICT_THRESHOLDS`); its loop and answer shares are over the last half of the stream, while the "
          "degenerate column is over the whole stream. A method that carries no adapted state along its stream "
          "(no adaptation, or one undone after each prompt) gets no verdict. Trends are the last quarter's mean over "
          "the first quarter's.", "", "## Plots", "", "![accuracy](plots/accuracy.png)", ""]
    md += [f"![diagnostics {d}](plots/diagnostics_{d}.png)" for d in summary["datasets"]]
    return md


SETTING_COLUMNS = ("optimizer", "lr", "momentum", "steps", "grad_clip", "guard", "schedule", "signal", "answer",
                   "lora_r", "lora_target_modules")
NOT_ADAPTING = "n/a"


def settings_table(info: dict) -> str:
    """Each method's effective settings (run.json's resolved AdaptConfigs): the shared ones that
    decide how it adapts, then its own (`method_args`)."""
    configs = info.get("adapt_configs") or {}
    if not configs:
        return "(run.json records no method settings)"

    def cell(v):
        return "-" if v is None else ",".join(map(str, v)) if isinstance(v, list) else f"{v:g}" \
            if isinstance(v, float) else str(v)

    lines = ["| method | " + " | ".join(SETTING_COLUMNS) + " | method settings |", "|---" * (len(SETTING_COLUMNS) + 2) + "|"]
    labels = sorted(configs, key=lambda m: m != BASELINE)
    for label in labels:
        c = configs[label]
        own = ", ".join(f"{k}={cell(v)}" for k, v in (c.get("method_args") or {}).items()) or "-"
        shared = [cell(c.get(k)) for k in SETTING_COLUMNS] if method_adapts(label, info) else \
            [NOT_ADAPTING] * len(SETTING_COLUMNS)
        lines.append(f"| {label} | " + " | ".join(shared) + f" | {own} |")
    if not all(method_adapts(m, info) for m in labels):
        lines += ["", f"{NOT_ADAPTING}: the method updates no weights along its stream, so the adaptation settings "
                  "(optimizer, learning rate, steps, ...) do not apply to it."]
    return "\n".join(lines)


def _run_labels(runs: list[Path]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r) for r in runs]


def _seeds_of(info: dict) -> str:
    cfg = info.get("config", {})
    adapt = {c.get("seed") for c in (info.get("adapt_configs") or {}).values() if "seed" in c}
    parts = [f"data seed {cfg['seed']}"] if "seed" in cfg else []
    if adapt:
        parts.append("method seed " + "/".join(str(s) for s in sorted(adapt, key=str)))
    return ", ".join(parts) or "seed unknown"


#: the settings seed runs of one configuration may differ in: RunConfig's data seed, the methods' seed
SEED_FIELD = "seed"
#: RunConfig fields naming a location; where both runs record what is there (run.json "identity",
#: "prompt"), the contents are compared instead, so a copy at another path is the same
LOCATION_FIELDS = ("model", "data_dir", "prompt_template")
COMBINED_MARK = "combined.json"  # marks a combined report's folder and lists its runs


def _no_seed_spec(spec: str) -> str:
    """A method spec or label without its own seed override (`zerosiam:seed=3:alpha=0` -> `zerosiam:alpha=0`)."""
    return re.sub(r":seed=[^:]*", "", str(spec))


def _seeds_key(info: dict) -> tuple:
    cfg = info.get("config") or {}
    methods = {_no_seed_spec(lab): c.get(SEED_FIELD) for lab, c in (info.get("adapt_configs") or {}).items()}
    return cfg.get(SEED_FIELD), tuple(sorted(methods.items())) or (cfg.get("adapt") or {}).get(SEED_FIELD)


def _settings(info: dict, identity_known: bool) -> dict:
    """{setting: value} of a run that must match across seed runs: RunConfig fields that change
    results, the overrides every method gets, each method's resolved settings; seeds left out."""
    cfg = without_later_defaults(dict(info.get("config") or {}))  # a run from before a setting had its default
    out = {}
    for k, v in cfg.items():
        if k in RESULT_FREE_FIELDS or k == SEED_FIELD or (identity_known and k in LOCATION_FIELDS):
            continue
        if k == "adapt" and isinstance(v, dict):
            out |= {f"{a} (every method)": x for a, x in v.items() if a != SEED_FIELD}
        elif k == "methods" and isinstance(v, list):
            out[k] = sorted(_no_seed_spec(m) for m in v)  # the order streams run in changes no row
        else:
            out[k] = v
    for lab, c in (info.get("adapt_configs") or {}).items():
        out |= {f"{_no_seed_spec(lab)} {a}": x for a, x in c.items() if a != SEED_FIELD}
    return out


def differing_settings(a: dict, b: dict) -> list[str]:
    """The keys of two runs' `_settings` (`a`, `b`) whose values differ, in `a`'s order: a method's own
    settings only for a method both runs hold (one only one holds shows in `methods`), and not where
    the override every method gets already shows the difference (`lr (every method)`)."""
    labels_a = {k.split(" ", 1)[0] for k in a if " " in k and not k.endswith("(every method)")}
    labels_b = {k.split(" ", 1)[0] for k in b if " " in k and not k.endswith("(every method)")}
    keys = [k for k in [*a, *(k for k in b if k not in a)] if a.get(k) != b.get(k)]
    shared = labels_a & labels_b
    every = {k.removesuffix(" (every method)") for k in keys if k.endswith(" (every method)")}
    out = []
    for k in keys:
        label, _, setting = k.partition(" ")
        if setting and not k.endswith("(every method)") and (label not in shared or setting in every):
            continue
        out.append(k)
    return out


def _identity_change(a: dict, b: dict, same_seed: bool) -> str | None:
    """What differs between what two runs ran on (model, data, prompt template), or None."""
    ia, ib = a.get("identity") or {}, b.get("identity") or {}
    pairs = [key for key in ("model", "loaded_model") if ia.get(key) and ib.get(key)]
    for key in pairs:
        what = model_change(ia[key], ib[key])
        if what:
            return f"model differs ({what})"
    ma, mb = (a.get("config") or {}).get("model"), (b.get("config") or {}).get("model")
    if not pairs and ma != mb:  # no fingerprint of both: the names must agree
        return f"model differs ({ma!r}, here {mb!r})"
    sets = (ib.get("sets") or {}) if same_seed else {}  # another data seed draws other generated problems
    what, _ = data_change(a, b.get("data") or {}, {"data_dir": ib.get("data_dir"), "sets": sets})
    if what:
        return f"data differs ({what})"
    pa, pb = (a.get("prompt") or {}).get("sha256"), (b.get("prompt") or {}).get("sha256")
    ra, rb = ((ia.get("prompt") or {}).get("rendered_sha256"), (ib.get("prompt") or {}).get("rendered_sha256"))
    if (pa and pb and pa != pb) or (ra and rb and ra != rb):
        return "prompt template differs (its sha256)"
    if same_seed:
        sa, sb = a.get("subsets") or {}, b.get("subsets") or {}
        for name in sa.keys() & sb.keys():
            if sa[name].get("ids_sha256") != sb[name].get("ids_sha256"):
                return f"subset {name} differs (the sha256 of its ids)"
    return None


def seed_run_conflicts(infos: dict[str, dict]) -> list[str]:
    """`label: what differs` for each run (after the first) that is not a seed run of the first
    run's configuration: its first differing setting, or a seed another run already used."""
    labels = list(infos)
    ref, ref_info = labels[0], infos[labels[0]]
    out = []
    for lab in labels:
        if not (infos[lab].get("config")):
            out.append(f"{lab}: its run.json records no configuration (only folders written by `python -m eval "
                       "run` combine)")
    if out:
        return out
    seen: dict[tuple, str] = {}
    for lab in labels:
        key = repr(_seeds_key(infos[lab]))
        if key in seen:
            out.append(f"{lab}: the same seeds as {seen[key]} ({_seeds_of(infos[lab])}), the same seed twice: "
                       "these are not independent seed runs")
        seen.setdefault(key, lab)
    for lab in labels[1:]:
        info = infos[lab]
        known = bool(ref_info.get("identity") and info.get("identity"))
        a, b = _settings(ref_info, known), _settings(info, known)
        diffs = differing_settings(a, b)
        found = [f"{k} differs ({repr(a.get(k))[:60]} in {ref}, here {repr(b.get(k))[:60]})" for k in diffs]
        same_seed = (ref_info["config"].get(SEED_FIELD) == info["config"].get(SEED_FIELD))
        what = _identity_change(ref_info, info, same_seed) if known else None
        if what and not (diffs and what.startswith("model differs (") and "model" in diffs):
            found.append(what)
        if found:
            out.append(f"{lab}: " + ", ".join(found))
    return out


def check_seed_runs(infos: dict[str, dict]) -> None:
    """Raise ValueError (one line) unless the runs differ in their seeds alone."""
    conflicts = seed_run_conflicts(infos)
    if conflicts:
        raise ValueError("these runs are not seed runs of one configuration: " + "; ".join(conflicts)
                         + ". Combine only runs whose settings, model and data agree and whose seeds differ; "
                         "`python -m eval compare RUN_A RUN_B` compares two different runs")


def combined_out(runs: Sequence[str | Path]) -> Path:
    """The default folder of a combined report: beside the runs, named after the runs it combines
    (`combined-<8 hex of their resolved paths>`), so two combinations never share one."""
    paths = sorted(str(Path(r).resolve()) for r in runs)
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:8]
    return Path(os.path.commonpath(paths)) / f"combined-{digest}"


def check_combined_out(out: Path, runs: Sequence[Path], mark_name: str = COMBINED_MARK, what: str = "combined report",
                       ordered: bool = False) -> None:
    """Refuse an output folder a report over several runs (`what`: a combined report, a comparison,
    whose folder `mark_name` marks) must not write into: a run folder, the folder of another such
    report, or a folder holding files of the report's names not written by one. `ordered`: the runs'
    order is part of what the report is (A against B)."""
    if (out / "run.json").exists() or (out / "rows").is_dir():
        raise FileExistsError(f"--out {out} is a run folder: the {what} would overwrite its own report; "
                              "choose another --out (or leave it out for a folder beside the runs)")
    mark = out / mark_name
    if mark.exists():
        try:
            were = json.loads(mark.read_text(encoding="utf-8"))["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{mark} is damaged ({e}); delete {out} to write the {what} there") from None
        now = [str(r.resolve()) for r in runs]
        if (were != now) if ordered else (sorted(were) != sorted(now)):
            raise FileExistsError(f"--out {out} holds the {what} of other runs ({', '.join(were)}); choose "
                                  "another --out, or delete that folder to replace it")
        return
    found = [n for n in ("report.md", "report.html", "metrics.json", "results.csv", "plots") if (out / n).exists()]
    if found:
        raise FileExistsError(f"--out {out} holds {', '.join(found)} not written by a {what} (no "
                              f"{mark_name}); choose another --out, or delete them")


def combine_runs(summaries: dict[str, dict]) -> dict:
    """{(method, dataset or AVERAGE): {"acc": SeedSummary, "diff": SeedSummary or None}} over runs."""
    first = next(iter(summaries.values()))
    out = {}
    for m in first["methods"]:
        keys = [d for d in first["datasets"] if (m, d) in first["sets"]] + [AVERAGE] * (m in first["average"])
        for d in keys:
            per = {lab: s["average"].get(m) if d == AVERAGE else s["sets"].get((m, d)) for lab, s in summaries.items()}
            acc = combine_seeds({lab: (a["acc"] if a else float("nan")) for lab, a in per.items()})
            diffs = {lab: a["vs"].diff for lab, a in per.items() if a and a.get("vs") is not None}
            out[(m, d)] = {"acc": acc, "diff": combine_seeds(diffs) if diffs else None, "runs": per}
    return out


def _spread(s, sign: bool = False) -> tuple[str, str]:
    """(`mean ± sd`, `min to max`) in %, from a SeedSummary."""
    if s is None or s.n_seeds == 0:
        return "-", "-"
    sd = "" if _nan(s.sd) else f" ± {100 * s.sd:.1f}"
    return f"{_pct(s.mean, sign)}{sd}", f"{_pct(s.min, sign)} to {_pct(s.max, sign)}"


def write_combined_report(run_dirs: Sequence[str | Path], out: str | Path, status: list[str] | None = None) -> Path:
    """Runs of one configuration with different seeds, side by side: out/report.md, metrics.json,
    results.csv and plots/accuracy.png; returns the report's path.

    Each run is summarised as in `write_report` (intervals over problems within the run); across
    runs the report gives each run's value, the mean, the sample sd and the range. The spread over
    seeds is a second source of noise, not a confidence interval.
    """
    runs = [Path(r) for r in run_dirs]
    _check_distinct(runs)
    labels = _run_labels(runs)
    out = Path(out)
    check_combined_out(out, runs)
    infos, streams = _seed_streams(runs, labels)
    summaries = {lab: summarize(s) for lab, s in streams.items()}
    combined = combine_runs(summaries)
    first = summaries[labels[0]]
    unfinished = [f"run {lab}: {n}" for lab, r in zip(labels, runs)
                  for n in status_notes(*run_status(r, streams[lab], infos[lab]))]
    if status is not None:
        status.extend(unfinished)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / COMBINED_MARK, json.dumps({"runs": [str(r.resolve()) for r in runs]}, indent=2))
    md = _combined_markdown(runs, labels, infos, combined, first, unfinished)
    _write_combined_tables(out, runs, labels, summaries, combined)
    _combined_plot(out, first, combined, len(runs))
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    write_html(path)
    return path


def _check_distinct(runs: list[Path]) -> None:
    if len(runs) < 2:
        raise ValueError(f"combining seeds needs two or more run folders, got {len(runs)}")
    twice = next((r for i, r in enumerate(runs) if r.resolve() in {q.resolve() for q in runs[:i]}), None)
    if twice is not None:
        raise ValueError(f"{twice} is given twice, the same seed twice: these are not independent seed runs; "
                         "name each run folder once")


def _seed_streams(runs: list[Path], labels: list[str]) -> tuple[dict, dict]:
    """Each run's run.json and streams, once they are seed runs of one configuration holding the
    same (method, dataset) streams."""
    infos = {lab: _read_json(r / "run.json") for lab, r in zip(labels, runs)}
    check_seed_runs(infos)
    streams = {lab: method_order(load_run(r), infos[lab]) for lab, r in zip(labels, runs)}
    keys = {lab: set(s) for lab, s in streams.items()}
    ref = keys[labels[0]]
    for lab in labels[1:]:
        if keys[lab] != ref:
            missing, extra = sorted(ref - keys[lab]), sorted(keys[lab] - ref)
            raise ValueError(f"run {lab} does not hold the same (method, dataset) streams as {labels[0]}: "
                             f"missing {missing}, extra {extra}; combine only runs of one configuration")
    return infos, streams


def _combined_markdown(runs: list[Path], labels: list[str], infos: dict, combined: dict, first: dict,
                       unfinished: list[str]) -> list[str]:
    """The combined report's lines: the runs, each run's accuracy and change beside their spread."""

    def dname(d):
        return first["avg_name"] if d == AVERAGE else d

    head = ["| method | dataset | " + " | ".join(labels) + " | mean ± sd | range |",
            "|---|---|" + "---|" * (len(labels) + 2)]
    acc_lines, diff_lines = list(head), list(head)
    for (m, d), c in combined.items():
        cells = ["-" if a is None else _ci(a["acc"], a["ci_low"], a["ci_high"]) + f", n={a['graded']}"
                 for a in c["runs"].values()]
        acc_lines.append(f"| {m} | {dname(d)} | " + " | ".join(cells) + " | " + " | ".join(_spread(c["acc"])) + " |")
        if c["diff"] is not None:
            vs = [a.get("vs") if a else None for a in c["runs"].values()]
            cells = ["-" if v is None else _ci(v.diff, v.ci_low, v.ci_high, sign=True) + f", p={_p(v.p_mcnemar)}"
                     for v in vs]
            mean, rng = _spread(c["diff"], sign=True)
            diff_lines.append(f"| {m} | {dname(d)} | " + " | ".join(cells) + f" | {mean} | {rng} |")
    base = first["baseline"]
    md = [f"# Combined report: {len(runs)} runs", "",
          *([f"**Unfinished run:** {n}" for n in unfinished] + [""] if unfinished else []), "Runs:", ""]
    md += [f"- `{lab}`: `{r}`, config hash `{infos[lab].get('config_hash', '?')}`, {_seeds_of(infos[lab])}"
           for lab, r in zip(labels, runs)]
    md += ["", "## Accuracy", "", "\n".join(acc_lines), "",
           "Per run: accuracy in % with its 95% interval over problems (Wilson; bootstrap within sets for the "
           "average), n graded. mean ± sd and range: over runs (sample sd); the spread over seeds is not a "
           "confidence interval.", "", f"### Change from {base}", ""]
    md += ["\n".join(diff_lines) if len(diff_lines) > 2 else f"No `{base}` stream to compare with.", "",
           f"Per run: paired change from {base} in points with its paired-bootstrap 95% interval and exact McNemar "
           "p. Each run's diagnostics are in its own report.md.", "", "## Plots", "",
           "![accuracy across runs](plots/accuracy.png)", ""]
    return md


def _write_combined_tables(out: Path, runs: list[Path], labels: list[str], summaries: dict, combined: dict) -> None:
    """results.csv (each run's rows, then the combined ones) and metrics.json."""
    rows = []
    for lab, s in summaries.items():
        rows += [{"run": lab, **r} for r in results_rows(s)]
    for (m, d), c in combined.items():
        a, df = c["acc"], c["diff"]
        row = {"run": "combined", "method": m, "dataset": d, "n_runs": a.n_seeds, "accuracy": a.mean,
               "accuracy_sd": a.sd, "accuracy_min": a.min, "accuracy_max": a.max}
        if df is not None:
            row |= {"diff_vs_noadapt": df.mean, "diff_sd": df.sd, "diff_min": df.min, "diff_max": df.max}
        rows.append(row)
    sampled = tuple(dict.fromkeys(c for s in summaries.values() for c in sample_columns(s)))
    write_csv(rows, out / "results.csv", ("run", *CSV_COLUMNS, *sampled, *SEED_COLUMNS))
    metrics = {"runs": {lab: str(r) for lab, r in zip(labels, runs)},
               "per_run": {lab: {k: s[k] for k in ("sets", "average")} for lab, s in summaries.items()},
               "combined": {(m, d): {"acc": c["acc"], "diff_vs_noadapt": c["diff"]} for (m, d), c in combined.items()}}
    atomic_write_text(out / "metrics.json", json.dumps(_jsonable(metrics), indent=2))


def _combined_plot(out: Path, first: dict, combined: dict, n_runs: int) -> None:
    """plots/accuracy.png: each method's mean over the runs, their range and each run."""
    groups = first["datasets"] + ([AVERAGE] if first["average"] else [])
    labels = [(first["avg_name"] if g == AVERAGE else g) + "\n" + _n_label(
        {a["graded"] for (_, gg), c in combined.items() if gg == g for a in c["runs"].values() if a}) for g in groups]

    def value(m, g):
        c = combined.get((m, g))
        if c is None or c["acc"].n_seeds == 0:
            return None
        a = c["acc"]
        return 100 * a.mean, 100 * a.min, 100 * a.max, [100 * v for v in a.per_seed.values() if not _nan(v)]

    _bar_chart(groups, labels, first["methods"], value, out / "plots" / "accuracy.png",
               f"bars: mean of {n_runs} runs; whiskers: range over runs; dots: each run")
