"""`edgefl demo`: a device and a fog exchanging signed messages through Mosquitto.

1. start Mosquitto on a free loopback port (or use --port);
2. create keys for device-1 and fog-1 and trust each other;
3. signed ping round trips device -> fog -> device (median, p99);
4. a 1 MiB signed message, chunked under the packet limit and reassembled;
5. a tampered and a replayed envelope, both rejected, logged and counted.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from edgefl.bench.harness import percentile
from edgefl.crypto.keys import SigningKey, save_public
from edgefl.runtime.config import load_config
from edgefl.runtime.metrics import METRICS
from edgefl.transport.messages import Ping
from edgefl.transport.mosquitto import LocalMosquitto
from edgefl.transport.session import Session


def _node_config(workdir: Path, node_id: str, role: str, port: int, max_packet: int):
    return load_config(overrides=[
        f"node.id={node_id}", f"node.role={role}", "node.site=demo", f"node.data_dir={workdir / node_id}",
        f"mqtt.port={port}", f"mqtt.max_packet_size={max_packet}",
    ], env={})


async def demo(*, port: int | None = None, pings: int = 50, out=print) -> dict:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefl-demo-")))
        if port is None:
            broker = stack.enter_context(LocalMosquitto(workdir / "broker"))
            port = broker.port
            out(f"[1] Mosquitto ({broker.binary}) listening on 127.0.0.1:{port}, config {broker.conf}")
        else:
            out(f"[1] using the Mosquitto on 127.0.0.1:{port}")
        cfgs = {n: _node_config(workdir, n, r, port, 256 << 10) for n, r in (("device-1", "device"), ("fog-1", "fog"))}
        keys = {n: SigningKey() for n in cfgs}
        for n, cfg in cfgs.items():
            keys[n].save(cfg.path(cfg.security.key_file))
            for peer, key in keys.items():
                save_public(key.public_key, cfg.path(cfg.security.trust_dir) / f"{peer}.pub")
            out(f"[2] {n}: key {cfg.path(cfg.security.key_file)} public {keys[n].public_key.hex()[:20]}…")
        device, fog = Session.from_config(cfgs["device-1"]), Session.from_config(cfgs["fog-1"])
        async with device, fog:
            await asyncio.wait_for(asyncio.gather(device.wait_connected(), fog.wait_connected()), 10)
            times = []
            for i in range(pings):
                t0 = time.perf_counter()
                await device.request("fog-1", Ping(nonce=i.to_bytes(4, "big"), payload=os.urandom(64)))
                times.append((time.perf_counter() - t0) * 1e3)
            out(f"[3] {pings} signed round trips device-1 -> fog-1 -> device-1: median "
                f"{statistics.median(times):.3f} ms, p99 {percentile(times, 99):.3f} ms")
            big = os.urandom(1 << 20)
            t0 = time.perf_counter()
            reply = await device.request("fog-1", Ping(nonce=b"big", payload=big), timeout=30)
            assert reply.message.payload == big
            out(f"[4] 1 MiB signed message there and back in {1e3 * (time.perf_counter() - t0):.1f} ms, "
                f"{METRICS.get('chunk_transfer_complete')} chunked transfers reassembled (packet limit 256 KiB)")
            before = METRICS.total("envelope_rejected")
            async with fog.subscribe(device.topic("msg", "fog-1")) as inbox:
                wire = device.signer.seal(Ping(nonce=b"hello"), to="fog-1")
                tampered = bytearray(wire)
                tampered[len(tampered) // 2] ^= 0x01
                await device.send(device.topic("msg", "fog-1"), bytes(tampered))
                await device.send(device.topic("msg", "fog-1"), wire)
                rx = await inbox.get(timeout=5)
                out(f"[5] fog-1 accepted the genuine message (seq {rx.envelope.seq}) and rejected the tampered copy")
                replay = device.signer.seal(Ping(nonce=b"again"), to="fog-1", seq=rx.envelope.seq)
                await device.send(device.topic("msg", "fog-1"), replay)
                for _ in range(100):
                    if METRICS.total("envelope_rejected") >= before + 2:
                        break
                    await asyncio.sleep(0.05)
            rejected = {k: v for k, v in METRICS.snapshot().items() if k.startswith("envelope_rejected")}
            out(f"    rejections counted: {rejected}")
        return {"median_ms": statistics.median(times), "p99_ms": percentile(times, 99), "rejected": rejected}
