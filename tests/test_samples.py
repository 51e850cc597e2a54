"""n_samples > 1: independent samples, each from its own recorded seed (issue 23, item 5); avg@n,
pass@k and maj@k in the report and results.csv."""

import csv
import itertools
import json
import math
import random

import pytest
import torch

from eval.backends import vllm_requests
from eval.datasets import load_problems
from eval.prompting import build_messages
from eval.report import majority_correct, pass_at_k, write_report
from eval.rows import read_rows
from eval.runner import RunConfig, Runner, parse_method_spec, result_signature
from zs_llm import AdaptConfig, ZeroSiamLM
from zs_llm.loading import load_model
from zs_llm.model import sample_seed

ADAPT = {"max_new_tokens": 6, "lr": 1e-2, "predictor_lr": 1e-2, "temperature": 0.7}


def cfg(tiny_dir, **kw):
    base = dict(model=str(tiny_dir), methods=["noadapt", "zerosiam"], datasets=["arith"], limit=3, n_samples=4,
                adapt=dict(ADAPT))
    base.update(kw)
    return RunConfig(**base)


def rows_of(out, method):
    return read_rows(out / "rows" / f"{method}__arith.jsonl")


def replay(lm, question, seed):
    """The text `lm` samples for `question` from `seed`."""
    ids = lm.encode(build_messages(question, "boxed"))
    return lm.decode(lm.generate_ids(ids, seed=seed)[0])


@pytest.fixture(scope="module")
def sampled_run(tiny_dir, tmp_path_factory):
    return Runner(cfg(tiny_dir), tmp_path_factory.mktemp("sampled") / "run", progress=False).run()


def test_sample_seed_keeps_sample_one_and_gives_every_other_sample_its_own():
    for seed in (0, 1, 7, 2**31):
        seeds = {(p, k): sample_seed(seed, p, k) for p in range(40) for k in range(6)}
        assert all(seeds[(p, 0)] == seed + p for p in range(40))  # sample 1: the seed it always had
        assert len(set(seeds.values())) == len(seeds)
        assert all(0 <= s < 2**63 for s in seeds.values())
        assert seeds == {(p, k): sample_seed(seed, p, k) for p in range(40) for k in range(6)}


def test_samples_differ_and_each_replays_from_its_recorded_seed(sampled_run, tiny_dir):
    problems = load_problems("arith", limit=3)
    everything = []
    for method in ("noadapt", "zerosiam"):
        for row in rows_of(sampled_run, method):
            assert len(set(row["responses"])) == 4, row["responses"]  # the bug: samples 2-4 were one text
            assert row["sample_seeds"] == [sample_seed(0, row["index"], k) for k in range(4)]
            assert len(row["extracteds"]) == len(row["corrects"]) == 4
            everything += row["sample_seeds"]
    assert len(set(everything)) == len(everything) // 2  # each method's stream: every seed once
    model, tok = load_model(str(tiny_dir))
    lm = ZeroSiamLM(model, tok, parse_method_spec("noadapt", ADAPT))
    for row in rows_of(sampled_run, "noadapt"):
        q = problems[row["index"]].question
        assert [replay(lm, q, s) for s in row["sample_seeds"]] == row["responses"]
    # zerosiam: samples 2..n are drawn from the state after the problem's update; after the last
    # problem that is the exported adapter
    last = rows_of(sampled_run, "zerosiam")[-1]
    adapted = ZeroSiamLM.from_pretrained(sampled_run / "adapters" / "zerosiam__arith")
    q = problems[last["index"]].question
    assert [replay(adapted, q, s) for s in last["sample_seeds"][1:]] == last["responses"][1:]


@pytest.mark.parametrize("stream_batch", [1, None])
def test_extra_samples_leave_the_adapted_stream_as_it_is_with_one(tiny_dir, tmp_path, stream_batch):
    """Sample 1 is the method's answer and adaptation runs on its draft as with n_samples=1: drafts,
    answers and losses are those of a one-sample run (pooled streams and streams alone)."""
    one = Runner(cfg(tiny_dir, methods=["zerosiam"], n_samples=1, stream_batch=stream_batch), tmp_path / "one",
                 progress=False).run()
    four = Runner(cfg(tiny_dir, methods=["zerosiam"], stream_batch=stream_batch), tmp_path / "four",
                  progress=False).run()
    a, b = rows_of(one, "zerosiam"), rows_of(four, "zerosiam")
    assert [r["steps"] for r in a] and all(r["steps"] for r in a)
    for x, y in zip(a, b, strict=True):
        assert (x["draft"], x["response"]) == (y["draft"], y["responses"][0])
        assert [s["loss"] for s in x["steps"]] == [s["loss"] for s in y["steps"]]
        assert "sample_seeds" not in x and "responses" not in x  # one sample: the row is as it was


def test_resuming_a_sampled_run_gives_the_same_samples(sampled_run, tiny_dir, tmp_path):
    part = tmp_path / "part"
    r = Runner(cfg(tiny_dir), part, progress=False)
    r.problems = lambda d: Runner.problems(r, d)[:2]  # a kill after two problems of each stream
    r.run()
    Runner(cfg(tiny_dir), part, progress=False).run()
    for method in ("noadapt", "zerosiam"):
        full, resumed = rows_of(sampled_run, method), rows_of(part, method)
        # "order" fingerprints the problem list, which the kill above shortened
        assert [result_signature(x | {"order": None}) for x in resumed] == \
            [result_signature(x | {"order": None}) for x in full]
        assert [x["responses"] for x in resumed] == [x["responses"] for x in full]


def test_an_episodic_stream_seeds_each_problem_by_its_position(tiny_dir, tmp_path):
    adapt = {**ADAPT, "schedule": "episodic", "answer": "regenerate"}
    out = Runner(cfg(tiny_dir, methods=["tent"], n_samples=2, adapt=adapt), tmp_path / "ep", progress=False).run()
    model, tok = load_model(str(tiny_dir))
    fresh = ZeroSiamLM(model, tok, parse_method_spec("tent", adapt))  # the state each reset restores
    problems = load_problems("arith", limit=3)
    rows = rows_of(out, "tent")
    for row in rows:
        assert row["sample_seeds"][0] == row["index"]
        assert replay(fresh, problems[row["index"]].question, row["sample_seeds"][0]) == row["draft"]
    assert len({r["draft"] for r in rows}) == len(rows)


@pytest.mark.parametrize("seed", [0, 3, 2**40 + 1])
def test_greedy_generation_ignores_the_seed(make_lm, seed):
    lm = make_lm(method="noadapt", max_new_tokens=8)
    ids = lm.encode("What is 2 + 3?")
    assert torch.equal(lm.generate_ids(ids, seed=seed), lm.generate_ids(ids))


def test_greedy_rows_keep_their_shape_beside_sampled_ones(tiny_dir, tmp_path):
    """A greedy stream in a sampled run: its n answers are greedy ones, its rows carry no seeds."""
    c = cfg(tiny_dir, methods=["noadapt", "noadapt:temperature=0.7"], n_samples=3, adapt={"max_new_tokens": 6})
    out = Runner(c, tmp_path / "mixed", progress=False).run()
    greedy = read_rows(out / "rows" / "noadapt__arith.jsonl")
    for row in greedy:
        assert len(set(row["responses"])) == 1 and row["response"] == row["responses"][0]
        assert "sample_seeds" not in row and "extracteds" not in row
    sampled = [r for f in (out / "rows").glob("*.jsonl") if f.name != "noadapt__arith.jsonl" for r in read_rows(f)]
    assert sampled and all(len(set(r["responses"])) == 3 and r["sample_seeds"] for r in sampled)
    plain = Runner(cfg(tiny_dir, methods=["noadapt"], n_samples=1, adapt={"max_new_tokens": 6}), tmp_path / "plain",
                   progress=False).run()
    assert [r["response"] for r in read_rows(plain / "rows" / "noadapt__arith.jsonl")] == [r["response"] for r in greedy]


# --- the estimators -------------------------------------------------------------------------
def _pass_at_k_by_enumeration(n, c, k):
    draws = list(itertools.combinations([True] * c + [False] * (n - c), k))
    return sum(any(d) for d in draws) / len(draws)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_correct_sample(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = _pass_at_k_by_enumeration(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 1, 0), (3, 4, 1), (2, -1, 1), (0, 0, 1)])
def test_pass_at_k_refuses_k_or_c_outside_the_samples(n, c, k):
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("extracted,corrects,k,expected", [
    (["4", "5", "4", "5"], [True, False, True, False], 4, True),  # tie: the answer given first
    (["5", "4", "4", "5"], [False, True, True, False], 4, False),
    (["5", "4", "4", "7"], [False, True, True, False], 4, True),
    (["5", "4", "4", "7"], [False, True, True, False], 1, False),  # only the first k vote
    ([None, None, "4", None], [False, False, True, False], 4, True),  # no answer: no vote
    ([None, " ", None], [False, False, False], 3, False),
    (["x", "y", "z"], [True, False, False], 3, True),
    ([" 4", "4 ", "5"], [True, True, False], 3, True),  # stripped before counting
])
def test_majority_vote_table(extracted, corrects, k, expected):
    assert majority_correct(extracted, corrects, k) is expected


@pytest.mark.parametrize("seed", range(5))
def test_sampled_metrics_reach_the_report_and_results_csv(seed, tmp_path):
    rng = random.Random(seed)
    n, rows = rng.choice([2, 4, 6]), []
    (tmp_path / "rows").mkdir()
    for i in range(12):
        extracted = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        corrects = [x == "2" for x in extracted]
        rows.append({"id": str(i), "index": i, "method": "noadapt", "dataset": "arith", "response": "r",
                     "extracted": extracted[0], "gold": "2", "correct": corrects[0], "steps": [],
                     "responses": ["r"] * n, "corrects": corrects, "extracteds": extracted,
                     "sample_seeds": [sample_seed(0, i, k) for k in range(n)]})
    (tmp_path / "rows" / "noadapt__arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(tmp_path).read_text()
    with open(tmp_path / "results.csv") as f:
        (line,) = list(csv.DictReader(f))
    ks = sorted({1, min(n, 4), n})
    assert int(line["n_samples"]) == n
    assert float(line["avg@n"]) == pytest.approx(sum(sum(r["corrects"]) for r in rows) / (12 * n))
    for k in ks:
        want = sum(pass_at_k(n, sum(r["corrects"]), k) for r in rows) / 12
        assert float(line[f"pass@{k}"]) == pytest.approx(want)
        assert f"pass@{k}" in text
    for k in ks[1:]:
        assert float(line[f"maj@{k}"]) == pytest.approx(
            sum(majority_correct(r["extracteds"], r["corrects"], k) for r in rows) / 12)
    assert "maj@1" not in line and f"### Sampled: {n} answers per problem" in text


def test_vllm_requests_seed_each_sample_as_the_hf_path_does():
    sampled = AdaptConfig(temperature=0.6, seed=5)
    reqs = vllm_requests(sampled, count=3, n=4, first=10)
    assert [j for j, _ in reqs] == [0] * 4 + [1] * 4 + [2] * 4
    assert [kw["seed"] for _, kw in reqs] == [sample_seed(5, 10 + j, k) for j in range(3) for k in range(4)]
    assert all(kw["n"] == 1 and kw["temperature"] == 0.6 for _, kw in reqs)
    greedy = vllm_requests(AdaptConfig(), count=3, n=4)
    assert [j for j, _ in greedy] == [0, 1, 2] and all(kw["temperature"] == 0.0 for _, kw in greedy)


@pytest.mark.parametrize("world", [2, 3])
def test_a_sampled_run_split_across_ranks_gives_the_single_process_rows(tiny_dir, tmp_path, world):
    """A rank takes every world-th problem of a non-adapting stream: its seeds follow the
    problem's place in the whole stream, so the samples do not depend on the number of ranks."""
    from eval.report import load_run
    from eval.rows import merge_shards

    c = cfg(tiny_dir, methods=["noadapt"], limit=5, stream_batch=1)
    one = Runner(c, tmp_path / "one", progress=False).run()
    split = tmp_path / "split"
    for rank in range(world):
        Runner(c, split, rank=rank, world=world, progress=False).run()
    merge_shards(split)
    a, b = load_run(one)[("noadapt", "arith")], load_run(split)[("noadapt", "arith")]
    key = lambda rows: {r["id"]: (r["sample_seeds"], r["responses"]) for r in rows}  # noqa: E731
    assert key(a) == key(b)
    assert len({s for seeds, _ in key(a).values() for s in seeds}) == 5 * 4
