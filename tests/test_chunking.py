"""Chunk reassembly: order, duplicates, digest, memory bound, timeouts."""

import hashlib
import os
import random

import pytest

from edgefl import codec
from edgefl.runtime.metrics import Metrics
from edgefl.transport.chunking import ChunkError, Reassembler, is_chunk, split


def make(**kw):
    m = Metrics()
    return Reassembler(metrics=m, **kw), m


def test_split_and_reassemble_in_any_order_with_duplicates():
    payload = os.urandom(100_000)
    frames = split(payload, 4096)
    assert len(frames) > 20 and all(len(f) <= 4096 for f in frames) and all(is_chunk(f) for f in frames)
    r, m = make()
    shuffled = frames + frames[:5]
    random.Random(1).shuffle(shuffled)
    out = [r.add("dev", f) for f in shuffled]
    assert [o for o in out if o is not None] == [payload]
    assert len(r) == 0 and r.buffered == 0
    assert m.get("chunk_duplicate") >= 1


def test_transfers_from_different_sources_do_not_mix():
    a, b = os.urandom(10_000), os.urandom(10_000)
    r, _ = make()
    fa, fb = split(a, 1024), split(b, 1024)
    results = []
    for x, y in zip(fa, fb):
        results += [r.add("a", x), r.add("b", y)]
    assert sorted(x for x in results if x) == sorted([a, b])


def _frame(tid=b"t" * 16, index=0, count=2, total=10, digest=b"d" * 32, data=b"x" * 5):
    return codec.encode([2, tid, index, count, total, digest, data])


def test_digest_mismatch_is_rejected():
    r, m = make()
    r.add("s", _frame(index=0))
    with pytest.raises(ChunkError, match="digest"):
        r.add("s", _frame(index=1))
    assert m.get("chunk_rejected", reason="digest") == 1 and r.buffered == 0


@pytest.mark.parametrize("frame, reason", [
    (b"\x87\x02garbage", "malformed"),
    (_frame(index=2), "malformed"),  # index >= count
    (_frame(tid=b"short"), "malformed"),
    (_frame(total=10**9), "too_large"),
    (_frame(data=b"x" * 11), "malformed"),  # more data than the total
])
def test_bad_frames(frame, reason):
    r, m = make(max_transfer=1 << 20)
    with pytest.raises(ChunkError):
        r.add("s", frame)
    assert m.get("chunk_rejected", reason=reason) == 1


def test_inconsistent_and_overflowing_transfers():
    r, m = make()
    r.add("s", _frame(index=0))
    with pytest.raises(ChunkError):
        r.add("s", _frame(index=1, total=11))
    assert m.get("chunk_rejected", reason="inconsistent") == 1 and len(r) == 0
    r.add("s", _frame(index=0, count=3, data=b"x" * 6))
    with pytest.raises(ChunkError):
        r.add("s", _frame(index=1, count=3, data=b"x" * 6))
    assert m.get("chunk_rejected", reason="overflow") == 1


def test_memory_bound_and_timeout():
    clock = [0.0]
    r, m = make(max_buffered=25, max_transfer=20, timeout_s=5, clock=lambda: clock[0])
    r.add("s", _frame(tid=b"a" * 16, total=20))
    with pytest.raises(ChunkError, match="no room"):
        r.add("s", _frame(tid=b"b" * 16, total=10))
    assert m.get("chunk_rejected", reason="memory") == 1
    clock[0] = 6.0
    assert r.expire() == 1 and r.buffered == 0
    assert m.get("chunk_rejected", reason="timeout") == 1
    payload = os.urandom(10)
    assert r.add("s", codec.encode([2, b"c" * 16, 0, 1, 10, hashlib.sha256(payload).digest(), payload])) == payload
