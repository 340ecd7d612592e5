"""What a replica has signed, kept before the signature leaves it, so a restart never signs a conflict.

One entry per slot (e.g. ("prepare", view, height)) → the digest signed there.
``guard`` says whether signing ``digest`` at ``slot`` is safe (the slot is
empty or already holds the same digest) and, when it was empty, makes the
entry durable first: the file is replaced atomically (runtime.files.write_atomic,
fsynced), so a kill -9 at any point leaves either the old or the new log.
Entries at or below the stable checkpoint are dropped (``truncate``), which
keeps the file small: a window of slots, not the history.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgefl import codec
from edgefl.runtime import write_atomic

Slot = tuple[Any, ...]  # (phase, chain, view, …, height): what one signature may be given for
LIMITS = codec.Limits(max_size=4 << 20, max_depth=4, max_items=1 << 16)


class VoteLog:
    """In memory when ``path`` is None (simulations), else durable."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[Slot, bytes] = {}
        self.view = 0  # the highest view this replica entered (a restart does not go back)
        if self.path is not None and self.path.exists():
            self.view, self.entries = _parse(codec.decode(self.path.read_bytes(), LIMITS), self.path)

    def guard(self, slot: Slot, digest: bytes, also: tuple[tuple[Slot, bytes], ...] = ()) -> bool:
        """Whether signing ``digest`` at ``slot`` is safe; ``also``: further (slot, digest) pairs to reserve in the
        same durable write (a slot the caller will sign next, so that its signature needs no write of its own)."""
        if self.entries.get(slot, digest) != digest:
            return False
        fresh = [(s, d) for s, d in ((slot, digest), *also) if s not in self.entries]
        for s, d in fresh:
            self.entries[s] = d
        if fresh:
            self._save()
        return True

    def enter_view(self, view: int) -> None:
        if view > self.view:
            self.view = view
            self._save()

    def truncate(self, height: int) -> None:
        """Forget slots of heights ≤ ``height`` (the slot's last item is its height)."""
        old = len(self.entries)
        self.entries = {k: v for k, v in self.entries.items() if k[-1] > height}
        if len(self.entries) != old:
            self._save()

    def _save(self) -> None:
        if self.path is not None:
            write_atomic(self.path, codec.encode({"view": self.view,
                                                  "entries": [[list(k), v] for k, v in self.entries.items()]}))


def _parse(data: Any, path: Path) -> tuple[int, dict[Slot, bytes]]:
    """A stored log's view and entries; a file of any other shape is a ``codec.SchemaError``, not a KeyError."""
    ok = (isinstance(data, dict) and set(data) == {"view", "entries"} and type(data["view"]) is int
          and data["view"] >= 0 and isinstance(data["entries"], list)
          and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], list) and isinstance(e[1], bytes)
                  and all(type(x) in (str, int) for x in e[0]) and e[0] and type(e[0][-1]) is int
                  for e in data["entries"]))
    if not ok:
        raise codec.SchemaError(f"{path}: not a vote log ({{view, entries: [[slot, digest]]}})", field="votelog")
    return data["view"], {tuple(k): v for k, v in data["entries"]}
