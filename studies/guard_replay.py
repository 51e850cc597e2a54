"""When would the collapse guard fire on a recorded stream? Replays the rows of a harness run
through `CollapseGuard`'s checks (answers, loops, the step's entropy), without a model.

    .venv/bin/python studies/guard_replay.py runs/stability300/zerosiam_s0/rows/zerosiam__arith.jsonl

Only the detection is replayed: the recorded stream went on unguarded (or under an older guard),
so what happens after the first trigger is not what a guarded run would do. Prints the first
trigger (problem index and reason), or that none fired.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.rows import read_rows  # noqa: E402
from zs_llm.config import AdaptConfig  # noqa: E402
from zs_llm.guard import CollapseGuard  # noqa: E402


def first_trigger(rows: list[dict], config: AdaptConfig | None = None) -> tuple[int, str] | None:
    """(index of the problem after which the guard fires, reason), or None."""
    cfg = config or (AdaptConfig.from_dict(rows[0]["config"]) if rows else AdaptConfig())
    stub = SimpleNamespace(zs_config=cfg, snapshot=lambda: {}, restore=lambda s: None, _initial={},
                           set_lr_scale=lambda x: None, adapt_enabled=True)
    guard = CollapseGuard(stub)
    for r in rows:
        if guard.observe(r.get("response") or "", r.get("steps") or [], r.get("id")):
            return r["index"], guard.events[-1]["reason"]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="rows/<method>__<dataset>.jsonl files")
    args = ap.parse_args()
    for path in args.rows:
        rows = read_rows(Path(path))
        hit = first_trigger(rows)
        print(f"{path}: {len(rows)} rows; " + (f"first trigger after problem {hit[0]}: {hit[1]}" if hit
                                               else "no trigger"))


if __name__ == "__main__":
    main()
