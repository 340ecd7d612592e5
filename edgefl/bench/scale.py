"""One fog serving many devices: how the cost of a round grows with the devices per fog.

For each ``--devices`` count n (10, 50, 100, 200, 500, 1,000; ``--quick``:
10 and 50) a site runs a ``--rounds`` task through a real Mosquitto: the
cloud and the fog each in their own process, the n devices as MQTT sessions
across ``ceil(n / --per-process)`` processes (each device a full node:
its key, data directory, extractor, accountant and session).  The fog waits
for every device each round.  Measured at each round's end (the cloud's
next global model), per steady round (every round after round 0, averaged):

* ``round_s``: wall time; ``round_cpu_s``: CPU of every process (devices,
  fog, cloud, broker); ``fog_cpu_s``: the fog's alone;
* ``fog_peak_mb`` / ``fog_rss_mb``: the fog's peak and end-of-round RSS
  (``fog_round0_peak_mb``: its peak in round 0, with the warm start);
* ``deliveries`` / ``broker_mb``: PUBLISH packets and bytes the broker
  sent (its ``$SYS`` counters come every second: read at each model's
  arrival by interpolating between the updates around it; the bench's own
  ``$SYS`` deliveries taken off);
* ``blob_mb_per_device_round``, ``blob_fsyncs_per_device_round``: what the
  fog's blob store grew by and the fsyncs its writes cost;
* ``record_wait_s``: the total time device threads waited for their records
  (privacy spend, data collected) to be durable on the fog's chain;
* ``round0_s``, ``warm_start_s``; ``reconnects``, ``stale`` (envelopes
  refused as too old) and ``request_timeouts`` summed over every process;
* after the run, ``ledger verify`` of the fog's chain: ``verify_ms_per_block``
  and ``chain_blocks``.

Each figure's growth exponent is the slope of log(figure) on log(n), least
squares over the counts measured (1: linear).  The goals: the per-device
round at the largest n within 1.2× the one at 100, ≤ 10 broker deliveries
per device, ``ledger verify`` ≤ 1 ms per block, the fog's RSS growing by
≤ 2 MB per device, no reconnects or stale envelopes, every round completed.

The dense head is 3920-20-10 (``--hidden``) with 16 items per device, one
step each: the default 3920-100-30-20-10 model makes 1,000 devices a round
of hours on 2 cores.  Block, anchor and beacon intervals are the profile
defaults (1 s, 10 s, 10 s); ``--fast`` takes the one-machine site's (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

from edgefl.bench.harness import Report, Row

DEVICES = (10, 50, 100, 200, 500, 1000)
QUICK = (10, 50)
SYS_TOPICS = {"$SYS/broker/publish/messages/sent": "sent", "$SYS/broker/publish/bytes/sent": "bytes"}
MB = 1 << 20

# figure -> (unit, what it is); the rows are scale_<figure>_n<n> and scale_<figure>_exponent
FIGURES: dict[str, tuple[str, str]] = {
    "round_s": ("s", "steady round, wall"),
    "round_per_device_ms": ("ms", "steady round per device, wall"),
    "round_cpu_s": ("s", "CPU per steady round, every process"),
    "fog_cpu_s": ("s", "the fog's CPU per steady round"),
    "fog_peak_mb": ("MB", "the fog's peak RSS in a steady round"),
    "fog_rss_mb": ("MB", "the fog's RSS at the end of a steady round"),
    "fog_round0_peak_mb": ("MB", "the fog's peak RSS in round 0 (warm start)"),
    "deliveries": ("msgs", "PUBLISH packets the broker sent per steady round"),
    "deliveries_per_device": ("msgs", "broker deliveries per device per steady round"),
    "broker_mb": ("MB", "bytes the broker sent per steady round"),
    "blob_mb_per_device_round": ("MB", "growth of the fog's blob store per device per steady round"),
    "blob_fsyncs_per_device_round": ("fsyncs", "fsyncs of the fog's blob writes per device per steady round"),
    "record_wait_s": ("s", "device threads' total wait for their records per steady round"),
    "round0_s": ("s", "round 0, wall (with the warm start and every device's first fetch)"),
    "warm_start_s": ("s", "the fog's warm start (round 0)"),
    "verify_ms_per_block": ("ms", "`ledger verify` of the fog's chain after the run, per block"),
    "verify_ms_per_tx": ("ms", "`ledger verify` of the fog's chain after the run, per transaction"),
    "chain_blocks": ("blocks", "the fog's chain after the run"),
    "chain_txs": ("txs", "the fog's chain after the run"),
}
# summed over every process from round 0 on: goal 0
COUNT_METRICS = {"reconnects": "mqtt_reconnect", "stale": "envelope_rejected{reason=stale}",
                 "request_timeouts": "request_timeout"}


def add_arguments(p) -> None:
    p.add_argument("--devices", type=lambda t: [int(v) for v in t.split(",")],
                   help=f"devices per fog (default {','.join(map(str, DEVICES))}; --quick {','.join(map(str, QUICK))})")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the task (default 2: round 0 and one steady)")
    p.add_argument("--hidden", default="20", help="the dense head's hidden widths (default 20: 3920-20-10)")
    p.add_argument("--items", type=int, default=16, help="items per device (default 16, one batch)")
    p.add_argument("--per-process", type=int, default=125, help="devices per device process (default 125)")
    p.add_argument("--fast", action="store_true", help="the one-machine site's short block and anchor intervals")
    p.add_argument("--point-timeout", type=float, default=5400.0, help="give up on a count after this many seconds")
    p.add_argument("--keep", metavar="DIR", help="keep each count's site, logs and figures under DIR")


async def run(*, quick: bool = False, devices: list[int] | None = None, rounds: int = 2, hidden: str = "20",
              items: int = 16, per_process: int = 125, fast: bool = False, point_timeout: float = 5400.0,
              keep: str | None = None, **_) -> Report:
    counts = devices or list(QUICK if quick else DEVICES)
    widths = [int(w) for w in str(hidden).split(",") if w.strip()]
    points = []
    for n in counts:
        with _workdir(keep, n) as work:
            point = await measure(n, work, rounds=rounds, hidden=widths, items=items, per_process=per_process,
                                  fast=fast, timeout_s=point_timeout)
            # each round's figures, what every receiver got by topic kind among them (kept with --keep)
            (work / "figures.json").write_text(json.dumps(point, indent=1, default=float))
        points.append(point)
        print(f"scale: {n} devices: " + ", ".join(f"{k} {v:.4g}" for k, v in point["figures"].items()
                                                  if v is not None), file=sys.stderr, flush=True)
    return report_of(points, head=[3920, *widths, 10])


@contextlib.contextmanager
def _workdir(keep: str | None, n: int):
    if keep:
        path = Path(keep) / f"n{n}"
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix=f"edgefl-bench-scale-{n}-") as tmp:
            yield Path(tmp)


# --------------------------------------------------------------------------- one count of devices


async def measure(n: int, work: Path, *, rounds: int, hidden: list[int], items: int, per_process: int,
                  fast: bool, timeout_s: float) -> dict[str, Any]:
    """Run the site with ``n`` devices for ``rounds`` rounds; returns {"devices", "rounds": [...], "figures"}."""
    from edgefl.nodes.site import LocalSite
    from edgefl.transport.mosquitto import LocalMosquitto

    devices = [f"dev-{i:04d}" for i in range(n)]
    intervals = [] if fast else ["ledger.block_interval_s=1.0", "ledger.anchor_interval_s=10",
                                 "ledger.beacon_interval_s=10", "mqtt.reconnect_min_s=0.2",
                                 "mqtt.reconnect_max_s=30"]
    settings = [f"fl.rounds={rounds}", f"fl.hidden=[{','.join(map(str, hidden))}]", f"fl.items={items}",
                f"ml.batch_size={items}", "ml.local_epochs=1", "ml.epsilon_budget=1000",
                f"fl.round_timeout_s={timeout_s}", *intervals]
    broker = LocalMosquitto(work / "broker")
    broker.conf.write_text(broker.conf.read_text() + "sys_interval 1\n")  # the $SYS counters every second
    with broker:
        site = LocalSite(work / "site", broker.port, {"fog-1": devices}, clients=("watcher",), settings=settings,
                         per_node={"cloud-1": ["fl.items=200"]})
        procs = Processes(work, site)
        try:
            procs.spawn("fog", ["fog-1"], "INFO")
            for i in range(0, n, per_process):
                procs.spawn(f"devices-{i // per_process}", devices[i:i + per_process], "WARNING")
            await procs.ready(timeout=max(120.0, n * 0.5))
            async with _Watch(site, broker.port) as watch:
                procs.spawn("cloud", ["cloud-1"], "INFO")
                procs.pids["broker"] = broker.proc.pid
                snaps = await _rounds(watch, procs, site, rounds, timeout_s)
        finally:
            procs.stop()
        verify = _verify(site)
    return summarise(n, snaps, verify, rounds)


class Processes:
    """The site's node processes (``python -m edgefl.bench.scale worker SPEC``), their logs and metrics files."""

    def __init__(self, work: Path, site):
        self.work, self.site = work, site
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}
        self.specs: dict[str, dict] = {}

    def spawn(self, name: str, nodes: list[str], log_level: str) -> None:
        spec = {"nodes": {node: self.site.overrides[node] for node in nodes}, "log_level": log_level,
                "metrics": str(self.work / f"{name}.metrics.json"), "ready": str(self.work / f"{name}.ready")}
        path = self.work / f"{name}.spec.json"
        path.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(self.work / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "edgefl.bench.scale", "worker", str(path)],
                                                stdout=log, stderr=subprocess.STDOUT, env=env)
        self.pids[name] = self.procs[name].pid
        self.specs[name] = spec

    async def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(Path(s["ready"]).exists() for s in self.specs.values()):
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"node processes not connected within {timeout:.0f} s")
            await asyncio.sleep(0.2)

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace").splitlines()[-8:]
                raise RuntimeError(f"{name} exited with {p.returncode}: " + " / ".join(tail)[-800:])

    def metrics(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, s in self.specs.items():
            with contextlib.suppress(FileNotFoundError, ValueError):
                out[name] = json.loads(Path(s["metrics"]).read_text())
        return out

    def stop(self, grace_s: float = 60.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class _Watch:
    """The cloud's global models (a watcher's session) and the broker's $SYS counters (a plain MQTT client)."""

    def __init__(self, site, port: int):
        self.site, self.port = site, port
        self.models: asyncio.Queue = asyncio.Queue()
        self.sys: dict[str, int] = {}
        self.sys_msgs = 0  # $SYS messages delivered to this watcher: taken off the broker's count
        # every update of each counter as (arrival time, value); "sys" is, at each "sent" update, how many $SYS
        # messages this watcher had before it: the ones that count includes (one connection, in order)
        self.series: dict[str, list[tuple[float, int]]] = {"sent": [], "bytes": [], "sys": []}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        import aiomqtt

        from edgefl.fl import protocol  # noqa: F401  (registers the message types the watcher reads)
        from edgefl.transport import topics

        session = await self._stack.enter_async_context(self.site.session("watcher"))
        sub = await self._stack.enter_async_context(session.subscribe(topics.pattern(node=self.site.cloud,
                                                                                     kind="model")))
        client = await self._stack.enter_async_context(aiomqtt.Client("127.0.0.1", self.port,
                                                                      identifier="bench-scale-sys"))
        for topic in SYS_TOPICS:
            await client.subscribe(topic)
        self._tasks = [asyncio.create_task(self._models(sub)), asyncio.create_task(self._sys(client))]
        return self

    async def _models(self, sub) -> None:
        async for rx in sub:
            await self.models.put((time.monotonic(), rx.message))

    async def _sys(self, client) -> None:
        async for m in client.messages:
            with contextlib.suppress(ValueError, KeyError):
                name, t = SYS_TOPICS[str(m.topic)], time.monotonic()
                self.sys[name] = int(m.payload)
                self.series[name].append((t, int(m.payload)))
                if name == "sent":
                    self.series["sys"].append((t, self.sys_msgs))
            self.sys_msgs += 1

    def broker_at(self, t: float) -> dict:
        """The broker's counters at time ``t``, interpolated between the $SYS updates around it: they come
        once a second, and a round can be shorter than that."""
        def at(points: list[tuple[float, int]]) -> float:
            before = [p for p in points if p[0] <= t]
            after = [p for p in points if p[0] > t]
            if not before or not after:
                return float((before or after or [(t, 0)])[-1 if before else 0][1])
            (t0, v0), (t1, v1) = before[-1], after[0]
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

        return {"broker": {k: at(self.series[k]) for k in SYS_TOPICS.values()}, "sys_msgs": at(self.series["sys"])}

    async def update_after(self, t: float, timeout: float = 5.0) -> None:
        """Wait for a "sent" and a "bytes" update later than ``t`` (so ``broker_at(t)`` interpolates)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not all(self.series[k] and self.series[k][-1][0] > t for k in SYS_TOPICS.values()):
                    await asyncio.sleep(0.05)

    async def __aexit__(self, *exc) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()


def _cpu_s(pid: int) -> float:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB; VmHWM is the peak since start or the last reset."""
    out = {}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)


def _reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, f)).st_size
    return total


async def _rounds(watch: _Watch, procs: Processes, site, rounds: int, timeout_s: float) -> list[dict]:
    """A snapshot when each global model is published (round 0 … ``rounds``): times, CPU, RSS, counters."""
    fog_pid = procs.pids["fog"]
    blob_dir = site.cfgs["fog-1"].path(site.cfgs["fog-1"].ledger.blob_dir)
    snaps: list[dict] = []
    deadline = time.monotonic() + timeout_s
    seen = -1
    while seen < rounds:
        try:
            t, model = await asyncio.wait_for(watch.models.get(), timeout=5.0)
        except TimeoutError:
            procs.check()
            if time.monotonic() > deadline:
                break
            continue
        if model.round <= seen:
            continue
        seen = model.round
        rss, hwm = _rss_mb(fog_pid)
        _reset_peak(fog_pid)
        snaps.append({"round": model.round, "t": t, "cpu": {k: _cpu_s(p) for k, p in procs.pids.items()},
                      "fog_rss_mb": rss, "fog_peak_mb": hwm, "blob_bytes": _tree_bytes(blob_dir),
                      "metrics": procs.metrics(), "accuracy": model.accuracy})
    await asyncio.sleep(1.5)  # one more metrics dump for the last round
    if snaps:
        snaps[-1].update(metrics=procs.metrics())
        await watch.update_after(snaps[-1]["t"])
    for snap in snaps:  # the broker's counters at each model's arrival
        snap.update(watch.broker_at(snap["t"]))
    return snaps


def _verify(site) -> dict[str, float]:
    from edgefl.ledger.chain import Chain
    from edgefl.ledger.service import db_path, registry_for

    cfg = site.cfgs["fog-1"]
    with contextlib.closing(Chain.open(db_path(cfg), registry=registry_for(cfg))) as chain:
        t0 = time.perf_counter()
        blocks = chain.verify()
        seconds = time.perf_counter() - t0
        txs = chain.store.db.execute("SELECT COUNT(*) FROM txs").fetchone()[0]
    return {"verify_s": seconds, "blocks": blocks, "txs": txs}


# --------------------------------------------------------------------------- figures


def _metric(m: dict[str, dict[str, int]], name: str, procs: str = "") -> int:
    """``name`` (every label) summed over the processes whose name starts with ``procs``."""
    return sum(v for p, snap in m.items() if p.startswith(procs)
               for k, v in snap.items() if k == name or k.startswith(name + "{"))


def _delta(a: dict, b: dict, name: str, procs: str = "") -> int:
    return _metric(b["metrics"], name, procs) - _metric(a["metrics"], name, procs)


def round_figures(n: int, a: dict, b: dict) -> dict[str, float]:
    """The figures of the round between snapshots ``a`` and ``b``."""
    wall = b["t"] - a["t"]
    cpu = {k: b["cpu"].get(k, 0.0) - a["cpu"].get(k, 0.0) for k in b["cpu"]}
    sent = b["broker"].get("sent", 0) - a["broker"].get("sent", 0) - (b["sys_msgs"] - a["sys_msgs"])
    return {
        "round": a["round"], "round_s": wall, "round_per_device_ms": 1e3 * wall / n,
        "round_cpu_s": sum(cpu.values()), "fog_cpu_s": cpu.get("fog", 0.0),
        "device_cpu_s": sum(v for k, v in cpu.items() if k.startswith("devices")),
        "cloud_cpu_s": cpu.get("cloud", 0.0), "broker_cpu_s": cpu.get("broker", 0.0),
        "fog_peak_mb": b["fog_peak_mb"], "fog_rss_mb": b["fog_rss_mb"],
        "deliveries": sent, "deliveries_per_device": sent / n,
        "broker_mb": (b["broker"].get("bytes", 0) - a["broker"].get("bytes", 0)) / MB,
        "blob_mb_per_device_round": (b["blob_bytes"] - a["blob_bytes"]) / MB / n,
        "blob_fsyncs_per_device_round": _delta(a, b, "blob_fsync", "fog") / n,
        "record_wait_s": _delta(a, b, "ledger_record_wait_us", "devices") / 1e6,
        "warm_start_s": _delta(a, b, "fl_warm_start_us", "fog") / 1e6,
        "train_s": _delta(a, b, "fl_train_us", "fog") / 1e6,
        "received_per_device": _received(a["metrics"], b["metrics"], n),
    }


def _received(a: dict, b: dict, n: int) -> dict[str, float]:
    """Messages received per device in the round by receiver and topic kind: ``devices <- fog/block`` is the
    devices' sessions receiving the fog's block broadcasts (where the broker's deliveries go)."""
    out: dict[str, float] = {}
    for proc, snap in b.items():
        for key, v in snap.items():
            if key.startswith("mqtt_received{kind="):
                name = f"{proc.split('-')[0]} <- {key[len('mqtt_received{kind='):-1]}"
                out[name] = out.get(name, 0.0) + (v - a.get(proc, {}).get(key, 0)) / n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def summarise(n: int, snaps: list[dict], verify: dict[str, float], rounds_asked: int) -> dict[str, Any]:
    rounds = [round_figures(n, a, b) for a, b in itertools.pairwise(snaps)]
    steady = rounds[1:]
    figures: dict[str, float | None] = {}
    for key in FIGURES:
        values = [r[key] for r in steady if key in r]
        figures[key] = sum(values) / len(values) if values else None
    figures["round0_s"] = rounds[0]["round_s"] if rounds else None
    figures["fog_round0_peak_mb"] = rounds[0]["fog_peak_mb"] if rounds else None
    # once per task, in round 0: read from the last snapshot, whose metrics were dumped after the run (a
    # round can be shorter than the half second between dumps, so round 1's snapshot may predate it)
    figures["warm_start_s"] = _delta(snaps[0], snaps[-1], "fl_warm_start_us", "fog") / 1e6 if rounds else None
    figures["verify_ms_per_block"] = 1e3 * verify["verify_s"] / max(1, verify["blocks"])
    figures["verify_ms_per_tx"] = 1e3 * verify["verify_s"] / max(1, verify["txs"])
    figures["chain_blocks"] = verify["blocks"]
    figures["chain_txs"] = verify["txs"]
    # from round 0's start: what a node met while the others were still starting is not load
    first, last = (snaps[0]["metrics"], snaps[-1]["metrics"]) if snaps else ({}, {})
    counts = {key: _metric(last, name) - _metric(first, name) for key, name in COUNT_METRICS.items()}
    return {"devices": n, "rounds_asked": rounds_asked, "rounds_completed": len(rounds), "rounds": rounds,
            "figures": figures, "counts": counts, "verify": verify, "accuracy": snaps[-1]["accuracy"] if snaps else None}


def growth_exponent(ns: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log n (None with fewer than two positive points)."""
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if y is not None and y > 0 and n > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def report_of(points: list[dict], *, head: list[int]) -> Report:
    """Rows ``scale_<figure>_n<n>`` and ``scale_<figure>_exponent``, the counts and the goal rows."""
    from edgefl.bench.published import goal_for

    report = Report("edgefl bench scale")

    def add(name: str, unit: str, value: Any, note: str, **kw) -> None:
        report.add(Row(name, unit, _num(value), _num(value), goal=goal_for("scale", name), note=note, **kw))

    model = "-".join(map(str, head))
    ns = [p["devices"] for p in points]
    for key, (unit, what) in FIGURES.items():
        for p in points:
            add(f"scale_{key}_n{p['devices']}", unit, p["figures"].get(key),
                f"{what}; {model} head" if p is points[0] else what)
        add(f"scale_{key}_exponent", "exponent", growth_exponent(ns, [p["figures"].get(key) for p in points]),
            f"slope of log({key}) on log(devices) over {', '.join(map(str, ns))}")
    for p in points:
        n = p["devices"]
        report.add(Row(f"scale_rounds_completed_n{n}", "rounds", p["rounds_completed"], p["rounds_completed"],
                       goal=f">= {p['rounds_asked']}", note="rounds the task completed"))
        for key in COUNT_METRICS:
            add(f"scale_{key}_n{n}", "count", p["counts"][key], "summed over every process from round 0 on")
    by_n = {p["devices"]: p["figures"] for p in points}
    top = max(by_n)
    per_device = {n: f.get("round_per_device_ms") for n, f in by_n.items()}
    if 100 in by_n and top > 100 and per_device[100] and per_device[top]:
        r = per_device[top] / per_device[100]
        add(f"scale_round_per_device_ratio_{top}_100", "ratio", r,
            f"per-device steady round at {top} devices / at 100", ratio=r)
    add(f"scale_deliveries_per_device_max_n{top}", "msgs", by_n[top].get("deliveries_per_device"),
        "broker deliveries per device per steady round at the largest count")
    rss = [(n, f["fog_rss_mb"]) for n, f in sorted(by_n.items()) if f.get("fog_rss_mb")]
    if len(rss) >= 2:
        add("scale_fog_rss_mb_per_device", "MB", (rss[-1][1] - rss[0][1]) / (rss[-1][0] - rss[0][0]),
            f"the fog's steady RSS growth per device, {rss[0][0]} to {rss[-1][0]} devices")
    return report


def wide_table(rows: list[dict]) -> str:
    """A Markdown table of a run's rows: one line per figure, one column per device count, its exponent."""
    import re

    cells: dict[str, dict[str, float]] = {}
    for r in rows:
        m = re.fullmatch(r"scale_(.+)_(n\d+|exponent)", r["name"])
        if m and m.group(1) in FIGURES:
            cells.setdefault(m.group(1), {})[m.group(2)] = r["median"]
    counts = sorted({c for v in cells.values() for c in v if c != "exponent"}, key=lambda c: int(c[1:]))

    def f(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}" if abs(v) >= 1000 \
            else f"{v:.3g}"

    out = ["| figure | unit | " + " | ".join(f"{c[1:]} devices" for c in counts) + " | growth exponent |",
           "|---|---|" + "---:|" * (len(counts) + 1)]
    for key, (unit, what) in FIGURES.items():
        if key in cells:
            out.append(f"| {what} | {unit} | " + " | ".join(f(cells[key].get(c)) for c in counts)
                       + f" | {f(cells[key].get('exponent'))} |")
    return "\n".join(out) + "\n"


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


# --------------------------------------------------------------------------- a node process


async def _serve(spec: dict) -> None:
    """Run the spec's nodes in this process until SIGTERM; dump the process's metrics every half second."""
    from edgefl.nodes.node import running
    from edgefl.runtime.config import load_config
    from edgefl.runtime.files import write_atomic
    from edgefl.runtime.metrics import METRICS

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # worker threads as if each node had its own machine: a device's thread blocks while its records are made
    loop.set_default_executor(ThreadPoolExecutor(max_workers=4 + 2 * len(spec["nodes"])))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def dump() -> None:
        write_atomic(spec["metrics"], json.dumps(METRICS.snapshot()).encode())

    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for sets in spec["nodes"].values():
            node, _ = await stack.enter_async_context(running(load_config(overrides=sets, env={}),
                                                              handle_signals=False))
            nodes.append(node)
        await asyncio.gather(*(node.session.wait_connected() for node in nodes))
        Path(spec["ready"]).write_text("ready\n")
        while not stop.is_set():
            dump()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
        dump()


def _worker(path: str) -> int:
    from edgefl.runtime.logging import setup_logging
    from edgefl.runtime.loop import run as run_loop

    spec = json.loads(Path(path).read_text())
    setup_logging(spec.get("log_level", "WARNING"))
    run_loop(_serve(spec))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:  # a node process of a run
        sys.exit(_worker(sys.argv[2]))
    if sys.argv[1:2] == ["table"]:  # the wide table of a run's JSON (docs/scale.md, the README)
        print(wide_table(json.loads(Path(sys.argv[2]).read_text())), end="")
        sys.exit(0)
    sys.exit("usage: python -m edgefl.bench.scale worker SPEC.json | table RUN.json")
