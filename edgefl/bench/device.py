"""The device agent in a process of its own, against a real Mosquitto and a fog: memory, start time, CPU per batch.

For each backend (``--backends``, LiteRT and ONNX Runtime) a cloud and a fog
run in this process (``edgefl.nodes.site.LocalSite``) and the device runs
exactly as on its board, ``python -m edgefl … run``, through ``--rounds``
rounds of a task.  The device process is read from ``/proc`` every 20 ms:

* ``device_rss_mb_{backend}`` — its resident memory once its first batch was
  delivered (the backend open, every later round and the waits between);
  median and p99 of the samples.  Goals: 80 MB with LiteRT, 120 MB with
  ONNX Runtime.
* ``device_peak_rss_mb_{backend}`` — the most it ever held (``VmHWM``).
* ``device_rss_mb_{backend}_replica`` — the same device (the first backend)
  as a member of its fog's sub-chain committee of four (the fog, it and two
  more devices in this process): its replica of the sub-chain, vote log and
  PBFT run inside the agent; the ratio is to the device without one, and
  the note gives the replica's height and how far the resident memory moved
  from the first sample to the last.
* ``device_start_s`` — from ``exec`` to its first MQTT CONNECT (seen as its
  ``online`` status at the broker, a few ms after the CONNACK), over every
  start of both backends (each run starts the device, then restarts it).
  Goal: 1.5 s.
* ``device_cpu_per_batch_{backend}`` — CPU time of the device (every thread)
  from the moment a round opens to the moment the fog holds its batch:
  extraction, normalisation and noise, the privacy spend and the
  ``DataCollected`` recorded on the fog's chain, signing and sending.  The
  first round, which also fetches the model and opens the backend, is left
  out (its figure is in the note).

``--profile NAME`` applies a board profile's caps: its settings (MQTT
limits, the data it holds, ``ml.threads``), its thread counts for the BLAS,
and one core by CPU affinity for the device process (the cloud and the fog
keep the others).  That approximates the board, it does not emulate it:
this machine's cores are several times faster than a Cortex-A53's, its
memory is not the board's, and the page cache holds every library already.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgefl.bench.harness import Report, Row, percentile
from edgefl.transport import LocalMosquitto, topics

BACKENDS = ("litert", "onnxruntime")
RSS_GOAL_MB = {"litert": 80, "onnxruntime": 120, "tflite_runtime": 80}
START_GOAL_S = 1.5
SAMPLE_S = 0.02
DEVICE, FOG, CLOUD = "dev-1", "fog-1", "cloud-1"
PEERS = ["dev-2", "dev-3"]  # with them the fog's sub-chain is a committee of four
# a small task: the fog's training is not what is measured, the device is
SETTINGS = ["fl.hidden=[20]", "ml.local_epochs=1", "fl.warm_start=false", "ml.epsilon=1", "ml.epsilon_budget=1000",
            "fl.round_timeout_s=120", "fl.data=generated"]
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TICK = os.sysconf("SC_CLK_TCK")


def add_arguments(p) -> None:
    p.add_argument("--profile", dest="board", metavar="NAME",
                   help="a board profile (pizero2w, pi3bplus, pi4, pi5): its settings, thread counts and one "
                        "core by affinity; approximates, does not emulate, the board")
    p.add_argument("--backends", type=lambda t: [b for b in t.split(",") if b], default=list(BACKENDS),
                   help="device backends to measure (default litert,onnxruntime)")
    p.add_argument("--rounds", type=int, help="rounds of the task (default 5; --quick 2)")
    p.add_argument("--restarts", type=int, help="extra device starts per backend for device_start_s (default 4; "
                                                "--quick 1)")


class Proc:
    """What ``/proc`` says about one process: resident memory, its peak, CPU seconds of every thread."""

    def __init__(self, pid: int):
        self.pid = pid

    def _status(self, field: str) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MB
        raise ProcessLookupError(self.pid)

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def peak_mb(self) -> float:
        return self._status("VmHWM")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _pin(cpus: set[int]):
    return lambda: os.sched_setaffinity(0, cpus)


async def run(*, quick: bool = False, board: str | None = None, backends: list[str] = BACKENDS,
              rounds: int | None = None, restarts: int | None = None, threads: int | None = None, **_) -> Report:
    rounds = rounds or (2 if quick else 5)
    restarts = (1 if quick else 4) if restarts is None else restarts
    caps = _caps(board)
    title = "edgefl bench device" + (f" --profile {board} (approximates, does not emulate, the board)" if board else "")
    report = Report(title)
    starts: list[tuple[float, float]] = []  # (wall, CPU) seconds
    mine = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="edgefl-bench-device-") as tmp, LocalMosquitto(Path(tmp) / "broker") as mq:
        try:
            if caps and len(mine) > 1:  # the device gets one core; this process (the cloud, the fog) the others
                os.sched_setaffinity(0, mine - caps["cpus"])
            for backend in backends:
                result = await _measure(Path(tmp) / backend, mq.port, backend, rounds, restarts, board, caps,
                                        threads)
                starts += result["starts"]
                _rows(report, backend, result, caps)
            if backends:  # the first backend again, as a committee member keeping a replica of the sub-chain
                plain = next((r for r in report.rows if r.name == f"device_rss_mb_{backends[0]}"), None)
                result = await _measure(Path(tmp) / "replica", mq.port, backends[0], rounds, 0, board, caps,
                                        threads, committee=True)
                _replica_row(report, backends[0], result, plain)
        finally:
            os.sched_setaffinity(0, mine)
    if starts:
        wall, cpu = [w for w, _ in starts], [c for _, c in starts]
        report.add(Row("device_start_s", "s", statistics.median(wall), percentile(wall, 99), goal=f"<= {START_GOAL_S} s",
                       note=f"exec to first MQTT CONNECT, {len(starts)} starts (imports, configuration, key and "
                            f"certificate checks, session); {statistics.median(cpu):.2f} s of CPU, load average "
                            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"))
    return report


def _caps(board: str | None) -> dict | None:
    if not board:
        return None
    from edgefl.runtime.config import load_config

    cfg = load_config(board, env={})
    cpu = max(os.sched_getaffinity(0))
    return {"profile": board, "cpus": {cpu}, "threads": cfg.ml.threads, "model": cfg.board.model}


def _replica_row(report: Report, backend: str, r: dict, plain: Row | None) -> None:
    rss = r["rss"]
    med = statistics.median(rss)
    base = plain.median if plain is not None else None
    report.add(Row(f"device_rss_mb_{backend}_replica", "MB", med, percentile(rss, 99),
                   ratio=med / base if base else None, goal=f"<= {RSS_GOAL_MB[backend]} MB",
                   note=f"a member of its fog's committee of 4, keeping the sub-chain's replica ({r['height']} "
                        f"blocks at the end): {med - base:+.1f} MB beside the device without one; "
                        f"first to last sample {rss[-1] - rss[0]:+.1f} MB" if base else "",
                   extra={"replica_height": r["height"], "peak": r["peak"]}))


def _rows(report: Report, backend: str, r: dict, caps: dict | None) -> None:
    where = f"{caps['model']} caps: 1 core, {caps['threads']} threads" if caps else "no caps"
    rss = r["rss"]
    report.add(Row(f"device_rss_mb_{backend}", "MB", statistics.median(rss), percentile(rss, 99),
                   goal=f"<= {RSS_GOAL_MB[backend]} MB",
                   note=f"steady, after its first batch; {len(rss)} samples over {r['rounds'] - 1} rounds; {where}"))
    report.add(Row(f"device_peak_rss_mb_{backend}", "MB", r["peak"], r["peak"], note="VmHWM"))
    cpu = [c * 1e3 for c in r["cpu"]]
    wall = statistics.median(r["wall"]) * 1e3
    report.add(Row(f"device_cpu_per_batch_{backend}", "ms", statistics.median(cpu), percentile(cpu, 99),
                   note=f"CPU ms of every thread per batch of {r['items']} items ({wall:.0f} ms wall, round open "
                        f"to batch at the fog); first round {r['first_cpu'] * 1e3:.0f} ms with model fetch and "
                        f"backend open"))


async def _measure(work: Path, port: int, backend: str, rounds: int, restarts: int, board: str | None,
                   caps: dict | None, threads: int | None, committee: bool = False) -> dict:
    """``committee``: two more devices (in this process) make the fog's sub-chain a committee of four, the
    measured device one of its members."""
    from edgefl.ledger.service import db_path
    from edgefl.nodes.site import LocalSite

    device_sets = [f"ml.backend={backend}"]
    if caps:
        device_sets.append(f"ml.threads={caps['threads']}")
    elif threads:
        device_sets.append(f"ml.threads={threads}")
    peers = PEERS if committee else []
    site = LocalSite(work, port, {FOG: [DEVICE, *peers]}, cloud=CLOUD, clients=("watcher",),
                     settings=[*SETTINGS, f"fl.rounds={rounds}"], per_node={DEVICE: device_sets})
    items = site.cfgs[DEVICE].fl.items
    sets = [*site.overrides[DEVICE], "mqtt.host=127.0.0.1"]
    if board:
        items = _profile_items(board, sets)
    command = [sys.executable, "-m", "edgefl", *(["--profile", board] if board else []),
               *[a for s in sets for a in ("--set", s)], "run"]
    env = _device_env()
    if caps:
        n = str(caps["threads"])
        env.update(OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n)
    watcher = site.session("watcher")
    log = work / "device.log"
    out = {"rss": [], "cpu": [], "wall": [], "starts": [], "rounds": rounds, "items": items}
    async with watcher, watcher.subscribe(topics.pattern(node=DEVICE, kind="status")) as status:
        await site.start(CLOUD)
        fog = await site.start(FOG)
        for peer in peers:
            await site.start(peer)
        try:
            proc, start, cpu = await _spawn(command, env, caps, log, status)
            out["starts"].append((start, cpu))
            try:
                await _rounds(proc, fog, rounds, out, log)
                out["peak"] = Proc(proc.pid).peak_mb()
            finally:
                _stop(proc)
            for _ in range(restarts):  # the task is over: a restart connects, finds nothing to do
                proc, start, cpu = await _spawn(command, env, caps, log, status)
                out["starts"].append((start, cpu))
                _stop(proc)
        finally:
            for node in (*peers, FOG, CLOUD):
                await site.stop(node)
    replica = db_path(site.cfgs[DEVICE], FOG)
    if committee:
        if not replica.exists():
            raise RuntimeError(f"{DEVICE} is not a member of {FOG}'s committee: no replica at {replica}")
        from edgefl.ledger.store import Store

        with contextlib.closing(Store(replica, readonly=True)) as store:
            out["height"] = store.tip().height
    return out


def _device_env() -> dict[str, str]:
    """The device's environment: its bytecode compiled once, as `pip install` leaves it on a board (in the
    package's own ``__pycache__`` folders, like any installed library's), so no start pays for compiling."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    import edgefl

    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", os.path.dirname(edgefl.__file__)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def _profile_items(board: str, sets: list[str]) -> int:
    from edgefl.runtime.config import load_config

    return load_config(board, env={}, overrides=sets).fl.items


async def _spawn(command: list[str], env: dict, caps: dict | None, log: Path, status
                 ) -> tuple[subprocess.Popen, float, float]:
    """Start the device; wall and CPU seconds from exec to its ``online`` status (its first CONNECT)."""
    with open(log, "ab") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_pin(caps["cpus"]) if caps else None)
    try:
        async with asyncio.timeout(60):
            while True:
                rx = await status.get()
                if rx.message.state == "online":
                    return proc, time.perf_counter() - t0, Proc(proc.pid).cpu_s()
    except TimeoutError:
        _stop(proc)
        raise RuntimeError(f"the device did not connect within 60 s: {_tail(log)}") from None


async def _rounds(proc: subprocess.Popen, fog, rounds: int, out: dict, log: Path) -> None:
    """Sample the device until the fog holds its batch of the last round."""
    p = Proc(proc.pid)
    opened: dict[int, tuple[float, float]] = {}  # round -> (wall, cpu) when the fog saw it open
    delivered = -1
    deadline = time.monotonic() + 120 + 60 * rounds
    while delivered < rounds - 1:
        if proc.poll() is not None:
            raise RuntimeError(f"the device exited ({proc.returncode}): {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"round {delivered + 1} not delivered in time: {_tail(log)}")
        now, cpu = time.perf_counter(), p.cpu_s()
        model = fog.view.model
        if model is not None and model.open and model.round not in opened:
            opened[model.round] = (now, cpu)
        r = delivered + 1
        if r in opened and DEVICE in fog.doc["batches"].get(str(r), {}):
            wall0, cpu0 = opened[r]
            if r == 0:
                out["first_cpu"] = cpu - cpu0
            else:
                out["cpu"].append(cpu - cpu0)
                out["wall"].append(now - wall0)
            delivered = r
        if delivered >= 0:
            out["rss"].append(p.rss_mb())
        await asyncio.sleep(SAMPLE_S)
    if not out["cpu"]:  # a single round: its figure is all there is
        out["cpu"], out["wall"] = [out["first_cpu"]], [0.0]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
        return
    proc.kill()
    proc.wait()


def _tail(log: Path, lines: int = 8) -> str:
    return " / ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])[-1200:]
