"""A study's select stage (eval.study_tables): the protocol's learning-rate rule on hand-made rows (no model)."""

import json
from pathlib import Path

from eval import study_tables as m


def write(out: Path, method: str, correct: list[bool]):
    from eval.runner import stream_path

    path = stream_path(out, method, "arith_dev")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"response": "ok" if c else "no", "gold": "1", "index": i}) + "\n"
                            for i, c in enumerate(correct)))


def test_highest_accuracy_wins_and_a_tie_goes_to_the_smaller_lr():
    assert m.choose({3e-4: (5, 20), 1e-3: (7, 20), 3e-3: (2, 20)}) == 1e-3
    assert m.choose({3e-4: (5, 20), 1e-3: (5, 20), 3e-3: (5, 20)}) == 3e-4
    assert m.choose({1e-3: (3, 10), 3e-3: (6, 20)}) == 1e-3  # accuracy, not the count


def test_summary_reads_streams_split_over_folders_and_regrades(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "noadapt", [True, False, False, False])
    write(a, "tent:lr=0.0003", [True, True, False, False])
    write(a, "tent:lr=0.001", [True, True, True, False])
    write(b, "zerosiam:lr=0.0003", [True, False, False, False])
    write(b, "zerosiam:lr=0.001", [True, True, False, False])
    write(a, "zerosiam:lr=0.001", [True])  # a shorter, unfinished copy: the longer one counts
    grade = lambda response, gold: response == "ok"  # noqa: E731
    table = m.selection([a, b], ["tent", "zerosiam"], [3e-4, 1e-3], grade)
    assert table["noadapt"] == {"correct": 1, "graded": 4}
    assert table["tent"]["scores"] == {"0.0003": [2, 4], "0.001": [3, 4]} and table["tent"]["chosen"] == 1e-3
    assert table["zerosiam"]["scores"]["0.001"] == [2, 4] and table["zerosiam"]["chosen"] == 1e-3
    md = m.selection_table(table, ["tent", "zerosiam"], [3e-4, 1e-3], 4)
    assert "| tent | 2/4 | 3/4 | 0.001 |" in md


def test_a_missing_stream_chooses_nothing(tmp_path):
    write(tmp_path, "noadapt", [True])
    write(tmp_path, "tent:lr=0.0003", [True])
    table = m.selection([tmp_path], ["tent"], [3e-4, 1e-3], lambda r, g: True)
    assert table["tent"]["chosen"] is None
