"""Prime representatives: hash-to-prime.

Exponents must be primes.  With plain hashes, anyone holding a witness for a
member with hash h could "prove" any divisor d of h: (w^{h/d})^d = v.  A
prime has no such divisors, and distinct primes are coprime, which is also
what Shamir's trick needs to aggregate witnesses.

hash_to_prime(data): for counter = 0, 1, 2, …: c = SHA-256(data ‖ counter) as
a big-endian integer, counter a 4-byte big-endian unsigned; set the top bit
(so c has exactly 256 bits) and the low bit (skip even numbers); the first c
that passes BPSW (a strong base-2 Miller–Rabin test and a strong Lucas test;
no composite is known to pass both) is the result.  About 89 candidates on
average, most removed by a gcd with a primorial before BPSW runs.

representative(data, index) = hash_to_prime(data ‖ index), index an 8-byte
big-endian unsigned integer.  Binding the position into the prime means a
block cannot be shown at another height.

Results are cached (LRU keyed by SHA-256(data)): a chain asks for the same
representatives again and again when it builds and checks proofs.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import gmpy2

from edgefl.crypto.accumulator.group import AccumulatorError, InvalidInput

PRIME_BITS = 256
INDEX_BYTES = 8
_TOP = 1 << (PRIME_BITS - 1)
_MAX_COUNTER = 1 << 16  # the chance of no prime in 2^16 candidates is about e^-736
_SIEVE = int(gmpy2.primorial(1000)) // 2  # odd primes below 1000


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()  # chains call this from worker threads too

    def get(self, key: bytes) -> int | None:
        with self._lock:
            value = self._d.get(key)
            if value is not None:
                self._d.move_to_end(key)
            return value

    def put(self, key: bytes, value: int) -> None:
        with self._lock:
            self._d[key] = value
            if len(self._d) > self.size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


_cache = _LRU(1 << 16)


def _search(state, bits: int = PRIME_BITS) -> int:
    """First probable prime among the candidates SHA-256(prefix ‖ counter); ``state`` holds the prefix.

    A candidate is the top ``bits`` bits of the digest with the top and low bits set.
    """
    shift, top = 256 - bits, 1 << (bits - 1)
    for counter in range(_MAX_COUNTER):
        h = state.copy()
        h.update(counter.to_bytes(4, "big"))
        c = int.from_bytes(h.digest(), "big") >> shift | top | 1
        if gmpy2.gcd(c, _SIEVE) == 1 and gmpy2.is_bpsw_prp(c):
            return c
    raise AccumulatorError("no prime found")  # pragma: no cover - probability ~e^-736


def _as_bytes(data, what: str) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if not isinstance(data, bytes):
        raise InvalidInput(f"{what}: expected bytes, got {type(data).__name__}")
    return data


def hash_to_prime(data: bytes) -> int:
    """The 256-bit prime representative of ``data`` (deterministic; cached)."""
    data = _as_bytes(data, "data")
    key = hashlib.sha256(data).digest()
    hit = _cache.get(key)
    if hit is not None:
        return hit
    prime = _search(hashlib.sha256(data))
    _cache.put(key, prime)
    return prime


def challenge_prime(data: bytes, bits: int = 128) -> int:
    """An uncached ``bits``-bit prime from ``data`` (same search): Fiat–Shamir challenges, used once."""
    if not 16 < bits <= PRIME_BITS:
        raise InvalidInput(f"bits: {bits} not in (16, {PRIME_BITS}]")
    return _search(hashlib.sha256(_as_bytes(data, "data")), bits)


def representative(data: bytes, index: int) -> int:
    """hash_to_prime(data ‖ index), the index as 8 bytes big-endian."""
    if type(index) is not int or not 0 <= index < 1 << (8 * INDEX_BYTES):
        raise InvalidInput(f"index: {index!r:.40} is not an integer in [0, 2^64)")
    return hash_to_prime(_as_bytes(data, "data") + index.to_bytes(INDEX_BYTES, "big"))


def is_representative(x) -> bool:
    """Whether ``x`` has the shape of a representative: a 256-bit odd probable prime."""
    return type(x) is int and x.bit_length() == PRIME_BITS and x & 1 == 1 and bool(gmpy2.is_bpsw_prp(x))
