"""Chunk reassembly: order, duplicates, digest, memory bound, timeouts."""

import hashlib
import os
import random

import pytest

from edgefl import codec
from edgefl.runtime.metrics import Metrics
from edgefl.transport import chunking
from edgefl.transport.chunking import ChunkError, Reassembler, is_chunk, split


def make(**kw):
    m = Metrics()
    return Reassembler(metrics=m, **{"min_part": 1, **kw}), m


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
    r, m = make(max_buffered=1000, max_transfer=1000, timeout_s=5, clock=lambda: clock[0])
    r.add("s", _frame(tid=b"a" * 16, total=1000, data=b"x" * 500))
    assert r.buffered == 500 + Reassembler.PART_COST + Reassembler.TRANSFER_COST
    with pytest.raises(ChunkError, match="no room"):
        r.add("t", _frame(tid=b"b" * 16, total=1000, data=b"x" * 500))
    assert m.get("chunk_rejected", reason="memory") == 1 and len(r) == 1
    clock[0] = 6.0
    assert r.expire() == 1 and r.buffered == 0
    assert m.get("chunk_rejected", reason="timeout") == 1
    payload = os.urandom(10)
    assert r.add("s", codec.encode([2, b"c" * 16, 0, 1, 10, hashlib.sha256(payload).digest(), payload])) == payload


def test_declared_sizes_reserve_nothing_only_held_bytes_count():
    """Four 60-byte frames declaring 16 MiB each once reserved a 64 MiB budget: genuine transfers were refused."""
    r, m = make(max_transfer=16 << 20, max_buffered=64 << 20)
    for i in range(4):
        r.add(f"attacker-{i}", _frame(tid=bytes([i]) * 16, count=2, total=16 << 20, data=b"x" * 600))
    assert r.buffered < 8 << 10
    payload = os.urandom(200_000)
    out = [r.add("honest", f) for f in split(payload, 64 << 10)]
    assert out[-1] == payload


def test_transfers_per_source_and_parts_per_transfer_are_bounded():
    r, m = make(max_transfer=16 << 20, max_buffered=64 << 20, min_part=512)
    refused = 0
    for i in range(100):
        try:
            r.add("flooder", _frame(tid=i.to_bytes(16, "big"), count=2, total=2048, data=b"x" * 1024))
        except ChunkError:
            refused += 1
    assert len(r) <= Reassembler.MAX_TRANSFERS_PER_SOURCE and refused == 100 - len(r)
    assert m.get("chunk_rejected", reason="busy") == refused
    with pytest.raises(ChunkError):  # a million parts of a 10-byte transfer
        r.add("other", _frame(tid=b"p" * 16, count=1 << 20, total=10, data=b"x"))
    assert m.get("chunk_rejected", reason="malformed") == 1


def test_zero_size_transfers_are_not_kept():
    """Frames declaring total = 0 were never counted: any number of transfers and parts stayed."""
    r, m = make()
    for i in range(50):
        with pytest.raises(ChunkError):
            r.add("s", _frame(tid=i.to_bytes(16, "big"), index=0, count=1000, total=0, data=b""))
    assert len(r) == 0


def test_expiry_looks_at_the_oldest_transfers_only(monkeypatch):
    """Every add walked every transfer to expire stale ones (quadratic under a flood)."""
    reads = [0]

    class Counted(chunking._Transfer):
        def __getattribute__(self, name):
            if name == "started":
                reads[0] += 1
            return super().__getattribute__(name)

    monkeypatch.setattr(chunking, "_Transfer", Counted)
    clock = [0.0]
    r, _ = make(timeout_s=5, clock=lambda: clock[0])
    for i in range(200):
        r.add(f"s{i}", _frame(tid=i.to_bytes(16, "big")))
    reads[0] = 0
    r.add("late", _frame(tid=b"z" * 16))
    assert reads[0] <= 2
    clock[0] = 6.0
    assert r.expire() == 201 and len(r) == 0
