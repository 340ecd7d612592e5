"""One process per data directory: an advisory lock on ``{data_dir}/edgefl.lock``.

Two processes on one data directory would share a client id (and fight over
it in a silent reconnect loop), a sequence counter and a chain.  ``flock`` is
released by the kernel when the holder exits, however it exits, so a crashed
node never leaves a stale lock behind; the file only says who holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edgefl.errors import EdgeflError


class DataDirLocked(EdgeflError, RuntimeError):
    """Another live process runs on this data directory."""

    reason = "data_dir_locked"


class DataDirLock:
    """``with DataDirLock(data_dir):`` (or ``async with``, beside the session it protects)."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.path = Path(data_dir).expanduser() / "edgefl.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirLocked(f"{self.path.parent} is in use by another edgefl process (pid {holder}); "
                                f"stop it first (a node shuts down within seconds of SIGTERM)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> "DataDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> "DataDirLock":
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
