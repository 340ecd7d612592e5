"""The one base of the errors edgefl raises on purpose.

Each carries ``reason``, a short stable label for metrics, logs and remote error answers.  Most are also a
``ValueError`` (bad input: codec, envelope, ledger, accumulator, PKI, config, learning) or a ``RuntimeError``
(an environment or a state: broker, backend, state file), as callers have long relied on, so
``except EdgeflError`` catches "one of ours" and nothing else.
"""

from __future__ import annotations

__all__ = ["EdgeflError"]


class EdgeflError(Exception):
    reason: str = "error"
