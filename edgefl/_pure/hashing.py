"""Pure-Python twin of ext/hashing.pyx: same functions, same bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_midstates: dict[bytes, "hashlib._Hash"] = {}


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _midstate(tag: bytes):
    state = _midstates.get(tag)
    if state is None:
        th = hashlib.sha256(tag).digest()
        state = hashlib.sha256(th + th)
        if len(_midstates) < 256:
            _midstates[tag] = state
    return state


def tagged_hash(tag: bytes, data: bytes) -> bytes:
    """BIP-340 tagged hash: SHA256(SHA256(tag) || SHA256(tag) || data)."""
    if not isinstance(tag, bytes):
        raise TypeError("tag must be bytes")
    h = _midstate(tag).copy()
    h.update(data)
    return h.digest()


def _leaf_level(leaves: list) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + bytes(leaf)).digest() for leaf in leaves]


def _reduce(level: list[bytes]) -> list[bytes]:
    up = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        up.append(level[-1])
    return up


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of a sequence of byte strings."""
    level = _leaf_level(list(leaves))
    if not level:
        return sha256(b"")
    while len(level) > 1:
        level = _reduce(level)
    return level[0]


def merkle_path(leaves: Iterable[bytes], index: int) -> list[bytes]:
    """Audit path (sibling hashes, leaf level first) for leaf ``index``."""
    level = _leaf_level(list(leaves))
    if not 0 <= index < len(level):
        raise IndexError(f"leaf index {index} out of range for {len(level)} leaves")
    path = []
    while len(level) > 1:
        if index % 2:
            path.append(level[index - 1])
        elif index + 1 < len(level):
            path.append(level[index + 1])
        level = _reduce(level)
        index //= 2
    return path
