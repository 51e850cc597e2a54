"""--report_to tensorboard|wandb logs every problem a run computes and each stream's verdict, offline;
the values read back from TensorBoard's event files and from W&B's offline run file equal the rows."""

import glob
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from eval.report import load_run
from eval.runner import RunConfig, Runner
from eval.tracking import STEP_STATS
from zs_llm.diagnostics import collapse_measures

N = 4


def tracked_run(model: Path, out: Path, report_to: str, monkeypatch, limit: int = N) -> Path:
    monkeypatch.setenv("ZS_LLM_CACHE", str(out.parent / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    c = RunConfig(model=str(model), methods=["noadapt", "zerosiam"], datasets=["arith"], limit=limit,
                  adapt={"max_new_tokens": 3, "lr": 1e-2, "predictor_lr": 1e-2})
    return Runner(c, out, progress=False, report_to=report_to).run()


def expected(out: Path) -> tuple[dict, dict]:
    """({tag: [(step, value)]}, {stream prefix: verdict}) that the rows give."""
    scalars, verdicts = {}, {}
    for (m, d), rows in load_run(out).items():
        prefix = f"{m}/{d}"
        correct = [bool(r["correct"]) for r in rows]
        scalars[f"{prefix}/correct"] = [(i + 1, float(c)) for i, c in enumerate(correct)]
        scalars[f"{prefix}/running_accuracy"] = [(i + 1, float(np.mean(correct[: i + 1]))) for i in range(len(rows))]
        for name, key in STEP_STATS.items():
            vals = [(i + 1, r["steps"][-1][key]) for i, r in enumerate(rows) if r["steps"] and
                    r["steps"][-1].get(key) is not None]
            if vals:
                scalars[f"{prefix}/{name}"] = vals
        c = collapse_measures(rows)
        verdicts[prefix] = f"{c['verdict']} ({c['verdict_rule']})" if m != "noadapt" else "n/a (does not adapt)"
    return scalars, verdicts


def test_tensorboard_event_files_hold_the_rows_values(tiny_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tracked_run(tiny_dir, tmp_path / "run", "tensorboard", monkeypatch)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars, verdicts = expected(out)
    assert {"zerosiam/arith/loss", "zerosiam/arith/predictor_drift", "zerosiam/arith/divergence",
            "zerosiam/arith/grad_norm", "zerosiam/arith/entropy"} <= set(scalars)
    tags = set(acc.Tags()["scalars"])
    assert set(scalars) <= tags
    for tag, want in scalars.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=tag)  # float32
    for prefix, verdict in verdicts.items():
        event = acc.Tensors(f"{prefix}/verdict/text_summary")[0]
        assert event.tensor_proto.string_val[0].decode() == verdict and event.step == N
        final = acc.Scalars(f"{prefix}/final_accuracy")
        assert [e.step for e in final] == [N] and final[0].value == pytest.approx(scalars[f"{prefix}/running_accuracy"][-1][1])
    assert "zerosiam/arith/loss" not in verdicts and "noadapt/arith/loss" not in tags  # noadapt has no update


def wandb_records(path: str):
    """The protobuf records of a W&B run file (a LevelDB-style log: 32 KiB blocks of crc32, length,
    type (1 full, 2 first, 3 middle, 4 last) and data, after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            yield r


def test_wandb_offline_run_holds_the_rows_values(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tracked_run(tiny_dir, tmp_path / "run", "wandb", monkeypatch)
    files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    assert f"wandb sync {Path(files[0]).parent}" in capsys.readouterr().err  # where it is, and how to upload it
    history: dict[str, list] = {}
    summary = {}
    for r in wandb_records(files[0]):
        kind = r.WhichOneof("record_type")
        items = r.history.item if kind == "history" else r.summary.update if kind == "summary" else []
        got = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}
        if kind == "history":
            for k, v in got.items():
                if k.endswith("/problem") or k.startswith("_"):
                    continue
                prefix = k.rsplit("/", 1)[0]
                history.setdefault(k, []).append((got[f"{prefix}/problem"], v))
        elif kind == "summary":
            summary |= got
    scalars, verdicts = expected(out)
    assert set(scalars) == set(history)
    for tag, want in scalars.items():
        assert [s for s, _ in history[tag]] == [s for s, _ in want], tag
        np.testing.assert_allclose([v for _, v in history[tag]], [v for _, v in want], rtol=1e-12, err_msg=tag)
    for prefix, verdict in verdicts.items():
        assert summary[f"{prefix}/verdict"] == verdict


def test_a_grown_run_logs_only_the_rows_it_computes(tiny_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tracked_run(tiny_dir, tmp_path / "run", "none", monkeypatch, limit=2)
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    tracked_run(tiny_dir, out, "tensorboard", monkeypatch, limit=N)  # grows from 2 to N problems
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("zerosiam/arith/loss")] == list(range(3, N + 1))
    want = expected(out)[0]["zerosiam/arith/running_accuracy"][2:]  # over the whole stream, stored rows too
    np.testing.assert_allclose([e.value for e in acc.Scalars("zerosiam/arith/running_accuracy")],
                               [v for _, v in want], rtol=1e-6)


def test_a_missing_tracker_package_is_refused_before_the_run(tiny_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    from eval.cli import main as cli_main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    argv = ["run", "--model", str(tiny_dir), "--methods", "noadapt", "--datasets", "arith", "--limit", "1",
            "--out", str(tmp_path / "run"), "--report_to", "wandb", "--no_progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'zs_llm[track]'" in err
    assert not (tmp_path / "run").exists()
    assert cli_main([*argv[:-3], "--report_to", "mlflow"]) == 2
    assert "mlflow" in capsys.readouterr().err
