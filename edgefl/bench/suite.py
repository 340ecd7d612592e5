"""`edgefl bench all`: every layer's benchmark in one run, one report beside the published tables.

Each layer runs as its own ``edgefl bench LAYER --json …`` child process, so
a layer that crashes or leaks does not spoil the others, a board profile's
caps (CPU affinity, thread counts) apply to it exactly as to a node, and
every long benchmark stays runnable alone.  A layer that this build does not
have, or that fails, is a row in the report that says so, never a gap.

The run's JSON (``SCHEMA``) holds the machine, the profile, every layer's rows
and the published tables with their anchors (``edgefl.bench.published``);
``edgefl.bench.report`` turns it into Markdown, a self-contained HTML page and
PNG charts, and ``edgefl bench compare`` compares two of them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from edgefl.bench import published
from edgefl.bench.harness import machine

SCHEMA_VERSION = "edgefl.bench/1"
# every layer the report speaks of, in run order; one missing from this build says so
LAYERS = ("transport", "crypto", "accumulator", "ledger", "consensus", "ml", "round", "device", "scale")

# options a layer gets in `bench all` beyond --quick: the full run must fit in 45 minutes, so the ML
# accuracy grid runs one seed here (its own `edgefl bench ml` runs three)
FULL_OPTIONS: dict[str, list[tuple[str, ...]]] = {"ml": [("--seeds", "1")]}
PROFILE_NOTE = ("approximates, does not emulate, the board: its core count by CPU affinity (at most this "
                "machine's cores) and its thread counts; this machine's cores are faster than a Pi's, so compare "
                "the Pi column of each anchor with care")

# the JSON's shape: key -> type (a schema test keeps it stable; extend, never rename)
SCHEMA = {
    "top": {"schema": str, "created": str, "quick": bool, "profile": (dict, type(None)), "machine": dict,
            "seconds": float, "layers": list, "published": list},
    "layer": {"name": str, "status": str, "seconds": float, "rows": list, "error": str},
    "row": {"name": str, "unit": str, "median": (float, int, type(None)), "p99": (float, int, type(None))},
    "published": {"table": str, "operation": str, "unit": str, "anchor": float, "anchor_pi": (float, type(None)),
                  "row": (str, type(None)), "measured": (float, type(None)), "ratio": (float, type(None)),
                  "ratio_pi": (float, type(None)), "goal": (str, type(None)), "met": (bool, type(None))},
}


def check_schema(doc: dict) -> None:
    """Raise ValueError naming the first key that is missing or of the wrong type."""
    def need(obj: dict, spec: dict, where: str) -> None:
        for key, tp in spec.items():
            if key not in obj:
                raise ValueError(f"{where}.{key} is missing")
            if not isinstance(obj[key], tp) or (tp is float and isinstance(obj[key], bool)):
                raise ValueError(f"{where}.{key} is {type(obj[key]).__name__}, expected {tp}")

    need(doc, SCHEMA["top"], "report")
    if doc["schema"] != SCHEMA_VERSION:
        raise ValueError(f"report.schema is {doc['schema']!r}, expected {SCHEMA_VERSION!r}")
    for i, layer in enumerate(doc["layers"]):
        need(layer, SCHEMA["layer"], f"layers[{i}]")
        for j, row in enumerate(layer["rows"]):
            need(row, SCHEMA["row"], f"layers[{i}].rows[{j}]")
    for i, entry in enumerate(doc["published"]):
        need(entry, SCHEMA["published"], f"published[{i}]")


# --------------------------------------------------------------------------- board profiles


@dataclass(frozen=True)
class Caps:
    """A board's limits as this machine can impose them."""

    name: str
    model: str
    cores: int  # what the board has
    used_cores: int  # what the run gets: min(board, this machine)
    threads: int
    profile: str = ""  # the profile as named (layers that apply a board's settings themselves take it)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "cores": self.cores, "used_cores": self.used_cores,
                "threads": self.threads, "note": PROFILE_NOTE}

    def env(self) -> dict[str, str]:
        n = str(self.threads)
        return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "EDGEFL_ML__THREADS": n}

    def cpus(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))[:self.used_cores]


def board_caps(profile: str) -> Caps:
    from edgefl.runtime.config import load_config

    cfg = load_config(profile, env={})
    cores = cfg.board.cpu_cores or os.cpu_count() or 1
    used = max(1, min(cores, len(os.sched_getaffinity(0))))
    return Caps(cfg.board.name or Path(profile).stem, cfg.board.model, cores, used, max(1, min(cfg.ml.threads, used)),
                profile)


# --------------------------------------------------------------------------- running the layers


def _finite(value: Any) -> Any:
    """NaN and infinities as null: the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _layer_options(layer: str, quick: bool, caps: Caps | None, accepted: set[str]) -> list[str]:
    """The layer's arguments: --quick or the full run's options, the profile's threads; only those it accepts."""
    pairs = [("--quick",)] if quick else list(FULL_OPTIONS.get(layer, []))
    if caps is not None:
        pairs += [("--threads", str(caps.threads)), ("--profile", caps.profile)]
    return [word for pair in pairs if pair[0] in accepted for word in pair]


def _accepted_options() -> dict[str, set[str]]:
    """Each registered layer's option strings (so `all` passes only what a layer understands)."""
    import argparse

    from edgefl.bench import cli

    out = {}
    for name, module in cli.BENCHMARKS.items():
        p = argparse.ArgumentParser(add_help=False)
        cli.add_layer_arguments(p, module)
        out[name] = set(p._option_string_actions)
    return out


def run_layer(layer: str, args: Sequence[str], *, env: dict[str, str], cpus: list[int] | None,
              workdir: Path, tick: Callable[[float], None]) -> dict[str, Any]:
    out = workdir / f"{layer}.json"
    log = workdir / f"{layer}.log"
    cmd = [sys.executable, "-m", "edgefl", "bench", layer, "--json", str(out), *args]
    start = time.monotonic()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        while proc.poll() is None:
            tick(time.monotonic() - start)
            time.sleep(0.5)
    seconds = time.monotonic() - start
    entry: dict[str, Any] = {"name": layer, "status": "ok", "seconds": round(seconds, 2), "rows": [], "error": ""}
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        entry.update(status="failed", error=f"exit {proc.returncode}: " + " / ".join(tail)[-600:])
        return entry
    entry["rows"] = _finite(json.loads(out.read_text()))
    return entry


class Progress:
    """One status line per layer on a terminal (redrawn while it runs), plain lines otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.tty = total, stream, stream.isatty()
        self.started = time.monotonic()

    def tick(self, i: int, layer: str) -> Callable[[float], None]:
        def draw(elapsed: float) -> None:
            if self.tty:
                self.stream.write(f"\r[{i}/{self.total}] {layer} … {elapsed:5.0f} s "
                                  f"(total {time.monotonic() - self.started:5.0f} s)")
                self.stream.flush()
        return draw

    def done(self, i: int, entry: dict[str, Any]) -> None:
        what = f"{len(entry['rows'])} rows" if entry["status"] == "ok" else entry["status"]
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}[{i}/{self.total}] {entry['name']}: {what} in {entry['seconds']:.1f} s"
                          f"{' ' * 20}\n")
        self.stream.flush()


def run_all(*, quick: bool = False, profile: str | None = None, layers: Sequence[str] | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """Run the layers (all of ``LAYERS`` by default) and return the report document."""
    from edgefl.bench import cli

    chosen = list(layers or LAYERS)
    unknown = [name for name in chosen if name not in LAYERS]
    if unknown:
        raise ValueError(f"unknown layer(s) {', '.join(unknown)}; known: {', '.join(LAYERS)}")
    caps = board_caps(profile) if profile else None
    env = dict(os.environ, **(caps.env() if caps else {}))
    accepted = _accepted_options()
    progress = progress or Progress(len(chosen))
    started = time.monotonic()
    entries = []
    with tempfile.TemporaryDirectory(prefix="edgefl-bench-") as tmp:
        for i, layer in enumerate(chosen, 1):
            if layer not in cli.BENCHMARKS:
                entry = {"name": layer, "status": "missing", "seconds": 0.0, "rows": [],
                         "error": f"this build has no `edgefl bench {layer}`"}
            else:
                entry = run_layer(layer, _layer_options(layer, quick, caps, accepted[layer]), env=env,
                                  cpus=caps.cpus() if caps else None, workdir=Path(tmp),
                                  tick=progress.tick(i, layer))
            progress.done(i, entry)
            entries.append(entry)
    doc = {
        "schema": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "profile": caps.to_json() if caps else None,
        "machine": machine(),
        "seconds": round(time.monotonic() - started, 2),
        "layers": entries,
        "published": published.table({e["name"]: e["rows"] for e in entries}),
    }
    check_schema(doc)
    return doc
