"""The rows behind docs/wild_streams.md's newer sections ship in studies/rows/ (`eval study --pack`):
unpacked and assembled by the study file, they give the tables the docs print, line for line, and
the selection the methods' `default_lr` carry."""

import json
import re
from pathlib import Path

import pytest

from eval.cli import main as cli
from zs_llm import METHODS

REPO = Path(__file__).resolve().parents[1]
ROWS = REPO / "studies" / "rows"
SPEC = REPO / "studies" / "wild_streams.yaml"
DOC = (REPO / "docs" / "wild_streams.md").read_text()

#: the Gemma study's archives shipped so far (docs/wild_streams.md section 9b): seed 0 holds both
#: stages, seeds 1 and 2 one archive per stage
GEMMA = {"rates": ["gemma_wild_seed0.tar.xz", "gemma_wild_seed1_rates.tar.xz", "gemma_wild_seed2_rates.tar.xz"],
         "tenfold": ["gemma_wild_seed0.tar.xz", "gemma_wild_seed1_tenfold.tar.xz", "gemma_wild_seed2_tenfold.tar.xz"]}
#: (study file, streams stage) -> the archives that hold its rows (one per seed where the seeds ran
#: in separate sessions)
STAGES = {("wild_streams.yaml", "new_baselines"): ["wild_new_baselines.tar.xz"],
          ("wild_streams.yaml", "deyo_selected"): ["wild_deyo_selected.tar.xz"],
          ("wild_streams.yaml", "predictor_rate"): ["wild_predictor_rate.tar.xz"],
          ("wild_streams.yaml", "study"): [f"wild_study_seed{s}.tar.xz" for s in (0, 1, 2)],
          **{("gemma_wild_streams.yaml", stage): archives for stage, archives in GEMMA.items()}}


def _table_rows(markdown: str) -> list[str]:
    """The data rows of every table under the "All streams and seeds" heading and per stream."""
    return [line for line in markdown.splitlines()
            if re.match(r"^\| (?!method |stream |---)[^|]+ \| \d+ \| ", line)]


@pytest.mark.parametrize("spec,stage", sorted(STAGES), ids=lambda x: x.removesuffix(".yaml"))
def test_the_docs_tables_are_what_the_shipped_rows_assemble_to(tmp_path, spec, stage):
    unpack = []
    for archive in STAGES[spec, stage]:
        if not (ROWS / archive).exists():
            pytest.fail(f"studies/rows/{archive} is missing: docs/wild_streams.md's tables have no rows behind them")
        unpack += ["--unpack", str(ROWS / archive)]
    out = tmp_path / "t.md"
    assert cli(["study", str(REPO / "studies" / spec), "--stages", stage, "--root", str(tmp_path / "root"), *unpack,
                "--assemble", "--summary", str(out)]) == 0
    rows = _table_rows(out.read_text().split("### Every stream and seed")[0])
    assert len(rows) >= 5 * 3  # every method, all streams and the four streams
    missing = [r for r in rows if r not in DOC]
    assert not missing, f"{len(missing)} rows the shipped rows give are not in docs/wild_streams.md, first: {missing[0]}"


def test_the_shipped_selection_is_the_methods_default_lr(tmp_path):
    root = tmp_path / "root"
    assert cli(["study", str(SPEC), "--stages", "select", "--root", str(root), "--set", "select.methods=eata,deyo",
                "--unpack", str(ROWS / "wild_select_eata_deyo.tar.xz"), "--assemble"]) == 0
    table = json.loads((root / "select" / "selection.json").read_text())
    for method in ("eata", "deyo"):
        assert table[method]["chosen"] == METHODS[method].default_lr, method
