"""Event loop and supervisor.

``run(main)`` runs a coroutine on uvloop when it is installed (plain asyncio
otherwise, or with ``EDGEFL_NO_UVLOOP=1``).  ``Supervisor`` owns the node's
long-running services in one ``asyncio.TaskGroup``: a crashed service is
logged, counted and restarted with backoff, except one that cannot run at all
(a ``ConfigError``: a setting or a missing package that no restart fixes),
which stops the node with its reason; SIGINT/SIGTERM start a graceful
shutdown in which services are cancelled and, because resources such as the
MQTT session and stores are entered *outside* the supervisor, they close after
the services are gone (queued QoS1 publishes drain, stores flush).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import threading
from types import TracebackType
from typing import Any, Awaitable, Callable, Coroutine

from edgefl.runtime.config import ConfigError
from edgefl.runtime.metrics import METRICS, Metrics

log = logging.getLogger("edgefl.runtime")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("EDGEFL_NO_UVLOOP", "") not in ("", "0"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tune_allocator(mmap_threshold: int = 64 << 20) -> bool:
    """Keep large buffers in glibc's heap instead of mmap/munmap per allocation.

    Messages here (feature batches, models, blocks) are 0.1-16 MB.  By default
    glibc maps each such buffer fresh and unmaps it on free, so every message
    pays page faults again: encoding a 256 KiB envelope took ~450 us instead
    of ~40 us on a 2-core x86-64 VM.  Freed memory then stays with the process
    (up to the threshold), a fair trade on a node that handles such messages
    all day.  No-op off glibc, or with EDGEFL_NO_MALLOC_TUNING=1.
    """
    if os.environ.get("EDGEFL_NO_MALLOC_TUNING", "") not in ("", "0"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
            libc.mallopt(m_trim_threshold, 2 * mmap_threshold))
    except (OSError, AttributeError):
        return False


def run(main: Coroutine[Any, Any, Any], *, low_memory: bool = False) -> Any:
    """Run ``main`` to completion on the preferred event loop; ``low_memory`` (``board.low_memory``): with
    glibc set to hand freed memory back (``edgefl.runtime.memory``) instead of ``tune_allocator``'s trade."""
    if low_memory:
        from edgefl.runtime.memory import low_memory_allocator

        low_memory_allocator()
    else:
        tune_allocator()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


class Supervisor:
    """``async with Supervisor() as sup: sup.spawn("name", factory); await sup.wait()``."""

    def __init__(self, *, handle_signals: bool = True, backoff: tuple[float, float] = (0.5, 30.0),
                 metrics: Metrics = METRICS, exit_deadline_s: float | None = None):
        self.handle_signals = handle_signals
        # for a process that ends when its supervisor stops: after SIGINT/SIGTERM it exits within this
        # long, even if a worker thread is still busy (a thread cannot be cancelled, and interpreter exit
        # would wait for it); what a node keeps on disk is crash-safe
        self.exit_deadline_s = exit_deadline_s
        self.backoff = backoff
        self.metrics = metrics
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self.failed = False  # stopped because a service cannot run
        self._tg = asyncio.TaskGroup()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._signals: list[int] = []

    async def __aenter__(self) -> "Supervisor":
        await self._tg.__aenter__()
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    self._signals.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                    pass
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop(self.stop_reason or "leaving supervisor")
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.stopping.is_set():
            log.warning("second %s: exiting now", name)
            os._exit(128 + sig)
        log.info("%s received: shutting down gracefully", name)
        if self.exit_deadline_s is not None:
            timer = threading.Timer(self.exit_deadline_s, self._exit_now, (name, 128 + sig))
            timer.daemon = True
            timer.start()
        self.stop(name)

    def _exit_now(self, name: str, code: int) -> None:
        log.warning("still shutting down %.0f s after %s (a worker thread is busy): exiting now",
                    self.exit_deadline_s, name)
        logging.shutdown()
        os._exit(code)

    def spawn(self, name: str, factory: Callable[[], Awaitable[Any]], *, restart: bool = True) -> asyncio.Task[None]:
        """Run ``factory()`` as service ``name``; restart it after a crash when ``restart``."""
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"service {name!r} is already running")
        task = self._tg.create_task(self._service(name, factory, restart), name=name)
        self._tasks[name] = task
        return task

    async def _service(self, name: str, factory: Callable[[], Awaitable[Any]], restart: bool) -> None:
        attempt = 0
        while True:
            try:
                await factory()
                log.debug("service %s finished", name)
                return
            except ConfigError as exc:  # restarting cannot help: stop, once, with the reason
                self.metrics.inc("service_crash", service=name)
                log.error("service %s cannot run: %s", name, exc)
                self.failed = True
                self.stop(f"service {name} cannot run: {exc}")
                return
            except Exception:
                self.metrics.inc("service_crash", service=name)
                if not restart or self.stopping.is_set():
                    raise
                log.exception("service %s crashed; restarting", name)
            lo, hi = self.backoff
            delay = min(hi, lo * 2 ** min(attempt, 30))
            attempt += 1
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))

    def stop(self, reason: str = "requested") -> None:
        if self.stopping.is_set():
            return
        self.stop_reason = reason
        self.stopping.set()
        for task in self._tasks.values():
            task.cancel()

    async def wait(self) -> str:
        """Until a stop is requested (signal or ``stop()``); returns the reason."""
        await self.stopping.wait()
        return self.stop_reason
