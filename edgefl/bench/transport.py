"""`edgefl bench transport`: signed-envelope round trips against raw aiomqtt, side by side.

Both variants run through the same Mosquitto in the same process, interleaved:

* raw    — aiomqtt client A publishes the payload to an echo client B, which
           publishes it back; TCP_NODELAY on both.
* signed — edgefl ``Session.request(Ping)``: A signs, B verifies, answers with a
           signed Pong through the request/response path, A verifies.

Sizes 64 B, 16 KiB and 256 KiB at QoS 0 and 1, then pipelined QoS1
throughput of 64-byte messages.  Goal: signed ≤ 1.3 × raw.

Then a flood: four honest devices make sequential signed requests to a fog
(a round of 20 each) while a fifth floods the fog with distinct, validly
signed requests as fast as a bare aiomqtt client publishes them; the honest
round time without a flood, with one and no per-sender limit, and with one
under ``mqtt.rate_per_sender`` (the default, and a tight 20/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import tempfile
import time

import aiomqtt

from edgefl.bench.harness import Report, Row, ab, ratio_row, throughput_row
from edgefl.crypto import Signer, SigningKey, StaticKeyRegistry, Verifier
from edgefl.runtime import Metrics, MqttSection
from edgefl.transport import LocalMosquitto, Ping, RequestTimeout, Session, topics
from edgefl.transport.session import MQTT_LOG

SIZES = [("64B", 64), ("16KiB", 16 << 10), ("256KiB", 256 << 10)]
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
GOAL = "<= 1.3"
ANCHOR_RAW_64B_QOS1_MS = 0.43  # 2-core x86-64 Debian, Mosquitto 2.0.11, TCP_NODELAY both ends
ANCHOR_PIPELINED_QOS1 = 15800.0  # same machine class and broker; client not stated


WINDOW = 100  # unacknowledged QoS1 publishes in flight, raw and signed alike (mqtt.max_inflight default)


def _raw_client(port: int, ident: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=ident, socket_options=NODELAY, logger=MQTT_LOG,
                          protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=WINDOW)


class RawPair:
    """Two bare aiomqtt clients: A sends, B echoes."""

    def __init__(self, port: int):
        self.a = _raw_client(port, "bench-raw-a")
        self.b = _raw_client(port, "bench-raw-b")

    async def __aenter__(self):
        await self.a.__aenter__()
        await self.b.__aenter__()
        await self.b.subscribe("bench/raw/req/#", qos=1)
        await self.a.subscribe("bench/raw/resp/#", qos=1)
        self._echo = asyncio.create_task(self._run_echo())
        self._inbox = self.a.messages.__aiter__()
        return self

    async def __aexit__(self, *exc):
        self._echo.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._echo
        await self.b.__aexit__(None, None, None)
        await self.a.__aexit__(None, None, None)

    async def _run_echo(self):
        async for m in self.b.messages:
            await self.b.publish("bench/raw/resp/" + str(m.qos), m.payload, qos=m.qos)

    async def round_trip(self, payload: bytes, qos: int) -> None:
        await self.a.publish(f"bench/raw/req/{qos}", payload, qos=qos)
        await self._inbox.__anext__()


async def _pipelined(publish_one, inbox, n: int) -> tuple[float, float]:
    """Publish ``n`` messages with ``publish_one`` at most WINDOW at a time; time until ``inbox`` got all.

    Returns (messages per second, CPU seconds per message).
    """
    window = asyncio.Semaphore(WINDOW)

    async def one():
        async with window:
            await publish_one()

    async def receive_all():
        got = 0
        async for _ in inbox:
            got += 1
            if got == n:
                return

    c0, t0 = time.process_time(), time.perf_counter()
    receiving = asyncio.create_task(receive_all())
    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.wait_for(receiving, 60)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu / n


async def _pipelined_raw(port: int, n: int, payload: bytes) -> tuple[float, float]:
    async with _raw_client(port, "bench-pipe-tx") as tx, _raw_client(port, "bench-pipe-rx") as rx:
        await rx.subscribe("bench/raw/pipe", qos=1)
        return await _pipelined(lambda: tx.publish("bench/raw/pipe", payload, qos=1), rx.messages, n)


async def _pipelined_signed(tx: Session, rx: Session, n: int, payload: bytes) -> tuple[float, float]:
    msg = Ping(nonce=b"p", payload=payload)
    async with rx.subscribe(topics.pattern(node=tx.node_id, kind="pipe")) as sub:
        return await _pipelined(lambda: tx.publish("pipe", msg, qos=1), sub, n)


def _sessions(port: int, qos: int, metrics: Metrics) -> tuple[Session, Session]:
    ka, kb = SigningKey(), SigningKey()
    reg = StaticKeyRegistry({"bench-dev": ka.public_key, "bench-fog": kb.public_key})
    cfg = MqttSection(port=port, qos=qos, max_inflight=WINDOW, outbox_limit=100000, rate_per_sender=0)

    def make(node, role, key):
        return Session(site="bench", role=role, signer=Signer(node, key), metrics=metrics, mqtt=cfg,
                       verifier=Verifier(reg, metrics=metrics, name=node), client_id=f"{node}-q{qos}")

    return make("bench-dev", "device", ka), make("bench-fog", "fog", kb)


FLOOD_DEVICES, FLOOD_REQUESTS = 4, 20


async def _flood_round(port: int, *, flood: int, rate: float, burst: int, rounds: int
                       ) -> tuple[list[float], list[float], int, Metrics]:
    """Honest round times and CPU (s) with ``flood`` pre-signed requests from a flooder, and how many honest
    requests went unanswered (30 s each); ``rate`` is the fog's per-sender limit (0: none)."""
    names = [f"bench-d{i}" for i in range(FLOOD_DEVICES)]
    keys = {n: SigningKey() for n in [*names, "bench-fog", "flooder"]}
    reg = StaticKeyRegistry({n: k.public_key for n, k in keys.items()})
    m = Metrics()
    base = MqttSection(port=port, max_inflight=WINDOW)

    def make(node, role, **kw):
        cfg = MqttSection(**{**vars(base), **kw})
        return Session(site="bench", role=role, signer=Signer(node, keys[node]), metrics=m, mqtt=cfg,
                       verifier=Verifier(reg, metrics=m, name=node), client_id=f"{node}-flood{flood}-{rate:g}")

    fog = make("bench-fog", "fog", rate_per_sender=rate, rate_burst=burst)  # rate 0: no limit
    devices = [make(n, "device") for n in names]
    signer = Signer("flooder", keys["flooder"])
    topic = topics.topic("bench", "device", "flooder", "req", "bench-fog")
    wires = [signer.seal(Ping(nonce=b"%d" % i), to="bench-fog", corr=os.urandom(12)) for i in range(flood)]
    times: list[float] = []
    cpu: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        for s in (fog, *devices):
            await stack.enter_async_context(s)
            await s.wait_connected(10)

        async def flooding():
            async with _raw_client(port, f"flooder-{flood}-{rate:g}") as raw:
                for w in wires:
                    await raw.publish(topic, w, qos=0)

        unanswered = 0

        async def honest(d: Session):
            nonlocal unanswered
            for i in range(FLOOD_REQUESTS):
                try:
                    await d.request("bench-fog", Ping(nonce=b"%d" % i), timeout=30)
                except RequestTimeout:
                    unanswered += 1

        flooder = asyncio.create_task(flooding()) if flood else None
        await asyncio.sleep(0.2 if flood else 0)
        for _ in range(rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(honest(d) for d in devices))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)  # fog, devices and flooder share this process
        if flooder is not None:
            flooder.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await flooder
    return times, cpu, unanswered, m


async def flood_rows(report: Report, port: int, quick: bool) -> None:
    """The round that runs while the flood arrives (the flood is finite: later rounds would not see it)."""
    flood = 2000 if quick else 10000
    quiet, quiet_cpu, _, _ = await _flood_round(port, flood=0, rate=0, burst=1, rounds=3)
    base = report.add(Row("transport_flood_none_round", "ms", statistics.median(quiet) * 1e3, max(quiet) * 1e3,
                          statistics.median(quiet_cpu) * 1e3,
                          note=f"{FLOOD_DEVICES} devices x {FLOOD_REQUESTS} sequential requests, no flood"))
    default = MqttSection()
    for label, rate, burst in (("unlimited", 0.0, 1), ("limit_default", default.rate_per_sender, default.rate_burst),
                               ("limit_20", 20.0, 20)):
        times, cpu, unanswered, m = await _flood_round(port, flood=flood, rate=rate, burst=burst, rounds=1)
        row = report.add(Row(f"transport_flood_{label}_round", "ms", statistics.median(times) * 1e3,
                             max(times) * 1e3, statistics.median(cpu) * 1e3, note=f"one device floods {flood:,} signed requests; "
                             f"{m.get('inbound_rejected', reason='rate_limited'):,} dropped by the limit, "
                             f"{unanswered} honest requests unanswered in 30 s"))
        report.add(ratio_row(f"transport_flood_{label}_ratio", row, base, note="honest round time vs no flood"))


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="use the Mosquitto already listening on 127.0.0.1:PORT")


async def run(*, port: int | None = None, quick: bool = False) -> Report:
    report = Report("edgefl bench transport: signed envelope vs raw aiomqtt (median/p99 round trip)")
    iters = {"64B": 400, "16KiB": 300, "256KiB": 100}
    pipe_n, pipe_runs = 5000, 5
    if quick:
        iters = {k: 20 for k in iters}
        pipe_n, pipe_runs = 200, 2
    with contextlib.ExitStack() as stack:
        if port is None:
            broker = stack.enter_context(LocalMosquitto(tempfile.mkdtemp(prefix="edgefl-bench-")))
            port = broker.port
        metrics = Metrics()
        async with RawPair(port) as raw:
            for qos in (0, 1):
                dev, fog = _sessions(port, qos, metrics)
                async with dev, fog:
                    await dev.wait_connected(10)
                    await fog.wait_connected(10)
                    for label, size in SIZES:
                        payload = os.urandom(size)
                        ping = Ping(nonce=b"bench", payload=payload)

                        async def signed():
                            await dev.request("bench-fog", ping, timeout=30)

                        async def plain():
                            await raw.round_trip(payload, qos)

                        s_signed, s_raw = await ab(signed, plain, iterations=iters[label])
                        r_raw = report.add(s_raw.row(f"transport_rtt_raw_{label}_qos{qos}",
                                                     anchor=ANCHOR_RAW_64B_QOS1_MS if (label, qos) == ("64B", 1) else None))
                        r_signed = report.add(s_signed.row(f"transport_rtt_signed_{label}_qos{qos}"))
                        report.add(ratio_row(f"transport_rtt_ratio_{label}_qos{qos}", r_signed, r_raw, goal=GOAL))
                    if qos == 1:
                        payload = os.urandom(64)
                        raw_runs, signed_runs = [], []
                        for _ in range(pipe_runs):  # interleaved runs
                            raw_runs.append(await _pipelined_raw(port, pipe_n, payload))
                            signed_runs.append(await _pipelined_signed(dev, fog, pipe_n, payload))
                        r_raw = report.add(throughput_row("transport_pipelined_qos1_raw", [r for r, _ in raw_runs],
                                                          [c for _, c in raw_runs], anchor=ANCHOR_PIPELINED_QOS1))
                        r_signed = report.add(throughput_row("transport_pipelined_qos1_signed",
                                                             [r for r, _ in signed_runs], [c for _, c in signed_runs]))
                        ratio = r_raw.median / r_signed.median  # time per message: signed over raw
                        report.add(Row("transport_pipelined_ratio_qos1", "ratio", ratio, r_raw.p99 / r_signed.p99,
                                       r_signed.cpu_median / r_raw.cpu_median, ratio=ratio, goal=GOAL,
                                       note="time per message, signed / raw"))
        rejected = metrics.total("envelope_rejected")
        if rejected:
            raise RuntimeError(f"benchmark saw {rejected} rejected envelopes: {metrics.snapshot()}")
        await flood_rows(report, port, quick)
    return report
