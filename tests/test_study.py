"""`python -m eval study`: a study file is checked, expanded into run folders, run, resumed and
assembled; its tables are the numbers eval.stats gives from the rows."""

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import pytest

from eval.cli import main as cli
from eval.report import outcomes
from eval.stats import holm, paired_difference_over_sets, wilson_interval
from eval.study import Stage, load_study, plan, stage_rows, with_lr
from eval.study_tables import streams_tables

REPO = Path(__file__).resolve().parents[1]


def write_study(tmp_path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ the study file


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "studies").glob("*.yaml")))
def test_the_shipped_studies_load_and_expand(name):
    study = load_study(REPO / "studies" / name)
    for stage in study.stages:
        st = study.stages[stage]
        jobs = plan(study, stage, st.lrs or {}, None if st.limit == "auto" else st.limit)
        assert jobs and len({j["out"] for j in jobs}) == len(jobs)  # every run its own folder


BAD = [  # (the file's text, what the one line must name)
    ("stages: {study: {strams: [long]}}", r"stage study: unknown key 'strams'; did you mean 'streams'\?"),
    ("metods: [tent]\nstages: {study: {}}", r"unknown key 'metods'; did you mean 'methods'\?"),
    ("stages: {study: {methods: [noadapt, tnet]}}", r"unknown method 'tnet'; known: come"),
    ("stages: {study: {methods: ['tent+clp']}}", r"unknown method 'tent\+clp'"),
    ("stages: {study: {methods: ['tent:lrr=1']}}", r"tent has no setting 'lrr'"),
    ("stages: {study: {streams: [lon]}}", r"stage study: streams='lon' is not valid; choose one of .*long"),
    ("stages: {study: {limit: 0}}", r"stage study: limit must be >= 1, got 0"),
    ("stages: {study: {limit: some}}", r"limit='some' is not valid; give a number of problems or auto"),
    ("stages: {study: {lrs: {tent: -1}}}", r"lrs.tent must be > 0.0, got -1"),
    ("stages: {study: {kind: sweap}}", r"kind='sweap' is not valid; choose one of select, streams, sweep"),
    ("workers: -1\nstages: {study: {}}", r"study.yaml: workers must be in \[0, 1024\], got -1"),
    ("stages: {study: {seeds: []}}", r"seeds is an empty list"),
    ("stages: [study]", r"stages must map each stage's name to its settings"),
    ("stages: {study: {}}\nstages: {select: {}}", r"'stages' is given twice"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_a_bad_study_file_is_refused_in_one_line_naming_the_key(tmp_path, capsys, text, message):
    path = write_study(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        load_study(path)
    assert cli(["study", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)


def test_set_overrides_every_stage_or_one_and_checks_the_value(tmp_path):
    path = write_study(tmp_path, "limit: 5\nstages:\n  a: {limit: 7}\n  b: {}\n")
    assert [s.limit for s in load_study(path).stages.values()] == [7, 5]
    assert [s.limit for s in load_study(path, ["limit=9"]).stages.values()] == [9, 9]
    assert [s.limit for s in load_study(path, ["b.limit=3"]).stages.values()] == [7, 3]
    assert load_study(path, ["lrs={tent: 0.001}"]).stages["a"].lrs == {"tent": 0.001}
    with pytest.raises(ValueError, match="stage a: limit must be >= 1, got 0"):
        load_study(path, ["a.limit=0"])
    with pytest.raises(ValueError, match="the study has no stage 'c'"):
        load_study(path, ["c.limit=3"])


@pytest.mark.parametrize("seed", range(4))
def test_rows_are_each_method_its_addons_and_guard_rows_at_their_lr(seed):
    rng = random.Random(seed)
    lora = ["tent", "come", "sar", "zerosiam", "zerosiam+sar"]
    methods = ["noadapt"] + rng.sample(lora, rng.randint(1, 4)) + rng.sample(["slot", "eminf"], rng.randint(0, 2))
    lrs = {m: rng.choice([1e-4, 3e-4, 1e-3]) for m in ("tent", "come", "sar", "zerosiam")}
    st = Stage(methods=methods, addons=["clip"], guard_rows=["tent", "zerosiam"])
    rows = stage_rows(st, lrs)
    plain = [r.split(":lr=")[0] for r in rows]
    assert plain == methods + [f"{m}+clip" for m in methods if m in lora] + \
        [f"{m}+guard" for m in ("tent", "zerosiam") if m in methods]
    for r in rows:  # each row at its own method's lr; a plug-in at ZeroSiam's; the others at their own
        base = r.split(":lr=")[0].split("+clip")[0].split("+guard")[0]
        source = "zerosiam" if base == "zerosiam+sar" else base
        assert (":lr=" in r) == (source in lrs) and (source not in lrs or r.endswith(f":lr={lrs[source]:g}"))
    assert with_lr("tent:lr=0.1", lrs, {}) == "tent:lr=0.1"  # an lr given in the spec stands
    skip = rng.sample(plain[1:], 1)
    assert [r.split(":lr=")[0] for r in stage_rows(Stage(methods=methods, skip=skip), lrs)] == \
        [p for p in plain if p not in skip]
    with pytest.raises(ValueError, match=r"skip names rows the stage does not have: \['tent\+clp'\]"):
        stage_rows(Stage(methods=methods, skip=["tent+clp"]), lrs)


def test_pooled_stages_run_one_folder_per_seed(tmp_path):
    text = ("root: R\nstreams: [mixed]\nseeds: [0, 3]\nstages:\n  s: {methods: [noadapt, tent], pool: 4}\n"
            "  t: {methods: [noadapt, tent], guard_rows: []}\n")
    study = load_study(write_study(tmp_path, text))
    pooled = plan(study, "s", {}, 2)
    assert [Path(j["out"]).parts[-3:] for j in pooled] == [("s", "seed0", "pool"), ("s", "seed3", "pool")]
    assert pooled[0]["config"]["methods"] == ["noadapt", "tent", "tent+clip", "tent+guard"]
    assert pooled[0]["config"]["stream_batch"] == 4 and pooled[1]["config"]["seed"] == 3
    alone = plan(study, "t", {"tent": 1e-3}, 2)
    assert len(alone) == 6 and alone[-1]["config"]["methods"] == ["noadapt"]  # noadapt last: batched, fast
    assert {j["config"]["limit"] for j in alone} == {2}


# ------------------------------------------------------------------ the tables against eval.stats


def hand_row(method, dataset, i, correct, rng):
    return {"id": f"{dataset}-{i}", "index": i, "method": method, "dataset": dataset, "correct": correct,
            "response": f"\\boxed{{{i}}}", "extracted": str(i),
            "steps": [{"entropy": 1.0 + rng.random(), "logit_norm_centered": 10.0, "predictor_dev": 0.1}]}


def _cell(k, n, base_pairs):
    lo, hi = wilson_interval(k, n)
    cell = f"{n} | {100 * k / max(1, n):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    if base_pairs is None:
        return cell + " | - | - | -", None
    v = paired_difference_over_sets(base_pairs)
    return (cell + f" | {100 * v.diff:+.1f} [{100 * v.ci_low:+.1f}, {100 * v.ci_high:+.1f}] | "
            f"{v.only_method}/{v.only_baseline} | {v.p_mcnemar:.3g}"), v.p_mcnemar


@pytest.mark.parametrize("seed", range(3))
def test_the_streams_table_is_what_eval_stats_gives_from_the_rows(tmp_path, seed):
    rng = random.Random(seed)
    methods = ["noadapt", "tent", "zerosiam+clip"]
    streams = ["long", "mixed"]
    n = rng.randint(5, 25)
    marks = {}  # (seed folder, method, stream) -> [correct per problem]
    folders = []
    for s in range(rng.randint(1, 3)):
        folder = tmp_path / f"seed{s}"
        (folder / "rows").mkdir(parents=True)
        for m in methods:
            p = {"noadapt": 0.4, "tent": rng.random(), "zerosiam+clip": 0.5}[m]
            for d in streams:
                marks[folder.name, m, d] = [rng.random() < p for _ in range(n)]
                rows = [hand_row(m, d, i, c, rng) for i, c in enumerate(marks[folder.name, m, d])]
                (folder / "rows" / f"{m}__{d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        folders.append(folder)
    md = streams_tables(folders)
    seeds = [f.name for f in folders]

    def pairs(m, ds, ss):
        return [({i: c for i, c in enumerate(marks[s, m, d])}, {i: c for i, c in enumerate(marks[s, "noadapt", d])})
                for s in ss for d in ds]

    pooled_p = {}
    for m in methods:  # pooled over streams and seeds
        k = sum(sum(marks[s, m, d]) for s in seeds for d in streams)
        cell, p = _cell(k, n * len(seeds) * len(streams), None if m == "noadapt" else pairs(m, streams, seeds))
        assert f"| {m} | {cell} | " in md.split("### long")[0]
        if p is not None:
            pooled_p[m] = p
    for d in streams:  # per stream over seeds, and per stream and seed
        section = md.split(f"### {d}")[1].split("###")[0]
        for m in methods:
            k = sum(sum(marks[s, m, d]) for s in seeds)
            cell, _ = _cell(k, n * len(seeds), None if m == "noadapt" else pairs(m, [d], seeds))
            assert f"| {m} | {cell} | " in section
            for s in seeds:
                cell, _ = _cell(sum(marks[s, m, d]), n, None if m == "noadapt" else pairs(m, [d], [s]))
                assert f"| {d} | {s} | {m} | {cell} | " in md
    adj = holm(pooled_p)
    below = [f"{m} {pooled_p[m]:.3g} -> {adj[m]:.3g}" for m in pooled_p if pooled_p[m] < 0.05]
    assert f"Holm-adjusted over the {len(pooled_p)} comparisons with noadapt above" in md
    assert (", ".join(below) or "none") + "." in md
    # outcomes() pairs by id: the same table when the rows come in another order
    for f in folders:
        for path in (f / "rows").glob("*.jsonl"):
            lines = path.read_text().splitlines(keepends=True)
            rng.shuffle(lines)
            path.write_text("".join(lines))
    assert streams_tables(folders) == md
    assert outcomes([hand_row("x", "long", 0, True, rng)]) == {"long-0": True}


# ------------------------------------------------------------------ end to end on a tiny model


def test_a_study_runs_resumes_assembles_and_gathers_other_roots(tmp_path, tiny_dir, capsys):
    root = tmp_path / "wild"
    path = write_study(tmp_path, f"""
root: {root}
model: {tiny_dir}
prompt_style: plain
max_new_tokens: 4
streams: [mixed, imbalanced]
seeds: [0, 1]
limit: 3
stages:
  select: {{kind: select, methods: [tent], lr_grid: [1.0e-3, 3.0e-3], limit: 2, pool: 4}}
  study: {{methods: [noadapt, tent], pool: 4}}
""")
    # the selection, then the study pooled in this process at the chosen lr
    assert cli(["study", str(path)]) == 0
    table = json.loads((root / "select" / "selection.json").read_text())
    chosen = table["tent"]["chosen"]
    assert set(table["tent"]["scores"]) == {"0.001", "0.003"} and chosen in (1e-3, 3e-3)
    run = json.loads((root / "jobs" / "study" / "seed1" / "pool" / "run.json").read_text())
    assert run["config"]["stream_batch"] == 4
    assert run["config"]["methods"] == [f"{m}:lr={chosen:g}" if m != "noadapt" else m
                                        for m in ("noadapt", "tent", "tent+clip", "tent+guard")]
    for seed in ("seed0", "seed1"):
        rows = list((root / "study" / seed / "rows").glob("*.jsonl"))
        assert len(rows) == 8 and all(len(f.read_text().splitlines()) == 3 for f in rows)
        assert "tent+clip" in (root / "study" / seed / "report.md").read_text()
    assert (root / "study" / "combined" / "report.md").exists()
    tables = (root / "study" / "tables.md").read_text()
    assert streams_tables([root / "study" / "seed0", root / "study" / "seed1"]) == tables
    assert "| tent+clip | 12 |" in tables and "| noadapt | 12 |" in tables  # 3 problems x 2 streams x 2 seeds
    assert "Holm-adjusted over the 3 comparisons with noadapt above" in tables

    # a rerun runs nothing again: every row is there (the Runner resumes each folder)
    before = {f: f.read_bytes() for f in (root / "jobs").rglob("*.jsonl")}
    assert cli(["study", str(path), "--stages", "study"]) == 0
    assert {f: f.read_bytes() for f in (root / "jobs").rglob("*.jsonl")} == before

    # the rows alone, packed, unpacked into a new root, give the same tables (the docs ship such archives)
    archive = tmp_path / "rows.tar.xz"
    assert cli(["study", str(path), "--stages", "study", "--pack", str(archive)]) == 0
    import tarfile

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names and all(n.startswith("jobs/study/") and (n.endswith("run.json") or "/rows/" in n) for n in names)
    fresh = tmp_path / "fresh"
    assert cli(["study", str(path), "--stages", "study", "--root", str(fresh), "--unpack", str(archive),
                "--assemble", "--summary", str(tmp_path / "t_unpacked.md")]) == 0
    assert (tmp_path / "t_unpacked.md").read_text() == tables
    # one archive per seed (a seed run in one session, another in the next) joins into one root
    per_seed = []
    for seed in (0, 1):
        per_seed.append(tmp_path / f"rows_seed{seed}.tar.xz")
        assert cli(["study", str(path), "--stages", "study", "--set", f"seeds={seed}", "--pack", str(per_seed[-1])]) == 0
        with tarfile.open(per_seed[-1]) as tar:
            assert {n.split("/")[2] for n in tar.getnames()} == {f"seed{seed}"}
    joined = ["--unpack", str(per_seed[0]), "--unpack", str(per_seed[1])]
    assert cli(["study", str(path), "--stages", "study", "--root", str(tmp_path / "joined"), *joined,
                "--assemble", "--summary", str(tmp_path / "t_joined.md")]) == 0
    assert (tmp_path / "t_joined.md").read_text() == tables
    # unpacking again is a no-op; over other bytes it is refused and writes nothing
    assert cli(["study", str(path), "--stages", "study", "--root", str(fresh), "--unpack", str(archive), "--list"]) == 0
    victim = next((fresh / "jobs" / "study").rglob("*.jsonl"))
    victim.write_text(victim.read_text() + "\n")
    capsys.readouterr()
    assert cli(["study", str(path), "--stages", "study", "--root", str(fresh), "--unpack", str(archive),
                "--assemble"]) == 2
    assert "differ from the archive's" in capsys.readouterr().err
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(archive, arcname="../escape.tar.xz")
    assert cli(["study", str(path), "--stages", "study", "--root", str(tmp_path / "r2"), "--unpack", str(evil)]) == 2
    assert "is not a run folder's file" in capsys.readouterr().err and not (tmp_path / "escape.tar.xz").exists()

    # the stage's combined report from an earlier assemble over other runs is replaced, not refused
    mark = root / "study" / "combined" / "combined.json"
    mark.write_text(json.dumps({"runs": [str(tmp_path / "elsewhere" / "seed7")]}))
    assert cli(["study", str(path), "--stages", "study", "--assemble"]) == 0
    assert sorted(json.loads(mark.read_text())["runs"]) == sorted(
        str((root / "study" / s).resolve()) for s in ("seed0", "seed1"))

    # a study cut at a deadline: every stream compared on its first N problems
    assert cli(["study", str(path), "--stages", "study", "--assemble", "--first", "2",
                "--summary", str(tmp_path / "t2.md")]) == 0
    assert all(len(f.read_text().splitlines()) == 2 for f in (root / "study" / "seed0" / "rows").glob("*.jsonl"))
    assert "| tent+clip | 8 |" in (tmp_path / "t2.md").read_text()
    capsys.readouterr()
    assert cli(["study", str(path), "--stages", "study", "--assemble", "--first", "2", "--summary"]) == 0
    assert capsys.readouterr().out.endswith((tmp_path / "t2.md").read_text())  # --summary alone prints them

    # rows run in another root join with include; a new root gathers them all
    other = tmp_path / "other" / "jobs" / "study" / "seed0" / "pool"
    job = root / "jobs" / "study" / "seed0" / "pool"
    (other / "rows").mkdir(parents=True)
    shutil.copy(job / "run.json", other / "run.json")
    for f in (job / "rows").glob("*.jsonl"):
        if f.name.startswith(("tent+clip", "noadapt")):
            shutil.copy(f, other / "rows" / f.name)
            if f.name.startswith("tent+clip"):
                f.unlink()  # now only the other root has it
    both = tmp_path / "both"
    assert cli(["study", str(path), "--stages", "study", "--assemble", "--root", str(both), "--include", str(root),
                "--include", str(tmp_path / "other"), "--summary", str(tmp_path / "t3.md")]) == 0
    assert (tmp_path / "t3.md").read_text() == tables
    # a root that holds nothing is an error, not an empty table
    capsys.readouterr()
    assert cli(["study", str(path), "--stages", "study", "--assemble", "--root", str(tmp_path / "empty")]) == 2
    assert "no root holds study jobs of seeds [0, 1]" in capsys.readouterr().err
    # duplicated noadapt rows must agree, response for response
    noadapt = next((other / "rows").glob("noadapt*"))
    noadapt.write_text(noadapt.read_text().replace('"response": "', '"response": "x', 1))
    assert cli(["study", str(path), "--stages", "study", "--assemble", "--include", str(tmp_path / "other")]) == 2
    assert "hold different responses for one stream" in capsys.readouterr().err


def test_deadline_stops_jobs_before_they_start(tmp_path, tiny_dir):
    import time

    from eval.study import run_pool

    study = load_study(write_study(tmp_path, f"root: {tmp_path}\nmodel: {tiny_dir}\nstages: {{s: {{}}}}\n"))
    jobs = plan(study, "s", {}, 2)
    assert set(run_pool(jobs, 2, deadline=time.time(), log=print).values()) == {"not started"}
    assert set(run_pool(jobs, 0, deadline=time.time(), log=print).values()) == {"not started"}


@pytest.mark.parametrize("rate, seconds, streams", [(10.0, 660, 60), (0.5, 3600, 8), (3.0, 100, 64), (None, 900, 4),
                                                    (2.0, 900, 0), (50.0, 10_000, 2)])
def test_limit_auto_fits_the_streams_in_the_time_left(rate, seconds, streams):
    from eval.study import auto_limit

    n = auto_limit(rate, seconds, streams, cap=300)
    assert n % 10 == 0 and 20 <= n <= 300
    if rate and streams and 20 < n < 300:  # the streams fit, and 10 more problems each would not
        assert n * streams <= rate * (seconds - 60) < (n + 10) * streams


def test_the_command_refuses_what_it_cannot_do_in_one_line(tmp_path, capsys):
    path = write_study(tmp_path, f"root: {tmp_path}\nstages: {{a: {{}}, b: {{}}, c: {{kind: select}}}}\n")
    for argv, message in ([["--summary", "t.md"], "--summary writes one streams stage's tables, and --stages names 2 "
                           "(a, b): name one with --stages"],
                          [["--stages", "a,d"], "--stages d: the study has no such stage; its stages: a, b, c"],
                          [["--set", "limit"], "--set expects key=value or stage.key=value, got 'limit'"],
                          [["--set", "a.lmit=3"], "--set a.lmit: unknown key 'lmit'; did you mean 'limit'?"]):
        assert cli(["study", str(path), "--list", *argv]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"


def test_the_gemma_study_runs_the_rows_issue_26_asks_for():
    study = load_study(REPO / "studies" / "gemma_wild_streams.yaml")
    rates, tenfold = study.stages["rates"], study.stages["tenfold"]
    assert {rates.model, tenfold.model} == {"gemma3-270m"}
    assert (rates.streams, rates.seeds, rates.limit) == (["long", "shift"], [0, 1, 2], 60)
    assert sorted(stage_rows(rates, rates.lrs)) == sorted([
        "noadapt", "tent:lr=0.0003", "tent+clip:lr=0.0003", "zerosiam:lr=0.0003", "zerosiam+clip:lr=0.0003",
        "sar+clip:lr=0.003", "zerosiam:predictor_lr_scale=10:lr=0.0003",
        "zerosiam+clip:predictor_lr_scale=10:lr=0.0003"])
    # ten times each rate, the same rows less the predictor ones
    assert sorted(stage_rows(tenfold, tenfold.lrs)) == sorted([
        "noadapt", "tent:lr=0.003", "tent+clip:lr=0.003", "zerosiam:lr=0.003", "zerosiam+clip:lr=0.003",
        "sar+clip:lr=0.03"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_a_worker_stops_when_the_study_process_ends(tmp_path, signame):
    """A study killed (kill, or kill -9) takes its workers with it, so a rerun does not find their run
    folders held by orphans; a worker whose study is alive keeps running."""
    import signal
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[1]
    pidfile = tmp_path / "worker.pid"
    worker = ("import os, time; from eval.study import stop_with_parent; stop_with_parent(); "
              f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    parent = ("import os, subprocess, sys, time; "
              "env = dict(os.environ, ZS_STUDY_PARENT=str(os.getpid())); "
              f"subprocess.Popen([sys.executable, '-c', {worker!r}], env=env); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", parent], cwd=repo,
                         env=dict(os.environ, PYTHONPATH=str(repo)))
    try:
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        def alive() -> bool:  # a zombie (ended, not yet reaped by whoever adopted it) is not
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except (FileNotFoundError, ProcessLookupError):
                return False

        time.sleep(0.5)
        assert alive()  # alive while the study is
        p.send_signal(getattr(signal, signame))
        p.wait(timeout=30)
        for _ in range(100):
            if not alive():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the worker outlived its study")
    finally:
        p.kill()
