"""A scenario's interface, its result (PASS/FAIL and figures) and the runner."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from edgefl.chaos import scenario_class
from edgefl.chaos.checks import Tally


@dataclass
class Result:
    scenario: str
    seed: int
    short: bool
    faults: int = 0
    seconds: float = 0.0
    tally: Tally = field(default_factory=Tally)
    figures: dict = field(default_factory=dict)  # the scenario's own, by name
    error: str | None = None  # what ended the scenario before its checks

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.tally.checks) and self.tally.ok and not (
            self.tally.lost or self.tally.duplicates)

    def summary(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.figures.items())
        return (f"{'PASS' if self.passed else 'FAIL'} {self.scenario} (seed {self.seed}{', short' if self.short else ''}): "
                f"faults injected {self.faults}, messages lost {self.tally.lost}, duplicates {self.tally.duplicates}"
                f"{extra}, {self.seconds:.1f} s")

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "seed": self.seed, "short": self.short, "passed": self.passed,
                "faults": self.faults, "lost": self.tally.lost, "duplicates": self.tally.duplicates,
                "seconds": round(self.seconds, 2), "figures": self.figures, "error": self.error,
                "checks": [{"what": c.what, "ok": c.ok, "detail": c.detail} for c in self.tally.checks]}


class Scenario:
    """One fault story.  ``run()`` injects the faults (counting them in ``result.faults``) and fills
    ``result.tally`` with its checks; whatever it starts it stops, on failure too."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, *, seed: int, short: bool, workdir: Path, say: Callable[[str], None]):
        self.seed, self.short, self.workdir, self.say = seed, short, workdir, say
        self.rng = random.Random(f"{self.name}/{seed}")
        self.result = Result(self.name, seed, short)

    def run(self) -> None:
        raise NotImplementedError


def run_scenario(name: str, *, seed: int = 1, short: bool = False, workdir: str | Path | None = None,
                 say: Callable[[str], None] = print) -> Result:
    """Run one scenario; its working folder (logs, chains) is removed after a PASS and kept after a FAIL."""
    cls = scenario_class(name)
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix=f"edgefl-chaos-{name}-")) if own else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    scenario = cls(seed=seed, short=short, workdir=folder, say=say)
    say(f"chaos {name} (seed {seed}{', short' if short else ''}): {cls.summary}")
    t0 = time.perf_counter()
    try:
        scenario.run()
    except Exception as exc:  # the scenario's own cleanup ran (context managers); report, do not hide
        scenario.result.error = f"{type(exc).__name__}: {exc}"
        say(traceback.format_exc().rstrip())
    result = scenario.result
    result.seconds = time.perf_counter() - t0
    for c in result.tally.checks:
        say(f"  {'ok ' if c.ok else 'BAD'} {c.what}" + (f": {c.detail}" if c.detail else ""))
    if result.error:
        say(f"  error: {result.error}")
    say(result.summary())
    if own and result.passed:
        shutil.rmtree(folder, ignore_errors=True)
    elif not result.passed:
        say(f"  logs and chains kept in {folder}")
    return result


def write_json(path: str | Path, results: list[Result]) -> None:
    Path(path).write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
