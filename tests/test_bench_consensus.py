"""`edgefl bench consensus` end to end, quick and small: replica processes over the real Mosquitto, the rows' schema.

No timing is asserted (benchmarks measure, tests check that they measure): every row must be well formed, its
statistics finite and ordered, its anchor and goal the published ones, and the committee must have done what the
row says (blocks committed, messages exchanged, CPU spent).
"""

import json
import math

import pytest

from edgefl.bench import consensus, published
from edgefl.bench.cli import BENCHMARKS
from edgefl.bench.suite import LAYERS, check_schema
from tests.conftest import need_mosquitto

pytestmark = pytest.mark.broker


def _finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


async def test_quick_subset_writes_sane_rows(tmp_path):
    need_mosquitto()
    report = await consensus.run(quick=True, only="verify,commit", samples=3, ns=(4,))
    report.write_json(tmp_path / "c.json")
    rows = {r["name"]: r for r in json.loads((tmp_path / "c.json").read_text())}
    for name in ("verify_vote", "verify_sortition_vote", "commit_tx_n4", "block_proposal_n4", "consensus_n4"):
        assert name in rows, sorted(rows)
    for r in rows.values():
        assert r["unit"] in ("ms", "ratio", "ops/s", "MB/h")
        assert _finite(r["median"], r["p99"]) and r["median"] > 0 and r["p99"] >= r["median"] * 0.999
        if r["unit"] == "ms":
            assert _finite(r["cpu_median"]) and r["cpu_median"] >= 0
    for name in ("commit_tx_n4", "block_proposal_n4", "consensus_n4"):
        r = rows[name]
        assert r["replicas"] == 4 and r["blocks"] >= 3  # one block per sample, every sample counted
        # linear PBFT: each replica hears of a block from the leader, the leader from every replica
        assert r["msgs_per_block"] >= 3 * (4 - 1) and r["deliveries_per_block"] >= r["msgs_per_block"]
        assert r["cpu_block_ms"] > 0 and r["cpu_replica_block_ms"] == pytest.approx(r["cpu_block_ms"] / 4, rel=0.01)
        assert r.get("goal") == published.goal_for("consensus", name)
    # proposal ⊂ consensus ⊂ commit: the stages nest, sample by sample, so their medians do too
    assert rows["block_proposal_n4"]["median"] <= rows["consensus_n4"]["median"] <= rows["commit_tx_n4"]["median"]
    assert rows["commit_tx_n4"]["anchor"] == 160.0  # the Microchain's 0.16 s, in the row's milliseconds
    assert rows["verify_vote"]["anchor"] == 303.0
    # the published table reads these rows in the anchors' units
    table = {(e["table"], e["operation"]): e for e in published.table({"consensus": list(rows.values())})}
    commit = table[(published.LATENCY, "commit transaction, 4 nodes")]
    assert commit["row"] == "consensus.commit_tx_n4" and commit["measured"] == pytest.approx(
        rows["commit_tx_n4"]["median"] / 1e3)
    assert commit["goal"] == "<= 5 ms" and commit["met"] in (True, False)


def test_registered_as_a_layer_and_in_bench_all():
    assert BENCHMARKS["consensus"] == "edgefl.bench.consensus" and "consensus" in LAYERS
    rows = [{"name": "committee_tx_32B", "unit": "ms", "median": 8.0, "p99": 30.0, "mean": 12.0, "max": 41.0},
            {"name": "committee_tx_tps_32B", "unit": "ops/s", "median": 2500.0, "p99": 2400.0}]
    table = {(e["table"], e["operation"]): e for e in published.table({"consensus": rows})}
    assert table[(published.FABRIC, "32B: max latency")]["measured"] == pytest.approx(0.041)
    avg = table[(published.FABRIC, "32B: average latency")]
    assert avg["measured"] == pytest.approx(0.012) and avg["goal"] == "mean <= 20 ms" and avg["met"] is True
    tps = table[(published.FABRIC, "32B: throughput")]
    assert tps["row"] == "consensus.committee_tx_tps_32B" and tps["met"] is True  # ≥ 10 × 193.33
    doc = {"schema": "edgefl.bench/1", "created": "x", "quick": True, "profile": None, "machine": {}, "seconds": 1.0,
           "layers": [{"name": "consensus", "status": "ok", "seconds": 1.0, "rows": rows, "error": ""}],
           "published": published.table({"consensus": rows})}
    check_schema(doc)


@pytest.mark.parametrize("goal, row, met", [
    ("mean <= 20 ms", {"unit": "ms", "median": 5.0, "mean": 25.0}, False),
    ("mean <= 20 ms", {"unit": "ms", "median": 30.0, "mean": 15.0}, True),
    ("<= 20 ms", {"unit": "ms", "median": 15.0, "mean": 25.0}, True),
    ("max <= 1 s", {"unit": "ms", "median": 5.0, "max": 1200.0}, False)])
def test_a_goal_judges_the_statistic_it_names(goal, row, met):
    assert published.row_met({**row, "goal": goal}) is met
