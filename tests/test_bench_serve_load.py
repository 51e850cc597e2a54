"""bench/serve_load.py on a tiny random model: the same problems reach every serving mode, and the
kill -9 under load loses only requests in flight (retried) and counts no wrong answer."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # serve_load imports its neighbour _common


def test_plan_deals_each_tenants_problems_in_order_to_one_client():
    import serve_load

    work = serve_load.plan(tenants=3, per_tenant=2, clients=2)
    assert [(t, i) for t, i, _ in work[0]] == [("t0", 0), ("t2", 0), ("t0", 1), ("t2", 1)]
    assert [(t, i) for t, i, _ in work[1]] == [("t1", 0), ("t1", 1)]
    assert work[0][0][2] != work[1][0][2]  # different problems


def test_serve_load_on_a_tiny_model_loses_only_requests_in_flight_and_counts_none_wrong(tmp_path):
    import serve_load

    out = serve_load.main(["--model", "tiny", "--clients", "2", "--tenants", "2", "--problems", "2", "--threads", "1",
                           "--tokens", "8", "--skip", "one", "noadapt", "--out", str(tmp_path / "r.json")])
    rows = {r["serving"].split(",")[0]: r for r in out["rows"]}
    assert rows["adapt_generate one at a time"]["requests"] == rows["server"]["requests"] == 4
    kill = out["kill"]
    assert kill["answered"] == kill["requests"] == 4 and kill["wrong"] == 0
    assert kill["lost"] == kill["retried_ok"]  # every request cut off by the kill was answered on its retry
    # the restarted streams hold every answered update, plus any whose answer the kill cut off
    assert sum(kill["resumed"].values()) == kill["answered_before_kill"] + kill["updates_without_answer"]
    assert (tmp_path / "r.json").is_file()
