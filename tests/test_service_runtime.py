"""What a node under systemd relies on: sd_notify, one process per data directory, a quick exit on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from edgefl.provision.site import SiteDirectory
from edgefl.runtime import notify
from edgefl.runtime.lock import DataDirLock, DataDirLocked
from tests.conftest import need_mosquitto
from tests.site_helpers import Deployed


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


def test_sd_notify_datagrams_arrive(notify_socket, monkeypatch):
    assert notify.notify("READY=1", "STATUS=up")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert notify.watchdog_interval() is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify.notify("READY=1")  # outside systemd: nothing to do


def test_abstract_notify_socket(monkeypatch):
    name = f"edgefl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.notify("WATCHDOG=1") and s.recv(64) == b"WATCHDOG=1"


def test_one_process_per_data_directory(tmp_path):
    with DataDirLock(tmp_path):
        with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
            DataDirLock(tmp_path).acquire()
    with DataDirLock(tmp_path):  # released with its holder
        pass
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time; sys.path[:0] = {sys.path!r}
        from edgefl.runtime.lock import DataDirLock
        DataDirLock({str(tmp_path)!r}).acquire(); print("held", flush=True); time.sleep(60)""")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirLocked, match=f"pid {holder.pid}"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    DataDirLock(tmp_path).acquire()  # a killed holder leaves no stale lock


def test_sigterm_exits_within_the_deadline_while_a_thread_is_busy(tmp_path):
    """A worker thread cannot be cancelled and interpreter exit waits for it; the deadline does not."""
    script = textwrap.dedent(f"""
        import asyncio, sys, time; sys.path[:0] = {sys.path!r}
        from edgefl.runtime.loop import Supervisor, run
        async def main():
            async with Supervisor(exit_deadline_s=1.0) as sup:
                sup.spawn("busy", lambda: asyncio.to_thread(time.sleep, 120))
                print("running", flush=True)
                return await sup.wait()
        print(run(main()), flush=True)""")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "running\n"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(20) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert time.monotonic() - t0 < 20


@pytest.mark.broker
def test_a_node_notifies_systemd_refuses_a_twin_and_stops_on_sigterm(tmp_path, notify_socket):
    """A fog of a site from `site init`, as its unit runs it: READY, WATCHDOG pings, a second instance on
    the same data directory refused, SIGTERM answered with STOPPING and a prompt exit."""
    need_mosquitto()
    SiteDirectory(tmp_path / "site").init(fogs={"fog-1": ""}, devices=["1"])
    d = Deployed(tmp_path / "site", tmp_path / "hosts")
    env = {"NOTIFY_SOCKET": os.environ["NOTIFY_SOCKET"], "WATCHDOG_USEC": "600000"}
    with d.brokers():
        fog = d.spawn("fog-1", env=env)
        try:
            got = []
            while "READY=1" not in got:
                got += notify_socket.recv(4096).decode().split("\n")
            pings = 0
            while pings < 2:  # every 0.3 s
                pings += notify_socket.recv(4096) == b"WATCHDOG=1"
            twin = subprocess.run(d.command("fog-1", "run", "--for", "5"), capture_output=True, text=True,
                                  timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            assert twin.returncode == 1 and f"in use by another edgefl process (pid {fog.pid})" in twin.stderr
            assert fog.poll() is None
            t0 = time.monotonic()
            fog.send_signal(signal.SIGTERM)
            while not any(m.startswith("STOPPING=1") for m in got):
                got.append(notify_socket.recv(4096).decode())
            assert fog.wait(15) == 0
            assert time.monotonic() - t0 < 15
        finally:
            fog.kill()
            fog.wait()
