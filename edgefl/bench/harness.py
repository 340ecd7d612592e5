"""Benchmark harness shared by every `edgefl bench …` program.

Per operation it records wall latency and process CPU time (so CPU % shows
whether an operation computes or waits), after a warm-up.  Two variants are
measured interleaved in blocks (A, B, A, B, …) so that drift on a shared,
noisy machine hits both alike, and reported side by side as a ratio.

Output: a console table, ``--json FILE`` (a list of rows with ``name``,
``unit``, ``median``, ``p99``, ``cpu_median`` and optional ``anchor``,
``ratio``, ``goal``, ``note`` and whatever further statistics a benchmark
puts in ``extra``) and ``--markdown FILE``.

Units: latency rows are milliseconds per operation; throughput rows are
operations per second, where ``p99`` is the rate of the slowest 1 % of runs;
``cpu_median`` is always CPU milliseconds per operation.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable


@dataclass
class Row:
    name: str
    unit: str
    median: float
    p99: float
    cpu_median: float | None = None
    anchor: float | None = None
    ratio: float | None = None
    goal: str | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # further statistics a benchmark reports (JSON only)

    @property
    def cpu_pct(self) -> float | None:
        if self.cpu_median is None or self.unit != "ms" or not self.median:
            return None
        return 100.0 * self.cpu_median / self.median

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and v != "" and k != "extra"}
        out.update(self.extra)
        if self.cpu_pct is not None:
            out["cpu_pct"] = round(self.cpu_pct, 1)
        return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Samples:
    """Per-operation wall and CPU seconds."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def extend(self, other: "Samples") -> None:
        self.wall += other.wall
        self.cpu += other.cpu

    def row(self, name: str, **extra: Any) -> Row:
        return Row(name, "ms", statistics.median(self.wall) * 1e3, percentile(self.wall, 99) * 1e3,
                   statistics.median(self.cpu) * 1e3, **extra)


def measure(fn: Callable[[], Any], *, iterations: int = 100, warmup: int = 5) -> Samples:
    for _ in range(warmup):
        fn()
    s = Samples()
    for _ in range(iterations):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        s.add(time.perf_counter() - t0, time.process_time() - c0)
    return s


async def ameasure(fn: Callable[[], Awaitable[Any]], *, iterations: int = 100, warmup: int = 5) -> Samples:
    for _ in range(warmup):
        await fn()
    s = Samples()
    for _ in range(iterations):
        c0, t0 = time.process_time(), time.perf_counter()
        await fn()
        s.add(time.perf_counter() - t0, time.process_time() - c0)
    return s


async def ab(a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]], *, iterations: int = 100,
             warmup: int = 5, blocks: int = 10) -> tuple[Samples, Samples]:
    """Measure two async operations interleaved in ``blocks`` alternating blocks."""
    sa, sb = Samples(), Samples()
    per = max(1, iterations // blocks)
    for i in range(blocks):
        first, second = (a, b) if i % 2 == 0 else (b, a)  # alternate who goes first, too
        r1 = await ameasure(first, iterations=per, warmup=warmup if i < 2 else 0)
        r2 = await ameasure(second, iterations=per, warmup=warmup if i < 2 else 0)
        (sa if first is a else sb).extend(r1)
        (sb if first is a else sa).extend(r2)
    return sa, sb


def interleave(fns: dict[str, Callable[[], Any]], *, rounds: int = 10, per_round: int = 1,
               warmup: int = 1) -> dict[str, Samples]:
    """Measure several synchronous operations in turn for ``rounds`` rounds, rotating who goes first.

    The blocking counterpart of ``ab`` for more than two variants: drift on
    a shared machine hits every variant alike, so their ratios stay honest.
    """
    names = list(fns)
    out = {name: Samples() for name in names}
    for name in names:
        for _ in range(warmup):
            fns[name]()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].extend(measure(fns[name], iterations=per_round, warmup=0))
    return out


def ratio_row(name: str, a: Row, b: Row, *, goal: str | None = None, note: str = "") -> Row:
    """Row comparing ``a`` to ``b`` (a / b) for every statistic; lower is better for latencies."""

    def div(x, y):
        return x / y if x is not None and y else None

    r = div(a.median, b.median)
    return Row(name, "ratio", r, div(a.p99, b.p99), div(a.cpu_median, b.cpu_median), ratio=r, goal=goal, note=note)


def throughput_row(name: str, rates: list[float], cpu_per_op: list[float], **extra: Any) -> Row:
    """Rows for runs that each report operations/second and CPU seconds/operation."""
    return Row(name, "ops/s", statistics.median(rates), percentile(rates, 1),
               statistics.median(cpu_per_op) * 1e3, **extra)


def machine() -> dict[str, Any]:
    from edgefl import __version__, native

    return {
        "edgefl": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "native": native.implementations(),
    }


class Report:
    def __init__(self, title: str):
        self.title = title
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def _cells(self, r: Row) -> list[str]:
        def f(v, digits=3):
            if v is None:
                return "-"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}" if abs(v) < 0.01 else f"{v:.{digits}f}"

        cpu_pct = r.cpu_pct
        return [r.name, r.unit, f(r.median), f(r.p99), f(r.cpu_median), "-" if cpu_pct is None else f"{cpu_pct:.0f}%",
                f(r.anchor), f(r.ratio), r.goal or "", r.note]

    HEADER = ["name", "unit", "median", "p99", "cpu/op ms", "cpu %", "anchor", "ratio", "goal", "note"]

    def table(self) -> str:
        rows = [self.HEADER] + [self._cells(r) for r in self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.HEADER))]
        lines = [self.title, "  ".join(h.ljust(w) for h, w in zip(rows[0], widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows[1:]]
        return "\n".join(line.rstrip() for line in lines)

    def markdown(self) -> str:
        m = machine()
        out = [f"### {self.title}", "",
               f"edgefl {m['edgefl']}, Python {m['python']}, {m['machine']} × {m['cpus']}, {m['system']}, "
               f"extensions: {', '.join(f'{k}={v}' for k, v in m['native'].items()) or 'none loaded'}", "",
               "| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in self._cells(r)) + " |" for r in self.rows]
        return "\n".join(out) + "\n"

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps([r.to_json() for r in self.rows], indent=2) + "\n")

    def emit(self, *, json_path: str | None = None, markdown_path: str | None = None, stream=None) -> None:
        print(self.table(), file=stream)
        if json_path:
            self.write_json(json_path)
        if markdown_path:
            Path(markdown_path).write_text(self.markdown())
