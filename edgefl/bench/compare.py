"""`edgefl bench compare A.json B.json`: row-by-row ratios between two runs.

Before/after a change, compiled vs ``EDGEFL_NO_EXTENSIONS=1``, two machines.
A change is flagged only when it is larger than the spread each run showed
for that row (its p99 against its median) and never when it is within
``MIN_CHANGE``: a 5 % wobble on a shared machine is not a regression.

Either file may be one layer's ``--json`` (a list of rows) or a
``bench all`` report (rows per layer, compared as ``layer.name``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MIN_CHANGE = 0.10  # changes within ±10 % are never flagged, whatever the spread
LOWER_IS_BETTER = {"ms", "s"}
HIGHER_IS_BETTER = {"ops/s", "tx/s", "MB/h", "%"}


def load(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows by name from a layer's JSON list or a `bench all` report."""
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, list):
        return {r["name"]: r for r in doc}
    if isinstance(doc, dict) and isinstance(doc.get("layers"), list):
        return {f"{layer['name']}.{r['name']}": r for layer in doc["layers"] for r in layer.get("rows", [])}
    raise ValueError(f"{path}: neither a benchmark's rows nor a `bench all` report")


def _value(row: dict, key: str) -> float | None:
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v != 0 else None


def spread(row: dict) -> float:
    """How far the run's slow tail sat from its median for this row, as a factor ≥ 1."""
    median, p99 = _value(row, "median"), _value(row, "p99")
    if median is None or p99 is None:
        return 1.0
    f = p99 / median
    return max(f, 1 / f) if f > 0 else 1.0


def compare(a: dict[str, dict], b: dict[str, dict]) -> list[dict[str, Any]]:
    """One entry per row both runs have: ratio B/A of the medians, the threshold, and a verdict."""
    out = []
    for name in [n for n in a if n in b]:
        ra, rb = a[name], b[name]
        ma, mb = _value(ra, "median"), _value(rb, "median")
        entry: dict[str, Any] = {"name": name, "unit": ra.get("unit", ""), "a": ra.get("median"),
                                 "b": rb.get("median"), "ratio": None, "threshold": None, "verdict": "n/a"}
        if ma is None or mb is None or ra.get("unit") != rb.get("unit"):
            out.append(entry)
            continue
        ratio = mb / ma
        threshold = max(spread(ra), spread(rb), 1 + MIN_CHANGE)
        entry.update(ratio=ratio, threshold=threshold)
        if 1 / threshold <= ratio <= threshold:
            entry["verdict"] = "same"
        elif entry["unit"] in LOWER_IS_BETTER:
            entry["verdict"] = "worse" if ratio > 1 else "better"
        elif entry["unit"] in HIGHER_IS_BETTER:
            entry["verdict"] = "better" if ratio > 1 else "worse"
        else:
            entry["verdict"] = "changed"  # a ratio or count: which way is better depends on the row
        out.append(entry)
    return out


def table(result: list[dict[str, Any]], a_name: str = "A", b_name: str = "B") -> str:
    def f(v):
        return "-" if v is None else f"{v:.4g}"

    head = ["row", "unit", a_name, b_name, "B/A", "flag beyond", "verdict"]
    rows = [head] + [[r["name"], r["unit"], f(r["a"]), f(r["b"]), f(r["ratio"]),
                      "-" if r["threshold"] is None else f"×{r['threshold']:.2f}", r["verdict"]] for r in result]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    flagged = [r for r in result if r["verdict"] in ("worse", "better", "changed")]
    lines.append(f"{len(result)} rows compared, {len(flagged)} beyond their spread "
                 f"({sum(r['verdict'] == 'worse' for r in result)} worse)")
    return "\n".join(lines)
