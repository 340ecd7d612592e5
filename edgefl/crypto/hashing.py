"""SHA-256 helpers: tagged hashes and RFC 6962 Merkle trees.

``sha256``, ``tagged_hash``, ``merkle_root`` and ``merkle_path`` come from the
compiled ``ext/hashing.pyx`` when built, otherwise from its pure-Python twin.
"""

from __future__ import annotations

import hashlib
import hmac

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
