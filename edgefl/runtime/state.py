"""A node's small durable state: one canonical CBOR document, replaced atomically.

Written to a temporary file, fsynced, renamed over the old one and the
directory fsynced, so a crash leaves the old document or the new one, never a
mix.  A document that cannot be read is an error, not an empty state: a node
that forgot what it acknowledged could count something twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgefl import codec

LIMITS = codec.Limits(max_size=16 << 20, max_depth=8, max_items=1 << 20)


class StateError(RuntimeError):
    pass


class StateFile:
    def __init__(self, path: str | os.PathLike):
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
        data = codec.encode(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
