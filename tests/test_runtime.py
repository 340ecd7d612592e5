"""Supervisor, graceful shutdown, logging."""

import asyncio
import io
import json
import logging
import os
import platform
import signal

import pytest

from edgefl.runtime.logging import JsonLinesFormatter, RateLimited, setup_logging
from edgefl.runtime.loop import Supervisor, loop_factory, run, tune_allocator
from edgefl.runtime.metrics import Metrics


async def test_supervisor_restarts_crashed_service_and_stops_cleanly():
    m = Metrics()
    runs, cleaned = [], []

    async def flaky():
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(1)

    async with Supervisor(handle_signals=False, backoff=(0.001, 0.01), metrics=m) as sup:
        sup.spawn("flaky", flaky)
        while len(runs) < 3:
            await asyncio.sleep(0.01)
        sup.stop("test")
        assert await sup.wait() == "test"
    assert m.get("service_crash", service="flaky") == 2 and cleaned == [1]


async def test_service_without_restart_propagates():
    async def bad():
        raise ValueError("fatal")

    with pytest.raises(ExceptionGroup) as exc:
        async with Supervisor(handle_signals=False) as sup:
            sup.spawn("bad", bad, restart=False)
            await sup.wait()
    assert exc.group_contains(ValueError)


def test_sigterm_stops_gracefully_and_resources_close_after_services():
    order = []

    class Resource:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            order.append("resource closed")

    async def main():
        async with Resource(), Supervisor() as sup:
            async def service():
                try:
                    await asyncio.Event().wait()
                finally:
                    order.append("service cancelled")

            sup.spawn("svc", service)
            asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
            return await sup.wait()

    assert run(main()) == "SIGTERM"
    assert order == ["service cancelled", "resource closed"]


def test_uvloop_is_used_when_installed(monkeypatch):
    pytest.importorskip("uvloop")
    assert loop_factory() is not None
    monkeypatch.setenv("EDGEFL_NO_UVLOOP", "1")
    assert loop_factory() is None


@pytest.mark.skipif(not platform.libc_ver()[0] == "glibc", reason="mallopt is glibc's")
def test_allocator_tuning(monkeypatch):
    assert tune_allocator() is True
    monkeypatch.setenv("EDGEFL_NO_MALLOC_TUNING", "1")
    assert tune_allocator() is False


def test_json_lines_logging():
    stream = io.StringIO()
    setup_logging("INFO", json_lines=True, stream=stream)
    try:
        logging.getLogger("edgefl.test").warning("hello %s", "world", extra={"reason": "bad_signature", "n": 3})
        logging.getLogger("edgefl.test").debug("hidden")
    finally:
        setup_logging("WARNING")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["msg"] == "hello world" and rec["reason"] == "bad_signature" and rec["n"] == 3
    assert rec["level"] == "WARNING" and isinstance(JsonLinesFormatter().format(logging.makeLogRecord({})), str)


def test_rate_limited_log(caplog):
    limiter = RateLimited(logging.getLogger("edgefl.flood"), per_second=3)
    with caplog.at_level(logging.WARNING):
        for i in range(50):
            limiter.warning("bad", "bad message %d", i)
    assert len([r for r in caplog.records if r.name == "edgefl.flood"]) == 3


def test_write_atomic_leaves_old_or_new_never_torn(tmp_path):
    from edgefl.runtime.files import write_atomic

    target = tmp_path / "state"
    write_atomic(target, b"old contents")

    def chunks():
        yield b"new "
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, chunks())
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]  # no temp file left behind
    write_atomic(target, [b"new ", b"contents"], mode=0o600)
    assert target.read_bytes() == b"new contents" and target.stat().st_mode & 0o777 == 0o600


def test_state_file_roundtrip_missing_and_corrupt(tmp_path):
    from edgefl.runtime.state import StateError, StateFile

    f = StateFile(tmp_path / "fl" / "state.cbor")
    assert f.load({"task": ""}) == {"task": ""}  # nothing saved yet: the default
    f.save({"task": "digits", "batches": {"0": {"dev-1": b"\x01" * 32}}})
    assert StateFile(f.path).load(None) == {"task": "digits", "batches": {"0": {"dev-1": b"\x01" * 32}}}
    f.path.write_bytes(f.path.read_bytes()[:-3])
    with pytest.raises(StateError, match="corrupt state"):  # never silently empty: that could count twice
        f.load({})


async def test_a_service_that_cannot_run_stops_the_node_instead_of_restarting_forever():
    """A missing optional dependency crashed the cloud's service, and the supervisor restarted it forever."""
    from edgefl.runtime.config import ConfigError

    m = Metrics()
    runs = []

    async def misconfigured():
        runs.append(1)
        raise ConfigError("ml.backend", "the onnx package is missing: pip install 'edgefl[ml]'")

    async with Supervisor(handle_signals=False, backoff=(0.001, 0.01), metrics=m) as sup:
        sup.spawn("fl-cloud", misconfigured)
        reason = await asyncio.wait_for(sup.wait(), 5)
    assert runs == [1] and "edgefl[ml]" in reason and "fl-cloud" in reason
