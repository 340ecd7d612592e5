"""Pin the BLAS numpy uses to one thread while a recorded computation runs.

A threaded GEMM may split its work differently from run to run or between
machines with different core counts, and floating-point sums taken in another
order differ in their last bits.  Recorded training steps are audited by
re-execution, so they run with the BLAS held to a single thread: the reduction
order is then fixed by the BLAS kernel alone, i.e. by the platform
(``fingerprint()``), not by the moment's scheduling.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import platform
import threading

import numpy as np

log = logging.getLogger("edgefl.ml.blas")

# (set, get) symbol pairs: numpy's bundled scipy-openblas (64-bit ints), plain OpenBLAS, MKL.
_SYMBOLS = [
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
]
_lock = threading.RLock()
_control: tuple | None = None
_probed = False


def _candidates() -> list[str]:
    base = os.path.dirname(os.path.dirname(np.__file__))
    libs = sorted(glob.glob(os.path.join(base, "numpy.libs", "*openblas*")))
    libs += sorted(glob.glob(os.path.join(os.path.dirname(np.__file__), ".dylibs", "*openblas*")))
    return libs + ["libopenblas.so.0", "libmkl_rt.so", "libmkl_rt.so.2"]


def _find_control():
    """The BLAS thread setter/getter of the library numpy loaded, or None."""
    global _control, _probed
    if _probed:
        return _control
    _probed = True
    handles = [ctypes.CDLL(None)]  # symbols already loaded into the process
    for path in _candidates():
        with contextlib.suppress(OSError):
            handles.append(ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
                           if os.path.sep not in path else ctypes.CDLL(path))
    for handle in handles:
        for set_name, get_name in _SYMBOLS:
            setter, getter = getattr(handle, set_name, None), getattr(handle, get_name, None)
            if setter is not None and getter is not None:
                getter.restype = ctypes.c_int
                _control = (setter, getter, set_name)
                return _control
    log.debug("no BLAS thread control found; relying on OPENBLAS_NUM_THREADS/OMP_NUM_THREADS")
    return None


def threads() -> int | None:
    """The BLAS thread count now, or None when it cannot be read."""
    control = _find_control()
    return int(control[1]()) if control else None


def set_threads(n: int) -> bool:
    """Hold the BLAS to ``n`` threads from now on (``ml.blas_threads``); False when it cannot be controlled."""
    control = _find_control()
    if control is None:
        return False
    with _lock:
        control[0](int(n))
    return True


@contextlib.contextmanager
def single_threaded():
    """Run the body with the BLAS on one thread, restoring the previous count after."""
    control = _find_control()
    with _lock:
        if control is None:
            yield
            return
        setter, getter, _ = control
        before = int(getter())
        setter(1)
        try:
            yield
        finally:
            setter(before)


def fingerprint() -> dict[str, str]:
    """What bit-identical replay depends on: the same inputs give the same bytes on the same platform."""
    control = _find_control()
    return {
        "numpy": np.__version__,
        "machine": platform.machine(),
        "blas": control[2] if control else "unknown",
    }
