"""A node's small durable state: one canonical CBOR document, replaced atomically (``files.write_atomic``).

A crash leaves the old document or the new one, never a mix.  A document that
cannot be read is an error, not an empty state: a node that forgot what it
acknowledged could count something twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgefl import codec
from edgefl.errors import EdgeflError
from edgefl.runtime.files import write_atomic

LIMITS = codec.Limits(max_size=16 << 20, max_depth=8, max_items=1 << 20)


class StateError(EdgeflError, RuntimeError):
    reason = "state"


class StateFile:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def load(self, default: Any) -> Any:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return default
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            return codec.decode(data, LIMITS)
        except codec.CodecError as exc:
            raise StateError(f"{self.path}: corrupt state: {exc}") from None

    def save(self, value: Any) -> None:
        write_atomic(self.path, codec.encode(value))
