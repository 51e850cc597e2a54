"""A finished run grows: a larger --limit, new methods and new datasets reuse every row computed on
the same model, data, prompt and method settings (byte for byte) and compute only the rest, giving
the rows a fresh run of the merged configuration gives; a setting that changes what rows mean is
refused naming every such setting."""

import json
from pathlib import Path

import pytest

from eval.cli import main as cli_main
from eval.identity import RunChanged
from eval.report import load_run
from eval.runner import RunConfig, Runner, result_signature
from zs_llm.testing import char_tokenizer, tiny_model

GSM8K = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b}\n#### {a + b}"} for a, b in
         [(1, 2), (3, 4), (5, 6), (7, 1), (2, 9), (4, 4)]]


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZS_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ZS_LLM_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    tiny_model("llama").save_pretrained(root / "model")
    char_tokenizer().save_pretrained(root / "model")
    (root / "data" / "gsm8k").mkdir(parents=True)
    (root / "data" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in GSM8K))
    return root


def cfg(root: Path, **kw) -> RunConfig:
    base = dict(model=str(root / "model"), methods=["noadapt", "tent"], datasets=["arith"], limit=2, batch_size=2,
                stream_batch=1, data_dir=str(root / "data"), adapt={"max_new_tokens": 3, "lr": 1e-2})
    base.update(kw)
    return RunConfig(**base)


def run(c: RunConfig, out: Path) -> Path:
    return Runner(c, out, progress=False).run()


def signatures(out: Path) -> dict:
    return {k: [result_signature(r) for r in rows] for k, rows in load_run(out).items()}


def rows_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "rows").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def small(inputs, tmp_path_factory):
    """noadapt and tent on arith, 2 problems: the run that grows."""
    return run(cfg(inputs), tmp_path_factory.mktemp("small") / "run")


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "run"))


GROWTHS = {  # the new command's settings -> what the grown run holds
    "limit": (dict(limit=4), dict(limit=4)),
    "method": (dict(methods=["zerosiam"]), dict(methods=["noadapt", "tent", "zerosiam"])),
    "dataset": (dict(datasets=["gsm8k"]), dict(datasets=["arith", "gsm8k"])),
    "all": (dict(methods=["tent", "zerosiam"], datasets=["gsm8k", "arith"], limit=4),
            dict(methods=["noadapt", "tent", "zerosiam"], datasets=["arith", "gsm8k"], limit=4)),
}


@pytest.mark.parametrize("what", sorted(GROWTHS))
def test_a_grown_run_keeps_its_rows_and_equals_a_fresh_run_of_the_merged_configuration(what, inputs, small,
                                                                                       tmp_path, capsys):
    new, merged = GROWTHS[what]
    out = copy_of(small, tmp_path)
    before = rows_bytes(out)
    capsys.readouterr()
    run(cfg(inputs, **new), out)
    assert "growing" in capsys.readouterr().err
    after = rows_bytes(out)
    for name, data in before.items():  # every row it held is kept as written (timings too: not recomputed)
        assert after[name].startswith(data), name
    fresh = run(cfg(inputs, **merged), tmp_path / "fresh")
    assert signatures(out) == signatures(fresh)
    info = json.loads((out / "run.json").read_text())
    assert info["config_hash"] == cfg(inputs, **merged).hash()
    assert info["grown"][-1]["added"] and info["grown"][-1]["from_config_hash"] == cfg(inputs).hash()
    assert (out / "adapters" / "tent__arith").is_dir()
    if "limit" in merged:  # the online stream continued from its checkpoint: the export covers all 4 problems
        card = (out / "adapters" / "tent__arith" / "README.md").read_text()
        assert "4" in card
    # the grown run resumes as itself: a rerun of the merged configuration computes nothing
    again = rows_bytes(out)
    run(cfg(inputs, **merged), out)
    assert rows_bytes(out) == again


def test_a_smaller_limit_or_fewer_methods_compute_nothing(inputs, small, tmp_path, capsys):
    out = copy_of(small, tmp_path)
    before = rows_bytes(out)
    run(cfg(inputs, methods=["tent"], limit=1), out)
    assert rows_bytes(out) == before
    assert "nothing is added" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["config"]["limit"] == 2


def test_only_the_missing_rows_are_computed(inputs, small, tmp_path, monkeypatch):
    from zs_llm import adapt

    out = copy_of(small, tmp_path)
    seen = []
    real = adapt.adapt_round

    def counting(items):
        seen.extend((lm.zs_config.method, pid) for lm, _messages, pid in items)
        return real(items)

    monkeypatch.setattr(adapt, "adapt_round", counting)
    run(cfg(inputs, limit=3), out)
    rows = load_run(out)
    assert [r["index"] for r in rows[("tent", "arith")]] == [0, 1, 2]
    third = rows[("tent", "arith")][2]["id"]
    assert sorted(seen) == [("noadapt", third), ("tent", third)]  # each stream computed its problem 2 alone


REFUSED = {  # settings that change what a row means -> the name the refusal gives
    "seed": (dict(seed=3), ["seed: 0 -> 3"]),
    "lr": (dict(adapt={"max_new_tokens": 3, "lr": 1e-3}), ["lr (every method): 0.01 -> 0.001"]),
    "prompt and tokens": (dict(prompt_style="plain", adapt={"max_new_tokens": 4, "lr": 1e-2}),
                          ["prompt_style: 'boxed' -> 'plain'", "max_new_tokens (every method): 3 -> 4"]),
    "model and dtype": (dict(dtype="bfloat16", methods=["zerosiam"]), ["dtype: 'float32' -> 'bfloat16'"]),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_a_setting_that_changes_the_rows_is_refused_naming_every_one(what, inputs, small, tmp_path, capsys):
    new, names = REFUSED[what]
    out = copy_of(small, tmp_path)
    before = rows_bytes(out)
    c = cfg(inputs, limit=4, **new)
    argv = ["run", "--model", c.model, "--out", str(out), "--no_progress", "--no_report", "--config",
            str(_yaml(c, tmp_path))]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another configuration" in err and "--overwrite" in err
    for name in names:
        assert name in err, (name, err)
    assert "limit" not in err.split("hash")[0]  # a larger limit is growth, not a conflict
    assert rows_bytes(out) == before


def _yaml(c: RunConfig, tmp_path: Path) -> Path:
    from eval.options import dump_yaml

    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(c))
    return p


def test_a_stream_whose_shape_follows_the_limit_is_refused(inputs, tmp_path):
    # shift's change point sits at a share of its length: its first 4 problems at 8 are not those at 4
    out = run(cfg(inputs, methods=["noadapt"], datasets=["shift"], limit=4), tmp_path / "run")
    with pytest.raises(RunChanged, match="cannot grow: the first 4 shift problems .*follows --limit"):
        run(cfg(inputs, methods=["noadapt"], datasets=["shift"], limit=8), out)


def test_changed_data_is_refused_when_growing(inputs, tmp_path):
    import shutil

    data = Path(shutil.copytree(inputs / "data", tmp_path / "data"))
    c = cfg(inputs, methods=["noadapt"], datasets=["gsm8k"], data_dir=str(data))
    out = run(c, tmp_path / "run")
    edited = [dict(p) for p in GSM8K]
    edited[0]["question"] += " Think twice."
    (data / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in edited))
    with pytest.raises(RunChanged, match="cannot grow"):
        run(cfg(inputs, methods=["noadapt"], datasets=["gsm8k"], data_dir=str(data), limit=4), out)


def test_overwrite_does_not_grow(inputs, small, tmp_path):
    out = copy_of(small, tmp_path)
    Runner(cfg(inputs, methods=["noadapt"], limit=3), out, progress=False, overwrite=True).run()
    assert sorted(k for k in load_run(out)) == [("noadapt", "arith")]
