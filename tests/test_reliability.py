"""Nothing lost, nothing silently wrong: damaged run folders resume to an uninterrupted run's rows,
damaged files are refused naming what is wrong, and user errors are one line naming the fix.
The kill -9 cases live in tests/probes/fault_injection.py (a test below runs a few of them)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.cli import main as cli_main
from eval.report import load_run
from eval.rows import DamagedRows, RunFolderBusy, RunLock, scan_rows, stream_path
from eval.runner import RunConfig, Runner, result_signature
from zs_llm import AdaptConfig, ZeroSiamLM, adapt_generate
from zs_llm.adapt import adapt_on_problem
from zs_llm.checkpoint import load_checkpoint, save_checkpoint
from zs_llm.diagnostics import collapse_measures
from zs_llm.testing import tiny_model

REPO = Path(__file__).resolve().parents[1]


def cfg(tiny_dir, **kw):
    base = dict(model=str(tiny_dir), methods=["noadapt", "zerosiam"], datasets=["arith"], limit=6, batch_size=4,
                adapt={"max_new_tokens": 5, "lr": 1e-2, "predictor_lr": 1e-2})
    base.update(kw)
    return RunConfig(**base)


def signatures(out):
    return {k: [result_signature(r) for r in rows] for k, rows in load_run(out).items()}


def quarantined(out) -> str:
    return "".join(p.read_text() for p in sorted((Path(out) / "quarantine").glob("*.jsonl")))


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """An uninterrupted run: noadapt (batched) and zerosiam (online, checkpointed) on 6 problems."""
    out = Runner(cfg(tiny_dir), tmp_path_factory.mktemp("ref") / "run", progress=False).run()
    return out, signatures(out)


def copy_run(reference, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(reference[0], dst)
    return dst


# --- the rows store -------------------------------------------------------------------------
def test_scan_rows_keeps_every_valid_row_and_names_the_bad_lines(tmp_path):
    good = [json.dumps({"id": str(i), "index": i, "method": "m", "dataset": "d"}) for i in range(5)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([good[0], good[1], '{"id": "x", "ind', good[3], "[1, 2]", good[1], "",
                               good[4], '{"id": "6", "index": 6, "meth']))
    f = scan_rows(path)
    assert [r["index"] for r in f.rows] == [0, 1, 3, 4]
    assert [(b.lineno, b.reason.split(" ")[0]) for b in f.bad] == [(3, "not"), (5, "a"), (6, "repeats"),
                                                                  (7, "blank"), (9, "torn")]
    assert f.torn_tail and len(f.damaged) == 4
    path.write_text(good[0] + "\n" + good[1])  # a whole last row that lacks only its newline counts
    f = scan_rows(path)
    assert len(f.rows) == 2 and not f.bad and not f.ends_clean


# --- resume from damage ---------------------------------------------------------------------
def corrupt_line(path: Path, lineno: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno - 1] = lines[lineno - 1][: len(lines[lineno - 1]) // 2] + "\x00garbage\n"
    path.write_text("".join(lines))


def test_corrupted_middle_lines_are_quarantined_and_recomputed_exactly(reference, tiny_dir, tmp_path):
    out = copy_run(reference, tmp_path)
    z, n = stream_path(out, "zerosiam", "arith"), stream_path(out, "noadapt", "arith")
    z_lines, n_lines = z.read_text().splitlines(), n.read_text().splitlines()
    corrupt_line(z, 4)  # zerosiam row 3: checkpoints 5 and 6 are past it, so it replays from the start
    corrupt_line(n, 2)
    with pytest.raises(DamagedRows, match=r"noadapt__arith.jsonl is damaged \(line 2: not JSON"):
        load_run(out)
    Runner(cfg(tiny_dir), out, progress=False).run()
    assert signatures(out) == reference[1]
    kept = quarantined(out)
    assert "garbage" in kept and kept.count("\n") == 2
    # every valid row of the damaged file is still there, byte for byte (timings included)
    assert set(z_lines[:3] + z_lines[4:]) <= set(z.read_text().splitlines())
    assert set(n_lines[:1] + n_lines[2:]) <= set(n.read_text().splitlines())


def test_torn_last_row_behind_a_later_checkpoint_replays_from_an_earlier_one(reference, tiny_dir, tmp_path):
    out = copy_run(reference, tmp_path)
    z = stream_path(out, "zerosiam", "arith")
    text = z.read_text()
    z.write_text(text[: text.rstrip("\n").rfind("\n") + 40])  # row 5 cut short; checkpoint 6 says 6 rows done
    Runner(cfg(tiny_dir), out, progress=False).run()
    assert signatures(out) == reference[1]
    assert "torn last line" in quarantined(out)


def test_an_edited_row_does_not_match_the_checkpoint_hash_and_is_recomputed(reference, tiny_dir, tmp_path, capsys):
    out = copy_run(reference, tmp_path)
    z = stream_path(out, "zerosiam", "arith")
    lines = z.read_text().splitlines()
    row = json.loads(lines[2])
    row["response"] = "edited"
    lines[2] = json.dumps(row)
    z.write_text("\n".join(lines) + "\n")
    Runner(cfg(tiny_dir), out, progress=False).run()
    assert signatures(out) == reference[1]
    assert '"edited' in quarantined(out) and "differs from the stored one" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "nan", "huge"])
def test_a_damaged_checkpoint_is_set_aside_and_the_stream_replays(damage, reference, tiny_dir, tmp_path, capsys):
    out = copy_run(reference, tmp_path)
    z = stream_path(out, "zerosiam", "arith")
    lines = z.read_text().splitlines(keepends=True)
    z.write_text("".join(lines[:-1]))  # the last row lost: resume needs checkpoint 5, which is damaged
    folder = out / "state" / "zerosiam__arith"
    newest = sorted(folder.iterdir())[0]  # 00000005
    f = newest / "state.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    else:
        rewrite_tensor(newest, float("nan") if damage == "nan" else 1e30)
    Runner(cfg(tiny_dir), out, progress=False).run()
    assert signatures(out) == reference[1]
    err = capsys.readouterr().err
    assert "checkpoint 5 is damaged" in err and ("sha256" in err if damage == "truncate" else "tensor t." in err)
    assert list((out / "quarantine").glob("state__zerosiam__arith__00000005*"))


def rewrite_tensor(folder: Path, value: float) -> None:
    """Put `value` into one tensor of a checkpoint and record the new file's hash, so that only
    the value check can catch it."""
    import hashlib

    from safetensors.torch import load, save

    tensors = load((folder / "state.safetensors").read_bytes())
    name = sorted(k for k in tensors if k.startswith("t."))[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    data = save(tensors)
    (folder / "state.safetensors").write_bytes(data)
    meta = json.loads((folder / "state.json").read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "state.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "infinite"), (1e30, "1e+30")])
def test_load_checkpoint_refuses_bad_values_naming_the_tensor_and_changes_nothing(value, word, make_lm, tmp_path):
    lm = make_lm(method="zerosiam")
    adapt_on_problem(lm, "1+1=")
    save_checkpoint(lm, tmp_path / "c", {"rows_done": 1})
    rewrite_tensor(tmp_path / "c", value)
    fresh = make_lm(method="zerosiam")
    before = {k: v.clone() for k, v in fresh.state_tensors().items()}
    with pytest.raises(ValueError, match=r"tensor t\..* holds .*" + re.escape(word)) as e:
        load_checkpoint(fresh, tmp_path / "c")
    assert "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_tensors().items())
    (tmp_path / "c" / "state.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="state.safetensors is damaged"):
        load_checkpoint(fresh, tmp_path / "c")


@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_saved_adapter_and_predictor_with_bad_values_are_refused(value, make_lm, tok, tmp_path):
    from safetensors.torch import load_file, save_file

    lm = make_lm(method="zerosiam")
    adapt_on_problem(lm, "2+2=")
    lm.save_pretrained(tmp_path / "a")
    ZeroSiamLM.from_pretrained(tmp_path / "a", tiny_model("llama"), tok)  # a clean save loads
    pred = tmp_path / "a" / "predictor.safetensors"
    t = load_file(str(pred))
    t["weight"][0, 0] = value
    save_file(t, str(pred))
    with pytest.raises(ValueError, match="predictor.safetensors is damaged"):  # hash recorded at save
        ZeroSiamLM.from_pretrained(tmp_path / "a", tiny_model("llama"), tok)
    meta = json.loads((tmp_path / "a" / "zs_llm_config.json").read_text())
    del meta["files"]  # a folder from an older save, without hashes: the values are still checked
    (tmp_path / "a" / "zs_llm_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tensor weight holds"):
        ZeroSiamLM.from_pretrained(tmp_path / "a", tiny_model("llama"), tok)


def test_a_stream_whose_every_step_was_skipped_says_so():
    rows = [{"response": f"{i}", "extracted": str(i), "correct": True,
             "steps": [{"loss": float("nan"), "skipped": True, "entropy": 1.0}]} for i in range(12)]
    assert collapse_measures(rows)["verdict"] == "no-update"
    rows[3]["steps"][0]["skipped"] = False
    assert collapse_measures(rows)["verdict"] == "stable"


# --- one writer per folder ------------------------------------------------------------------
def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunLock(out).acquire()
    try:
        with pytest.raises(RunFolderBusy, match=f"PID {os.getpid()}"):
            Runner(cfg(tiny_dir, limit=1), out, progress=False).run()
        assert cli_main(["run", "--model", str(tiny_dir), "--limit", "1", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "in use by PID" in err and "\n" not in err
    finally:
        holder.release()
    assert not list((out / "rows").glob("*.jsonl"))


def test_the_os_releases_the_lock_of_a_killed_process(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = f"import fcntl, os, time; fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT); " \
           "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d x' % os.getpid()); print('locked', flush=True); " \
           "time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"PID {proc.pid}"):
            RunLock(out).acquire()
    finally:
        proc.kill()
        proc.wait()
    RunLock(out).acquire().release()


def test_overwrite_removes_only_what_a_run_writes(tiny_dir, tmp_path):
    out = tmp_path / "run"
    Runner(cfg(tiny_dir, methods=["noadapt"], limit=1), out, progress=False).run()
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "x.csv").write_text("1")
    Runner(cfg(tiny_dir, methods=["noadapt"], limit=2), out, progress=False, overwrite=True).run()
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "x.csv").exists()
    assert len(load_run(out)[("noadapt", "arith")]) == 2


def test_a_folder_left_by_a_run_that_wrote_no_rows_does_not_block_the_next(tiny_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config_hash": "from-a-model-that-did-not-load"}))
    (out / "rows").mkdir()
    Runner(cfg(tiny_dir, methods=["noadapt"], limit=1), out, progress=False).run()
    assert json.loads((out / "run.json").read_text())["config_hash"] == cfg(tiny_dir, methods=["noadapt"],
                                                                             limit=1).hash()


# --- the model cache ------------------------------------------------------------------------
def test_an_incomplete_model_cache_is_detected_and_rebuilt(tok, tmp_path):
    from zs_llm.loading import cache_complete, write_cache

    folder = tmp_path / "cache" / "m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # what a kill -9 during the old cache write left
    (folder.parent / f".m.tmp-{2**22 + 7}").mkdir()  # a killed writer's temporary folder
    assert not cache_complete(folder)
    assert write_cache(tiny_model("llama"), tok, folder)
    assert cache_complete(folder) and (folder / "model.safetensors").exists()
    assert not list(folder.parent.glob(".m.tmp-*"))
    (folder / "model.safetensors").write_bytes(b"cut")
    assert not cache_complete(folder)


# --- user errors: one line naming file, field and fix ---------------------------------------
def one_line_error(argv, capsys, monkeypatch) -> str:
    import eval.runner

    def boom(*a, **k):
        raise AssertionError("model loaded")

    monkeypatch.setattr(eval.runner.Runner, "load_model", boom)
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def data_dir(tmp_path, name, text):
    (tmp_path / "data" / name).mkdir(parents=True)
    (tmp_path / "data" / name / "test.jsonl").write_text(text)
    return str(tmp_path / "data")


@pytest.mark.parametrize("case", [
    "invalid_yaml", "lr_text", "limit_text", "unknown_adapt", "out_under_file", "damaged_run_json", "bad_data_line",
    "aime_without_answer", "empty_dataset", "lone_surrogate", "unknown_hub_id", "set_nan",
])
def test_cli_user_errors_are_one_line(case, tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    base = ["run", "--model", str(tiny_dir), "--out", str(out), "--limit", "2", "--methods", "noadapt",
            "--no-progress"]
    y = tmp_path / "c.yaml"
    expect: tuple[str, ...]
    if case == "invalid_yaml":
        y.write_text("limit: 2\n  methods: [tent\n")
        base += ["--config", str(y)]
        expect = (str(y), "invalid YAML at line", "fix the syntax")
    elif case == "lr_text":
        y.write_text("adapt:\n  lr: fast\n")
        base += ["--config", str(y)]
        expect = (str(y), "lr expects float", "e.g. 1.0e-4")
    elif case == "limit_text":
        y.write_text("seed: ten\n")
        base += ["--config", str(y)]
        expect = (str(y), "seed expects int", "e.g. 0")
    elif case == "unknown_adapt":
        y.write_text("adapt:\n  lrr: 1\n")
        base += ["--config", str(y)]
        expect = (str(y), "unknown setting(s) ['lrr']")
    elif case == "out_under_file":
        (tmp_path / "f").write_text("x")
        base[base.index("--out") + 1] = str(tmp_path / "f" / "run")
        expect = ("is a file", "choose another --out")
    elif case == "damaged_run_json":
        Runner(cfg(tiny_dir, methods=["noadapt"], limit=1), out, progress=False).run()
        (out / "run.json").write_text('{\n"config_hash": \n')
        expect = ("run.json is damaged", "another --out")
    elif case == "bad_data_line":
        base += ["--datasets", "gsm8k", "--data-dir", data_dir(tmp_path, "gsm8k", '{"question": "a", "answer": '
                                                                          '"#### 1"}\n{"question": \n')]
        expect = ("test.jsonl line 2", "fix or remove that line")
    elif case == "aime_without_answer":
        base += ["--datasets", "aime24", "--data-dir", data_dir(tmp_path, "aime24", '{"problem": "2+2?"}\n')]
        expect = ("test.jsonl line 1", "aime24 row 0 has no answer")
    elif case == "empty_dataset":
        base += ["--datasets", "gsm8k", "--data-dir", data_dir(tmp_path, "gsm8k", "\n")]
        expect = ("test.jsonl holds no problems",)
    elif case == "lone_surrogate":
        base += ["--datasets", "gsm8k", "--data-dir", data_dir(tmp_path, "gsm8k", '{"question": "a\\ud800b", '
                                                                          '"answer": "#### 1"}\n')]
        expect = ("lone surrogate", "fix that row")
    elif case == "unknown_hub_id":
        base[base.index("--model") + 1] = "zs-llm-tests/no-such-model"
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        expect = ("no-such-model", "local model folder")
        assert cli_main(base) == 2
        err = capsys.readouterr().err.strip()
        assert all(e in err for e in expect) and "\n" not in err.splitlines()[-1]
        assert not has_rows(out)
        return
    elif case == "set_nan":
        base += ["--methods", "tent", "--set", "lr=nan"]
        expect = ("lr=nan", "finite")
    err = one_line_error(base, capsys, monkeypatch)
    for e in expect:
        assert e in err, (e, err)


def has_rows(out: Path) -> bool:
    return any(p.stat().st_size for p in (out / "rows").glob("*.jsonl")) if (out / "rows").exists() else False


def test_out_on_a_read_only_place_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through permissions: a read-only bind mount, where allowed
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("running as root without a way to make a folder read-only")
    else:
        ro.chmod(0o555)
    try:
        err = one_line_error(["run", "--model", str(tiny_dir), "--out", str(ro / "run"), "--limit", "1",
                              "--methods", "noadapt", "--no-progress"], capsys, monkeypatch)
        assert str(ro / "run") in err and "writable --out" in err
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)])
        ro.chmod(0o755)


def test_recipe_config_errors_are_one_line(tmp_path):
    from recipes._common import resolve, split

    y = tmp_path / "r.yaml"
    y.write_text("methods: [tent]\nlr: 1e-4\nout: x\n")  # PyYAML reads 1e-4 as the string '1e-4'
    c = resolve(y, [])
    assert c["lr"] == 1e-4 and isinstance(c["lr"], float)
    split(c)
    extra = tmp_path / "extra.yaml"
    extra.write_text("lrr: 1\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lrr'\] in .*extra.yaml"):
        resolve(y, ["--config", str(extra)])
    extra.write_text("lr: [1\n")
    with pytest.raises(ValueError, match="extra.yaml: invalid YAML at line"):
        resolve(y, ["--config", str(extra)])
    y.write_text("limit: many\n")
    with pytest.raises(ValueError, match=r"r.yaml: limit expects int \| None, got 'many'; e.g. 10"):
        resolve(y, [])
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "smollm2_135m_math.py"), "--config", str(extra)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "invalid YAML" in proc.stderr


@pytest.mark.parametrize("prompt,words", [
    (None, "the prompt is NoneType"),
    ([{"role": "user"}], "chat message 0 has no 'content'"),
    ([{"role": "user", "content": None}], "chat message 0 has a NoneType as its 'content'"),
    ("what is 2+2? \ud800", "lone surrogate '\\ud800' at character 13"),
    ([{"role": "user", "content": "x\udfff"}], "chat message 0 holds a lone surrogate"),
])
def test_prompts_that_are_not_text_are_one_line_errors(prompt, words, make_lm):
    lm = make_lm(method="tent")
    with pytest.raises(ValueError) as e:
        adapt_generate(lm, prompt)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert lm.problems_seen == 0


def test_non_finite_configs_are_refused_at_the_door():
    for kw in ({"lr": float("nan")}, {"temperature": float("inf")}, {"alpha": float("nan")}):
        with pytest.raises(ValueError, match="not a finite number"):
            AdaptConfig(method="zerosiam", **kw)


# --- the fault-injection suite ----------------------------------------------------------------
def test_fault_injection_suite_logic_on_a_few_cases(tmp_path):
    """tests/probes/fault_injection.py --quick: a few cases of each hand-written category and of each
    generated class (tests/probes/fault_cases.py), each classified; none may be anything but clean."""
    parts = [x for p in ("kills", "saves", "damage", "concurrency", "user", "nonfinite", "generated")
             for x in ("--only", p)]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "probes" / "fault_injection.py"), "--quick", *parts, "--work",
                           str(tmp_path / "fi"), "--json", str(tmp_path / "fi.json")], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "fi.json").read_text())
    assert res["totals"]["cases"] >= 12 and res["kill_resume"] >= 3
    for bad in ("silently wrong", "crash", "data lost", "hang"):
        assert res["totals"][bad] == 0, res
    assert "| category | cases | clean |" in proc.stdout
