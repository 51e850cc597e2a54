"""A run folder holds only what runs wrote, and a resume is judged by what a run ran on, not by how
its settings were spelled: results that no run.json records are refused; --overwrite removes only
what a run writes (a user's files under any name and folder stay) and refuses a run.json that is
not this harness's; a link to a run inside --out is nesting; the same model, data and template
given by other paths, or methods and sets listed in another order, resume; Ctrl-C stops a run in
one line, and the rerun resumes."""

import json
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.cli import main as cli_main
from eval.identity import RunChanged
from eval.rows import stream_path
from eval.runner import RunConfig, Runner, run_writes
from zs_llm.testing import char_tokenizer, tiny_model

REPO = Path(__file__).resolve().parents[1]
N = 3
GSM8K = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b}\n#### {a + b}"} for a, b in
         [(1, 2), (3, 4), (5, 6), (7, 1)]]
SUBFOLDERS = ["", "rows", "state", "adapters", "quarantine", "plots", "rows/sub", "state/x", "mine/deep/er"]


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZS_LLM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = root / "model"
    tiny_model("llama").save_pretrained(model)
    char_tokenizer().save_pretrained(model)
    (root / "data" / "gsm8k").mkdir(parents=True)
    (root / "data" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in GSM8K))
    (root / "prompt.txt").write_text("Work it out: {question}\n")
    return root


def cfg(root: Path, **kw) -> RunConfig:
    base = dict(model=str(root / "model"), methods=["noadapt", "zerosiam"], datasets=["gsm8k", "arith"], limit=N,
                batch_size=2, data_dir=str(root / "data"), prompt_style="meta_llama31_math",
                prompt_template=str(root / "prompt.txt"), adapt={"max_new_tokens": 3, "lr": 1e-2})
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    """A finished run: rows, checkpoints, an exported adapter, quarantine and a report."""
    out = Runner(cfg(setup), tmp_path_factory.mktemp("finished") / "run", progress=False).run()
    (out / "quarantine").mkdir(exist_ok=True)
    (out / "quarantine" / "zerosiam__gsm8k.jsonl.20260101T000000.1.jsonl").write_text("{}\n")
    assert cli_main(["report", str(out)]) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def one_line_refusal(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def argv_of(c: RunConfig, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", c.model, "--methods", ",".join(c.methods), "--datasets", ",".join(c.datasets),
            "--limit", str(c.limit), "--data-dir", c.data_dir, "--prompt-style", c.prompt_style,
            "--prompt-template", c.prompt_template, "--set", "max_new_tokens=3", "--set", "lr=0.01",
            "--batch-size", "2", "--out", str(out), "--no-progress", "--no-report", *extra]


# --- results that nothing records ----------------------------------------------------------------
@pytest.mark.parametrize("record", ["deleted", "damaged", "a list", "another tool's", "hash not text"])
def test_results_without_a_run_json_of_this_harness_are_refused_and_kept(record, setup, finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    run_json = out / "run.json"
    if record == "deleted":
        run_json.unlink()
    else:
        run_json.write_text({"damaged": '{\n  "config_hash": \n', "a list": "[1, 2]",
                             "another tool's": json.dumps({"name": "my experiment", "lr": 3}),
                             "hash not text": json.dumps({"config_hash": 5, "config": {}})}[record])
    before = files(out)
    with pytest.raises((FileExistsError, ValueError)):
        Runner(cfg(setup), out, progress=False)
    for overwrite in ([], ["--overwrite"]):
        err = one_line_refusal(argv_of(cfg(setup), out, *overwrite), capsys) if record != "deleted" or not overwrite \
            else None
        if record == "deleted" and not overwrite:
            assert "holds results but no run.json records what produced them" in err
            assert "--overwrite (deletes them) or another --out" in err
        elif record != "deleted":
            assert "run.json" in err and "another --out" in err and ("damaged" in err or "not a run record" in err)
        assert files(out) == before or overwrite  # nothing deleted, nothing written
    if record == "deleted":  # --overwrite starts the folder over: the old rows go, a new run.json records the new
        assert cli_main(argv_of(cfg(setup), out, "--overwrite")) == 0
        assert json.loads(run_json.read_text())["config_hash"] == cfg(setup).hash()


def test_checkpoints_alone_are_results(setup, finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    (out / "run.json").unlink()
    shutil.rmtree(out / "rows")
    assert "holds results but no run.json" in one_line_refusal(argv_of(cfg(setup), out), capsys)


# --- --overwrite removes only what a run writes ----------------------------------------------------
def user_name(rng: random.Random) -> str:
    """A file name no run writes: random text, or one close to a name a run writes."""
    near = ["mine.txt", "important.jsonl", "notes__x.jsonl", "noadapt__arith.jsonl.bak", "report.md.orig",
            "run.json~", "noadapt__arith.csv", "accuracy.jpg", "zerosiam__gsm8k", "README", ".hidden",
            "noadapt__arith.shard0.jsonl", "noadapt__nosuchset.jsonl", "run.JSON", "metrics.json.old"]
    if rng.random() < 0.5:
        return rng.choice(near)
    stem = "".join(rng.choice(string.ascii_letters + string.digits + "-_ .") for _ in range(rng.randrange(1, 12)))
    return stem.strip(" .") + rng.choice(["", ".txt", ".jsonl", ".json", ".md", ".png", ".pt"]) or "x"


@pytest.mark.parametrize("seed", range(4))
def test_overwrite_keeps_every_file_no_run_writes_and_removes_all_it_wrote(seed, setup, finished, tmp_path):
    rng = random.Random(seed)
    out = copy_of(finished, tmp_path)
    mine = {}
    for _ in range(12):
        sub = rng.choice(SUBFOLDERS)
        name = user_name(rng)
        if "/" not in sub and run_writes(name, sub):
            continue  # drawn by chance: a name a run writes there
        path = out / sub / name
        if path.parent.is_file() or path.is_dir():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randrange(0, 64)))
        mine[str(path.relative_to(out))] = path.read_bytes()
    other = cfg(setup, methods=["noadapt"], datasets=["arith"], limit=2)  # another configuration
    Runner(other, out, progress=False, overwrite=True).run()
    fresh = Runner(other, tmp_path / "fresh", progress=False).run()
    after = files(out)
    assert {k: after.get(k) for k in mine} == mine  # every user file, byte for byte
    # what is left besides them is exactly what the new run writes into an empty folder
    assert set(after) - set(mine) == set(files(fresh))
    assert json.loads((out / "run.json").read_text())["config_hash"] == other.hash()


@pytest.mark.parametrize("name", ["zerosiam__arith.jsonl", "noadapt__gsm8k.shard1of2.jsonl", "tent+clip__arith.jsonl",
                                  "zerosiam_alpha=0__math500.jsonl", ".noadapt__arith.jsonl.tmp-123"])
def test_stream_files_are_what_a_run_writes_in_rows(name):
    assert run_writes(name, "rows")
    assert not run_writes(name, "")  # a stream file is the run's only in rows/
    assert not run_writes("mine.txt", "rows") and not run_writes(name.replace("__", "_"), "rows")


# --- links --------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_a_link_to_a_run_inside_out_is_nesting(depth, setup, finished, tmp_path, capsys):
    w = tmp_path / "W"
    where = w.joinpath(*[f"d{i}" for i in range(depth)])
    where.mkdir(parents=True)
    (where / "plain").symlink_to(tmp_path, target_is_directory=True)  # a link to a non-run (and a loop): fine
    (where / "lnk").symlink_to(finished, target_is_directory=True)
    err = one_line_refusal(argv_of(cfg(setup), w), capsys)
    assert "do not nest" in err and "lnk" in err
    assert not (w / "run.json").exists()


# --- the same configuration spelled otherwise resumes ------------------------------------------------
def spelled(root: Path, field: str, rng: random.Random, tmp_path: Path, monkeypatch) -> str:
    """Another spelling of `field`'s path: trailing slash, relative from another cwd, dot segments, ~,
    or an identical copy at another path."""
    target = {"model": root / "model", "data_dir": root / "data", "prompt_template": root / "prompt.txt"}[field]
    how = rng.choice(["slash", "relative", "dots", "home", "copy"])
    if how == "slash" and target.is_dir():
        return str(target) + "/"
    if how == "relative":
        cwd = tmp_path / "elsewhere" / "x"
        cwd.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(cwd)
        return os.path.relpath(target, cwd)
    if how == "home":
        monkeypatch.setenv("HOME", str(target.parent))
        return "~/" + target.name
    if how == "copy":
        copy = tmp_path / "copies" / f"{field}{rng.randrange(10**6)}" / target.name
        copy.parent.mkdir(parents=True)
        shutil.copytree(target, copy) if target.is_dir() else shutil.copy(target, copy)
        return str(copy)
    return str(target.parent / "." / ".." / target.parent.name / target.name)


@pytest.mark.parametrize("seed", range(5))
def test_the_same_configuration_spelled_otherwise_resumes(seed, setup, tmp_path, monkeypatch):
    rng = random.Random(seed)
    c = cfg(setup)
    out = tmp_path / "run"
    r = Runner(c, out, progress=False)
    r.problems = lambda d: Runner.problems(r, d)[:1]  # stopped after one problem of each stream
    r.run()
    before = files(out / "rows")
    kw = {f: spelled(setup, f, rng, tmp_path, monkeypatch) for f in rng.sample(
        ["model", "data_dir", "prompt_template"], rng.randrange(1, 4))}
    kw["methods"] = rng.sample(c.methods, len(c.methods))
    kw["datasets"] = rng.sample(c.datasets, len(c.datasets))
    kw["dtype"] = rng.choice(["float32", "fp32"])  # an alias
    defaults = {"alpha": rng.choice([1, 1.0]), "steps": 1, "momentum": 0.9, "divergence": "sym_kl"}
    kw["adapt"] = {**c.adapt, **dict(rng.sample(sorted(defaults.items()), rng.randrange(0, 5)))}  # defaults spelled
    again = cfg(setup, **kw)
    Runner(again, out.resolve(), progress=False).run()
    rows = files(out / "rows")
    for name, text in before.items():
        assert rows[name].startswith(text)  # the rows already there continue, none recomputed
    assert all(text.count(b"\n") == N for text in rows.values()) and len(rows) == 4
    assert json.loads((out / "run.json").read_text())["config_hash"] == c.hash()  # as recorded


@pytest.mark.parametrize("change", ["model", "data", "template", "lr"])
def test_a_changed_input_at_another_path_is_still_refused(change, setup, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = files(out)
    other = tmp_path / "other"
    other.mkdir()
    if change == "model":
        tiny_model("llama", seed=1).save_pretrained(other / "model")
        char_tokenizer().save_pretrained(other / "model")
        kw, err = {"model": str(other / "model")}, RunChanged
    elif change == "data":
        shutil.copytree(setup / "data", other / "data")
        (other / "data" / "gsm8k" / "test.jsonl").write_text(json.dumps(GSM8K[1]) + "\n" + json.dumps(GSM8K[0]))
        kw, err = {"data_dir": str(other / "data")}, RunChanged
    elif change == "template":
        (other / "prompt.txt").write_text("Solve: {question}\n")
        kw, err = {"prompt_template": str(other / "prompt.txt")}, RunChanged
    else:
        kw, err = {"adapt": {"max_new_tokens": 3, "lr": 1e-3}}, FileExistsError  # (more methods grow the run)
    with pytest.raises(err, match="--overwrite"):
        Runner(cfg(setup, **kw), out, progress=False).run()
    assert files(out) == before


# --- Ctrl-C ------------------------------------------------------------------------------------
def test_ctrl_c_stops_a_run_in_one_line_and_the_rerun_resumes(setup, tmp_path):
    out = tmp_path / "run"
    c = cfg(setup, methods=["noadapt"], datasets=["arith"], limit=200)
    argv = [sys.executable, "-m", "eval", *argv_of(c, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # its own process group with Ctrl-C's default action, as a terminal's job: a suite started in the
    # background by a non-interactive shell inherits SIGINT ignored, and Python keeps it ignored
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rows = stream_path(out, "noadapt", "arith")
    deadline = time.monotonic() + 120
    while not (rows.exists() and rows.read_bytes().count(b"\n") >= 2) and proc.poll() is None:
        assert time.monotonic() < deadline, "no rows within 120 s"
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended ({proc.returncode}) before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole group, grading worker included
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted; rows so far are kept: rerun the same command to resume"
    kept = rows.read_bytes()
    assert 0 < kept.count(b"\n") < 200
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert rows.read_bytes().startswith(kept) and rows.read_bytes().count(b"\n") == 200
