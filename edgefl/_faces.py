"""Declared public faces of edgefl's packages, imported lazily.

A package's ``__init__`` names what users and other packages may import from it, module by module; a name
is imported on first use (PEP 562), so ``import edgefl.ml`` costs nothing until a name is used and a device
does not pay for what it never touches.  Everything not listed is internal.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def faces(package: str, table: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any],
                                                                      Callable[[], list[str]]]:
    """``__all__, __getattr__, __dir__`` for ``package`` from {module: [public names]}."""
    where = {name: module for module, names in table.items() for name in names}
    if len(where) != sum(len(names) for names in table.values()):
        raise ValueError(f"{package}: a public name is listed twice")
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value  # once imported, a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return sorted(where), __getattr__, __dir__
