from pathlib import Path

import pytest

from eval.datasets import DATASETS, FOUR_SETS, Problem, dataset_fingerprint, load_problems, resolve_data_dir

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "math"


@pytest.fixture(scope="module")
def data_dir():
    if not DATA_DIR.is_dir():
        pytest.skip(f"local math data not found at {DATA_DIR} (the shared data folder beside the repo)")
    return DATA_DIR


# (set, rows, first id, first gold)
SETS = [
    ("math500", 500, "test/precalculus/807.json", r"\left( 3, \frac{\pi}{2} \right)"),
    ("aime24", 30, "60", "204"),
    ("minerva_math", 272, "0", "1.6"),
    ("college_math", 2818, "Beginning_and_Intermediate_Algebra/exercise.0.4.61", "10-4 n"),
    ("gsm8k", 1319, "0", "18"),
    ("amc23", 40, "0", "27"),
]


@pytest.mark.parametrize("name, rows, first_id, first_gold", SETS)
def test_local_set_loads(data_dir, name, rows, first_id, first_gold):
    problems = load_problems(name, data_dir=data_dir, source="local")
    assert len(problems) == rows == DATASETS[name].rows
    assert (problems[0].id, problems[0].gold) == (first_id, first_gold)
    assert len({p.id for p in problems}) == rows
    assert all(isinstance(p, Problem) and p.question and p.gold for p in problems)


def test_gold_rules_on_spot_rows(data_dir):
    aime = {p.id: p for p in load_problems("aime24", data_dir=data_dir)}
    assert aime["67"].gold == "025" and aime["67"].meta["numeric"] is True
    minerva = load_problems("minerva_math", data_dir=data_dir)
    # the one gold with a newline inside its box comes out stripped
    assert any(p.gold == r"I(0) e^{-\frac{t}{R C}}" for p in minerva)
    assert all(p.gold == p.gold.strip() for p in minerva)
    gsm8k = load_problems("gsm8k", data_dir=data_dir)
    assert all("," not in p.gold and "#" not in p.gold for p in gsm8k)
    college = load_problems("college_math", data_dir=data_dir)
    assert college[1].gold == "(45,2),(-10,-9)"
    assert all("$" not in p.gold for p in college)
    amc = load_problems("amc23", data_dir=data_dir)
    assert all("." not in p.gold for p in amc)  # every amc23 answer is a whole number


def test_limit_takes_first_rows(data_dir):
    full = load_problems("math500", data_dir=data_dir)
    assert load_problems("math500", data_dir=data_dir, limit=5) == full[:5]
    assert load_problems("math500", data_dir=data_dir, limit=0) == []


def test_fingerprint_records_order(data_dir):
    problems = load_problems("aime24", data_dir=data_dir)
    assert dataset_fingerprint(problems) == dataset_fingerprint(load_problems("aime24", data_dir=data_dir))
    assert dataset_fingerprint(problems) != dataset_fingerprint(problems[::-1])
    assert len(dataset_fingerprint(problems)) == 16


def test_auto_source_prefers_local(data_dir):
    assert load_problems("amc23", data_dir=data_dir, source="auto") == load_problems(
        "amc23", data_dir=data_dir, source="local"
    )


def test_four_sets_registered():
    assert FOUR_SETS == ("math500", "college_math", "aime24", "minerva_math")
    assert set(FOUR_SETS) <= set(DATASETS)


def test_arith_is_deterministic_per_seed():
    a = load_problems("arith", seed=0)
    assert len(a) == 500
    assert a == load_problems("arith", seed=0)
    b = load_problems("arith", seed=1)
    assert [p.question for p in a] != [p.question for p in b]
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    assert len(load_problems("arith", limit=7)) == 7
    for p in a:
        x, op, y = p.meta["a"], p.meta["op"], p.meta["b"]
        assert p.question == f"What is {x} {op} {y}?"
        assert int(p.gold) == {"+": x + y, "-": x - y, "*": x * y}[op] >= 0


def test_missing_data_dir_names_the_flag(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="--data-dir") as info:
        resolve_data_dir(missing)
    assert "ZS_LLM_DATA_DIR" in str(info.value)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_problems("math500", data_dir=missing, source="local")
    with pytest.raises(FileNotFoundError, match="--data-dir"):  # an explicit dir never falls back to the hub
        load_problems("math500", data_dir=missing, source="auto")


def test_missing_set_file_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_problems("math500", data_dir=tmp_path, source="local")


def test_env_var_sets_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZS_LLM_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "..") == tmp_path / ".."  # an explicit argument wins


def test_unknown_dataset_lists_known():
    with pytest.raises(KeyError, match="math500") as info:
        load_problems("math5000")
    assert "arith" in str(info.value)


def test_bad_source_is_rejected():
    with pytest.raises(ValueError, match="hub"):
        load_problems("arith", source="web")
