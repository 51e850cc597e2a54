"""A study's sweep stage (grid expansion, resume, summary) and the collapse verdicts on hand-made streams."""

import json
import math

import pytest

from eval import study as study_module
from eval import study_tables as sweep
from eval.cli import main as cli
from eval.rows import read_rows, stream_path
from zs_llm.diagnostics import collapse_measures

# ------------------------------------------------------------------ hand-made streams


def row(answer, entropy=1.0, correct=None, dev=0.0, response=None, norm=10.0):
    return {
        "response": response if response is not None else f"The sum is \\boxed{{{answer}}}.",
        "extracted": answer,
        "correct": correct,
        "steps": [{"entropy": entropy, "logit_norm_centered": norm, "predictor_dev": dev}],
        "timings": {"total_s": 1.5},
        "events": [],
    }


def healthy(n=40):
    return [row(str(i), entropy=1.0 + 0.05 * (i % 3), correct=i % 2 == 0) for i in range(n)]


def constant(n=40):
    return [row(str(i), correct=i % 2 == 0) for i in range(n // 2)] + [
        row("7", entropy=0.01, correct=False) for _ in range(n - n // 2)
    ]


def looping(n=40):
    loop = "Let me think. " + "1+1+" * 30
    return [row(str(i)) for i in range(n // 2)] + [row(None, response=loop) for _ in range(n - n // 2)]


def sharpening(n=40):
    return [row(str(i), entropy=1.0 * (0.9**i), correct=True) for i in range(n)]


@pytest.mark.parametrize(
    "stream, expected",
    [
        (healthy, "stable"),
        (constant, "collapsed-constant"),
        (looping, "degenerate"),
        (sharpening, "sharpening"),
    ],
)
def test_verdicts_on_hand_made_streams(stream, expected):
    assert collapse_measures(stream())["verdict"] == expected


def test_measures_on_a_constant_stream():
    m = collapse_measures(constant())
    assert m["top_answer_share_last_half"] == 1.0
    assert m["entropy_trend"] < 0.05
    assert m["accuracy"] == pytest.approx(10 / 40) and m["accuracy_last_half"] == 0.0


# ------------------------------------------------------------------ grid expansion

GRID = {
    "base": {"model": "m", "datasets": ["arith"], "limit": 3, "adapt": {"max_new_tokens": 5, "guard": False}},
    "grid": [
        {"method": "noadapt", "seed": [0, 1]},
        {
            "method": ["zerosiam", "zerosiam:alpha=0"],
            "optimizer": "sgd",
            "lr": [1e-3, 1e-2],
            "predictor_lr_scale": [0.1, 10],
        },
        {
            "method": "tent",
            "lora_target_modules": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]],
            "guard": [False, True],
        },
    ],
}


def test_grid_expansion_names_and_overrides():
    points = sweep.expand_grid(GRID)
    names = [p.name for p in points]
    assert len(names) == len(set(names)) == 2 + 2 * 2 * 2 + 2 * 2
    assert names[:2] == ["noadapt_s0", "noadapt_s1"]
    assert "zerosiam_sgd_lr0.01_ps0.1" in names and "zerosiam_alpha=0_sgd_lr0.001_ps10" in names
    by = {p.name: p for p in points}
    z = by["zerosiam_sgd_lr0.01_ps0.1"].run
    assert z.methods == ["zerosiam"] and z.limit == 3 and z.model == "m"
    # a scale axis switches the absolute predictor lr off, so the scale takes effect
    assert z.adapt == {
        "max_new_tokens": 5,
        "guard": False,
        "optimizer": "sgd",
        "lr": 0.01,
        "predictor_lr_scale": 0.1,
        "predictor_lr": None,
    }
    from eval.runner import parse_method_spec

    ac = parse_method_spec(z.methods[0], z.adapt)
    assert ac.method_config.effective_predictor_lr(ac.effective_lr) == pytest.approx(1e-3)
    assert parse_method_spec(*by["zerosiam_alpha=0_sgd_lr0.001_ps10"].run.methods, {}).method_config.alpha == 0.0
    assert by["noadapt_s1"].run.seed == 1 and by["noadapt_s1"].run.adapt == GRID["base"]["adapt"]
    t = [p for p in points if p.name.startswith("tent")]
    assert {tuple(p.run.adapt["lora_target_modules"]) for p in t} == {
        ("q_proj", "v_proj"),
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    }
    assert {p.run.adapt["guard"] for p in t} == {False, True}
    assert "tent_guardon_loraq_proj+v_proj" in names


def test_grid_rejects_unknown_axes_and_bad_values():
    with pytest.raises(ValueError, match="unknown axis"):
        sweep.expand_grid({"grid": [{"method": "tent", "learning_rate": [1e-3]}]})
    with pytest.raises(ValueError, match="optimizer"):
        sweep.expand_grid({"grid": [{"method": "tent", "optimizer": ["adam"]}]})
    with pytest.raises(ValueError, match="no 'method'"):
        sweep.expand_grid({"grid": [{"lr": [1e-3]}]})


# ------------------------------------------------------------------ running, resume, summary



def test_sweep_runs_skips_finished_and_resumes(tiny_dir, tmp_path, monkeypatch, capsys):
    import yaml

    grid = {
        "base": {
            "model": str(tiny_dir),
            "datasets": ["arith"],
            "limit": 3,
            "adapt": {"max_new_tokens": 4, "guard": False},
        },
        "grid": [
            {"method": "noadapt"},
            {"method": "zerosiam", "optimizer": "sgd", "lr": 1e-2, "predictor_lr_scale": [1]},
        ],
    }
    out = tmp_path / "out"
    gfile = tmp_path / "stability.yaml"
    gfile.write_text(yaml.safe_dump({"root": str(out), "stages": {"tiny": {"kind": "sweep", **grid}}}))
    assert cli(["study", str(gfile)]) == 0
    points = sweep.expand_grid(grid)
    assert all(sweep.is_finished(p, out) for p in points)
    z = next(p for p in points if p.name.startswith("zerosiam"))
    rows = read_rows(stream_path(out / z.name, "zerosiam", "arith"))
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[0]["config"]["method_args"]["predictor_lr"] is None
    summary = json.loads((out / "summary_tiny.json").read_text())
    assert {r["point"] for r in summary} == {"noadapt", "zerosiam_sgd_lr0.01_ps1"}
    assert all(r["verdict"] in ("stable", "sharpening", "collapsed-constant", "degenerate") for r in summary)
    assert "| zerosiam_sgd_lr0.01_ps1 |" in (out / "summary_tiny.md").read_text()
    capsys.readouterr()
    assert cli(["study", str(gfile), "--list"]) == 0
    assert capsys.readouterr().out.count("\tfinished") == 2

    # finished points are skipped without building a Runner
    monkeypatch.setattr(study_module, "run_job", lambda *a, **k: pytest.fail("a finished point was rerun"))
    assert cli(["study", str(gfile)]) == 0
    monkeypatch.undo()

    # a killed point (summary missing, last row lost) is resumed by Runner, not restarted
    (out / z.name / "summary.json").unlink()
    path = stream_path(out / z.name, "zerosiam", "arith")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))
    assert not sweep.is_finished(z, out)
    assert cli(["study", str(gfile)]) == 0
    resumed = read_rows(path)
    assert [r["index"] for r in resumed] == [0, 1, 2]
    assert [r["response"] for r in resumed[:2]] == [r["response"] for r in rows[:2]]
    assert sweep.is_finished(z, out)


def test_summary_from_hand_made_rows(tmp_path):
    points = sweep.expand_grid({"base": {"limit": 40}, "grid": [{"method": ["noadapt", "tent"]}]})
    out = tmp_path / "out"
    for p, rows in zip(points, (healthy(), constant())):
        path = stream_path(out / p.name, p.run.methods[0], "arith")
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = sweep.sweep_table(points, out, "summary_x")
    by = {r["point"]: r for r in recs}
    assert by["noadapt"]["verdict"] == "stable" and by["tent"]["verdict"] == "collapsed-constant"
    assert by["noadapt"]["accuracy"] == 0.5 and by["tent"]["s_per_problem"] == pytest.approx(1.5)
    assert by["tent"]["answers_last_half"] == 20
    assert not by["tent"]["finished"]  # no run.json: not a finished harness run
    csv_text = (out / "summary_x.csv").read_text().splitlines()
    assert csv_text[0].startswith("point,method,dataset") and len(csv_text) == 3
    md = (out / "summary_x.md").read_text()
    assert "| tent (running) | arith | 40 | 25.0% | 0.0% | 100.0% |" in md and "collapsed-constant" in md
    assert math.isclose(json.loads((out / "summary_x.json").read_text())[0]["accuracy"], 0.5)
