"""Two different runs side by side on the problems they share: `python -m eval compare RUN_A RUN_B`.

    python -m eval compare runs/smollm2 runs/qwen --out runs/smollm2-vs-qwen

A problem is shared when both runs answered it under the same dataset name, problem id and
rendered prompt (the prompt text the model read) with the same gold answer; every stream of both
runs is cut to the problems of its set that all of them share, so the tables compare like with
like. The tables are the report's: accuracy with its 95% Wilson interval per run and method, and
the paired change (paired bootstrap widened to Newcombe's interval, gained/lost, McNemar p) of
each method of RUN_B from the same method of RUN_A (when the runs hold no method in common: from
each of RUN_A's). The settings in which the runs differ are listed first. Written into `--out`
(default: `compare-<A>-vs-<B>` beside RUN_A): report.md, report.html, results.csv, metrics.json,
plots/accuracy.png.

Runs of one configuration that differ only in their seed combine with `python -m eval report A B`.
"""

from __future__ import annotations

import json
from pathlib import Path

from zs_llm.checkpoint import atomic_write_text

from .report import (
    CSV_COLUMNS,
    SMALL_MARK,
    SMALL_N,
    _ci,
    _identity_change,
    _jsonable,
    _p,
    _read_json,
    _run_labels,
    _settings,
    _small,
    accuracy_table,
    check_combined_out,
    differing_settings,
    load_run,
    method_order,
    outcomes,
    plot_accuracy,
    results_rows,
    run_status,
    status_notes,
    summarize,
    write_csv,
)
from .report_html import write_html
from .stats import N_RESAMPLES, paired_difference, paired_difference_over_sets

COMPARE_MARK = "compare.json"  # marks a comparison's folder and names its two runs


def _key(row: dict) -> tuple:
    return row.get("id", row["index"]), row.get("prompt")


def shared_streams(streams: dict[str, dict], notes: list[str]) -> dict[str, dict]:
    """`streams` ({run label: {(method, dataset): rows}}) cut to the problems each set's streams of
    all runs share (id, prompt and gold the same); what is left out goes to `notes`."""
    labels = list(streams)
    datasets = [d for d in dict.fromkeys(d for s in streams.values() for _, d in s)
                if all(any(dd == d for _, dd in streams[lab]) for lab in labels)]
    only = sorted({d for s in streams.values() for _, d in s} - set(datasets))
    if only:
        notes.append(f"Sets not in both runs, left out: {', '.join(only)}.")
    if not datasets:
        raise ValueError(f"runs {' and '.join(labels)} hold no dataset in common; compare runs of the same sets")
    out: dict[str, dict] = {lab: {} for lab in labels}
    for d in datasets:
        keyed = [(lab, k, {_key(r): r for r in rows}) for lab in labels for k, rows in streams[lab].items() if k[1] == d]
        shared = set.intersection(*(set(rows) for _, _, rows in keyed))
        golds = {}
        for _, _, rows in keyed:
            for key in shared:
                golds.setdefault(key, set()).add(str(rows[key].get("gold")))
        shared = {k for k in shared if len(golds[k]) == 1}
        ids = {key[0] for _, _, rows in keyed for key in rows}
        n_ids = len({key[0] for key in shared})
        if n_ids < len(ids):
            by_id = len(set.intersection(*({key[0] for key in rows} for _, _, rows in keyed)))
            notes.append(f"{d}: {n_ids} problems shared by every stream of both runs; {len(ids) - n_ids} left out ("
                         + (f"{by_id - n_ids} share the id but were prompted differently or have another gold; "
                            if by_id > n_ids else "") + "the rest are not in every stream).")
        if not shared:
            raise ValueError(f"runs {' and '.join(labels)} share no {d} problem (same id, prompt and gold): another "
                             "prompt style, template, system prompt or chat template renders every prompt "
                             "differently; compare runs prompted alike")
        for lab, k, rows in keyed:
            out[lab][k] = sorted((rows[key] for key in shared), key=lambda r: r["index"])
    return out


def settings_differences(infos: dict[str, dict]) -> list[str]:
    """`setting: A value | B value` for each setting that changes results and differs between the runs."""
    (la, a), (lb, b) = infos.items()
    known = bool(a.get("identity") and b.get("identity"))
    sa, sb = _settings(a, known), _settings(b, known)
    sa["seed"], sb["seed"] = (a.get("config") or {}).get("seed"), (b.get("config") or {}).get("seed")
    keys = differing_settings(sa, sb)
    out = [f"{k}: {repr(sa.get(k))[:60]} in {la}, {repr(sb.get(k))[:60]} in {lb}" for k in keys]
    what = _identity_change(a, b, sa["seed"] == sb["seed"]) if known else None  # files, data, template by content
    return out + [what] if what else out


def change_pairs(methods: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(method of B, method of A) pairs: each method both runs hold, else every pair."""
    (la, ma), (lb, mb) = methods.items()
    common = [m for m in mb if m in ma]
    pairs = [(m, m) for m in common] or [(x, y) for x in mb for y in ma]
    return [(f"{lb}: {x}", f"{la}: {y}") for x, y in pairs]


def change_table(summary: dict, streams: dict, pairs: list[tuple[str, str]]) -> tuple[str, list[dict]]:
    """The paired change of each pair (B's method minus A's) per set and over the sets' average."""
    lines = ["| method | from | dataset | n paired | change (points) [95% CI] | gained | lost | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    outs = {k: outcomes(r) for k, r in streams.items()}
    for m, base in pairs:
        keyed = [(d, paired_difference(outs[(m, d)], outs[(base, d)]))
                 for d in summary["datasets"] if (m, d) in outs and (base, d) in outs]
        avg = summary["avg_sets"]
        if len(avg) > 1 and all((m, d) in outs and (base, d) in outs for d in avg):
            keyed.append((summary["avg_name"], paired_difference_over_sets([(outs[(m, d)], outs[(base, d)])
                                                                            for d in avg])))
        for d, v in keyed:
            lines.append(f"| {m} | {base} | {d} | {v.n} | {_ci(v.diff, v.ci_low, v.ci_high, sign=True)}{_small(v.n)} "
                         f"| {v.only_method} | {v.only_baseline} | {_p(v.p_mcnemar)} |")
            rows.append({"method": m, "from": base, "dataset": d, **v.to_dict()})
    return "\n".join(lines), rows


def default_out(run_a: Path, run_b: Path) -> Path:
    """`compare-A-vs-B` beside RUN_A, as RUN_A was given (relative stays relative)."""
    a, b = (p if p.name else p.resolve() for p in (run_a, run_b))
    return a.parent / f"compare-{a.name}-vs-{b.name}"


def write_comparison(run_a: str | Path, run_b: str | Path, out: str | Path | None = None,
                     status: list[str] | None = None) -> Path:
    """Compare two runs on the problems they share (see the module docstring); returns report.md's path."""
    runs = [Path(run_a), Path(run_b)]
    if runs[0].resolve() == runs[1].resolve():
        raise ValueError(f"{runs[0]} is given twice; compare two different run folders")
    out = Path(out) if out else default_out(*runs)
    check_combined_out(out, runs, COMPARE_MARK, "comparison", ordered=True)
    labels = _run_labels(runs)
    if labels[0] == labels[1]:
        labels = ["A", "B"]
    infos = {lab: _read_json(r / "run.json") for lab, r in zip(labels, runs)}
    loaded = {lab: method_order(load_run(r), infos[lab]) for lab, r in zip(labels, runs)}
    notes: list[str] = []
    unfinished = [f"run {lab}: {n}" for lab, r in zip(labels, runs)
                  for n in status_notes(*run_status(r, loaded[lab], infos[lab]))]
    if status is not None:
        status.extend(unfinished)
    cut = shared_streams(loaded, notes)
    streams = {(f"{lab}: {m}", d): rows for lab in labels for (m, d), rows in cut[lab].items()}
    methods = {lab: list(dict.fromkeys(m for m, _ in cut[lab])) for lab in labels}
    summary = summarize(streams, baseline="")  # no baseline: the changes are between the runs
    pairs = change_pairs(methods)
    table, changes = change_table(summary, streams, pairs)
    differs = settings_differences(infos)
    small = any(a["graded"] < SMALL_N for a in summary["sets"].values())
    md = [f"# Comparison: {labels[1]} against {labels[0]}", "",
          *([f"**Unfinished run:** {n}" for n in unfinished] + [""] if unfinished else []),
          *[f"- `{lab}`: `{r}`, model `{(infos[lab].get('config') or {}).get('model', '?')}`, config hash "
            f"`{infos[lab].get('config_hash', '?')}`" for lab, r in zip(labels, runs)], "",
          "**Settings that differ:** " + ("; ".join(differs) if differs else "none recorded (the same settings)") + ".",
          "", *([f"**Left out:** {n}" for n in notes] + [""] if notes else []),
          "## Accuracy on the shared problems", "", accuracy_table(summary), "",
          "Accuracy in % with its 95% Wilson interval; n: problems graded. Every stream is cut to the problems of its "
          "set that both runs answered under the same id, prompt and gold."
          + (f" {SMALL_MARK} fewer than {SMALL_N} problems: a rough range, not a measurement." if small else ""), "",
          f"## Change of {labels[1]} from {labels[0]}", "", table, "",
          f"Paired on the shared problems. Interval: paired bootstrap ({N_RESAMPLES:,} resamples of problems, seed 0; "
          "within each set for the average), widened where needed to Newcombe's score interval for paired "
          "proportions. gained / lost: problems only the first / only the second solved. McNemar: exact two-sided "
          "binomial test on those counts.", "", "## Plots", "", "![accuracy](plots/accuracy.png)", ""]
    (out / "plots").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / COMPARE_MARK, json.dumps({"runs": [str(r.resolve()) for r in runs]}, indent=2))
    plot_accuracy(summary, out / "plots" / "accuracy.png")
    write_csv(results_rows(summary), out / "results.csv", CSV_COLUMNS)
    metrics = {"runs": {lab: str(r) for lab, r in zip(labels, runs)}, "settings_differ": differs, "left_out": notes,
               "sets": summary["sets"], "average": summary["average"], "changes": changes}
    atomic_write_text(out / "metrics.json", json.dumps(_jsonable(metrics), indent=2))
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    write_html(path)
    return path
