"""studies/testbed.py: the prompt style and length the wild-streams study uses, chosen on NoAdapt alone."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))


def test_testbed_takes_the_cheapest_setting_meeting_the_target_else_the_highest_share():
    import testbed

    def r(share, acc):
        return {"stated_share": share, "accuracy": acc}

    res = {"arith|a|32": r(0.8, 0.3), "arith|a|64": r(0.95, 0.3), "arith|b|48": r(0.91, 0.2),
           "arith|b|32": r(0.7, 0.5), "arith_dev|b|32": r(0.99, 0.9)}
    assert testbed.choose(res, 0.9) == ("b", 48)  # cheapest budget meeting 90% on arith (dev ignored)
    assert testbed.choose(res, 0.99) == ("a", 64)  # none meets it: the highest share
    assert testbed.choose(res, 0.9, on="arith_dev") == ("b", 32)
