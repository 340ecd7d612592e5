"""In-process counters with labels: every rejected message is counted with its reason.

``prometheus_text()`` renders them, with the process's memory and CPU, in the
Prometheus text exposition format (what every fleet monitor reads), and
``serve()`` answers ``GET /metrics`` with it on a local port
(``metrics.port``; off on devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections import Counter
from typing import Iterator

log = logging.getLogger("edgefl.metrics")


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"{name}{{{inner}}}"


class Metrics:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._labels: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}  # key -> (name, sorted labels)
        self._lock = threading.Lock()  # counters are bumped from asyncio and to_thread workers

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        key = _key(name, labels)
        with self._lock:
            self._counts[key] += n
            if key not in self._labels:
                self._labels[key] = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))

    @contextlib.contextmanager
    def timed(self, name: str, **labels: str) -> Iterator[None]:
        """Add the block's wall time to ``{name}_us`` (microseconds) and count it in ``{name}_n``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.inc(f"{name}_us", int((time.perf_counter() - t0) * 1e6), **labels)
            self.inc(f"{name}_n", 1, **labels)

    def get(self, name: str, **labels: str) -> int:
        return self._counts.get(_key(name, labels), 0)

    def total(self, name: str) -> int:
        """Sum over every label combination of ``name``."""
        return sum(v for k, v in self._counts.items() if k == name or k.startswith(name + "{"))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def series(self) -> list[tuple[str, tuple[tuple[str, str], ...], int]]:
        """(name, labels, count) of every counter, by name."""
        with self._lock:
            return sorted((*self._labels[k], v) for k, v in self._counts.items())


METRICS = Metrics()


# --------------------------------------------------------------------------- Prometheus text format

PREFIX = "edgefl_"
STARTED = time.time()
MAX_REQUEST = 8192  # a scrape is one short GET; anything longer is refused
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    name = _NAME_BAD.sub("_", name)
    return name if name[:1].isalpha() or name[:1] == "_" else f"_{name}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _process() -> list[tuple[str, str, str, float]]:
    """(name, type, help, value) of the process's own gauges and counters, the client libraries' names."""
    cpu = os.times()
    out = [("process_cpu_seconds_total", "counter", "user and system CPU time", cpu.user + cpu.system),
           ("process_start_time_seconds", "gauge", "start of the process, Unix time", STARTED)]
    try:
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        out.append(("process_resident_memory_bytes", "gauge", "resident memory",
                    int(status["VmRSS"].split()[0]) * 1024))
        out.append((f"{PREFIX}process_peak_resident_memory_bytes", "gauge", "the most memory ever resident",
                    int(status["VmHWM"].split()[0]) * 1024))
    except (OSError, KeyError, ValueError):
        pass
    return out


def prometheus_text(metrics: Metrics = METRICS) -> str:
    """Every counter as ``edgefl_<name>_total{label="value"}``, and the process's gauges (format 0.0.4)."""
    lines: list[str] = []
    last = None
    for name, labels, value in metrics.series():
        metric = f"{PREFIX}{_metric_name(name)}_total"
        if metric != last:
            lines += [f"# HELP {metric} edgefl counter {name}", f"# TYPE {metric} counter"]
            last = metric
        inner = ",".join(f'{_metric_name(k)}="{_escape(v)}"' for k, v in labels)
        lines.append(f"{metric}{{{inner}}} {value}" if inner else f"{metric} {value}")
    for metric, kind, text, reading in _process():
        number = str(int(reading)) if float(reading).is_integer() else repr(float(reading))
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", f"{metric} {number}"]
    return "\n".join(lines) + "\n"


async def serve(bind: str, port: int, metrics: Metrics = METRICS, *, ready: asyncio.Event | None = None) -> None:
    """Answer ``GET /metrics`` on ``bind:port`` until cancelled; a port already taken is logged, not fatal."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await _request(reader, metrics)
            head = (f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(answer, bind, port, limit=MAX_REQUEST)
    except OSError as exc:
        metrics.inc("metrics_http_unavailable")
        log.warning("metrics: cannot listen on %s:%d (%s); not served", bind, port, exc.strerror)
        return
    log.info("metrics on http://%s:%d/metrics", bind, port)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


async def _request(reader: asyncio.StreamReader, metrics: Metrics) -> tuple[str, bytes]:
    def refuse(reason: str, status: str) -> tuple[str, bytes]:
        metrics.inc("metrics_http_rejected", reason=reason)
        return status, f"{status}\n".encode()

    try:
        async with asyncio.timeout(5):
            line = await reader.readline()
            size = len(line)
            while True:  # the headers: read and dropped, within the size limit
                header = await reader.readline()
                size += len(header)
                if header in (b"\r\n", b"\n", b"") or size > MAX_REQUEST:
                    break
    except TimeoutError:
        return refuse("timeout", "408 Request Timeout")
    except (ValueError, asyncio.LimitOverrunError):  # a line beyond the reader's limit
        return refuse("too_large", "431 Request Header Fields Too Large")
    if size > MAX_REQUEST:
        return refuse("too_large", "431 Request Header Fields Too Large")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return refuse("malformed", "400 Bad Request")
    if parts[0] != "GET":
        return refuse("method", "405 Method Not Allowed")
    if parts[1].split("?")[0] != "/metrics":
        return refuse("not_found", "404 Not Found")
    return "200 OK", prometheus_text(metrics).encode()
