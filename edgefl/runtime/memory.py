"""The process's memory: what it holds, and glibc's allocator set for a board with little of it.

``rss_mb()``/``peak_rss_mb()`` read ``/proc/self/status`` (None elsewhere).
``low_memory_allocator()`` is what ``board.low_memory`` selects in place of
``edgefl.runtime.loop.tune_allocator``: buffers from 256 KiB up are mapped
on their own and unmapped when freed, the heap is trimmed once 1 MiB at its
top is free, and at most two arenas exist (each worker thread would
otherwise get its own, which keeps its freed memory for itself).
``release_freed()`` hands back what the heaps hold free, as a device does
after each round before it waits (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger("edgefl.memory")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


@functools.cache
def _libc():
    if os.environ.get("EDGEFL_NO_MALLOC_TUNING", "") not in ("", "0"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.mallopt, libc.malloc_trim  # glibc only: AttributeError elsewhere
        return libc
    except (OSError, AttributeError):
        return None


def _status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident memory now, MB."""
    return _status("VmRSS")


def peak_rss_mb() -> float | None:
    """The most this process has held resident, MB."""
    return _status("VmHWM")


def low_memory_allocator() -> bool:
    """Set glibc to give freed memory back promptly (see the module notes); False off glibc."""
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(option, value) for option, value in
               ((M_MMAP_THRESHOLD, 256 << 10), (M_TRIM_THRESHOLD, 1 << 20), (M_ARENA_MAX, 2)))


def release_freed() -> bool:
    """Return the free memory of every heap to the kernel (glibc's ``malloc_trim(0)``)."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def ceiling_mb(board) -> int:
    """The agent's memory ceiling: its service's ``MemoryMax`` (``board.memory_max_mb``; 0: half the RAM)."""
    return board.memory_max_mb or board.ram_mb // 2
