"""`python -m eval compare RUN_A RUN_B`: two different runs are paired on the problems they share
(dataset, id, prompt and gold), with the report's tables, the settings that differ named, and what
was left out said."""

import csv
import json
from pathlib import Path

import pytest

from eval.cli import main as cli_main
from eval.compare import write_comparison


def make_run(path: Path, outcomes: dict, config: dict, prompts: dict | None = None, golds: dict | None = None) -> Path:
    """rows/<method>__<set>.jsonl from {(method, set): {id: correct}} and a run.json of `config`."""
    (path / "rows").mkdir(parents=True)
    for (m, d), by_id in outcomes.items():
        with open(path / "rows" / f"{m}__{d}.jsonl", "w") as f:
            for i, (pid, c) in enumerate(by_id.items()):
                f.write(json.dumps({"id": pid, "index": i, "method": m, "dataset": d, "correct": c,
                                    "prompt": (prompts or {}).get(pid, f"Q {pid}"), "gold": (golds or {}).get(pid, "1"),
                                    "response": "", "extracted": None, "steps": []}) + "\n")
    (path / "run.json").write_text(json.dumps({"config": config, "config_hash": json.dumps(config)[:12]}))
    return path


IDS = [f"p{i}" for i in range(40)]


def test_runs_are_paired_on_shared_problems_and_the_change_is_computed_from_them(tmp_path):
    a_out = {i: i in IDS[:10] for i in IDS}  # A solves p0..p9
    b_out = {i: i in IDS[5:25] for i in IDS[:36]}  # B solves p5..p24 and lacks p36..p39
    a = make_run(tmp_path / "a", {("noadapt", "arith"): a_out, ("tent", "arith"): a_out},
                 {"model": "m1", "seed": 0, "limit": 40})
    prompts = {"p30": "another prompt"}  # p30 was prompted otherwise in B, p31 has another gold
    b = make_run(tmp_path / "b", {("noadapt", "arith"): b_out, ("tent", "arith"): b_out},
                 {"model": "m2", "seed": 0, "limit": 36}, prompts=prompts, golds={"p31": "2"})
    md = write_comparison(a, b, tmp_path / "cmp").read_text()
    shared = [i for i in IDS[:36] if i not in ("p30", "p31")]  # 34
    gained = sum(b_out[i] and not a_out[i] for i in shared)
    lost = sum(a_out[i] and not b_out[i] for i in shared)
    assert (gained, lost) == (15, 5)
    row = f"| b: noadapt | a: noadapt | arith | {len(shared)} | +{100 * (gained - lost) / len(shared):.1f} ["
    assert row in md, md
    assert "model: 'm1' in a, 'm2' in b" in md and "limit: 40 in a, 36 in b" in md
    assert "arith: 34 problems shared by every stream of both runs; 6 left out (2 share the id but were prompted " \
           "differently or have another gold" in md
    with open(tmp_path / "cmp" / "results.csv") as f:
        acc = {(r["method"], r["dataset"]): float(r["accuracy"]) for r in csv.DictReader(f)}
    assert acc[("a: noadapt", "arith")] == pytest.approx(sum(a_out[i] for i in shared) / 34)
    assert acc[("b: tent", "arith")] == pytest.approx(sum(b_out[i] for i in shared) / 34)
    metrics = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert {(c["method"], c["from"]) for c in metrics["changes"]} == {("b: noadapt", "a: noadapt"),
                                                                       ("b: tent", "a: tent")}
    assert (tmp_path / "cmp" / "report.html").is_file() and (tmp_path / "cmp" / "plots" / "accuracy.png").is_file()


def test_runs_without_a_common_method_compare_every_pair_and_refusals_are_one_line(tmp_path, capsys):
    a = make_run(tmp_path / "a", {("noadapt", "arith"): {"p0": True, "p1": False}}, {"model": "m", "seed": 0})
    b = make_run(tmp_path / "b", {("tent", "arith"): {"p0": True, "p1": True},
                                  ("zerosiam", "arith"): {"p0": False, "p1": True}}, {"model": "m", "seed": 1})
    assert cli_main(["compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "| b: tent | a: noadapt | arith | 2 |" in out and "| b: zerosiam | a: noadapt | arith | 2 |" in out
    assert "seed: 0 in a, 1 in b" in out
    for argv, word in [(["compare", str(a), str(a)], "given twice"),
                       (["compare", str(a), str(b), "--out", str(b)], "is a run folder")]:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and word in err, err
    c = make_run(tmp_path / "c2", {("noadapt", "arith"): {"p0": True}}, {"model": "m"}, prompts={"p0": "other"})
    assert cli_main(["compare", str(a), str(c), "--out", str(tmp_path / "c3")]) == 2
    assert "share no arith problem" in capsys.readouterr().err


def test_settings_differences_name_each_once():
    from eval.report import differing_settings

    a = {"methods": ["noadapt", "tent", "zerosiam"], "lr (every method)": None, "tent lr": 3e-4, "tent steps": 1,
         "zerosiam alpha": 1.0, "limit": 8}
    b = {"methods": ["noadapt", "tent"], "lr (every method)": 1e-3, "tent lr": 1e-3, "tent steps": 2, "limit": 8}
    # zerosiam's own settings: it is in one run only (methods says so); tent lr: the every-method lr says so
    assert differing_settings(a, b) == ["methods", "lr (every method)", "tent steps"]


def test_two_real_tiny_runs_compare(tmp_path, monkeypatch):
    from eval.runner import RunConfig, Runner
    from zs_llm.testing import char_tokenizer, tiny_model

    monkeypatch.setenv("ZS_LLM_CACHE", str(tmp_path / "cache"))
    runs = []
    for seed in (0, 1):
        model = tmp_path / f"model{seed}"
        tiny_model("llama", seed=seed).save_pretrained(model)
        char_tokenizer().save_pretrained(model)
        c = RunConfig(model=str(model), methods=["noadapt"], datasets=["arith"], limit=3 + seed,
                      adapt={"max_new_tokens": 2})
        runs.append(Runner(c, tmp_path / f"run{seed}", progress=False).run())
    md = write_comparison(*runs).read_text()
    assert (runs[0].parent / "compare-run0-vs-run1" / "report.md").is_file()
    assert "| run1: noadapt | run0: noadapt | arith | 3 |" in md  # run1's 4th problem is not in run0
    assert "model differs (model file" in md and "limit: 3 in run0, 4 in run1" in md
