"""scripts/arm64-smoke's round: a Mosquitto, a cloud and a fog on this machine, the device in the arm64 root.

The site lives inside the root (``/srv/edgefl-smoke``), so the device finds its key and trusted keys at the
same paths the host's nodes wrote them; it runs ``/opt/edgefl/venv/bin/edgefl … run`` under qemu-user
through ``arm64-smoke --exec``.  Prints the emulated figures (start to first MQTT CONNECT, memory, CPU
of the round's batch) and exits non-zero unless the fog took the device's batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgefl.bench.device import SETTINGS, Proc
from edgefl.nodes.site import LocalSite
from edgefl.transport import topics
from edgefl.transport.mosquitto import LocalMosquitto

DEVICE, FOG, CLOUD = "dev-1", "fog-1", "cloud-1"


def leaf(pid: int) -> int:
    """The innermost descendant of ``pid`` (the emulated python behind unshare, bash and chroot)."""
    while True:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return pid
        if not children:
            return pid
        pid = int(children[0])


async def smoke(work: Path, runner: str, backend: str, timeout: float) -> dict:
    root = work / "root"
    site_dir = root / "srv/edgefl-smoke"
    subprocess.run(["rm", "-rf", str(site_dir), str(work / "broker")], check=True)  # no retained state of a run before
    with LocalMosquitto(work / "broker") as broker:
        site = LocalSite(site_dir, broker.port, {FOG: [DEVICE]}, cloud=CLOUD, clients=("watcher",),
                         settings=[*SETTINGS, "fl.rounds=1", "fl.round_timeout_s=1200"],
                         per_node={DEVICE: [f"ml.backend={backend}"]})
        inside = [s.replace(str(root), "") for s in site.overrides[DEVICE]] + ["mqtt.host=127.0.0.1",
                                                                              "mqtt.request_timeout_s=120"]
        command = [runner, "--exec", str(work), "/opt/edgefl/venv/bin/edgefl", "--profile", "pizero2w",
                   *[a for s in inside for a in ("--set", s)], "run"]
        watcher = site.session("watcher")
        out: dict = {"backend": backend, "profile": "pizero2w", "emulated": f"qemu-user {os.environ.get('QEMU_CPU', 'max')} "
                     f"on {os.uname().machine}"}
        async with watcher, watcher.subscribe(topics.pattern(node=DEVICE, kind="status")) as status:
            await site.start(CLOUD)
            fog = await site.start(FOG)
            log = open(work / "device.log", "wb")
            t0 = time.perf_counter()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                async with asyncio.timeout(timeout):
                    while (await status.get()).message.state != "online":
                        pass
                    out["start_to_connect_s"] = round(time.perf_counter() - t0, 2)
                    device = Proc(leaf(proc.pid))
                    out["cpu_to_connect_s"] = round(device.cpu_s(), 2)
                    cpu0, rss = device.cpu_s(), []
                    while DEVICE not in fog.doc["batches"].get("0", {}):
                        try:
                            rss.append(device.rss_mb())
                        except OSError:  # gone
                            proc.wait()
                            raise RuntimeError(f"the device exited ({proc.returncode}): see {work}/device.log") \
                                from None
                        await asyncio.sleep(0.1)
                    out["round_s"] = round(time.perf_counter() - t0 - out["start_to_connect_s"], 1)
                    out["cpu_first_batch_s"] = round(device.cpu_s() - cpu0, 2)
                    out["rss_median_mb"] = round(sorted(rss)[len(rss) // 2], 1) if rss else None
                    out["peak_rss_mb"] = round(device.peak_mb(), 1)
                    out["batch_taken_by_fog"] = True
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leaf(proc.pid), signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
                if proc.poll() is None:
                    proc.kill()
                log.close()
                await site.stop(FOG)
                await site.stop(CLOUD)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--runner", required=True, help="scripts/arm64-smoke (its --exec runs a command in the root)")
    p.add_argument("--backend", default="litert")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--root-seconds", type=int, default=0)
    p.add_argument("--install-seconds", type=int, default=0)
    args = p.parse_args()
    from edgefl.runtime.loop import run

    result = run(smoke(args.work, args.runner, args.backend, args.timeout))
    result.update(root_build_s=args.root_seconds, install_s=args.install_seconds)
    print(json.dumps(result, indent=1))
    (args.work / "figures.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result.get("batch_taken_by_fog") else 1


if __name__ == "__main__":
    sys.exit(main())
