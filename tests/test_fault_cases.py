"""tests/probes/fault_cases.py: the generators of the fault suite's generated cases and its classifier.
The suite itself (tests/probes/fault_injection.py --only generated) is a probe run by hand, not a test."""

import json
import multiprocessing as mp
import random
import sys
from pathlib import Path

import pytest
import yaml

PROBES = Path(__file__).resolve().parent / "probes"
sys.path.insert(0, str(PROBES))

import fault_cases as fc  # noqa: E402

from eval.options import parse_options, run_config  # noqa: E402


def as_json(cases):
    return json.dumps([c.__dict__ for c in cases], sort_keys=True)


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_cases_are_well_formed(seed):
    cases = fc.generate([seed])
    json.dumps([c.params for c in cases])  # plain data: JSON-able parameters
    assert len({c.name for c in cases}) == len(cases)
    assert {c.category for c in cases} == {"run identity", "lock and folders", "sampling", "valid state: SAR",
                                           "architectures", "options", "bad golds and roles", fc.TRACEBACKS}
    for c in cases:
        assert c.kind in fc.EXECUTORS, c
        if "argv" in c.params:
            argv = c.params["argv"]
            assert argv[0] == "run" and "{out}" in argv and ("{model}" in argv or "{arch}" in argv), c
        if c.kind == "refuse":
            assert isinstance(c.params["words"], list), c
    from zs_llm.testing import ARCHS, MORE_ARCHS

    assert sorted(c.params["arch"] for c in cases if c.kind == "arch") == sorted(ARCHS + MORE_ARCHS)


def test_cases_are_deterministic_from_the_seed_and_grow_with_seeds():
    assert as_json(fc.generate([0, 3])) == as_json(fc.generate([0, 3]))
    one, other = fc.generate([0]), fc.generate([1])
    assert len(one) == len(other) and as_json(one) != as_json(other)
    assert len(fc.generate(list(range(5)))) == 5 * len(one)
    quick = fc.generate([0], quick=True)
    per_class = {name: len(gen(random.Random(0))) for name, gen in fc.GENERATORS.items()}
    assert len(quick) == sum(min(2, n) for n in per_class.values())
    only = fc.generate([0, 1], classes=["options"])
    assert only and all(c.category == "options" for c in only)
    # another seed draws other option values, orders and kill points, not only other names
    kills = {c.params["k"] for s in range(10) for c in fc.generate([s], classes=["identity"])}
    assert len(kills) > 3


@pytest.mark.parametrize("seed", range(6))
def test_an_option_case_is_valid_but_for_its_offending_option(seed, tmp_path):
    """Every option case without the option the generator put in parses and validates: a refusal
    can only come from that option. Its YAML files are YAML (an alias bomb loads, unexpanded)."""
    for c in fc.generate([seed], classes=["options"]):
        argv, bad = c.params["argv"], c.params["offending"]
        at = next(i for i in range(len(argv)) if argv[i:i + len(bad)] == bad)
        rest = fc.fill(argv[1:at] + argv[at + len(bad):], model=tmp_path, out=tmp_path / "o")
        cfg, launch = run_config(parse_options(rest))
        assert cfg.limit in (2, None) and launch.out == str(tmp_path / "o"), c.name
        for text in c.params["files"].values():
            data = yaml.safe_load(text)  # PyYAML shares an alias bomb's anchors: loading is fast, expanding is not
            assert isinstance(data, dict), (c.name, text)
            if "alias bomb" in c.name:
                width, depth = text.count("*a0"), text.count("&a")
                assert width ** (depth - 1) >= 6**6, "a bomb small enough to expand is no bomb"


def test_classify_refusal_labels_fake_outcomes():
    words = ["lr", "a.yaml|b.yaml"]
    assert fc.classify_refusal(2, "[eval] x\nerror: b.yaml: lr expects float\n", words) == ("clean", "")
    assert fc.classify_refusal(0, "[eval] done\n", words)[0] == "silently wrong"
    assert fc.classify_refusal(1, "Traceback (most recent call last):\n  ...\nKeyError: 'lr'\n", words)[0] == "crash"
    assert fc.classify_refusal(2, "error: something is wrong\n", words)[0] == "crash"  # names neither
    assert fc.classify_refusal(2, "error: LR in A.YAML\n", words) == ("clean", "")  # case-insensitive
    assert fc.classify_refusal(-9, "", words)[0] == "crash"
    assert fc.classify_refusal(None, "error: lr a.yaml", words, timed_out=True)[0] == "hang"
    assert fc.classify_refusal(1, "error: lr a.yaml\n", words)[0] == "crash"  # exit 2 is the user-error code


def test_classify_exception_labels_fake_outcomes():
    assert fc.classify_exception(None, ["x"])[0] == "silently wrong"
    assert fc.classify_exception(ValueError("zs_llm_config.json is damaged; save again"), ["zs_llm_config.json"]) \
        == ("clean", "")
    assert fc.classify_exception(ValueError("line one\nline two zs_llm_config.json"), ["zs_llm_config.json"])[0] \
        == "crash"
    assert fc.classify_exception(KeyError("adapt_config"), ["adapt_config"])[0] == "crash"
    assert fc.classify_exception(ValueError("damaged"), ["zs_llm_config.json"])[0] == "crash"


def test_run_case_classifies_a_real_refusal_and_a_real_acceptance(tmp_path, tiny_dir):
    """Two cases through the forked child: an unknown option is refused (clean); the same case
    without its offending option runs, which the classifier calls silently wrong."""
    ctx = fc.Ctx(tmp_path, Path(tiny_dir), mp.get_context("fork"))
    case = next(c for c in fc.generate([0], classes=["options"]) if c.name.startswith("seed 0: unknown option"))
    assert fc.run_case(ctx, case) == ("clean", "")
    accepted = fc.Case("options", "nothing wrong", "refuse", {**case.params, "argv": fc._run_args(
        random.Random(1)), "files": {}})
    outcome, detail = fc.run_case(ctx, accepted)
    assert outcome == "silently wrong" and "accepted" in detail
