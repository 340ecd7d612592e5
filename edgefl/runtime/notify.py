"""The systemd notification protocol (sd_notify(3)) without a dependency: datagrams to ``$NOTIFY_SOCKET``.

A service of ``Type=notify`` says ``READY=1`` once it runs, ``WATCHDOG=1``
at least every ``WatchdogSec`` (systemd passes it as ``$WATCHDOG_USEC``)
and ``STOPPING=1`` when it begins to shut down.  Outside systemd (no
``$NOTIFY_SOCKET``) every call is a no-op, so nodes call it unconditionally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("edgefl.notify")


def notify(*fields: str) -> bool:
    """Send ``fields`` ("READY=1", "STATUS=…") as one datagram; False when not under systemd or it failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(fields).encode())
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False


def watchdog_interval() -> float | None:
    """How often to ping: half of ``$WATCHDOG_USEC``, when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog(interval: float) -> None:
    """Ping from the event loop: a loop that hangs stops the pings, and systemd restarts the service."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
