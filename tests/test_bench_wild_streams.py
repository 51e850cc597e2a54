"""bench/wild_streams.py: the study's plan and its pool, end to end on a tiny random model."""

import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import their neighbours (_common, select_lr, testbed) by name

import wild_streams as m  # noqa: E402


def test_study_rows_are_every_method_plus_clip_and_guard_rows_at_the_selected_lr():
    specs = m.study_specs(["noadapt", "tent", "slot", "zerosiam", "zerosiam+sar"], {"tent": 1e-3, "zerosiam": 3e-4})
    assert specs == ["noadapt", "tent:lr=0.001", "slot", "zerosiam:lr=0.0003", "zerosiam+sar:lr=0.0003",
                     "tent+clip:lr=0.001", "zerosiam+clip:lr=0.0003", "zerosiam+sar+clip:lr=0.0003",
                     "tent+guard:lr=0.001", "zerosiam+guard:lr=0.0003"]
    assert m.with_lr("come", {}) == "come"  # no selection: the method's default stands
    # rows run in another root are left out; a row the study lacks is an error naming its rows
    assert m.study_specs(["noadapt", "tent", "come"], {}, skip=["tent", "tent+clip"]) == \
        ["noadapt", "come", "come+clip", "tent+guard"]
    with pytest.raises(ValueError, match="does not have.*'tent\\+clip'"):
        m.study_specs(["noadapt", "tent"], {}, skip=["tent+clp"])


def test_pool_runs_selects_and_assembles_reports(tmp_path, tiny_dir):
    root = tmp_path / "wild"
    common = ["--root", str(root), "--model", str(tiny_dir), "--max-new-tokens", "4", "--prompt-style", "plain"]
    # the selection in a pool of processes; the study in this process (workers 0), at the chosen lr
    lrs = m.main([*common, "--stages", "testbed,select", "--select-methods", "tent", "--grid", "1e-3,3e-3",
                  "--select-limit", "2", "--workers", "2", "--testbed-styles", "plain,boxed", "--testbed-budgets",
                  "3,5", "--testbed-limit", "4"])
    choices = json.loads((root / "choices.json").read_text())
    tb = json.loads((root / "testbed.json").read_text())
    assert len(tb["results"]) == 4 and (choices["prompt_style"], choices["max_new_tokens"]) == tuple(tb["chosen"])
    assert json.loads((root / "jobs" / "select" / "seed0" / "noadapt__arith_dev" / "run.json").read_text())[
        "config"]["prompt_style"] == choices["prompt_style"]  # the later stages use the testbed's choice
    table = json.loads((root / "selection.json").read_text())
    assert set(table["tent"]["scores"]) == {"0.001", "0.003"} and lrs == {"tent": table["tent"]["chosen"]}
    # the study pooled: one process per seed, its adapting streams 4 at a time
    assert m.main([*common, "--stages", "study", "--methods", "noadapt,tent", "--streams", "mixed,imbalanced",
                   "--seeds", "0,1", "--limit", "3", "--workers", "0", "--pool", "4", "--lrs", json.dumps(lrs)]) == lrs
    assert [p.name for p in (root / "jobs" / "study" / "seed1").iterdir()] == ["pool"]
    run = json.loads((root / "jobs" / "study" / "seed1" / "pool" / "run.json").read_text())
    assert run["config"]["stream_batch"] == 4 and any(m.startswith("tent+guard") for m in run["config"]["methods"])
    m.main(["--root", str(root), "--stages", "study", "--assemble", "--summary", str(root / "tables.md")])
    for seed in ("seed0", "seed1"):
        rows = list((root / "study" / seed / "rows").glob("*.jsonl"))
        assert len(rows) == 8
        assert all(len(f.read_text().splitlines()) == 3 for f in rows)
        assert "tent+clip" in (root / "study" / seed / "report.md").read_text()
    assert (root / "study" / "combined" / "report.md").exists()
    tables = (root / "tables.md").read_text()
    assert "### All streams and seeds" in tables and "### mixed" in tables and "### imbalanced" in tables
    line = next(x for x in tables.splitlines() if x.startswith("| tent+clip |"))
    assert line.split(" | ")[1] == "12"  # 3 problems x 2 streams x 2 seeds, pooled
    assert "| noadapt | 12 |" in tables
    assert "Holm-adjusted over the 3 comparisons with noadapt above" in tables  # tent, tent+clip, tent+guard
    diag = tables.split("### Collapse diagnostics", 1)[1]
    assert [x.count(";") for x in diag.splitlines() if x.startswith("| mixed |")] == [3]  # tent+clip, tent, tent+guard
    assert "| mixed | seed1 | tent+clip | 3 |" in tables and "| imbalanced | seed0 | noadapt | 3 |" in tables
    # a study cut at a deadline: every stream compared on its first N problems
    m.main(["--root", str(root), "--stages", "study", "--assemble", "--first", "2", "--summary", str(root / "t2.md")])
    assert all(len(f.read_text().splitlines()) == 2 for f in (root / "study" / "seed0" / "rows").glob("*.jsonl"))
    assert "| tent+clip | 8 |" in (root / "t2.md").read_text()
    # rows run in another root join with --include; a stream both roots hold must agree
    job = root / "jobs" / "study" / "seed0" / "pool"
    other = tmp_path / "other" / "jobs" / "study" / "seed0" / "pool"
    (other / "rows").mkdir(parents=True)
    shutil.copy(job / "run.json", other / "run.json")
    for f in (job / "rows").glob("*.jsonl"):
        if f.name.startswith("tent+clip") or f.name.startswith("noadapt"):
            shutil.copy(f, other / "rows" / f.name)
            if f.name.startswith("tent+clip"):
                f.unlink()  # now only the other root has it
    m.main(["--root", str(root), "--stages", "study", "--assemble", "--include", str(tmp_path / "other"),
            "--summary", str(root / "t3.md")])
    assert len(list((root / "study" / "seed0" / "rows").glob("*.jsonl"))) == 8
    assert "| tent+clip | 12 |" in (root / "t3.md").read_text()  # seed 0's 6 come from the other root only
    # a new, empty root gathers named seeds from several roots; a seed no root holds is an error
    both = tmp_path / "both"
    m.main(["--root", str(both), "--stages", "study", "--assemble", "--include", str(root), "--include",
            str(tmp_path / "other"), "--seeds", "0,1", "--summary", str(both / "t4.md")])
    assert (both / "t4.md").read_text() == (root / "t3.md").read_text().replace(str(root), str(both))
    assert sorted(p.name for p in (both / "study").iterdir()) == ["combined", "seed0", "seed1"]
    with pytest.raises(ValueError, match="holds no study jobs: name the seeds.*--seeds"):  # not silently nothing
        m.main(["--root", str(tmp_path / "empty"), "--stages", "study", "--assemble", "--include", str(root)])
    with pytest.raises(ValueError, match=r"no root holds study jobs of \['seed2'\].*'seed0', 'seed1'"):
        m.main(["--root", str(both), "--stages", "study", "--assemble", "--include", str(root), "--seeds", "0,2"])
    noadapt = next((other / "rows").glob("noadapt*"))
    noadapt.write_text(noadapt.read_text().replace('"response": "', '"response": "x', 1))
    with pytest.raises(ValueError, match="different responses"):
        m.main(["--root", str(root), "--stages", "study", "--assemble", "--include", str(tmp_path / "other")])


def test_deadline_stops_jobs_and_keeps_their_rows(tmp_path, tiny_dir):
    root = tmp_path / "wild"
    jobs = m.plan(m_args(m, root, tiny_dir), {}, "study")
    status = m.run_pool(jobs, 2, deadline=__import__("time").time() + 0.0, log=print)
    assert set(status.values()) == {"not started"}


def m_args(m, root, tiny_dir):
    import argparse

    return argparse.Namespace(root=root, model=str(tiny_dir), dtype="float32", device=None, methods="noadapt,tent",
                              no_guard_rows=False, skip="",
                              seeds="0", streams="mixed", limit=2, prompt_style="plain", max_new_tokens=4)


def test_testbed_takes_the_cheapest_setting_meeting_the_target_else_the_highest_share():
    import testbed

    def r(share, acc):
        return {"stated_share": share, "accuracy": acc}

    res = {"arith|a|32": r(0.8, 0.3), "arith|a|64": r(0.95, 0.3), "arith|b|48": r(0.91, 0.2),
           "arith|b|32": r(0.7, 0.5), "arith_dev|b|32": r(0.99, 0.9)}
    assert testbed.choose(res, 0.9) == ("b", 48)  # cheapest budget meeting 90% on arith (dev ignored)
    assert testbed.choose(res, 0.99) == ("a", 64)  # none meets it: the highest share
    assert testbed.choose(res, 0.9, on="arith_dev") == ("b", 32)
