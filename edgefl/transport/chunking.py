"""Chunking of payloads larger than the broker's maximum packet size.

A chunk frame is canonical CBOR::

    [2, transfer_id (16 B), index, count, total_size, sha256(payload) (32 B), data]

Chunks are not signed one by one: the reassembled payload is a signed envelope
and is verified as a whole after its SHA-256 matches.  Reassembly memory is
bounded (per transfer and in total), incomplete transfers time out, and every
discarded transfer is logged and counted with its reason.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from edgefl import codec
from edgefl.errors import EdgeflError
from edgefl.runtime import METRICS, Metrics, RateLimited

CHUNK_FRAME = 2
FRAME_OVERHEAD = 128  # frame fields around the data, generously
_FRAME_LIMITS = codec.Limits(max_size=1 << 28, max_depth=1, max_items=8)

log = logging.getLogger("edgefl.chunking")


class ChunkError(EdgeflError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def is_chunk(payload: bytes) -> bool:
    # A 7-item CBOR array (0x87) whose first item is the integer 2.
    return len(payload) > 2 and payload[0] == 0x87 and payload[1] == CHUNK_FRAME


def split(payload: bytes, max_frame: int) -> list[bytes]:
    """Frames of at most ``max_frame`` bytes each; one frame list per transfer."""
    size = max_frame - FRAME_OVERHEAD
    if size <= 0:
        raise ValueError(f"max_frame {max_frame} leaves no room for data")
    count = max(1, -(-len(payload) // size))
    tid = os.urandom(16)
    digest = hashlib.sha256(payload).digest()
    view = memoryview(payload)
    return [
        codec.encode([CHUNK_FRAME, tid, i, count, len(payload), digest, bytes(view[i * size:(i + 1) * size])])
        for i in range(count)
    ]


@dataclass
class _Transfer:
    source: str
    count: int
    total: int
    digest: bytes
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0
    held: int = 0  # bytes charged to the budget: the parts and their bookkeeping


class Reassembler:
    """Collects chunk frames into payloads within a memory budget.

    Frames are unauthenticated until the payload they make is verified, so
    nothing a frame declares reserves anything: the budget counts the bytes
    really held (plus bookkeeping per part and per transfer), each source
    holds at most ``MAX_TRANSFERS_PER_SOURCE`` transfers and a share of the
    budget, a transfer has no more parts than its size needs at
    ``min_part`` bytes each, and expiry looks only at the oldest transfers
    (they are kept in arrival order), so a flood costs O(1) per frame.
    """

    MAX_TRANSFERS_PER_SOURCE = 8
    MAX_TRANSFERS = 1024
    PART_COST = 64  # bookkeeping charged per held part, per transfer (a dict slot, a bytes object)
    TRANSFER_COST = 256

    def __init__(self, *, max_transfer: int = 64 << 20, max_buffered: int = 128 << 20,
                 timeout_s: float = 30.0, metrics: Metrics = METRICS, clock=time.monotonic,
                 max_per_source: int | None = None, min_part: int = 512):
        self.max_transfer = max_transfer
        self.min_part = min_part  # data bytes per chunk but the last: split() fills max_packet_size (>= 4 KiB)
        self.max_buffered = max_buffered
        # one source may fill a quarter of the budget, or one transfer's worth if that is more
        self.max_per_source = max_per_source or max(max_buffered // 4, max_transfer + self._cost(max_transfer))
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.clock = clock
        self._transfers: OrderedDict[tuple[str, bytes], _Transfer] = OrderedDict()  # oldest first
        self._by_source: dict[str, list[int]] = {}  # source -> [transfers, bytes held]
        self._finished: OrderedDict[tuple[str, bytes], None] = OrderedDict()  # late QoS1 duplicates
        self._held = 0
        self._log = RateLimited(log)

    def _cost(self, total: int) -> int:
        return self.TRANSFER_COST + self.PART_COST * (1 + total // self.min_part)

    @property
    def buffered(self) -> int:
        """Bytes held for transfers in progress (their parts so far and their bookkeeping)."""
        return self._held

    def __len__(self) -> int:
        return len(self._transfers)

    def add(self, source: str, frame: bytes) -> bytes | None:
        """Feed one frame from ``source`` (the publisher); returns the payload once complete."""
        self.expire()
        try:
            return self._add(source, frame)
        except ChunkError as exc:
            self.metrics.inc("chunk_rejected", reason=exc.reason)
            self._log.warning(exc.reason, "dropped chunk from %s: %s", source, exc, reason=exc.reason)
            raise

    def _add(self, source: str, frame: bytes) -> bytes | None:
        try:
            fields = codec.decode(frame, _FRAME_LIMITS)
        except codec.CodecError as exc:
            raise ChunkError("malformed", str(exc)) from None
        if not (isinstance(fields, list) and len(fields) == 7 and fields[0] == CHUNK_FRAME):
            raise ChunkError("malformed", "not a chunk frame")
        _, tid, index, count, total, digest, data = fields
        if not (isinstance(tid, bytes) and len(tid) == 16 and isinstance(digest, bytes) and len(digest) == 32
                and isinstance(data, bytes) and all(type(v) is int for v in (index, count, total))):
            raise ChunkError("malformed", "chunk fields have the wrong types")
        if not (0 <= index < count and 0 <= total and len(data) <= total):
            raise ChunkError("malformed", f"chunk {index}/{count} of {total} bytes is inconsistent")
        if total > self.max_transfer:
            raise ChunkError("too_large", f"transfer of {total} bytes exceeds {self.max_transfer}")
        if count > max(1, -(-total // self.min_part)):
            raise ChunkError("malformed", f"{count} chunks for {total} bytes (at least {self.min_part} each)")
        key = (source, tid)
        if key in self._finished:
            self.metrics.inc("chunk_duplicate")
            return None
        t = self._transfers.get(key)
        if t is None:
            if count == 1:
                return self._complete(key, digest, total, [data])  # nothing to hold
            mine = self._by_source.get(source, [0, 0])
            if mine[0] >= self.MAX_TRANSFERS_PER_SOURCE or len(self._transfers) >= self.MAX_TRANSFERS:
                raise ChunkError("busy", f"{mine[0]} transfers from {source} already in progress")
            t = self._transfers[key] = _Transfer(source, count, total, digest, self.clock())
            self._by_source[source] = [mine[0] + 1, mine[1]]
        elif (t.count, t.total, t.digest) != (count, total, digest):
            self._drop(key)
            raise ChunkError("inconsistent", "chunk metadata differs from the transfer's first chunk")
        if index in t.parts:
            self.metrics.inc("chunk_duplicate")
            return None
        if t.received + len(data) > t.total:
            self._drop(key)
            raise ChunkError("overflow", "chunks carry more bytes than the declared total")
        cost = len(data) + self.PART_COST + (0 if t.held else self.TRANSFER_COST)
        if self._held + cost > self.max_buffered or self._by_source[source][1] + cost > self.max_per_source:
            held = self._held
            self._drop(key)  # it cannot finish: free what it held
            raise ChunkError("memory", f"{held} bytes buffered; no room for {cost} more from {source}")
        t.parts[index] = data
        t.received += len(data)
        self._charge(t, cost)
        if len(t.parts) < t.count:
            return None
        self._drop(key)
        return self._complete(key, t.digest, t.total, [t.parts[i] for i in range(t.count)])

    def _complete(self, key: tuple[str, bytes], digest: bytes, total: int, parts: list[bytes]) -> bytes:
        self._finished[key] = None
        if len(self._finished) > 1024:
            self._finished.popitem(last=False)
        payload = b"".join(parts)
        if len(payload) != total:
            raise ChunkError("size", f"reassembled {len(payload)} bytes, declared {total}")
        if not hmac.compare_digest(hashlib.sha256(payload).digest(), digest):
            raise ChunkError("digest", "reassembled payload does not match its SHA-256")
        self.metrics.inc("chunk_transfer_complete")
        return payload

    def _charge(self, t: _Transfer, n: int) -> None:
        t.held += n
        self._held += n
        self._by_source[t.source][1] += n

    def _drop(self, key: tuple[str, bytes]) -> None:
        t = self._transfers.pop(key, None)
        if t is None:
            return
        self._held -= t.held
        mine = self._by_source[t.source]
        mine[0] -= 1
        mine[1] -= t.held
        if not mine[0]:
            del self._by_source[t.source]

    def expire(self) -> int:
        """Drop transfers older than the timeout; returns how many were dropped.

        Transfers are kept in arrival order and all share one timeout, so only
        the oldest need looking at.
        """
        now = self.clock()
        dropped = 0
        while self._transfers:
            key, t = next(iter(self._transfers.items()))
            if now - t.started <= self.timeout_s:
                break
            self._drop(key)
            dropped += 1
            self.metrics.inc("chunk_rejected", reason="timeout")
            self._log.warning("timeout", "dropped incomplete transfer from %s: %d of %d chunks after %.0f s",
                              key[0], len(t.parts), t.count, self.timeout_s, reason="timeout")
        return dropped
