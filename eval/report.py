"""Tables and plots from a run folder: accuracy per method and set, the average, the change
from `noadapt`, and collapse diagnostics along each stream."""

from __future__ import annotations

import json
import math
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

from .datasets import FOUR_SETS
from .rows import read_rows_strict


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


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
    """Greedy pass@1 (or avg@n with samples) over gradable rows; ungradable ones are counted."""
    graded = [r for r in rows if r.get("correct") is not None]
    out = {"n": len(rows), "graded": len(graded), "ungradable": len(rows) - len(graded)}
    out["acc"] = float(np.mean([bool(r["correct"]) for r in graded])) if graded else float("nan")
    multi = [r for r in graded if r.get("corrects")]
    if multi:
        n = len(multi[0]["corrects"])
        out["avg@n"] = float(np.mean([np.mean([bool(c) for c in r["corrects"] if c is not None]) for r in multi]))
        for k in sorted({1, min(n, 4), n}):
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(bool(c) for c in r["corrects"]), k) for r in multi]))
    return out


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def accuracy_table(streams) -> tuple[str, dict]:
    methods = list(dict.fromkeys(m for m, _ in streams))
    datasets = list(dict.fromkeys(d for _, d in streams))
    acc = {(m, d): accuracy(rows) for (m, d), rows in streams.items()}
    avg_sets = [d for d in FOUR_SETS if d in datasets]
    avg_sets = avg_sets if len(avg_sets) == len(FOUR_SETS) else datasets
    avg_name = "avg (4 sets)" if len(avg_sets) == len(FOUR_SETS) and set(avg_sets) <= set(FOUR_SETS) else "avg"
    avgs = {}
    for m in methods:
        vals = [acc[(m, d)]["acc"] for d in avg_sets if (m, d) in acc]
        avgs[m] = float(np.mean(vals)) if len(vals) == len(avg_sets) else float("nan")
    base = avgs.get("noadapt")
    head = "| method | " + " | ".join(datasets) + f" | {avg_name} | vs noadapt |"
    lines = [head, "|" + "---|" * (len(datasets) + 3)]
    for m in methods:
        cells = [_fmt(acc[(m, d)]["acc"]) if (m, d) in acc else "-" for d in datasets]
        delta = "-" if base is None or math.isnan(base) or math.isnan(avgs[m]) else f"{100 * (avgs[m] - base):+.2f}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(avgs[m])} | {delta} |")
    counts = ", ".join(f"{d}: {acc[(methods[0], d)]['n']}" for d in datasets if (methods[0], d) in acc)
    ungr = sum(a["ungradable"] for a in acc.values())
    note = f"\nAccuracy in % (greedy pass@1 unless sampled). Problems per set: {counts}."
    if ungr:
        note += f" {ungr} rows with an unparseable gold answer are excluded (not counted as wrong)."
    extra = [(k, a) for k, a in acc.items() if "avg@n" in a]
    if extra:
        note += "\n\n| method | dataset | " + " | ".join(x for x in extra[0][1] if "@" in x) + " |\n"
        note += "|---|---|" + "---|" * sum("@" in x for x in extra[0][1]) + "\n"
        for (m, d), a in extra:
            note += f"| {m} | {d} | " + " | ".join(_fmt(v) for x, v in a.items() if "@" in x) + " |\n"
    return "\n".join(lines) + "\n" + note, acc


def collapse_table(streams) -> str:
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
                     f"{f(c['predictor_dev_final'])} | {events} | {c['verdict']} |")
    return "\n".join(lines)


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


def plot_accuracy(acc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(m for m, _ in acc))
    datasets = list(dict.fromkeys(d for _, d in acc))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(datasets) + 2), 3.6))
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ys = [100 * acc[(m, d)]["acc"] if (m, d) in acc else 0 for d in datasets]
        ax.bar(np.arange(len(datasets)) + i * w - 0.4 + w / 2, ys, w, label=m)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def plot_diagnostics(streams, dataset: str, path: Path, window: int = 20, title: str | None = None) -> None:
    """One panel per DIAGNOSTICS entry, one line per (label, dataset) stream of `dataset`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3
    nrows = -(-len(DIAGNOSTICS) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.1 * nrows))
    mine = [(m, rows) for (m, d), rows in streams.items() if d == dataset]
    for i, (_m, rows) in enumerate(mine):  # one colour per stream in every panel
        s = stream_series(rows, window)
        for ax, (key, panel) in zip(axes.flat, DIAGNOSTICS):
            y = s[key]
            if not np.all(np.isnan(y)):
                ax.plot(np.arange(1, len(y) + 1), y, color=f"C{i % 10}", lw=1.2)
            ax.set_title(panel, fontsize=9)
            ax.set_xlabel("problem", fontsize=8)
    for ax in list(axes.flat)[len(DIAGNOSTICS):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=f"C{i % 10}", lw=1.5) for i in range(len(mine))]
    fig.legend(handles, [m for m, _ in mine], loc="lower center", ncol=min(len(mine), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.suptitle(title or f"collapse diagnostics along the stream: {dataset}", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); restore it, or delete it to report without it") from None


def write_report(run_dir: str | Path) -> Path:
    """Write report.md, metrics.json and plots/ into `run_dir`; returns the report's path."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    streams = load_run(run_dir, notes)
    if not streams:
        raise FileNotFoundError(f"{run_dir}/rows holds no rows yet")
    table, acc = accuracy_table(streams)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_accuracy(acc, plots / "accuracy.png")
    datasets = list(dict.fromkeys(d for _, d in streams))
    for d in datasets:
        plot_diagnostics(streams, d, plots / f"diagnostics_{d}.png")
    info, summary = _read_json(run_dir / "run.json"), _read_json(run_dir / "summary.json")
    cfg = info.get("config", {})
    md = [f"# Run report: {run_dir.name}", "",
          f"Model `{cfg.get('model', '?')}`, prompt style `{cfg.get('prompt_style', '?')}`, "
          f"config hash `{info.get('config_hash', '?')}`, git `{(info.get('git_commit') or '?')[:10]}`"
          + (f", wall time {summary['wall_s'] / 60:.1f} min" if "wall_s" in summary else "") + ".", "",
          *([f"**Incomplete:** {n}" for n in notes] + [""] if notes else []),
          "## Accuracy", "", table, "", "## Collapse diagnostics", "", collapse_table(streams), "",
          "Verdict thresholds: see `zs_llm.diagnostics.VERDICT_THRESHOLDS`. Trends are the last quarter's mean over "
          "the first quarter's.", "", "## Plots", "", "![accuracy](plots/accuracy.png)", ""]
    md += [f"![diagnostics {d}](plots/diagnostics_{d}.png)" for d in datasets]
    atomic_write_text(run_dir / "metrics.json", json.dumps({f"{m}|{d}": a for (m, d), a in acc.items()}, indent=2))
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(md) + "\n")
    return out
