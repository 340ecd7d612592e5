"""Choose the compiled module from ext/ or its pure-Python twin.

One API, two implementations: ``load("hashing")`` returns ``edgefl._ext.hashing``
when it was built and ``edgefl._pure.hashing`` otherwise.  ``EDGEFL_NO_EXTENSIONS=1``
forces the twins; ``EDGEFL_REQUIRE_EXTENSIONS=1`` turns a missing compiled module
into an error (the test suite's native pass uses it so a broken build cannot hide).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("edgefl.native")

MODULES = ("hashing", "cborscan", "accumulator", "noise")
_chosen: dict[str, str] = {}


def forced_pure() -> bool:
    return os.environ.get("EDGEFL_NO_EXTENSIONS", "") not in ("", "0")


def load(name: str) -> ModuleType:
    if name not in MODULES:
        raise ValueError(f"unknown native module {name!r}")
    pure = importlib.import_module(f"edgefl._pure.{name}")
    if forced_pure():
        log.debug("edgefl.%s: pure-Python twin (EDGEFL_NO_EXTENSIONS set)", name)
        _chosen[name] = "pure"
        return pure
    try:
        mod = importlib.import_module(f"edgefl._ext.{name}")
    except ImportError as exc:
        if os.environ.get("EDGEFL_REQUIRE_EXTENSIONS", "") not in ("", "0"):
            raise ImportError(f"compiled edgefl._ext.{name} required but not importable: {exc}") from exc
        log.debug("edgefl.%s: pure-Python twin (compiled module not built: %s)", name, exc)
        _chosen[name] = "pure"
        return pure
    log.debug("edgefl.%s: compiled extension %s", name, getattr(mod, "__file__", "?"))
    _chosen[name] = "native"
    return mod


def implementations() -> dict[str, str]:
    """Which implementation each loaded module uses: {'hashing': 'native', ...}."""
    return dict(_chosen)
