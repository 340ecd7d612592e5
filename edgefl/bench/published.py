"""The blockchain-FL literature's per-operation tables, row by row, and where edgefl measures each row.

Each ``Anchor`` names the published figure(s) and the benchmark row (layer and
row name, first match wins) that measures the same operation here.  ``table``
puts a run's rows beside them: measured value in the anchor's unit, the ratio
measured / anchor, the project's own goal (the goal string the row carries)
and whether it is met.

Sources: the Microchain testbed (desktop / Raspberry Pi 3B+, 1 MB blocks,
4 / 16 nodes), a Fabric-based edge sub-chain (8 vCPUs, 1,000 transactions from
10 clients), a Rust 2-chain HotStuff on 4 local nodes, the accumulator
design's batch proof verification (t = 8, |N| = 2048) and the crowdsourcing
FL design's accuracy.

``GOALS`` holds the project's own goals for rows that have no goal of their
own module's making (the consensus layer's); a goal may name the statistic it
judges ("mean <= 20 ms"; the median otherwise).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# how to read a benchmark row in an anchor's unit: (row unit, anchor unit) -> factor
_FACTORS = {("ms", "ms"): 1.0, ("ms", "s"): 1e-3, ("s", "s"): 1.0, ("s", "ms"): 1e3}


@dataclass(frozen=True)
class Anchor:
    table: str
    operation: str
    unit: str  # the anchor's unit: ms, s, tx/s, MB/h, ratio, %
    value: float  # desktop figure (or the only one)
    rows: tuple[tuple[str, str], ...]  # (layer, row name) candidates, first present wins
    pi: float | None = None  # the Raspberry Pi 3B+ figure, where published
    stat: str = "median"  # which statistic of the row: median, p99, mean or max (the median if the row lacks it)
    note: str = ""
    higher_is_better: bool = False


def _a(table, operation, unit, value, *rows, **kw) -> Anchor:
    return Anchor(table, operation, unit, value, tuple(rows), **kw)


MICRO = "Microchain testbed, per operation (1 MB blocks; desktop / Pi 3B+ at CPU 10 % / 15 %)"
LATENCY = "Microchain network latency"
THROUGHPUT = "Microchain throughput vs block size"
FABRIC = "Edge-blockchain transaction creation (Fabric sub-chain, 8 vCPU, 1,000 tx from 10 clients)"
HOTSTUFF = "Rust 2-chain HotStuff, 4 local nodes"
BATCH = "Batch proof verification (t = 8, |N| = 2048), cost relative to independent checks"
ACCURACY = "Crowdsourcing FL accuracy (MNIST)"
DEVICE = "The device agent within a small board's means (the project's goals; no published figure)"

ANCHORS: tuple[Anchor, ...] = (
    _a(MICRO, "verify transaction", "ms", 47.0, ("crypto", "verify_tx"), pi=179.0),
    _a(MICRO, "mine block", "ms", 27.0, ("ledger", "mine_block"), pi=147.0),
    _a(MICRO, "validate block", "ms", 358.0, ("ledger", "validate_block_1MB"), pi=492.0,
       note="transactions admitted before (a committee peer)"),
    _a(MICRO, "validate block, cold", "ms", 358.0, ("ledger", "validate_block_1MB_cold"), pi=492.0,
       note="every transaction decoded and its signature verified"),
    _a(MICRO, "verify vote", "ms", 303.0, ("consensus", "verify_vote"), ("crypto", "verify_vote"), pi=436.0),
    _a(MICRO, "verify vote carrying a VRF claim", "ms", 303.0, ("consensus", "verify_sortition_vote"), pi=436.0,
       note="a committee vote with its sortition claim (VRF proof, binomial draw), beside the plain vote's figure"),
    _a(LATENCY, "commit transaction, 4 nodes", "s", 0.16, ("consensus", "commit_tx_n4")),
    _a(LATENCY, "commit transaction, 16 nodes", "s", 0.25, ("consensus", "commit_tx_n16")),
    _a(LATENCY, "block proposal, 4 nodes", "s", 0.5, ("consensus", "block_proposal_n4")),
    _a(LATENCY, "block proposal, 16 nodes", "s", 1.7, ("consensus", "block_proposal_n16")),
    _a(LATENCY, "chain finality, 4 nodes", "s", 1.4, ("consensus", "chain_finality_n4")),
    _a(LATENCY, "chain finality, 16 nodes", "s", 21.5, ("consensus", "chain_finality_n16")),
    _a(HOTSTUFF, "consensus latency", "ms", 2.0, ("consensus", "consensus_n4"),
       note="proposal to commit at every replica"),
    _a(HOTSTUFF, "end to end", "ms", 9.0, ("consensus", "commit_tx_n4"), note="client submit to commit"),
    *(_a(THROUGHPUT, f"{label} blocks", "MB/h", v, ("consensus", f"throughput_MBph_block_{label}"),
         higher_is_better=True)
      for label, v in (("512K", 202.0), ("1M", 293.0), ("2M", 405.0), ("4M", 263.0))),
    *(_a(FABRIC, f"{label}: {what}", unit, v, *rows, stat=stat, higher_is_better=unit == "tx/s")
      for label, mx, avg, tps in (("32B", 0.65, 0.33, 193.33), ("8KiB", 0.70, 0.41, 173.04),
                                  ("16KiB", 0.97, 0.54, 131.98), ("32KiB", 2.35, 1.09, 65.69))
      for what, unit, v, stat, rows in (
          ("max latency", "s", mx, "max", (("consensus", f"committee_tx_{label}"),)),
          ("average latency", "s", avg, "mean", (("consensus", f"committee_tx_{label}"),)),
          ("throughput", "tx/s", tps, "median", (("consensus", f"committee_tx_tps_{label}"),
                                                ("ledger", f"append_tps_{label}"))))),
    _a(BATCH, "Protocol 3 (unweighted, unsound)", "ratio", 0.124, ("accumulator", "batch_verify_ratio_unweighted_t8"),
       note="the design's claim; accepts forged batches"),
    _a(BATCH, "small-exponent weighted (sound)", "ratio", 0.124, ("accumulator", "batch_verify_ratio_weighted_t8"),
       note="no published figure: beside the claim"),
    _a(BATCH, "aggregated, Shamir + Wesolowski (sound)", "ratio", 0.124,
       ("accumulator", "aggregated_verify_ratio_t8"), note="no published figure: beside the claim"),
    _a(BATCH, "ledger: 8 transactions by one aggregated batch proof", "ratio", 0.124,
       ("ledger", "verify_txs_ratio_aggregated_t8"),
       note="end to end per verified transaction, hash-to-prime of each block included"),
    _a(ACCURACY, "ε = 1 after round 2", "%", 90.0, ("ml", "accuracy_eps1_round2"), higher_is_better=True,
       note="the design reports ≥ 90 %"),
    _a(ACCURACY, "ε = 1 after round 1", "%", 90.0, ("ml", "accuracy_eps1_round1"), higher_is_better=True),
    _a(ACCURACY, "no DP after round 2", "%", 97.0, ("ml", "accuracy_epsinf_round2"), higher_is_better=True),
    _a(DEVICE, "steady memory during a round, LiteRT", "MB", 80.0, ("device", "device_rss_mb_litert"),
       note="the goal; a Pi Zero 2 W has 512 MB"),
    _a(DEVICE, "steady memory during a round, ONNX Runtime", "MB", 120.0, ("device", "device_rss_mb_onnxruntime"),
       note="the goal"),
    _a(DEVICE, "process start to first MQTT CONNECT", "s", 1.5, ("device", "device_start_s"), note="the goal"),
)


# --------------------------------------------------------------------------- goals

# The project's own goals for rows no paper has a figure for, by row-name prefix (first match wins), for rows
# whose names carry a parameter. `edgefl bench scale`: one fog serving up to 1,000 devices must cost linearly
# more per device.
GOAL_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {"scale": (
    ("scale_round_per_device_ratio_", "<= 1.2"),  # per-device round at the largest count / at 100
    ("scale_deliveries_per_device_max_", "<= 10"),
    ("scale_verify_ms_per_block_n", "<= 1 ms"),
    ("scale_fog_rss_mb_per_device", "<= 2"),
    ("scale_reconnects_n", "<= 0"),
    ("scale_stale_n", "<= 0"),
    ("scale_request_timeouts_n", "<= 0"),
)}


_GOAL = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*(.*)$")
_STAT = re.compile(r"^\s*(median|mean|max|p99)\s+(?=[<>])")


def _ten_times(rows: dict[str, float], unit: str) -> dict[tuple[str, str], str]:
    return {("consensus", name): f">= {10 * v:g} {unit}" for name, v in rows.items()}


# the goals on this 2-core machine for the consensus layer (edgefl bench consensus)
GOALS: dict[tuple[str, str], str] = {
    ("consensus", "commit_tx_n4"): "<= 5 ms", ("consensus", "commit_tx_n16"): "<= 20 ms",
    ("consensus", "block_proposal_n4"): "<= 10 ms", ("consensus", "block_proposal_n16"): "<= 40 ms",
    ("consensus", "chain_finality_n4"): "<= 50 ms", ("consensus", "chain_finality_n16"): "<= 200 ms",
    ("consensus", "view_change_n4"): "<= 2 s", ("consensus", "view_change_n16"): "<= 2 s",
    ("consensus", "verify_vote"): "<= 0.1 ms",
    # throughput ≥ 10× each anchor; committee transactions ≥ 10× Fabric's tx/s at ≤ 20 ms average latency
    **_ten_times({f"throughput_MBph_block_{k}": v for k, v in
                  (("512K", 202.0), ("1M", 293.0), ("2M", 405.0), ("4M", 263.0))}, "MB/h"),
    **_ten_times({f"committee_tx_tps_{k}": v for k, v in
                  (("32B", 193.33), ("8KiB", 173.04), ("16KiB", 131.98), ("32KiB", 65.69))}, "tx/s"),
    **{("consensus", f"committee_tx_{k}"): "mean <= 20 ms" for k in ("32B", "8KiB", "16KiB", "32KiB")},
}


def goal_for(layer: str, row: str) -> str | None:
    """The project's goal for ``row`` of ``layer``: by its name, else by its name's prefix."""
    exact = GOALS.get((layer, row))
    if exact is not None:
        return exact
    return next((goal for prefix, goal in GOAL_PREFIXES.get(layer, ()) if row.startswith(prefix)), None)


def anchor_for(layer: str, row: str, stat: str = "median") -> Anchor | None:
    """The first anchor that row ``layer.row`` measures with statistic ``stat``."""
    return next((a for a in ANCHORS if (layer, row) in a.rows and a.stat == stat), None)


def goal_stat(goal: str | None) -> str:
    """The row statistic a goal judges: "mean <= 20 ms" judges the mean; a bare bound the median."""
    m = _STAT.match(goal or "")
    return m.group(1) if m else "median"


def bare_goal(goal: str | None) -> str:
    """The goal without its statistic: the bound and unit that ``_GOAL`` reads."""
    return _STAT.sub("", goal or "", count=1)


def row_value(row: Mapping[str, Any]) -> Any:
    """The statistic of ``row`` that its goal judges."""
    return row.get(goal_stat(row.get("goal")), row.get("median"))


def row_met(row: Mapping[str, Any]) -> bool | None:
    return goal_met(row.get("goal"), row_value(row), row.get("unit", ""))


def goal_met(goal: str | None, value: float | None, unit: str) -> bool | None:
    """Whether ``value`` (in the row's ``unit``) meets a goal string like "<= 20 ms" or ">= 5000 tx/s"; None if unknown."""
    if not goal or value is None or not math.isfinite(value):
        return None
    m = _GOAL.match(bare_goal(goal))
    if m is None:
        return None
    op, bound, goal_unit = m.group(1), float(m.group(2)), m.group(3).strip()
    factor = _FACTORS.get((unit, goal_unit), 1.0) if goal_unit in ("ms", "s") else 1.0
    v = value * factor
    return {"<=": v <= bound, "<": v < bound, ">=": v >= bound, ">": v > bound}[op]


# --------------------------------------------------------------------------- the table

def _lookup(rows: Mapping[str, Mapping[str, dict]], anchor: Anchor) -> tuple[str, dict] | None:
    for layer, name in anchor.rows:
        row = rows.get(layer, {}).get(name)
        if row is not None:
            return f"{layer}.{name}", row
    return None


def _in_anchor_unit(row: dict, anchor: Anchor) -> float | None:
    value = row.get(anchor.stat if anchor.stat in row else "median")
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value * _FACTORS.get((row.get("unit"), anchor.unit), 1.0)


def table(rows_by_layer: Mapping[str, Iterable[dict]]) -> list[dict[str, Any]]:
    """Every anchor beside the row that measures it here (``measured`` None when that row is missing)."""
    index = {layer: {r["name"]: r for r in rows} for layer, rows in rows_by_layer.items()}
    out = []
    for a in ANCHORS:
        found = _lookup(index, a)
        entry: dict[str, Any] = {"table": a.table, "operation": a.operation, "unit": a.unit, "anchor": a.value,
                                 "anchor_pi": a.pi, "row": found[0] if found else None, "measured": None,
                                 "ratio": None, "ratio_pi": None, "cpu_pct": None, "goal": None, "met": None,
                                 "note": a.note, "higher_is_better": a.higher_is_better}
        if found:
            name, row = found
            value = _in_anchor_unit(row, a)
            judged = {**row, "goal": row.get("goal") or GOALS.get(tuple(name.split(".", 1)))}
            entry.update(measured=value, cpu_pct=row.get("cpu_pct"), goal=judged["goal"], met=row_met(judged))
            if value is not None:
                entry["ratio"] = value / a.value
                entry["ratio_pi"] = value / a.pi if a.pi else None
        out.append(entry)
    return out
