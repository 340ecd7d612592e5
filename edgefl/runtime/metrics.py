"""In-process counters with labels: every rejected message is counted with its reason."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"{name}{{{inner}}}"


class Metrics:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # counters are bumped from asyncio and to_thread workers

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        with self._lock:
            self._counts[_key(name, labels)] += n

    @contextlib.contextmanager
    def timed(self, name: str, **labels: str):
        """Add the block's wall time to ``{name}_us`` (microseconds) and count it in ``{name}_n``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.inc(f"{name}_us", int((time.perf_counter() - t0) * 1e6), **labels)
            self.inc(f"{name}_n", **labels)

    def get(self, name: str, **labels: str) -> int:
        return self._counts.get(_key(name, labels), 0)

    def total(self, name: str) -> int:
        """Sum over every label combination of ``name``."""
        return sum(v for k, v in self._counts.items() if k == name or k.startswith(name + "{"))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


METRICS = Metrics()
