"""Hosts as Linux network namespaces: one hub (the cloud's host) with a switch, spokes joined to it by veth pairs.

::

    hub namespace:   br0 10.77.0.1/24 ── port-1 ═══ veth ═══ eth0 10.77.0.11/24   spoke 1 namespace
                                     └─ port-2 ═══ veth ═══ eth0 10.77.0.12/24   spoke 2 namespace

Every interface is created inside the namespaces (``ip -n NS link add … peer … netns NS2``), so nothing in
the machine's own namespace changes: the addresses exist only in the namespaces this object made, which
are named ``edgefl-PID-HOST`` and deleted (their interfaces with them) on ``close()``, after any process
still inside is killed.  ``cut(host)`` takes a spoke's link down on its own side, ``heal(host)`` brings it
back.  Needs root and iproute2 (``ip netns``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

from edgefl.errors import EdgeflError

PREFIX = "edgefl-"


class NetnsError(EdgeflError, RuntimeError):
    reason = "netns"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {out.stderr.strip() or out.returncode}")
    return out


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "iproute2 is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", name)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", name, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(name: str) -> int:
    """SIGKILL every process still in namespace ``name``; how many there were."""
    pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def ours() -> list[str]:
    """The namespaces this process made that still exist."""
    mine = f"{PREFIX}{os.getpid()}-"
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
            if line.split() and line.split()[0].startswith(mine)]


def sweep_stale() -> list[str]:
    """Delete namespaces an earlier run of this module left behind (named ``edgefl-PID-…`` by a PID that is
    gone: a run killed before it could clean up).  Namespaces of live runs are left alone."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{re.escape(PREFIX)}(\d+)-[\w.-]+", name)
        if m and not _alive(int(m.group(1))):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


class Network:
    def __init__(self, hub: str, spokes: list[str], *, subnet: str = "10.77.0"):
        self.hub, self.spokes = hub, list(spokes)
        self.names = {h: f"{PREFIX}{os.getpid()}-{h}" for h in [hub, *spokes]}
        self.addresses = {hub: f"{subnet}.1", **{s: f"{subnet}.{11 + i}" for i, s in enumerate(spokes)}}
        self._made: list[str] = []
        self.cuts = 0

    def __enter__(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        sweep_stale()
        for name in self.names.values():
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        hub = self.names[self.hub]
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "addr", "add", f"{self.addresses[self.hub]}/24", "dev", "br0")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, spoke in enumerate(self.spokes, 1):
            ns = self.names[spoke]
            _ip("-n", hub, "link", "add", f"port-{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", hub, "link", "set", f"port-{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"port-{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[spoke]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        self._wait_reachable()

    def _wait_reachable(self, timeout: float = 10.0) -> None:
        """Until every spoke's eth0 is up with carrier (the bridge runs no STP: its ports forward at once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("state UP" in _ip("-n", self.names[s], "-o", "link", "show", "eth0").stdout for s in self.spokes):
                return
            time.sleep(0.05)
        raise NetnsError(f"the namespaces' links did not come up within {timeout} s")

    def prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``."""
        return ["ip", "netns", "exec", self.names[host]]

    def cut(self, host: str) -> None:
        _ip("-n", self.names[host], "link", "set", "eth0", "down")
        self.cuts += 1

    def heal(self, host: str) -> None:
        _ip("-n", self.names[host], "link", "set", "eth0", "up")

    def close(self) -> None:
        """Kill what still runs inside our namespaces, then delete them (their veths go with them)."""
        for name in reversed(self._made):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
        self._made.clear()
