"""The harness runs its streams pooled (`RunConfig.stream_batch`): rows as a run of one stream
at a time gives them, streams entering as others finish, and a kill mid-pool resumed."""

import math

import pytest

import zs_llm.adapt
from eval.report import load_run
from eval.runner import RunConfig, Runner

METHODS = ["noadapt", "zerosiam", "tent", "come:optimizer=adamw", "slot", "sar", "tent:schedule=episodic:answer=regenerate"]
TEXT = ("id", "index", "method", "dataset", "prompt", "draft", "response", "extracted", "gold", "correct",
        "config_hash", "events")


def cfg(tiny_dir, **kw):
    base = dict(model=str(tiny_dir), methods=METHODS, datasets=["arith", "arith_dev"], limit=4,
                adapt={"max_new_tokens": 6, "lr": 5e-2, "predictor_lr": 5e-2})
    base.update(kw)
    return RunConfig(**base)


def short(r, lengths):
    """Streams of unequal length: each dataset cut to its own number of problems."""
    r.problems = lambda d: Runner.problems(r, d)[:lengths[d]]
    return r


def assert_same_rows(a, b, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        assert [r["index"] for r in a[k]] == [r["index"] for r in b[k]], k
        for ra, rb in zip(a[k], b[k]):
            assert {f: ra[f] for f in TEXT} == {f: rb[f] for f in TEXT}, k
            assert len(ra["steps"]) == len(rb["steps"]), k
            for sa, sb in zip(ra["steps"], rb["steps"]):
                for f in ("loss", "entropy", "grad_norm", "predictor_dev"):
                    x, y = sa.get(f), sb.get(f)
                    if exact or x is None or y is None:
                        assert x == y, (k, f)
                    else:
                        assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), (k, f, x, y)


def test_stream_batch_is_not_part_of_the_run_hash(tiny_dir):
    assert cfg(tiny_dir, stream_batch=1).hash() == cfg(tiny_dir, stream_batch=8).hash()
    with pytest.raises(ValueError, match="stream_batch"):
        cfg(tiny_dir, stream_batch=0)


def test_pooled_run_gives_the_rows_of_a_sequential_run(tiny_dir, tmp_path, monkeypatch):
    lengths = {"arith": 4, "arith_dev": 2}
    rounds = []
    real = zs_llm.adapt.adapt_round
    monkeypatch.setattr(zs_llm.adapt, "adapt_round", lambda items: rounds.append(len(items)) or real(items))
    one = short(Runner(cfg(tiny_dir, stream_batch=1), tmp_path / "one", progress=False), lengths).run()
    assert rounds == [1] * 6 * (4 + 2)  # run one at a time, every adapting stream goes through the same loop
    rounds.clear()
    pooled = short(Runner(cfg(tiny_dir, stream_batch=3), tmp_path / "pool", progress=False), lengths).run()
    assert max(rounds) == 3 and sum(rounds) == 6 * (4 + 2)  # 6 pooled methods, noadapt keeps its batches
    assert_same_rows(load_run(one), load_run(pooled))


def test_killed_pooled_run_resumes_every_stream(tiny_dir, tmp_path, monkeypatch):
    lengths = {"arith": 4, "arith_dev": 3}
    c = cfg(tiny_dir, stream_batch=4, checkpoint_every=2)
    full = short(Runner(c, tmp_path / "full", progress=False), lengths).run()
    real, calls = zs_llm.adapt.adapt_round, []

    def killed(items):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # mid-run: some streams done, some mid-way, some not started
        return real(items)

    monkeypatch.setattr(zs_llm.adapt, "adapt_round", killed)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        short(Runner(c, part, progress=False), lengths).run()
    monkeypatch.setattr(zs_llm.adapt, "adapt_round", real)
    short(Runner(c, part, progress=False), lengths).run()
    assert not (part / "quarantine").exists()
    # to float tolerance, not bit for bit: a resumed stream may share its rounds with other streams than
    # in the unbroken run, and batched matmuls round differently at other batch sizes on some CPUs
    assert_same_rows(load_run(full), load_run(part))
    # a sequential run's folder continued pooled: its checkpoints load into pooled streams
    seq = tmp_path / "seq"
    short(Runner(cfg(tiny_dir, stream_batch=1, checkpoint_every=2), seq, progress=False),
          {"arith": 2, "arith_dev": 2}).run()
    short(Runner(c, seq, progress=False), lengths).run()
    assert_same_rows(load_run(full), load_run(seq))


def test_draft_lookup_speeds_drafts_without_changing_rows(tiny_dir, tmp_path, monkeypatch):
    """`--draft_lookup`: every stream's lone greedy drafts verify lookup candidates (several tokens a
    pass), and the run's rows are those of a run without it (the tiny model has no near-ties here)."""
    import zs_llm.decode as dec

    rows_at = {"arith": 3}
    chunks = []
    real = dec._chunk_step
    monkeypatch.setattr(dec, "_chunk_step", lambda lay, x, *a: chunks.append(x.shape[0]) or real(lay, x, *a))
    c = cfg(tiny_dir, methods=["noadapt", "zerosiam"], datasets=["arith"], stream_batch=1,
            adapt={"max_new_tokens": 16, "lr": 5e-2, "predictor_lr": 5e-2})
    plain = short(Runner(c, tmp_path / "plain", progress=False), rows_at).run()
    assert not chunks
    fast = short(Runner(c, tmp_path / "lookup", progress=False, draft_lookup=2), rows_at).run()
    assert chunks and max(chunks) == 3
    assert_same_rows(load_run(plain), load_run(fast))


def test_draft_lookup_option_is_checked():
    from eval.options import parse_options, run_config

    assert run_config(parse_options(["--model", "m", "--draft_lookup", "2"]))[1].draft_lookup == 2
    with pytest.raises(ValueError, match="draft_lookup"):
        run_config(parse_options(["--model", "m", "--draft_lookup", "-1"]))
