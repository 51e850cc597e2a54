"""The report on hand-made run folders: results.csv values, report.md tables, seed combination, plots."""

import csv
import json
import math
import re

import pytest

from eval.report import (
    CSV_COLUMNS,
    SEED_COLUMNS,
    accuracy_section,
    load_run,
    plot_accuracy,
    plot_diagnostics,
    results_rows,
    summarize,
    write_report,
)
from eval.stats import mcnemar_p, wilson_interval

# setA (10 problems): noadapt solves p0-p4; tent solves p0-p2 and p5-p9 (5 gained, 2 lost)
# setB (4 gradable + 1 unparseable gold): noadapt solves q0; tent solves q0, q1 (1 gained)
PATTERNS = {
    ("noadapt", "setA"): {f"p{i}": i < 5 for i in range(10)},
    ("tent", "setA"): {f"p{i}": i < 3 or i >= 5 for i in range(10)},
    ("noadapt", "setB"): {"q0": True, "q1": False, "q2": False, "q3": False, "q4": None},
    ("tent", "setB"): {"q0": True, "q1": True, "q2": False, "q3": False, "q4": None},
}


def make_run(path, patterns=PATTERNS, seed=0):
    """rows/<method>__<set>.jsonl and run.json as `python -m eval run` writes them."""
    (path / "rows").mkdir(parents=True)
    for (m, d), outcomes in patterns.items():
        ids = list(outcomes)
        if m == "tent":
            ids = ids[::-1]  # another stream order: pairing must go by id, not by index
        with open(path / "rows" / f"{m}__{d}.jsonl", "w") as f:
            for i, pid in enumerate(ids):
                c = outcomes[pid]
                f.write(json.dumps({"id": pid, "index": i, "method": m, "dataset": d, "correct": c,
                                    "response": f"\\boxed{{{i}}}", "extracted": str(i),
                                    "steps": [{"entropy": 1.0, "logit_norm_centered": 5.0}]}) + "\n")
    (path / "run.json").write_text(json.dumps({"config": {"model": "tiny", "seed": seed, "prompt_style": "boxed"},
                                               "config_hash": f"hash{seed}", "git_commit": "abc"}))
    return path


def read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows, list(rows[0])


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """One hand-made run folder with its report written (plots take seconds on a busy CPU)."""
    run = make_run(tmp_path_factory.mktemp("report") / "run")
    write_report(run)
    return run


def test_results_csv_columns_and_values(reported):
    run = reported
    rows, columns = read_csv(run / "results.csv")
    assert tuple(columns) == CSV_COLUMNS
    got = {(r["method"], r["dataset"]): r for r in rows}
    assert list(got) == [("noadapt", "setA"), ("noadapt", "setB"), ("noadapt", "average"),
                         ("tent", "setA"), ("tent", "setB"), ("tent", "average")]

    r = got[("noadapt", "setA")]
    assert (r["n"], r["correct"], float(r["accuracy"])) == ("10", "5", 0.5)
    assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx(wilson_interval(5, 10), abs=1e-6)
    assert r["diff_vs_noadapt"] == r["diff_ci_low"] == r["p_mcnemar"] == ""  # the baseline itself

    r = got[("noadapt", "setB")]  # the unparseable-gold row is excluded, not counted wrong
    assert (r["n"], r["correct"], float(r["accuracy"])) == ("4", "1", 0.25)

    r = got[("tent", "setA")]
    assert float(r["diff_vs_noadapt"]) == pytest.approx(0.3)
    assert float(r["p_mcnemar"]) == pytest.approx(2 * (1 + 7 + 21) / 2**7)  # b=2, c=5
    assert float(r["diff_ci_low"]) <= 0.3 <= float(r["diff_ci_high"])

    r = got[("tent", "average")]  # mean of set accuracies (0.8 + 0.5) / 2, problems pooled for n
    assert (r["n"], r["correct"]) == ("14", "10")
    assert float(r["accuracy"]) == pytest.approx(0.65)
    assert float(r["ci_low"]) < 0.65 < float(r["ci_high"])
    assert float(r["diff_vs_noadapt"]) == pytest.approx((0.3 + 0.25) / 2)
    assert float(r["p_mcnemar"]) == pytest.approx(mcnemar_p(2, 6))  # discordant pooled: 2 lost, 6 gained
    assert float(r["diff_ci_low"]) <= 0.275 <= float(r["diff_ci_high"])


def test_report_md_tables_and_metrics(reported):
    run = reported
    text = (run / "report.md").read_text()
    acc = text.split("## Accuracy", 1)[1].split("## Collapse", 1)[0]
    assert "| method | setA (n=10) | setB (n=4) | avg (n=14) |" in acc
    assert "| noadapt | 50.0 [23.7, 76.3]† | 25.0 [4.6, 69.9]† |" in acc  # † n < 30, explained below the table
    assert "† fewer than 30 problems" in acc
    assert "| tent | setA | 10 | +30.0 [" in acc and "]† | 5 | 2 | 0.453 |" in acc
    assert "2 rows with an unparseable gold answer are excluded" in acc
    assert "## Collapse diagnostics" in text  # kept as it was
    metrics = json.loads((run / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert metrics["sets"]["tent|setA"]["vs"]["only_method"] == 5
    assert metrics["average"]["noadapt"]["acc"] == pytest.approx(0.375)


def test_report_without_baseline_says_so(tmp_path):
    run = make_run(tmp_path / "run", {k: v for k, v in PATTERNS.items() if k[0] == "tent"})
    summary = summarize(load_run(run))
    assert "No `noadapt` stream to compare with." in accuracy_section(summary)
    rows = results_rows(summary)
    assert len(rows) == 3 and not any("diff_vs_noadapt" in r for r in rows)


def test_seed_runs_combined(tmp_path):
    runs = []
    for seed, tent_solves in enumerate([8, 6, 7]):  # tent on setA: 80%, 60%, 70% over the seeds
        pats = dict(PATTERNS)
        pats[("tent", "setA")] = {f"p{i}": i < tent_solves for i in range(10)}
        runs.append(make_run(tmp_path / f"seed{seed}", pats, seed=seed))
    md = write_report(runs, out=tmp_path / "combined")
    assert md == tmp_path / "combined" / "report.md"
    rows, columns = read_csv(tmp_path / "combined" / "results.csv")
    assert tuple(columns) == ("run", *CSV_COLUMNS, *SEED_COLUMNS)
    per_run = {(r["run"], r["method"], r["dataset"]): r for r in rows}
    assert [float(per_run[(f"seed{s}", "tent", "setA")]["accuracy"]) for s in range(3)] == [0.8, 0.6, 0.7]
    c = per_run[("combined", "tent", "setA")]
    assert float(c["accuracy"]) == pytest.approx(0.7)
    assert float(c["accuracy_sd"]) == pytest.approx(0.1)  # sqrt((0.1^2 + 0.1^2 + 0) / 2)
    assert (float(c["accuracy_min"]), float(c["accuracy_max"]), c["n_runs"]) == (0.6, 0.8, "3")
    # noadapt solves p0-p4, tent p0..p(k-1): change +30, +10, +20 points
    assert float(c["diff_vs_noadapt"]) == pytest.approx(0.2)
    assert float(c["diff_min"]) == pytest.approx(0.1) and float(c["diff_max"]) == pytest.approx(0.3)
    assert c["ci_low"] == c["p_mcnemar"] == ""  # across seeds: spread, not an interval
    text = md.read_text()
    assert "| tent | setA | 80.0 [49.0, 94.3], n=10 | 60.0 [31.3, 83.2], n=10 | 70.0 [39.7, 89.2], n=10 | " \
           "70.0 ± 10.0 | 60.0 to 80.0 |" in text
    assert "data seed 2" in text
    assert (tmp_path / "combined" / "plots" / "accuracy.png").stat().st_size > 1000


def test_seed_runs_with_other_streams_are_refused(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", {k: v for k, v in PATTERNS.items() if k[1] == "setA"}, seed=1)
    with pytest.raises(ValueError, match="same \\(method, dataset\\) streams"):
        write_report([a, b], out=tmp_path / "c")


@pytest.fixture
def figures(monkeypatch):
    """Figures the plot functions would close, kept open for inspection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    monkeypatch.undo()
    for fig in kept:
        plt.close(fig)


def test_accuracy_plot_axis_bars_and_n(tmp_path, figures):
    pats = dict(PATTERNS)
    pats[("tent", "setB")] = {f"q{i}": False for i in range(4)}  # 0%: a bar of height 0 and a whisker
    summary = summarize(load_run(make_run(tmp_path / "run", pats)))
    plot_accuracy(summary, tmp_path / "acc.png")
    ax = figures[0].axes[0]
    assert ax.get_ylim() == (0.0, 100.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["setA\nn=10", "setB\nn=4", "avg\nn=14"]
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    whiskers = [s for s in segments if s[0][0] == s[1][0]]
    assert len(whiskers) == 6  # one interval per method and group, the 0% one included
    zero = [s for s in whiskers if s[0][1] == 0.0]
    assert zero and zero[0][1][1] == pytest.approx(100 * wilson_interval(0, 4)[1])
    assert any(s[0][1] == s[1][1] == 0.0 for s in segments)  # the 0% bar is drawn as a stroke on the axis
    assert "0%" in [t.get_text() for t in ax.texts]


def test_diagnostics_plot_integer_problems_and_distinct_lines(tmp_path, figures):
    streams = load_run(make_run(tmp_path / "run"))
    plot_diagnostics(streams, "setA", tmp_path / "d.png")
    axes = figures[0].axes
    acc_ax = next(ax for ax in axes if ax.get_title().startswith("accuracy (window)"))
    assert acc_ax.get_ylim() == (0.0, 100.0)
    for ax in axes:
        if ax.lines:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert all(float(t).is_integer() for t in ticks), ax.get_title()
    # entropy is 1.0 for both streams: the lines coincide, so they must differ in dash, marker and width
    ent = next(ax for ax in axes if ax.get_title().startswith("entropy")).lines
    assert len(ent) == 2
    assert ent[0].get_linestyle() != ent[1].get_linestyle() and ent[0].get_marker() != ent[1].get_marker()
    assert ent[0].get_linewidth() > ent[1].get_linewidth()  # the one drawn first shows around the second
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert legend == ["noadapt (n=10)", "tent (n=10)"]
    assert not any(math.isnan(v) for v in acc_ax.lines[0].get_ydata())


def test_answered_counts_stated_answers_not_numbers_the_fallback_found():
    from eval.grading import check
    from zs_llm.diagnostics import has_answer

    def row(response, gold="5"):
        g = check(response, gold)
        return {"response": response, "extracted": g.pred, "answer_source": g.source}

    assert has_answer(row("So the sum is \\boxed{5}."))
    assert has_answer(row("The final answer is 5."))
    fallback = row("I added them and got 5 and then I stopped")
    assert fallback["extracted"] == "5" and fallback["answer_source"] == "response"  # graded from the text ...
    assert not has_answer(fallback)  # ... but no answer was stated
    # rows written before answer_source: read from the response
    assert has_answer({"response": "The answer is 7.", "extracted": "7"})
    assert not has_answer({"response": "seven or so 7", "extracted": "7"})
    assert not has_answer({"response": "The answer is within \\boxed{}.", "extracted": ""})


# --- generated runs: what a report may not get wrong, over random method lists, orders and sizes ---

POOL = ["tent", "zerosiam", "come", "sar", "eminf", "slot", "tent+guard", "zerosiam+clip", "come:alpha=0",
        "sar+guard", "tent:x=1", "zerosiam:alpha=0", "come+clip", "sar:x=2"]


def make_generated_run(path, seed):
    """A run of 2..15 methods (noadapt among them, anywhere in --methods) on 1-2 sets of 1..40
    problems, with random outcomes, entropies and some looping responses; run.json as the runner
    writes it (adapt_configs in --methods order, config.datasets)."""
    import random

    rng = random.Random(seed)
    methods = rng.sample(POOL, rng.randint(1, 14))
    methods.insert(rng.randint(0, len(methods)), "noadapt")
    datasets = rng.sample(["setA", "setB", "setC"], rng.randint(1, 2))
    sizes = {d: rng.randint(1, 40) for d in datasets}
    (path / "rows").mkdir(parents=True)
    for m in methods:
        for d in datasets:
            p_right, drift = rng.random(), rng.choice([0.3, 1.0, 2.0])
            with open(path / "rows" / f"{m}__{d}.jsonl", "w") as f:
                for i in range(sizes[d]):
                    loop = rng.random() < 0.3
                    f.write(json.dumps({
                        "id": f"{d}{i}", "index": i, "method": m, "dataset": d, "correct": rng.random() < p_right,
                        "response": "the " * 30 if loop else f"\\boxed{{{rng.randint(0, 3)}}}",
                        "extracted": None if loop else str(rng.randint(0, 3)),
                        "steps": [{"entropy": 1.0 + (drift - 1.0) * i / max(1, sizes[d] - 1)}]}) + "\n")
    configs = {m: {"method": m.partition(":")[0].partition("+")[0], "optimizer": "sgd", "lr": 0.00123,
                   "steps": 1, "method_args": {}} for m in methods}
    (path / "run.json").write_text(json.dumps({"config": {"model": "tiny", "datasets": datasets},
                                               "adapt_configs": configs}))
    return methods, datasets, sizes


def table_rows(text, heading):
    """The first column and the other cells of each row of the first table after `heading`."""
    section = text.split(heading, 1)[1]
    section = section[section.index("\n|") + 1:]  # past any paragraph before the table
    lines = section.split("\n\n", 1)[0].splitlines()[2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def png_size(path):
    head = path.read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


@pytest.mark.parametrize("seed", range(4))
def test_generated_runs_report_honestly(tmp_path, figures, seed):
    from eval.report import BAR_DPI, MAX_WIDTH_PX, method_adapts
    from zs_llm.diagnostics import collapse_measures, verdict_rule

    run = tmp_path / "run"
    methods, datasets, sizes = make_generated_run(run, seed)
    write_report(run)
    text = (run / "report.md").read_text()
    expected = ["noadapt"] + [m for m in methods if m != "noadapt"]  # baseline first, then --methods order
    assert [r[0] for r in table_rows(text, "## Accuracy")] == expected
    assert [r[0] for r in table_rows(text, "## Settings")] == expected
    collapse = table_rows(text, "## Collapse diagnostics")
    assert [(r[0], r[1]) for r in collapse] == [(m, d) for m in expected for d in datasets]

    streams = load_run(run)
    adapting = {m: method_adapts(m) for m in methods}
    assert not adapting["noadapt"] and not adapting["eminf" if "eminf" in methods else "noadapt"]
    assert all(adapting[m] for m in methods if m.startswith(("tent", "zerosiam", "come", "sar")))
    for r in collapse:
        m, d, cell = r[0], r[1], r[-1]
        if not adapting[m]:
            assert cell == ("n/a (adapts each prompt afresh)" if m == "slot" else "n/a (does not adapt)")
            continue
        label, rule = verdict_rule(collapse_measures(streams[(m, d)]))
        assert cell == f"{label} ({rule})" and rule  # each verdict names the rule that fired
    for r in table_rows(text, "## Settings"):
        if adapting[r[0]]:
            assert r[1:3] == ["sgd", "0.00123"]
        else:
            assert set(r[1:-1]) == {"n/a"}  # no optimizer or learning rate for a method that does not adapt

    metrics = json.loads((run / "metrics.json").read_text())
    intervals = list(metrics["sets"].values()) + list(metrics["average"].values())
    assert intervals and all(a["ci_low"] <= a["acc"] <= a["ci_high"] and a["ci_high"] > a["ci_low"]
                             for a in intervals)
    small = "†" in text.split("## Accuracy", 1)[1].split("### Change", 1)[0]
    assert small == (min(sizes.values()) < 30)

    fig = figures[0]  # plot_accuracy draws first
    assert fig.get_size_inches()[0] * BAR_DPI <= MAX_WIDTH_PX
    assert png_size(run / "plots" / "accuracy.png")[0] <= MAX_WIDTH_PX
    marks = {ln.get_label(): ln for ln in fig.axes[0].lines if not ln.get_label().startswith("_")}
    assert list(marks) == expected
    assert len({ln.get_markerfacecolor() for ln in marks.values()}) == len(expected)
    assert len({ln.get_marker() for ln in marks.values()}) == len(expected)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == expected


@pytest.mark.parametrize("n", [2, 5, 10, 11, 15, 20, 30])
def test_method_styles_distinct(n):
    from eval.report import method_styles

    styles = method_styles(n)
    assert len({c for c, _ in styles}) == n
    assert len({mk for _, mk in styles}) == min(n, 20)


@pytest.mark.parametrize("seed", range(20))
def test_average_interval_has_width_at_any_size(seed):
    """Sets of 1..40 problems at any accuracy, 0% and 100% included: the average's interval holds
    the average and is never a point."""
    import random

    from eval.stats import average_interval

    rng = random.Random(seed)
    groups = []
    for _ in range(rng.randint(2, 4)):
        n = rng.randint(1, 40)
        k = rng.choice([0, n, rng.randint(0, n)])
        groups.append([1] * k + [0] * (n - k))
    lo, hi = average_interval(groups, n_resamples=500)
    avg = sum(sum(g) / len(g) for g in groups) / len(groups)
    assert 0 <= lo <= avg <= hi <= 1 and hi > lo


@pytest.mark.parametrize(("measures", "label", "needle"), [
    ({"steps": 4, "steps_skipped": 4}, "no-update", "all 4 steps skipped"),
    ({"answers_last_half": 12, "top_answer_share_last_half": 0.75}, "collapsed-constant", "75% of the last half's 12"),
    ({"degenerate_share_last_half": 0.4}, "degenerate", "40% of last-half responses loop > 30%"),
    ({"answered_first_count": 8, "answered_first": 0.8, "answered_last": 0.1}, "degenerate", "format lost"),
    ({"entropy_trend": 1.4}, "degenerate", "entropy drift: trend 1.40 > 1.25"),
    ({"entropy_trend": 0.3}, "sharpening", "entropy trend 0.30 < 0.5"),
    ({"entropy_trend": 1.0}, "stable", "no rule fired"),
])
def test_verdict_names_its_rule(measures, label, needle):
    from zs_llm.diagnostics import verdict, verdict_rule

    got, rule = verdict_rule({"answers_last_half": 0, **measures})
    assert (got, verdict({"answers_last_half": 0, **measures})) == (label, label) and needle in rule


# --- which runs combine as seeds, and where a combined report may go --------------------------
def full_info(seed=0, method_seed=0, **config):
    """A run.json as `python -m eval run` records it (config, every method's settings, identity)."""
    from eval.runner import RunConfig
    from zs_llm.config import AdaptConfig

    cfg = RunConfig(model="/models/m", methods=["noadapt", "tent"], datasets=["arith"], limit=10).to_dict()
    cfg |= {"seed": seed, "adapt": {"seed": method_seed}} | config
    adapt = {m: AdaptConfig.from_spec(m).to_dict() | {"seed": method_seed} for m in ("noadapt", "tent")}
    ident = {"model": {"kind": "files", "folder": "/models/m", "files": {"config.json": "c" * 64,
                                                                        "model.safetensors": "a" * 64}},
             "data_dir": None, "sets": {"arith": {"n": 10, "problems_sha256": f"{seed:064d}"}}}
    return {"config": cfg, "config_hash": f"h{seed}-{method_seed}", "adapt_configs": adapt, "identity": ident,
            "data": {"arith": {"source": "generated"}}, "prompt": {"sha256": "p" * 64}}


def write_info(run, info):
    (run / "run.json").write_text(json.dumps(info))
    return run


def _changed(value, rng):
    """Another value of the same kind as `value`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + rng.choice([1, 2, 7]) * (0.5 if isinstance(value, float) else 1)
    if isinstance(value, str):
        return value + rng.choice(["x", "-2", "_other"])
    if isinstance(value, list):
        return [*value, f"extra{rng.randrange(9)}"]
    if isinstance(value, dict):
        return {**value, f"k{rng.randrange(9)}": rng.randrange(9)}
    return rng.choice([3, "set", 0.25])  # None


def _one_field_changes():
    """(what to change in run.json, the setting the refusal must name): every field that changes
    results, of the run's config, its every-method overrides and one method's resolved settings."""
    from eval.runner import RESULT_FREE_FIELDS

    info = full_info()
    cases = [(("config", k), k) for k in info["config"]
             if k not in (*RESULT_FREE_FIELDS, "seed", "adapt", "model", "data_dir", "prompt_template")]
    cases += [(("config", "adapt", k), f"{k} (every method)") for k in ("alpha", "lr", "steps")]
    cases += [(("adapt_configs", "tent", k), f"tent {k}") for k in info["adapt_configs"]["tent"] if k != "seed"]
    cases += [(("identity", "model", "files", "model.safetensors"), "model"),
              (("identity", "model", "files", "config.json"), "model"),
              (("identity", "sets", "arith", "problems_sha256"), "data"),
              (("prompt", "sha256"), "prompt template")]
    return cases


@pytest.mark.parametrize("case", range(len(_one_field_changes())))
def test_runs_differing_in_one_setting_are_refused_naming_it(tmp_path, case):
    import random

    rng = random.Random(case)
    path, name = _one_field_changes()[case]
    seeds = rng.sample(range(50), 2)
    a = write_info(make_run(tmp_path / "a"), full_info(seed=seeds[0], method_seed=seeds[0]))
    info = full_info(seed=seeds[0] if path[0] in ("identity",) else seeds[1], method_seed=seeds[1])
    *parents, last = path
    d = info
    for p in parents:
        d = d[p]
    d[last] = _changed(d.get(last), rng)
    b = write_info(make_run(tmp_path / "b"), info)
    with pytest.raises(ValueError, match=r"not seed runs of one configuration: b: " + re.escape(name) + " differs"):
        write_report([a, b])
    assert not list(tmp_path.glob("combined*"))  # refused before anything is written


def test_report_cli_refuses_runs_of_other_configurations_in_one_line(tmp_path, capsys):
    from eval.cli import main as cli_main

    runs = [write_info(make_run(tmp_path / "r1"), full_info(seed=1)),
            write_info(make_run(tmp_path / "r3"), full_info(seed=3, model="/models/other")),
            write_info(make_run(tmp_path / "r4"), full_info(seed=4, adapt={"seed": 0, "alpha": 0.2})),
            write_info(make_run(tmp_path / "r5"), full_info(seed=5, limit=5))]
    runs[1].joinpath("run.json").write_text(json.dumps({**full_info(seed=3, model="/models/other"),
                                                        "identity": {}}))  # no fingerprint: the names differ
    assert cli_main(["report", *map(str, runs)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: these runs are not seed runs")
    assert "r3: model differs ('/models/m' in r1, here '/models/other')" in err
    assert "r4: alpha (every method) differs" in err and "r5: limit differs (10 in r1, here 5)" in err


def test_model_copy_at_another_path_is_the_same_model(tmp_path):
    a = write_info(make_run(tmp_path / "a"), full_info(seed=0))
    info = full_info(seed=1, model="/elsewhere/m")
    info["identity"]["model"]["folder"] = "/elsewhere/m"
    b = write_info(make_run(tmp_path / "b"), info)
    from eval.report import seed_run_conflicts

    infos = {"a": json.loads((a / "run.json").read_text()), "b": json.loads((b / "run.json").read_text())}
    assert seed_run_conflicts(infos) == []
    infos["b"]["identity"]["model"]["files"]["model.safetensors"] = "b" * 64
    assert seed_run_conflicts(infos)[0].startswith("b: model differs (model file /elsewhere/m/model.safetensors")


@pytest.mark.parametrize("gen", range(3))
def test_runs_differing_only_in_seeds_combine(tmp_path, gen):
    import random

    from eval.runner import RESULT_FREE_FIELDS

    rng = random.Random(100 + gen)
    seeds = rng.sample(range(1000), 3)
    kind = ["data", "method", "both"][gen]
    runs = []
    for i, s in enumerate(seeds):
        free = {k: rng.choice([1, 2, 16]) for k in RESULT_FREE_FIELDS if k != "device"} | {
            "device": rng.choice(["cpu", "cuda", None])}
        info = full_info(seed=s if kind != "method" else 0, method_seed=s if kind != "data" else 0, **free)
        runs.append(write_info(make_run(tmp_path / f"s{i}"), info))
    md = write_report(runs)
    assert md.parent.name.startswith("combined-") and md.parent.parent == tmp_path
    assert json.loads((md.parent / "combined.json").read_text())["runs"] == [str(r.resolve()) for r in runs]


@pytest.mark.parametrize("kind", ["data", "method", "both", "same folder"])
def test_the_same_seed_twice_is_refused(tmp_path, kind):
    a = write_info(make_run(tmp_path / "a"), full_info(seed=3, method_seed=4))
    b = write_info(make_run(tmp_path / "b"), full_info(seed=3 if kind != "method" else 5,
                                                       method_seed=4 if kind != "data" else 5))
    runs = [a, a] if kind == "same folder" else [a, b]
    if kind in ("data", "method"):  # one seed differs: accepted
        from eval.report import seed_run_conflicts

        assert seed_run_conflicts({"a": full_info(seed=3, method_seed=4), "b": json.loads(
            (b / "run.json").read_text())}) == []
        return
    with pytest.raises(ValueError, match="the same seed twice: these are not independent seed runs"):
        write_report(runs, out=tmp_path / "c")


def test_combined_report_refuses_a_run_folder_as_out(tmp_path):
    from eval.cli import main as cli_main

    a = write_info(make_run(tmp_path / "a"), full_info(seed=0))
    b = write_info(make_run(tmp_path / "b"), full_info(seed=1))
    other = write_info(make_run(tmp_path / "other"), full_info(seed=9))
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    for out in (other, a):
        with pytest.raises(FileExistsError, match="is a run folder"):
            write_report([a, b], out=out)
        assert cli_main(["report", str(a), str(b), "--out", str(out)]) == 2
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before


def test_combinations_do_not_overwrite_each_other(tmp_path):
    runs = [write_info(make_run(tmp_path / f"s{s}"), full_info(seed=s)) for s in range(3)]
    first = write_report(runs[:2])
    second = write_report(runs[1:])
    assert first.parent != second.parent and first.exists() and second.exists()
    assert "`s0`" in first.read_text() and "`s0`" not in second.read_text()
    again = write_report(runs[1::-1])  # the same runs in another order: the same folder, rewritten
    assert again == first
    with pytest.raises(FileExistsError, match="holds the combined report of other runs"):
        write_report(runs[1:], out=first.parent)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="not written by a combined report"):
        write_report(runs[:2], out=tmp_path / "mine")
    assert (tmp_path / "mine" / "report.md").read_text() == "my notes"


def test_report_of_one_run_is_written_to_out_and_the_run_folder_is_untouched(tmp_path, capsys):
    from eval.cli import main as cli_main

    a = make_run(tmp_path / "a")
    before = sorted(p.relative_to(a) for p in a.rglob("*"))
    assert cli_main(["report", str(a), "--out", str(tmp_path / "elsewhere")]) == 0
    assert sorted(p.relative_to(a) for p in a.rglob("*")) == before
    for name in ("report.md", "report.html", "metrics.json", "results.csv", "plots/accuracy.png"):
        assert (tmp_path / "elsewhere" / name).is_file(), name
    assert (tmp_path / "elsewhere" / "report.md").read_text() == capsys.readouterr().out.split("[eval] report:")[0][:-1]
    b = make_run(tmp_path / "b")
    assert cli_main(["report", str(a), "--out", str(b)]) == 2  # another run's folder
    assert "another run's folder" in capsys.readouterr().err and not (b / "report.md").exists()


def test_the_seed_refusal_names_every_differing_setting_and_identical_runs_are_refused(tmp_path, capsys):
    from eval.cli import main as cli_main

    a = write_info(make_run(tmp_path / "a"), full_info(seed=1))
    b = write_info(make_run(tmp_path / "b"), full_info(seed=2, limit=5, prompt_style="plain",
                                                       adapt={"seed": 0, "alpha": 0.2}))
    assert cli_main(["report", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "eval compare" in err
    for name in ("limit differs (10 in a, here 5)", "prompt_style differs", "alpha (every method) differs"):
        assert name in err, (name, err)
    twin = write_info(make_run(tmp_path / "twin"), full_info(seed=1))
    assert cli_main(["report", str(a), str(twin)]) == 2
    assert "the same seed twice" in capsys.readouterr().err
