"""Your own data in --datasets (eval/userdata.py): every format and field mapping read the same
problems, bad files are one line naming the file, the row and the fix, and a run records the
file's sha256 (a changed file refuses the resume)."""

import csv
import json
import random
from pathlib import Path

import pytest

from eval.datasets import load_problems, source_record
from eval.options import parse_options, run_config

FORMATS = ("jsonl", "json", "csv", "parquet")


def _rows(rng: random.Random, n: int, cols: dict[str, str]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """n rows under the column names `cols` (field -> column) and the (id, question, gold) each gives."""
    rows, want = [], []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        pid = f"q{i}-{rng.randint(0, 10**6)}"
        row = {cols["problem"]: f"What is {a} + {b}?", cols["answer"]: str(a + b), cols["id"]: pid,
               "extra": rng.random()}
        rows.append(row)
        want.append((pid, row[cols["problem"]], str(a + b)))
    return rows, want


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.suffix[1:]
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps({"data": rows}))
    elif kind == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["problem", "answer"])
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def config(*argv: str):
    return run_config(parse_options(list(argv)))[0]


def one_line_error(fn, kind=ValueError) -> str:
    with pytest.raises(kind) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_and_field_mapping_reads_the_same_problems(kind, seed, tmp_path):
    rng = random.Random(seed)
    usual = {"problem": rng.choice(["problem", "question"]), "answer": rng.choice(["answer", "final_answer"]),
             "id": rng.choice(["id", "unique_id"])}
    own = {"problem": f"text{seed}", "answer": f"gold_{seed}", "id": f"key{seed}"}
    rows, want = _rows(rng, rng.randint(1, 9), usual)
    plain = write(tmp_path / f"plain{seed}.{kind}", rows)
    cfg = config("--datasets", f"arith,{plain}")
    assert cfg.dataset_names() == ["arith", f"plain{seed}"]
    assert [(p.id, p.question, p.gold) for p in load_problems(f"plain{seed}")] == want

    mapped = write(tmp_path / f"mapped{seed}.{kind}", [{own[k]: r[usual[k]] for k in own} for r in rows])
    fields = ",".join(f"{k}={v}" for k, v in own.items())
    config("--datasets", str(mapped), "--fields", fields)
    assert [(p.id, p.question, p.gold) for p in load_problems(f"mapped{seed}")] == want

    # the same mapping from a task file, found by name in --include_path
    tasks = tmp_path / "tasks"
    (tasks / "sub").mkdir(parents=True)
    (tasks / "sub" / f"t{seed}.yaml").write_text(f"task: mine{seed}\npath: ../../{mapped.name}\n"
                                                 f"fields: {json.dumps(own)}\n")
    cfg = config("--datasets", f"task:mine{seed}", "--include_path", str(tasks))
    assert cfg.dataset_names() == [f"mine{seed}"]
    assert [(p.id, p.question, p.gold) for p in load_problems(f"mine{seed}")] == want
    rec = source_record(f"mine{seed}", "local")
    assert rec["source"] == "file" and rec["path"] == str(mapped.resolve()) and rec["fields"] == own


@pytest.mark.parametrize("kind", FORMATS)
def test_a_row_without_a_field_is_named_with_the_fix(kind, tmp_path):
    rng = random.Random(len(kind))
    rows, _ = _rows(rng, 6, {"problem": "question", "answer": "answer", "id": "id"})
    n = rng.randrange(len(rows))
    rows[n]["answer"] = ""  # an empty cell is a missing answer in every format
    path = write(tmp_path / f"d.{kind}", rows)
    config("--datasets", str(path))
    msg = one_line_error(lambda: load_problems("d"))
    where = {"jsonl": f"line {n + 1}", "json": f"item {n + 1}", "csv": f"line {n + 2}", "parquet": f"row {n + 1}"}
    assert msg.startswith(f"{path} {where[kind]}: no answer") and "--fields answer=COLUMN" in msg
    # the question column renamed: the message names the columns the row has
    path = write(tmp_path / f"e.{kind}", [{"q": r["question"], "answer": r["answer"] or "1"} for r in rows])
    config("--datasets", str(path))
    msg = one_line_error(lambda: load_problems("e"))
    assert "no problem text" in msg and "(it has q, answer)" in msg and "--fields problem=COLUMN" in msg
    config("--datasets", str(path), "--fields", "problem=q")
    assert len(load_problems("e")) == len(rows)


@pytest.mark.parametrize("kind", FORMATS)
def test_an_empty_file_is_refused_naming_it(kind, tmp_path):
    path = write(tmp_path / f"empty.{kind}", [])
    config("--datasets", str(path))
    assert one_line_error(lambda: load_problems("empty")) == f"{path} holds no rows; give one problem per row, " \
                                                            "with a problem and an answer"


@pytest.mark.parametrize("seed", range(4))
def test_an_unparsable_row_is_named_by_its_line(seed, tmp_path):
    rng = random.Random(seed)
    rows, _ = _rows(rng, 5, {"problem": "problem", "answer": "answer", "id": "id"})
    lines = [json.dumps(r) for r in rows]
    n = rng.randrange(len(lines))
    lines[n] = lines[n][: rng.randint(1, len(lines[n]) - 2)]  # cut short
    path = tmp_path / "cut.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config("--datasets", str(path))
    msg = one_line_error(lambda: load_problems("cut"))
    assert msg.startswith(f"{path} line {n + 1}: not a JSON object") and msg.endswith("fix or remove that line")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    config("--datasets", str(bad))
    assert "is not a readable Parquet file" in one_line_error(lambda: load_problems("bad"))


def test_repeated_ids_names_and_unknown_entries_are_refused(tmp_path):
    path = write(tmp_path / "rep.jsonl", [{"problem": "a?", "answer": "1", "id": "x"},
                                          {"problem": "b?", "answer": "2", "id": "x"}])
    config("--datasets", str(path))
    assert "line 1 and line 2 both hold problem id 'x'" in one_line_error(lambda: load_problems("rep"))
    clash = write(tmp_path / "math500.jsonl", [{"problem": "a?", "answer": "1"}])
    assert "name it: mymath500=" in one_line_error(lambda: config("--datasets", str(clash)))
    assert config("--datasets", f"mymath500={clash}").dataset_names() == ["mymath500"]
    other = write(tmp_path / "o" / "rep.jsonl", [{"problem": "a?", "answer": "1"}])
    assert "both named 'rep'" in one_line_error(lambda: config("--datasets", f"{path},{other}"))
    msg = one_line_error(lambda: config("--datasets", "task:nosuch", "--include_path", str(tmp_path)))
    assert f"no task 'nosuch' in {tmp_path} (it has: none)" in msg
    assert "add --include_path DIR" in one_line_error(lambda: config("--datasets", "task:nosuch"))
    msg = one_line_error(lambda: config("--datasets", "nosuch"))  # a bare name is a built-in set's
    assert msg.startswith("--datasets: datasets='nosuch' is not valid; choose one of math500") and "task:NAME" in msg
    assert "'mapp' is not a field" in one_line_error(lambda: config("--datasets", str(path), "--fields", "mapp=x"))


def fake_hub(monkeypatch, rows, offline=None):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append((path, name, split, revision))
        if offline:
            raise ConnectionError("Couldn't reach the hub\nmany more lines")
        return rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("zs_llm.loading.hub_offline_reason", lambda: offline)
    return calls


def test_a_hub_dataset_loads_its_split_and_records_the_revision(monkeypatch):
    calls = fake_hub(monkeypatch, [{"question": "1+1?", "final": 2}, {"question": "2+2?", "final": 4}])
    cfg = config("--datasets", "hub:org/qa:main:test@v1.0", "--fields", "problem=question,answer=final")
    assert cfg.dataset_names() == ["qa"]
    assert [(p.id, p.gold) for p in load_problems("qa")] == [("0", "2"), ("1", "4")]
    assert calls == [("org/qa", "main", "test", "v1.0")]
    rec = source_record("qa", "local")
    assert rec["source"] == "hub" and (rec["hub"], rec["config"], rec["split"], rec["revision"]) == \
        ("org/qa", "main", "test", "v1.0")


@pytest.mark.parametrize("why", ["the hub (huggingface.co) cannot be reached from here", "HF_HUB_OFFLINE is set"])
def test_an_unreachable_hub_dataset_is_one_line_from_the_command(why, monkeypatch, tmp_path, capsys, tiny_dir):
    from eval.cli import main

    fake_hub(monkeypatch, [], offline=why)
    code = main(["run", "--model", str(tiny_dir), "--methods", "noadapt", "--datasets", "hub:org/qa:test",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: hub:org/qa:test: hub dataset org/qa split test")
    assert "give" in err and "file" in err


def test_a_run_on_own_data_records_it_and_refuses_a_changed_file(tiny_dir, tmp_path, capsys):
    from eval.cli import main

    rng = random.Random(7)
    rows, _ = _rows(rng, 3, {"problem": "q", "answer": "a", "id": "k"})
    path = write(tmp_path / "mine.csv", rows)
    argv = ["run", "--model", str(tiny_dir), "--methods", "noadapt", "--datasets", f"arith,{path}",
            "--fields", "problem=q,answer=a,id=k", "--limit", "2", "--max_new_tokens", "2", "--out",
            str(tmp_path / "r"), "--no_progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mine" in out
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["data"]["mine"]["sha256"] and info["data"]["mine"]["path"] == str(path.resolve())
    assert info["identity"]["sets"]["mine"]["n"] == 2
    assert len((tmp_path / "r" / "rows" / "noadapt__mine.jsonl").read_text().splitlines()) == 2
    rows[0]["q"] = "What is 1 + 1?"
    write(path, rows)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and f"mine file {path.resolve()} differs" in err and "\n" not in err.strip()
