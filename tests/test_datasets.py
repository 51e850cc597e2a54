import hashlib
import json
from pathlib import Path

import pytest

from eval.datasets import (
    DATASETS,
    FOUR_SETS,
    Problem,
    Subset,
    dataset_fingerprint,
    ids_sha256,
    load_problems,
    parse_subsets,
    resolve_data_dir,
    subset_record,
)

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


# ---------------------------------------------------------------------------- subsets


def test_subset_file_keeps_the_sets_order_then_limit(data_dir, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# three problems, listed out of order\ntest/algebra/1255.json\n\n  test/algebra/1098.json \n"
                   "test/prealgebra/1302.json\n")
    full = load_problems("math500", data_dir=data_dir)
    got = load_problems("math500", data_dir=data_dir, subset=str(ids))
    assert [p.id for p in got] == ["test/algebra/1098.json", "test/prealgebra/1302.json", "test/algebra/1255.json"]
    assert got == [p for p in full if p.id in {q.id for q in got}]  # the set's order, whole problems
    assert load_problems("math500", data_dir=data_dir, subset=str(ids), limit=2) == got[:2]


def test_sample_is_seeded_nested_and_needs_no_rng():
    a = load_problems("arith", subset="sample:20:seed0")
    assert len(a) == 20 and a == load_problems("arith", subset="sample:20:seed0")
    assert a == load_problems("arith", subset="sample:20")  # seed 0 unless given
    assert {p.id for p in a} < {p.id for p in load_problems("arith", subset="sample:40:seed0")}
    assert {p.id for p in a} != {p.id for p in load_problems("arith", subset="sample:20:seed1")}
    full = load_problems("arith")
    assert a == [p for p in full if p in a]  # the set's order
    # the rule, stated in Subset's docstring: the N ids with the smallest sha256 of "<seed>:<id>"
    rank = sorted(full, key=lambda p: hashlib.sha256(f"0:{p.id}".encode()).digest())
    assert {p.id for p in a} == {p.id for p in rank[:20]}


def test_college_math_sample_of_240_is_recorded_exactly(data_dir):
    rec = subset_record("college_math", "sample:240:seed0", data_dir=data_dir)
    chosen = load_problems("college_math", data_dir=data_dir, subset="sample:240:seed0")
    assert (rec["n"], rec["of"], rec["kind"], rec["spec"]) == (240, 2818, "sample", "sample:240:seed0")
    assert rec["ids_sha256"] == ids_sha256(chosen) and len(rec["ids_sha256"]) == 64
    assert dataset_fingerprint(chosen) == rec["ids_sha256"][:16]  # the rows' `order` field


def test_file_subset_record_holds_the_file_and_its_hash(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("s0-3\ns0-1\n")
    rec = subset_record("arith", str(f))
    assert (rec["n"], rec["of"], rec["kind"]) == (2, 500, "ids")
    assert rec["file"] == str(f.resolve()) and rec["file_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert rec["ids_sha256"] == hashlib.sha256(b"s0-1\ns0-3").hexdigest()  # ids in the set's order


@pytest.mark.parametrize("text, error, match", [
    ("s0-1\nnope\ns0-2\nalso-nope\n", ValueError, r"2 of its 4 ids are not in arith: 'nope', 'also-nope'.*s0-0"),
    ("s0-1\ns0-1\n", ValueError, r"more than once: 's0-1'; list each id once"),
    ("# nothing\n\n", ValueError, "lists no problem ids"),
])
def test_bad_subset_files_name_the_fix(tmp_path, text, error, match):
    f = tmp_path / "ids.txt"
    f.write_text(text)
    with pytest.raises(error, match=match):
        load_problems("arith", subset=str(f))


@pytest.mark.parametrize("spec, error, match", [
    ("sample:501", ValueError, r"arith has 500 problems; choose N <= 500"),
    ("sample:0", ValueError, "N must be >= 1"),
    ("sample:many", ValueError, "sample:N:seedS"),
    ("sample:5:seven", ValueError, "sample:N:seedS"),
    ("missing_ids.txt", FileNotFoundError, "python -m eval.datasets ids"),
])
def test_bad_subset_specs_name_the_fix(spec, error, match):
    with pytest.raises(error, match=match):
        load_problems("arith", subset=spec)


def test_parse_subsets_forms_and_errors():
    one = parse_subsets("arith=sample:5:seed2")
    assert one == parse_subsets(["arith=sample:5:seed2"]) == parse_subsets({"arith": "sample:5:seed2"})
    assert one["arith"] == Subset(n=5, seed=2) and one["arith"].spec == "sample:5:seed2"
    assert parse_subsets("college_math=a.txt,math500=sample:9")["math500"].spec == "sample:9:seed0"
    with pytest.raises(ValueError, match="SET=FILE"):
        parse_subsets(["sample:5"])
    with pytest.raises(KeyError, match="college_math"):
        parse_subsets(["collegemath=sample:5"])
    with pytest.raises(ValueError, match="twice"):
        parse_subsets(["arith=sample:5", "arith=sample:6"])


def test_run_config_takes_and_checks_subsets():
    from eval.runner import RunConfig

    cfg = RunConfig(datasets=["arith"], subset="arith=sample:7")
    assert cfg.subset == ["arith=sample:7:seed0"]
    assert cfg.hash() != RunConfig(datasets=["arith"], subset="arith=sample:8").hash()
    plain = RunConfig(datasets=["arith"])
    legacy = {k: v for k, v in plain.to_dict().items() if k not in ("batch_size", "checkpoint_every", "device", "subset",
                                                                     "source", "stream_batch", "revision",
                                                                     "trust_remote_code", "chat_template",
                                                                     "system_prompt", "fields",
                                                                     "include_path")}
    assert plain.hash() == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:12]  # old runs resume
    with pytest.raises(ValueError, match="not among datasets.*add them to datasets or drop"):
        RunConfig(datasets=["arith"], subset="math500=sample:5")


def test_run_json_records_subsets_and_refuses_changed_ids(tmp_path):
    from eval.runner import RunConfig, Runner

    ids = tmp_path / "ids.txt"
    ids.write_text("s0-4\ns0-2\n")
    cfg = RunConfig(datasets=["arith"], methods=["noadapt"], subset=[f"arith={ids}"])
    Runner(cfg, tmp_path / "run")._write_run_json()  # what a run does before its model loads
    rec = json.loads((tmp_path / "run" / "run.json").read_text())["subsets"]["arith"]
    assert (rec["n"], rec["of"], rec["ids_sha256"]) == (2, 500, hashlib.sha256(b"s0-2\ns0-4").hexdigest())
    assert [p.id for p in Runner(cfg, tmp_path / "run").problems("arith")] == ["s0-2", "s0-4"]
    ids.write_text("s0-4\ns0-3\n")  # same path, other problems: a resume would mix two subsets
    with pytest.raises(FileExistsError, match="other arith problems.*use a new --out"):
        Runner(cfg, tmp_path / "run")._write_run_json()
    too_many = RunConfig(datasets=["arith"], methods=["noadapt"], subset="arith=sample:501")
    with pytest.raises(ValueError, match="choose N <= 500"):
        Runner(too_many, tmp_path / "run2")._write_run_json()
    assert not (tmp_path / "run2" / "run.json").exists()


def test_ids_command_prints_a_subset(capsys, tmp_path):
    from eval.datasets import main

    assert main(["ids", "arith", "--subset", "sample:3:seed1"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [p.id for p in load_problems("arith", subset="sample:3:seed1")]
    assert main(["ids", "arith", "--subset", "sample:600"]) == 2
    assert "choose N <= 500" in capsys.readouterr().err


# ---------------------------------------------------------------------------- wild streams


@pytest.mark.parametrize("name", ["long", "shift", "imbalanced", "mixed"])
def test_wild_streams_are_seeded_and_their_golds_are_right(name):
    from eval.datasets import load_problems

    a, again, other = (load_problems(name, seed=s) for s in (0, 0, 1))
    assert [p.question for p in a] == [p.question for p in again]
    assert [p.question for p in a] != [p.question for p in other]
    assert len({p.id for p in a}) == len(a) == {"long": 1000}.get(name, 300)
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    for p in a:
        if "op" in p.meta:
            m = p.meta
            assert p.question == f"What is {m['a']} {m['op']} {m['b']}?"
            assert int(p.gold) == ops[m["op"]](m["a"], m["b"]) >= 0


def test_shift_changes_difficulty_then_task():
    from eval.datasets import load_problems

    ps = load_problems("shift", seed=2)
    phases = [p.meta["phase"] for p in ps]
    assert phases == ["small_add"] * 100 + ["large"] * 100 + ["gsm8k"] * 100
    assert all(p.meta["op"] == "+" and max(p.meta["a"], p.meta["b"]) <= 10 for p in ps[:100])
    assert {p.meta["op"] for p in ps[100:200]} == {"+", "-", "*"}
    gsm = {p.id: p for p in load_problems("gsm8k")}
    for p in ps[200:]:
        assert gsm[p.meta["source_id"]].question == p.question and gsm[p.meta["source_id"]].gold == p.gold


def test_imbalanced_alternates_one_answer_runs_with_one_operation_runs():
    from itertools import groupby

    from eval.datasets import load_problems

    ps = load_problems("imbalanced", seed=3)
    blocks = [list(g) for _, g in groupby(ps, key=lambda p: p.meta["block"])]
    assert len(blocks) == 10 and all(len(b) == 30 for b in blocks)
    for k, block in enumerate(blocks):
        assert block[0].meta["run"] == ("answer" if k % 2 == 0 else "operation")
        if k % 2 == 0:
            assert len({p.gold for p in block}) == 1 and len({p.question for p in block}) > 1
        else:
            assert len({p.meta["op"] for p in block}) == 1 and len({p.gold for p in block}) > 5


def test_mixed_interleaves_operations_and_levels():
    from eval.datasets import load_problems

    ps = load_problems("mixed")
    pairs = {(p.meta["op"], p.meta["level"]) for p in ps[:60]}
    assert len(pairs) == 9  # every operation at every level, early in the stream
    runs = sum(a.meta["op"] != b.meta["op"] for a, b in zip(ps, ps[1:]))
    assert runs > 150  # interleaved, not in blocks


def test_a_limit_generates_the_short_version_of_a_wild_stream():
    from eval.datasets import load_problems

    short = load_problems("shift", limit=30, seed=1)
    assert [p.meta["phase"] for p in short] == ["small_add"] * 10 + ["large"] * 10 + ["gsm8k"] * 10
    blocks = [p.meta["block"] for p in load_problems("imbalanced", limit=50)]
    assert blocks == [b for b in range(10) for _ in range(5)]
    assert len(load_problems("long", limit=7)) == 7


# ---------------------------------------------------------------------------- the hub source


def fake_hub(monkeypatch, rows: dict[str, list[dict]]):
    """`datasets.load_dataset` replaced: the ids in `rows` load, any other is unreachable."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        if path not in rows:
            raise ConnectionError(f"{path} unreachable (test)")
        return rows[path]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("zs_llm.loading.hub_offline_reason", lambda: None)  # as if online: the fake answers
    return calls


def test_hub_source_loads_the_registered_ids_in_order(monkeypatch):
    calls = fake_hub(monkeypatch, {"math-ai/math500": [{"problem": "1+1?", "answer": "2", "unique_id": "a"}],
                                   "openai/gsm8k": [{"question": "2+2?", "answer": "so #### 4"}]})
    math500 = load_problems("math500", source="hub")
    assert calls == [("HuggingFaceH4/MATH-500", None, "test"), ("math-ai/math500", None, "test")]  # first one down
    assert [(p.id, p.question, p.gold) for p in math500] == [("a", "1+1?", "2")]
    assert [p.gold for p in load_problems("gsm8k", source="hub")] == ["4"]
    assert calls[-1] == ("openai/gsm8k", "main", "test")
    with pytest.raises(RuntimeError, match="aime24.*HuggingFaceH4/aime_2024.*math-ai/aime24.*--data-dir"):
        load_problems("aime24", source="hub")


def test_registered_hub_ids_are_the_ones_sources_md_lists():
    sources = DATA_DIR / "SOURCES.md"
    if not sources.is_file():
        pytest.skip(f"{sources} not found")
    text = sources.read_text()
    for spec in DATASETS.values():
        for hub in spec.hub:
            assert f"`{hub.path}`" in text, (spec.name, hub.path)


def test_a_harness_run_from_the_hub_records_its_source(tiny_dir, tmp_path, monkeypatch):
    from eval.options import parse_options, run_config
    from eval.runner import Runner

    rows = [{"question": f"{i}+1?", "answer": f"#### {i + 1}"} for i in range(3)]
    calls = fake_hub(monkeypatch, {"openai/gsm8k": rows})
    monkeypatch.setenv("ZS_LLM_DATA_DIR", str(tmp_path / "nowhere"))  # no local data: the hub needs none
    cfg, _ = run_config(parse_options(["--model", str(tiny_dir), "--methods", "noadapt", "--datasets", "gsm8k",
                                       "--source", "hub", "--limit", "2", "--max_new_tokens", "3"]))
    with pytest.raises(FileNotFoundError, match="--source hub"):
        Runner(run_config(parse_options(["--model", str(tiny_dir), "--datasets", "gsm8k"]))[0], tmp_path / "l")
    out = Runner(cfg, tmp_path / "hub", progress=False).run()
    assert ("openai/gsm8k", "main", "test") in calls
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["source"] == "hub" and info["data"]["gsm8k"] == {"source": "hub",
                                                                          "hub": ["openai/gsm8k[main]:test"]}
    assert len((out / "rows" / "noadapt__gsm8k.jsonl").read_text().splitlines()) == 2


def test_a_local_run_records_the_file_and_its_sha256(data_dir, tiny_dir, tmp_path):
    from eval.runner import RunConfig, Runner

    cfg = RunConfig(model=str(tiny_dir), methods=["noadapt"], datasets=["amc23", "arith"], limit=1,
                    data_dir=str(data_dir), adapt={"max_new_tokens": 2})
    out = Runner(cfg, tmp_path / "local", progress=False).run()
    data = json.loads((out / "run.json").read_text())["data"]
    path = data_dir / "amc23" / "test.jsonl"
    assert data["amc23"] == {"source": "local", "path": str(path.resolve()),
                             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert data["arith"] == {"source": "generated", "seed": 0}


# ---------------------------------------------------------------------------- data files read strictly
def _rows(rng, n: int) -> list[dict]:
    return [{"problem": f"What is {i} + {rng.randint(0, 99)}?", "answer": str(rng.randint(0, 99)),
             "unique_id": f"p{i}-{rng.randint(0, 10**6)}", "meta": {"level": rng.randint(1, 5)}} for i in range(n)]


def _write(root: Path, lines: list[bytes]) -> Path:
    path = root / "math500" / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _refused(fn) -> str:
    with pytest.raises(ValueError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("seed", range(8))
def test_a_key_given_twice_in_a_row_is_refused_naming_file_line_and_key(seed, tmp_path):
    import random

    rng = random.Random(seed)
    rows = _rows(rng, rng.randint(1, 12))
    lines = [json.dumps(r).encode() for r in rows]
    at = rng.randrange(len(rows))
    key = rng.choice(["problem", "answer", "unique_id", "level"])
    again = json.dumps(rng.choice([rows[at].get(key, 3), "other"]))  # the same value or another: both refused
    text = lines[at].decode()
    if key == "level":  # inside a nested object
        text = text.replace('"level": ', f'"level": {again}, "level": ', 1)
    else:
        text = text[:-1] + f', "{key}": {again}}}'
    lines[at] = text.encode()
    path = _write(tmp_path, lines)
    assert _refused(lambda: load_problems("math500", data_dir=tmp_path, source="local")) == (
        f"{path} line {at + 1}: the key {key!r} is given twice; fix or remove that line")


@pytest.mark.parametrize("seed", range(6))
def test_a_utf8_bom_at_the_start_of_a_data_file_is_read_past(seed, tmp_path):
    import codecs
    import random

    rng = random.Random(seed)
    lines = [json.dumps(r, ensure_ascii=rng.random() < 0.5).encode() for r in _rows(rng, rng.randint(1, 9))]
    plain = [(p.id, p.question, p.gold) for p in load_problems("math500", data_dir=_write(tmp_path, lines).parents[1],
                                                               source="local")]
    lines[0] = codecs.BOM_UTF8 + lines[0]
    _write(tmp_path, lines)
    assert [(p.id, p.question, p.gold) for p in load_problems("math500", data_dir=tmp_path, source="local")] == plain
    ids = tmp_path / "ids.txt"
    ids.write_bytes(codecs.BOM_UTF8 + plain[-1][0].encode() + b"\n")  # a subset file, likewise
    assert [p.id for p in load_problems("math500", data_dir=tmp_path, source="local", subset=str(ids))] == \
        [plain[-1][0]]


@pytest.mark.parametrize("seed", range(10))
def test_a_byte_that_is_not_utf8_is_refused_naming_file_and_line(seed, tmp_path):
    import random

    rng = random.Random(seed)
    rows = _rows(rng, rng.randint(1, 12))
    lines = [json.dumps(r).encode() for r in rows]
    at = rng.randrange(len(rows))
    byte = rng.randint(0x80, 0xFF)  # followed by an ASCII character, no such byte starts valid UTF-8
    col = lines[at].index(b"What") + rng.randint(0, 3)
    lines[at] = lines[at][:col] + bytes([byte]) + lines[at][col:]
    path = _write(tmp_path, lines)
    assert _refused(lambda: load_problems("math500", data_dir=tmp_path, source="local")) == (
        f"{path} line {at + 1}: byte 0x{byte:02x} (column {col + 1}) is not UTF-8; re-encode the file as UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8)")


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_a_file_in_another_encoding_is_refused_naming_the_fix(encoding, tmp_path):
    rows = [{"problem": "Combien font 2 + 2, café ?", "answer": "4", "unique_id": "a"}]
    path = tmp_path / "math500" / "test.jsonl"
    path.parent.mkdir()
    path.write_bytes(json.dumps(rows[0], ensure_ascii=False).encode(encoding))
    msg = _refused(lambda: load_problems("math500", data_dir=tmp_path, source="local"))
    assert msg.startswith(f"{path} line 1: byte 0x") and msg.endswith("re-encode the file as UTF-8 (e.g. iconv -f "
                                                                       "latin1 -t utf-8)")


@pytest.mark.parametrize("seed", range(8))
def test_a_problem_id_on_two_rows_is_refused_naming_the_file_both_lines_and_the_id(seed, tmp_path):
    import random

    rng = random.Random(seed)
    rows = _rows(rng, rng.randint(2, 12))
    a, b = sorted(rng.sample(range(len(rows)), 2))
    rows[b]["unique_id"] = rows[a]["unique_id"]
    path = _write(tmp_path, [json.dumps(r).encode() for r in rows])
    assert _refused(lambda: load_problems("math500", data_dir=tmp_path, source="local")) == (
        f"{path} lines {a + 1} and {b + 1} both hold problem id {rows[a]['unique_id']!r}; give each its own id or "
        "remove the repeated row")


def test_a_problem_id_on_two_hub_rows_is_refused_naming_the_rows_and_the_id(monkeypatch):
    fake_hub(monkeypatch, {"HuggingFaceH4/MATH-500": [{"problem": f"{i}?", "answer": "1", "unique_id": u}
                                                      for i, u in enumerate("abcb")]})
    assert _refused(lambda: load_problems("math500", source="hub")) == (
        "dataset 'math500' (from the hub) holds problem id 'b' at rows 1 and 3; its row -> Problem function needs "
        "fixing")


@pytest.mark.parametrize("seed", range(3))
def test_a_question_longer_than_the_context_is_refused_by_id_before_any_row(seed, tiny_dir, tmp_path):
    import random

    from eval.runner import RunConfig, Runner
    from zs_llm.testing import tiny_model

    rng = random.Random(seed)
    context = tiny_model("llama").config.max_position_embeddings
    rows = _rows(rng, rng.randint(2, 6))
    at = rng.randrange(len(rows))
    rows[at]["problem"] = "x" * rng.randint(context, 3 * context)  # the character tokenizer: a token a character
    path = _write(tmp_path / "data", [json.dumps(r).encode() for r in rows])
    cfg = RunConfig(model=str(tiny_dir), methods=["noadapt", "tent"], datasets=["arith", "math500"], limit=8,
                    data_dir=str(tmp_path / "data"), adapt={"max_new_tokens": 2}, stream_batch=1)
    out = tmp_path / "run"
    msg = _refused(lambda: Runner(cfg, out, progress=False).run())
    assert msg.startswith(f"dataset 'math500' ({path.resolve()}) problem {rows[at]['unique_id']!r}: its prompt is ")
    assert msg.endswith(f"tokens, the model's context is {context}; shorten that question, or leave it out with "
                        "--subset (a file of the ids to run)")
    assert not list((out / "rows").glob("*.jsonl")) or all(not p.stat().st_size for p in (out / "rows").glob("*"))
