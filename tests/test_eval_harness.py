"""The harness end to end on a tiny random model: rows, resume, report, CLI errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.backends import vllm_engine_kwargs, vllm_sampling_kwargs
from eval.cli import main as cli_main
from eval.report import accuracy, load_run, pass_at_k, write_report
from eval.rows import merge_shards, read_rows
from eval.runner import RunConfig, Runner, parse_method_spec
from zs_llm import AdaptConfig

REPO = Path(__file__).resolve().parents[1]



def cfg(tiny_dir, **kw):
    base = dict(model=str(tiny_dir), methods=["noadapt", "zerosiam"], datasets=["arith"], limit=4,
                adapt={"max_new_tokens": 6, "lr": 1e-2, "predictor_lr": 1e-2})
    base.update(kw)
    return RunConfig(**base)


STABLE = ("id", "index", "method", "dataset", "prompt", "draft", "response", "extracted", "gold", "correct",
          "config_hash")


def stable(rows):
    return [{k: r[k] for k in STABLE} | {"loss": [s["loss"] for s in r["steps"]]} for r in rows]


def test_run_writes_rows_and_report(tiny_dir, tmp_path):
    out = Runner(cfg(tiny_dir), tmp_path / "run", progress=False).run()
    streams = load_run(out)
    assert set(streams) == {("noadapt", "arith"), ("zerosiam", "arith")}
    for rows in streams.values():
        assert [r["index"] for r in rows] == [0, 1, 2, 3]
        assert len({r["id"] for r in rows}) == 4
    z = streams[("zerosiam", "arith")][0]
    assert z["steps"] and "entropy" in z["steps"][0] and z["config"]["method"] == "zerosiam"
    info = json.loads((out / "run.json").read_text())
    assert info["versions"]["torch"] and "hardware" in info and "git_commit" in info
    md = write_report(out)
    text = md.read_text()
    assert "| noadapt |" in text and "| zerosiam |" in text and "vs noadapt" in text
    assert (out / "results.csv").read_text().splitlines()[0].startswith("method,dataset,n,correct,accuracy,ci_low")
    assert (out / "plots" / "accuracy.png").stat().st_size > 1000
    assert (out / "plots" / "diagnostics_arith.png").exists()


def test_killed_run_resumes_to_identical_rows(tiny_dir, tmp_path):
    full = Runner(cfg(tiny_dir), tmp_path / "full", progress=False).run()
    part = tmp_path / "part"
    r = Runner(cfg(tiny_dir), part, progress=False)
    # simulate a kill: stop each stream after 2 problems by running with a smaller problem list
    r.problems = lambda d: Runner.problems(r, d)[:2]
    r.run()
    path = part / "rows" / "zerosiam__arith.jsonl"
    assert len(read_rows(path)) == 2
    with open(path, "a") as f:  # a row torn mid-write
        f.write('{"id": "half')
    Runner(cfg(tiny_dir), part, progress=False).run()
    a, b = load_run(full), load_run(part)
    assert a.keys() == b.keys()
    for k in a:
        assert stable(a[k]) == stable(b[k]), k


def test_resume_recomputes_rows_past_the_checkpoint(tiny_dir, tmp_path):
    full = Runner(cfg(tiny_dir, methods=["zerosiam"]), tmp_path / "full", progress=False).run()
    part = tmp_path / "part"
    r = Runner(cfg(tiny_dir, methods=["zerosiam"], checkpoint_every=2), part, progress=False)
    r.problems = lambda d: Runner.problems(r, d)[:3]  # checkpoint at 2, row 3 written after it
    r.run()
    assert len(read_rows(part / "rows" / "zerosiam__arith.jsonl")) == 3
    Runner(cfg(tiny_dir, methods=["zerosiam"], checkpoint_every=2), part, progress=False).run()
    assert stable(load_run(full)[("zerosiam", "arith")]) == stable(load_run(part)[("zerosiam", "arith")])


def test_sharded_run_merges_to_single_process_rows(tiny_dir, tmp_path):
    # stream_batch=1: the shards pool other streams together than the single process does, and batched
    # matmuls round differently at other batch sizes (test_pool_runner holds pooled rows to a tolerance);
    # this test checks the sharding bit for bit
    c = cfg(tiny_dir, methods=["noadapt", "zerosiam", "tent"], stream_batch=1)
    one = Runner(c, tmp_path / "one", progress=False).run()
    two = tmp_path / "two"
    for rank in range(2):
        Runner(c, two, rank=rank, world=2, progress=False).run()
    merge_shards(two)
    a, b = load_run(one), load_run(two)
    assert a.keys() == b.keys()
    for k in a:
        assert stable(a[k]) == stable(b[k]), k


def test_output_folder_with_other_config_is_refused(tiny_dir, tmp_path):
    Runner(cfg(tiny_dir, limit=1), tmp_path / "r", progress=False).run()
    with pytest.raises(FileExistsError, match="--overwrite"):  # (a larger limit grows it: tests/test_growing.py)
        Runner(cfg(tiny_dir, limit=2, dtype="bfloat16"), tmp_path / "r", progress=False)


@pytest.mark.parametrize("argv,message", [
    (["--methods", "noadapt,tnet"], "known"),
    (["--datasets", "math5000"], "datasets='math5000' is not valid; choose one of math500"),
    (["--model", "./missing/model"], "does not exist"),
    (["--datasets", "math500", "--data-dir", "/nonexistent"], "--data-dir"),
    (["--set", "lrr=1"], "lrr: not a setting of any method"),
    (["--methods", "zerosiam:alpah=0"], "zerosiam has no setting 'alpah'"),
])
def test_cli_errors_before_loading_a_model(argv, message, tiny_dir, tmp_path, capsys, monkeypatch):
    import eval.runner

    def boom(*a, **k):
        raise AssertionError("model loaded")

    monkeypatch.setattr(eval.runner.Runner, "load_model", boom)
    base = ["run", "--model", str(tiny_dir), "--out", str(tmp_path / "o"), "--limit", "1"]
    assert cli_main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_cli_end_to_end_subprocess(tiny_dir, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "eval", "run", "--model", str(tiny_dir), "--methods",
                           "noadapt,tent", "--datasets", "arith", "--limit", "3", "--out", str(out), "--set",
                           "max_new_tokens=5", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| tent |" in proc.stdout
    assert len(read_rows(out / "rows" / "tent__arith.jsonl")) == 3
    assert (out / "report.md").exists()


def test_report_from_fixture_rows(tmp_path):
    rows = tmp_path / "rows"
    rows.mkdir()
    def row(m, i, correct, resp):
        return {"id": str(i), "index": i, "method": m, "dataset": "arith", "response": resp, "extracted": resp[-1],
                "correct": correct, "steps": [{"entropy": 1.0 / (i + 1), "logit_norm_centered": 10.0}]}
    for m, pattern in (("noadapt", [1, 0, 0, 1]), ("tent", [1, 1, 1, None])):
        with open(rows / f"{m}__arith.jsonl", "w") as f:
            for i, c in enumerate(pattern):
                f.write(json.dumps(row(m, i, None if c is None else bool(c), f"\\boxed{{{i}}}")) + "\n")
    text = write_report(tmp_path).read_text()
    assert "| noadapt | 50.0 [15.0, 85.0]†, n=4 |" in text  # Wilson interval of 2 / 4; n differs per method
    assert "| tent | 100.0 [43.9, 100.0]†, n=3 |" in text  # 3 / 3 graded: 3 / (3 + z^2)
    # paired on the 3 problems graded for both: 1/3 vs 3/3, 2 gained, none lost
    assert "| tent | arith | 3 | +66.7 [" in text and "| 2 | 0 | 0.500 |" in text
    assert "1 row with an unparseable gold answer is excluded" in text


def test_pass_at_k_and_sampled_accuracy():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    acc = accuracy([{"correct": True, "corrects": [True, False, False, False]},
                    {"correct": False, "corrects": [False, False, False, False]}])
    assert acc["avg@n"] == pytest.approx(0.125) and acc["pass@4"] == pytest.approx(0.5)


def test_method_specs_and_vllm_translation():
    c = parse_method_spec("zerosiam:alpha=0:predictor=mlp:lora_target_modules=q_proj,v_proj", {"lr": 1e-3})
    mc = c.method_config
    assert (mc.alpha, mc.predictor, c.lr, c.lora_target_modules) == (0.0, "mlp", 1e-3, ["q_proj", "v_proj"])
    greedy = vllm_sampling_kwargs(AdaptConfig(max_new_tokens=64))
    assert greedy == {"n": 1, "max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 0,
                      "skip_special_tokens": True}
    sampled = vllm_sampling_kwargs(AdaptConfig(temperature=0.6, top_p=0.95, seed=3), n=4)
    assert (sampled["n"], sampled["temperature"], sampled["top_p"], sampled["seed"]) == (4, 0.6, 0.95, 3)
    with pytest.raises(ValueError, match="temperature"):
        vllm_sampling_kwargs(AdaptConfig(), n=2)
    assert vllm_engine_kwargs("meta-llama/Llama-3.1-8B-Instruct", "bf16")["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="noadapt"):
        Runner(RunConfig(backend="vllm", methods=["tent"]), "/tmp/x")


def test_batched_rows_graded_while_the_next_batch_generates(tiny_dir, tmp_path, monkeypatch):
    """noadapt batches are graded in the background: rows stay in order, each graded, and a
    failure while generating a later batch keeps the rows of the batches already generated."""
    from eval.grading import grade

    out = Runner(cfg(tiny_dir, methods=["noadapt"], limit=5, batch_size=2), tmp_path / "ok", progress=False).run()
    rows = read_rows(out / "rows" / "noadapt__arith.jsonl")
    assert [r["index"] for r in rows] == list(range(5))
    assert [r["correct"] for r in rows] == [grade(r["response"], r["gold"]) for r in rows]

    r = Runner(cfg(tiny_dir, methods=["noadapt"], limit=5, batch_size=2), tmp_path / "dies", progress=False)
    calls = {"n": 0}
    solve = Runner._solve

    def dying(self, lm, problems, messages):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return solve(self, lm, problems, messages)

    monkeypatch.setattr(Runner, "_solve", dying)
    with pytest.raises(RuntimeError, match="killed"):
        r.run()
    kept = read_rows(tmp_path / "dies" / "rows" / "noadapt__arith.jsonl")
    assert [k["id"] for k in kept] == [x["id"] for x in rows[:4]]
    monkeypatch.setattr(Runner, "_solve", solve)
    Runner(cfg(tiny_dir, methods=["noadapt"], limit=5, batch_size=2), tmp_path / "dies", progress=False).run()
    assert stable(read_rows(tmp_path / "dies" / "rows" / "noadapt__arith.jsonl")) == stable(rows)
