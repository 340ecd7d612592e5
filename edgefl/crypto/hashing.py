"""SHA-256 helpers: tagged hashes and RFC 6962 Merkle trees.

``sha256``, ``tagged_hash``, ``merkle_root`` and ``merkle_path`` come from the
compiled ``ext/hashing.pyx`` when built, otherwise from its pure-Python twin.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

from edgefl import native

_impl = native.load("hashing")
sha256 = _impl.sha256
tagged_hash = _impl.tagged_hash
merkle_root = _impl.merkle_root
merkle_path = _impl.merkle_path


def merkle_verify(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """Check an audit path from ``merkle_path`` against ``root`` (RFC 6962 tree shape)."""
    if not 0 <= index < size:
        return False
    node = hashlib.sha256(b"\x00" + leaf).digest()
    steps = iter(path)
    try:
        while size > 1:
            if index % 2:
                node = hashlib.sha256(b"\x01" + next(steps) + node).digest()
            elif index + 1 < size:
                node = hashlib.sha256(b"\x01" + node + next(steps)).digest()
            index //= 2
            size = (size + 1) // 2
    except StopIteration:
        return False
    return next(steps, None) is None and hmac.compare_digest(node, root)


class MerkleFrontier:
    """The RFC 6962 Merkle tree hash of a sequence that grows one leaf at a time.

    Keeps only the roots of the perfect subtrees the leaves so far decompose
    into (at most log2(n) of them): ``append`` costs about two hashes per leaf,
    ``root`` folds the subtrees right to left, which is exactly the RFC 6962
    shape (the left subtree holds the largest power of two below n), so
    ``root()`` equals ``merkle_root(leaves)``.
    """

    __slots__ = ("_peaks", "size")

    def __init__(self, leaves: Iterable[bytes] = ()):
        self._peaks: list[tuple[int, bytes]] = []  # (height, subtree hash), largest subtree first
        self.size = 0
        for leaf in leaves:
            self.append(leaf)

    def append(self, leaf: bytes) -> None:
        node, height = hashlib.sha256(b"\x00" + leaf).digest(), 0
        while self._peaks and self._peaks[-1][0] == height:
            node = hashlib.sha256(b"\x01" + self._peaks.pop()[1] + node).digest()
            height += 1
        self._peaks.append((height, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return hashlib.sha256(b"").digest()
        node = self._peaks[-1][1]
        for _, left in reversed(self._peaks[:-1]):
            node = hashlib.sha256(b"\x01" + left + node).digest()
        return node
