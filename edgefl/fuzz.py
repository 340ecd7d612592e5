"""Fuzzing every decoder that takes bytes from the network or from disk (``scripts/fuzz``, ``tests/test_fuzz.py``).

Inputs are valid encodings mutated the ways a hostile peer or a failing disk
would: bit flips, bytes set, truncation, extension, huge declared lengths,
deep nesting, indefinite lengths, duplicate map keys, non-canonical integers,
unknown tags, splices of two encodings.  Mutations walk the CBOR structure of
the input (``heads``), so they hit item boundaries, not only random offsets.

Every mutation choice is drawn from a ``Source``: hypothesis's ``st.data()``
in the test suite (it shrinks a failure to a minimal mutation plan and keeps it
in its example database), or a seeded PRNG in the long form, where input *i*
of target *t* under seed *s* is the same in every process: that is what the
differential check compares across the compiled extensions and the pure twins.

A target's verdict on an input is ``ok:<summary>`` or the class and reason of
the typed error it raised (``SchemaError:schema``, ``InvalidTx:bad_signature``,
…).  Anything else is a crash (saved under ``tests/fuzz/crashers/``), and so is
an input that runs longer than ``HANG_S``.

    python -m edgefl.fuzz --inputs 100000 [--target envelope ...] [--impl both] [--save-corpus]
    python -m edgefl.fuzz --atheris --target blocks --inputs 100000   # coverage-guided (pip install atheris)

With ``--atheris`` (when it is installed) libFuzzer chooses which inputs to
keep by the Python coverage they reach, and the same mutations above serve as
its custom mutator; the differential check needs the deterministic PRNG form.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import importlib
import itertools
import json
import os
import pkgutil
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
import typing
from pathlib import Path
from typing import Any, Callable, Protocol, get_args, get_origin

import numpy as np

from edgefl.errors import EdgeflError

HANG_S = 5.0  # one input may take this long
MAX_CORPUS = 48  # inputs kept per target: the first one of each distinct verdict
FUZZ_DIR = Path(__file__).resolve().parent.parent / "tests" / "fuzz"


# --------------------------------------------------------------------------- where mutation choices come from


class Source(Protocol):
    def int(self, lo: int, hi: int) -> int: ...  # inclusive


class RandomSource:
    def __init__(self, seed: str):
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class DataSource:
    """hypothesis's ``st.data()`` as a Source: every choice shrinks."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))


# --------------------------------------------------------------------------- CBOR structure


def heads(data: bytes, limit: int = 2048) -> list[tuple[int, int, int, int, int]]:
    """(start, end of head, major type, additional info, argument) of the items of ``data``, in order.

    Tolerant: it stops where the input stops making sense, and never reads
    more than ``limit`` heads.
    """
    out, pos, n = [], 0, len(data)
    while pos < n and len(out) < limit:
        start, ib = pos, data[pos]
        major, ai = ib >> 5, ib & 31
        pos += 1
        if ai < 24:
            arg = ai
        elif ai <= 27:
            size = 1 << (ai - 24)
            if pos + size > n:
                break
            arg = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        else:
            arg = -1
        out.append((start, pos, major, ai, arg))
        if major in (2, 3) and arg > 0:
            pos += arg  # a string's content is no item of its own
    return out


def _head(major: int, n: int, width: int | None = None) -> bytes:
    """A head with argument ``n``, shortest or ``width`` bytes wide (a non-canonical form)."""
    n = min(n, (1 << 64) - 1)
    if width is None:
        if n < 24:
            return bytes([major << 5 | n])
        width = next(w for w in (1, 2, 4, 8) if n < 1 << (8 * w))
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + n.to_bytes(width, "big")


# --------------------------------------------------------------------------- mutations


def _pick(src: Source, data: bytes) -> tuple[int, int, int, int, int] | None:
    items = heads(data)
    return items[src.int(0, len(items) - 1)] if items else None


def bit_flip(data: bytes, src: Source, other: bytes) -> bytes:
    if not data:
        return bytes([1 << src.int(0, 7)])
    i = src.int(0, len(data) - 1)
    return data[:i] + bytes([data[i] ^ (1 << src.int(0, 7))]) + data[i + 1:]


def set_byte(data: bytes, src: Source, other: bytes) -> bytes:
    if not data:
        return bytes([src.int(0, 255)])
    i = src.int(0, len(data) - 1)
    value = (0x00, 0xFF, 0x7F, 0x80, 0x18, 0x1B, 0x1F, 0x9F, 0xBF, 0xFF, src.int(0, 255))[src.int(0, 10)]
    return data[:i] + bytes([value]) + data[i + 1:]


def truncate(data: bytes, src: Source, other: bytes) -> bytes:
    return data[:src.int(0, max(0, len(data) - 1))]


def extend(data: bytes, src: Source, other: bytes) -> bytes:
    tails = (b"\x00", b"\xff", data[:src.int(0, len(data))], bytes(src.int(1, 64)),
             bytes(src.int(0, 255) for _ in range(src.int(1, 8))))
    return data + tails[src.int(0, len(tails) - 1)]


def huge_length(data: bytes, src: Source, other: bytes) -> bytes:
    """An item's length (a string's, an array's, a map's) declared far beyond the input."""
    item = _pick(src, data)
    if item is None:
        return bytes([0x5B]) + (1 << 62).to_bytes(8, "big")
    start, end, major, _, _ = item
    n = (0xFFFFFFFF, 1 << 31, 1 << 40, (1 << 64) - 1, len(data) + 1, 1 << 24)[src.int(0, 5)]
    major = major if major in (2, 3, 4, 5) else (2, 3, 4, 5)[src.int(0, 3)]
    return data[:start] + _head(major, n) + data[end:]


def deep_nesting(data: bytes, src: Source, other: bytes) -> bytes:
    """The input (or one item of it) inside many one-element arrays, maps or tags."""
    depth = (8, 17, 64, 1000, 100_000)[src.int(0, 4)]
    wrap = (b"\x81", b"\xa1\x61a", b"\xd8\x28\x82\x81\x01")[src.int(0, 2)]
    item = _pick(src, data)
    at = item[0] if item is not None and src.int(0, 1) else 0
    return data[:at] + wrap * depth + data[at:]


def indefinite(data: bytes, src: Source, other: bytes) -> bytes:
    """A definite-length head made indefinite (0x5f, 0x7f, 0x9f, 0xbf), with or without a break."""
    item = _pick(src, data)
    if item is None:
        return b"\x9f\xff"
    start, end, major, _, _ = item
    major = major if major in (2, 3, 4, 5) else 4
    out = data[:start] + bytes([major << 5 | 31]) + data[end:]
    return out + b"\xff" if src.int(0, 1) else out


def duplicate_key(data: bytes, src: Source, other: bytes) -> bytes:
    """A map with one of its keys (and value) written twice: same bytes, a canonical count."""
    maps = [h for h in heads(data) if h[2] == 5 and h[4] > 0]
    if not maps:
        return data
    start, end, _, _, n = maps[src.int(0, len(maps) - 1)]
    key_end = _item_end(data, end)
    value_end = _item_end(data, key_end) if key_end is not None else None
    if value_end is None:
        return data
    entry = data[end:value_end]
    return data[:start] + _head(5, n + 1) + entry + data[end:]


def non_canonical_int(data: bytes, src: Source, other: bytes) -> bytes:
    """A head (integer, length, tag) written wider than it must be: the same value, another byte form."""
    items = [h for h in heads(data) if h[3] < 28 and h[4] >= 0]
    if not items:
        return data
    start, end, major, _, arg = items[src.int(0, len(items) - 1)]
    widths = [w for w in (1, 2, 4, 8) if arg < 1 << (8 * w)]
    return data[:start] + _head(major, arg, widths[src.int(0, len(widths) - 1)]) + data[end:]


def unknown_tag(data: bytes, src: Source, other: bytes) -> bytes:
    """An item wrapped in a tag the decoders do not know (or a typed-array tag around the wrong thing)."""
    tag = (0, 1, 2, 24, 32, 39, 41, 55799, 63, 68, 87, 88, 1 << 32)[src.int(0, 12)]
    item = _pick(src, data)
    at = item[0] if item is not None else 0
    return data[:at] + _head(6, tag) + data[at:]


def splice(data: bytes, src: Source, other: bytes) -> bytes:
    """The front of one valid encoding and the back of another."""
    return data[:src.int(0, len(data))] + other[src.int(0, len(other)):]


def inner(data: bytes, src: Source, other: bytes) -> bytes:
    """A mutation inside a byte string that holds an encoding of its own (a transaction's body, a block's
    transactions, the message inside a frame), its length head rewritten to fit: the outer layer stays valid."""
    strings = [h for h in heads(data) if h[2] == 2 and h[4] >= 2 and h[1] + h[4] <= len(data)]
    if not strings:
        return bit_flip(data, src, other)
    start, end, _, _, n = strings[src.int(0, len(strings) - 1)]
    content = data[end:end + n]
    op = MUTATIONS[src.int(0, len(MUTATIONS) - 2)]  # any but this one
    changed = op(content, src, content)
    return data[:start] + _head(2, len(changed)) + changed + data[end + n:]


def delete_range(data: bytes, src: Source, other: bytes) -> bytes:
    if not data:
        return data
    i = src.int(0, len(data) - 1)
    return data[:i] + data[i + src.int(1, 16):]


MUTATIONS: tuple[Callable[[bytes, Source, bytes], bytes], ...] = (
    bit_flip, set_byte, truncate, extend, huge_length, deep_nesting, indefinite, duplicate_key, non_canonical_int,
    unknown_tag, splice, delete_range, inner)  # inner last: it applies any of the others one layer down


def _item_end(data: bytes, pos: int) -> int | None:
    """Where the item starting at ``pos`` ends (None if it does not within ``data``)."""
    todo = 1
    n = len(data)
    while todo:
        if pos >= n:
            return None
        ib = data[pos]
        major, ai = ib >> 5, ib & 31
        pos += 1
        if ai < 24:
            arg = ai
        elif ai <= 27:
            size = 1 << (ai - 24)
            if pos + size > n:
                return None
            arg = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        else:
            return None
        todo -= 1
        if major in (2, 3):
            pos += arg
        elif major == 4:
            todo += arg
        elif major == 5:
            todo += 2 * arg
        elif major == 6:
            todo += 1
        if todo > n:
            return None
    return pos if pos <= n else None


def mutate(seeds: list[bytes], src: Source) -> bytes:
    """One input: a seed (sometimes as it is), then one to four mutations."""
    data = seeds[src.int(0, len(seeds) - 1)]
    other = seeds[src.int(0, len(seeds) - 1)]
    for _ in range(src.int(0, 4)):
        data = MUTATIONS[src.int(0, len(MUTATIONS) - 1)](data, src, other)
        if len(data) > 4 << 20:  # deep nesting of 100,000 on a large seed: enough
            data = data[:4 << 20]
    return data


# --------------------------------------------------------------------------- targets


@dataclasses.dataclass
class Target:
    """``run(data)`` returns a summary of what the decoder made of ``data``; ``typed`` are the errors it may raise."""

    name: str
    what: str
    seeds: Callable[[], list[bytes]]
    run: Callable[[bytes], str]
    typed: tuple[type[BaseException], ...]


class Crash(EdgeflError):
    reason = "crash"

    def __init__(self, target: str, data: bytes, trace: str):
        super().__init__(f"{target}: {trace.strip().splitlines()[-1]}")
        self.target, self.data, self.trace = target, data, trace


class _Hang(BaseException):
    pass


def verdict(target: Target, data: bytes) -> str:
    """What ``target`` makes of ``data``; raises ``Crash`` for an untyped exception or a hang."""
    old = signal.signal(signal.SIGALRM, _on_alarm) if hasattr(signal, "SIGALRM") else None
    if old is not None:
        signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        return target.run(data)
    except target.typed as exc:
        return f"{type(exc).__name__}:{getattr(exc, 'reason', '')}"
    except _Hang:
        raise Crash(target.name, data, f"hang: more than {HANG_S} s") from None
    except Exception:  # noqa: BLE001 - an untyped exception is what the fuzzer hunts
        raise Crash(target.name, data, traceback.format_exc()) from None
    finally:
        if old is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def _on_alarm(signum, frame):
    raise _Hang()


def _fields(obj: Any, n: int) -> list:
    """``obj`` as the array of ``n`` items the harness expects around an input (else a typed error)."""
    from edgefl import codec

    if not (isinstance(obj, list) and len(obj) == n):
        raise codec.SchemaError(f"the harness expects an array of {n}")
    return obj


def _ok(*parts: Any) -> str:
    return "ok:" + hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


_TARGETS: dict[str, Target] | None = None


def targets() -> dict[str, Target]:
    """Every fuzz target, built once per process (keys, a PKI, a small chain, in a temporary directory)."""
    global _TARGETS
    if _TARGETS is None:
        _TARGETS = {t.name: t for t in _World().targets()}
    return _TARGETS


def register_all_messages() -> None:
    """Import every module of the package, so every @message type is registered."""
    import edgefl

    for mod in pkgutil.walk_packages(edgefl.__path__, "edgefl."):
        if mod.name.startswith(("edgefl._ext", "edgefl.__main__")):
            continue
        importlib.import_module(mod.name)


def example(tp: Any, full: bool) -> Any:
    """A wire value of annotation ``tp`` within its size and range limits (``full``: optional parts present)."""
    from edgefl import codec

    constraints: tuple = ()
    if get_origin(tp) is typing.Annotated:
        tp, *constraints = get_args(tp)
    if get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
        if not full:
            return None
    n = min([c.n for c in constraints if isinstance(c, codec.MaxLen)] or [64])
    ranges = [c for c in constraints if isinstance(c, codec.Range)]
    lo = max([r.lo for r in ranges] or [0])
    if isinstance(tp, type) and issubclass(tp, codec.Message):
        return message_example(tp, full)
    if get_origin(tp) is list:
        return [example(get_args(tp)[0], full)] if full and n else []
    if get_origin(tp) is dict:
        k, v = get_args(tp)
        return {example(k, full): example(v, full)} if full else {}
    if tp is bool:
        return full
    if tp is int:
        return int(lo) if lo > -(1 << 63) else 0
    if tp is float:
        return float(lo) if lo != -float("inf") else 0.0
    if tp is str:
        return "a" * min(n, 8 if full else 1)
    if tp is bytes:
        return bytes(range(min(n, 64))) if full else bytes(min(n, 32))
    if tp is np.ndarray:
        arrays = [c for c in constraints if isinstance(c, codec.Array)]
        dtype = np.dtype(arrays[0].dtype if arrays and arrays[0].dtype else "<f4")
        ndim = arrays[0].ndim if arrays and arrays[0].ndim else 1
        return np.zeros((1,) * ndim, dtype=dtype)
    return 0


def message_example(cls, full: bool) -> dict:
    from edgefl import codec

    schema = codec._schema(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: example(hints[name], full) for name in schema.names
            if full or schema.absent[name] is codec._REQUIRED}


class _World:
    """The fixtures targets decode against, deterministic but for Schnorr signatures' auxiliary randomness
    (seeds for the differential check are made once and shared: see ``load_seeds``)."""

    T0 = 1_700_000_000

    def __init__(self):
        from edgefl.crypto.keys import SigningKey

        register_all_messages()
        shm = Path("/dev/shm")  # the file targets write every input: memory, not a disk, when there is one
        self.dir = Path(tempfile.mkdtemp(prefix="edgefl-fuzz-", dir=shm if shm.is_dir() else None))
        atexit.register(shutil.rmtree, self.dir, True)
        self.keys = {n: SigningKey(hashlib.sha256(f"fuzz/{n}".encode()).digest())
                     for n in ("root", "fog-1", "dev-a", "cloud-1", "fog-a", "dev-1")}

    def targets(self) -> list[Target]:
        return [self.envelope(), self.messages(), self.inbound(), self.chunks(), *self.ledger(), self.certificate(),
                self.crl(), self.accumulator(), self.pbft(), *self.state_files(), self.profile()]

    # ------------------------------------------------------------------ network

    def envelope(self) -> Target:
        from edgefl import codec
        from edgefl.crypto.envelope import Rejected, Signer, StaticKeyRegistry, Verifier
        from edgefl.crypto.pki import Revocation, sign_crl
        from edgefl.runtime.metrics import Metrics
        from edgefl.transport.messages import Error, Ping, Status

        reg = StaticKeyRegistry({n: k.public_key for n, k in self.keys.items()})
        t0 = self.T0

        def seeds():
            s = Signer("dev-a", self.keys["dev-a"])
            crl = sign_crl(self.keys["fog-1"], "fog-1", 1, [Revocation(serial=3, at=t0)], this_update=t0,
                           next_update=t0 + 9)
            return [s.seal(m, ts_ms=t0 * 1000, seq=i + 1, **kw) for i, (m, kw) in enumerate([
                (Ping(nonce=b"n", payload=b"p" * 40), {"to": "fog-1", "corr": b"c" * 12}),
                (Status(state="online", session=b"s" * 8), {}), (Error("internal", "x"), {"to": "fog-1"}),
                (crl, {})])]

        def run(data: bytes) -> str:
            v = Verifier(reg, metrics=Metrics(), clock=lambda: t0 + 1,
                         limits=codec.Limits(max_size=1 << 20, max_depth=16, max_items=1 << 16))
            fresh = data[-1:] != b"\x00" if data else True
            env = v.open(data, check_fresh=fresh, expect_sender="dev-a" if len(data) % 3 else None)
            return _ok(env.type, env.seq, env.to, env.corr, codec.encode(codec.message_to_wire(env.message)))

        return Target("envelope", "signed envelopes (edgefl.crypto.envelope.Verifier.open)", seeds, run, (Rejected,))

    def messages(self) -> Target:
        """Every registered @message type, decoded from canonical CBOR as a peer or a file gives it."""
        from edgefl import codec

        classes = sorted(codec.REGISTRY.items())

        def seeds():
            out = []
            for i, (_key, cls) in enumerate(classes):
                for full in (False, True):
                    try:
                        body = codec.encode(message_example(cls, full))
                    except codec.CodecError:
                        continue
                    out.append(codec.encode([i, body]))
            return out

        def run(data: bytes) -> str:
            index, body = _fields(codec.decode(data, codec.Limits(max_size=1 << 20, max_depth=4, max_items=16)), 2)
            if type(index) is not int or not 0 <= index < len(classes) or type(body) is not bytes:
                raise codec.SchemaError("not [type index, body]")
            cls = classes[index][1]
            msg = cls.from_wire(codec.decode(body, codec.Limits(max_size=cls.MAX_SIZE, max_depth=16,
                                                                max_items=1 << 16), canonical=True))
            return _ok(cls.TYPE, codec.encode(codec.message_to_wire(msg)))

        return Target("messages", f"every registered message type ({len(classes)}), from canonical CBOR", seeds,
                      run, (codec.CodecError, ValueError))

    def inbound(self) -> Target:
        """The session's whole inbound path: (topic, bytes) to a delivery or a counted rejection; never raises."""
        from edgefl import codec
        from edgefl.crypto.envelope import Signer, StaticKeyRegistry, Verifier
        from edgefl.runtime.metrics import Metrics
        from edgefl.transport import chunking, topics
        from edgefl.transport.inbound import Inbound
        from edgefl.transport.messages import Ping, Status

        reg = StaticKeyRegistry({n: k.public_key for n, k in self.keys.items()})
        t0 = self.T0

        def seeds():
            s = Signer("dev-a", self.keys["dev-a"])
            big = s.seal(Ping(nonce=b"b", payload=bytes(6000)), to="fog-1", ts_ms=t0 * 1000, seq=9)
            frames = chunking.split(big, 4096)
            items = [("msg/fog-1", s.seal(Ping(nonce=b"n"), to="fog-1", ts_ms=t0 * 1000, seq=1)),
                     ("status", s.seal(Status(state="online", session=b"s"), ts_ms=t0 * 1000, seq=2)),
                     ("status", s.seal(Ping(nonce=b"x"), ts_ms=t0 * 1000, seq=3)),
                     *[("msg/fog-1", f) for f in frames]]
            return [codec.encode([[kind, wire] for kind, wire in items])]

        def run(data: bytes) -> str:
            m = Metrics()
            v = Verifier(reg, metrics=m, clock=lambda: t0 + 1)
            pipe = Inbound(v, chunking.Reassembler(max_transfer=1 << 16, max_buffered=1 << 18, metrics=m,
                                                   clock=lambda: 0.0), metrics=m)
            frames = codec.decode(data, codec.Limits(max_size=1 << 20, max_depth=3, max_items=256))
            out = []
            for frame in frames if isinstance(frames, list) else []:
                if not (isinstance(frame, list) and len(frame) == 2 and isinstance(frame[1], bytes)):
                    continue
                kind = frame[0] if isinstance(frame[0], str) else "x"
                rx = pipe.receive(f"{topics.PREFIX}/s/device/dev-a/{kind}", frame[1])
                out.append(None if rx is None else (rx.envelope.type, rx.envelope.seq))
            if m.get("inbound_rejected", reason="internal"):
                raise AssertionError("the inbound path raised inside (logged above)")
            return _ok(out, sorted(m.snapshot().items()))

        return Target("inbound", "the session's inbound path (edgefl.transport.inbound), frames in sequence", seeds,
                      run, (codec.CodecError,))

    def chunks(self) -> Target:
        from edgefl import codec
        from edgefl.runtime.metrics import Metrics
        from edgefl.transport import chunking

        def seeds():
            payload = bytes(range(256)) * 40
            frames = chunking.split(payload, 2048)
            return [codec.encode(frames), codec.encode(frames[::-1] + frames[:1]), codec.encode(frames[:1])]

        def run(data: bytes) -> str:
            frames = codec.decode(data, codec.Limits(max_size=1 << 20, max_depth=2, max_items=1024))
            r = chunking.Reassembler(max_transfer=1 << 15, max_buffered=1 << 16, metrics=Metrics(),
                                     clock=lambda: 0.0, min_part=256)
            out = []
            for i, frame in enumerate(frames if isinstance(frames, list) else []):
                if not isinstance(frame, bytes):
                    continue
                try:
                    done = r.add(f"s{i % 3}", frame)
                    out.append(None if done is None else hashlib.sha256(done).hexdigest()[:8])
                except chunking.ChunkError as exc:
                    out.append(exc.reason)
                if r.buffered > r.max_buffered or len(r) > r.MAX_TRANSFERS or r.buffered < 0:
                    raise AssertionError(f"reassembly holds {r.buffered} bytes in {len(r)} transfers")
            return _ok(out, r.buffered, len(r))

        return Target("chunks", "chunk reassembly (edgefl.transport.chunking.Reassembler), frames in sequence",
                      seeds, run, (codec.CodecError,))

    # ------------------------------------------------------------------ the ledger

    def ledger(self) -> list[Target]:
        from edgefl import codec
        from edgefl.crypto import accumulator
        from edgefl.crypto.envelope import StaticKeyRegistry
        from edgefl.ledger.block import Tip
        from edgefl.ledger.chain import Chain
        from edgefl.ledger.committee import Committee
        from edgefl.ledger.errors import LedgerError
        from edgefl.ledger.proofs import BatchProof, TxProof, verify_batch_proof, verify_proof
        from edgefl.ledger.records import Note
        from edgefl.ledger.sealer import SingleSealer
        from edgefl.ledger.tx import ChainSpec, State, decode_tx, record_tx
        from edgefl.ledger.validation import validate_block

        keys = self.keys
        reg = StaticKeyRegistry({n: k.public_key for n, k in keys.items()})
        spec = ChainSpec(chain="fog-a", role="sub", sealer="single",
                         committee=Committee.of([("fog-a", keys["fog-a"].public_key)]), max_block=1 << 20,
                         ts=self.T0 * 1000, parent="main",
                         parent_committee=Committee.of([("cloud-1", keys["cloud-1"].public_key)]))
        sealer = SingleSealer("fog-a", keys["fog-a"])
        chain = Chain.create(self.dir / "fog-a.db", spec, sealer, registry=reg)
        txids = []
        for b in range(3):
            for i in range(2):
                raw = record_tx(Note("fuzz", bytes([b, i]) * 8), "dev-1", keys["dev-1"], device="dev-1",
                                refs=[bytes([b]) * 32], ts_ms=self.T0 * 1000 + 10 * b + i)
                txids.append(chain.submit(raw).id)
            chain.mine(sealer, ts_ms=self.T0 * 1000 + 1000 * (b + 1))
        acc = chain.tip.acc
        genesis_raw = chain.store.block(0)
        genesis_tip, genesis_state = Tip.genesis(), State()
        first, first_state = validate_block(genesis_raw, genesis_tip, genesis_state, reg)

        def tx_seeds():
            return [chain.store.tx(t)[2] for t in txids[:3]]

        def run_tx(data: bytes) -> str:
            info = decode_tx(data)
            info.kind.admit(info, spec, reg)
            return _ok(info.id, info.kind.name)

        def block_seeds():
            return [chain.store.block(h) for h in (1, 2)]

        def run_block(data: bytes) -> str:
            block, state = validate_block(data, first.tip, first_state, reg)
            return _ok(block.hash, block.header.height, len(block.txs))

        def proof_seeds():
            return [codec.encode_message(chain.proof(t)) for t in txids[:2]] + [
                codec.encode_message(chain.batch_proof(txids[1:4])),
                codec.encode_message(chain.batch_proof(txids[:2], method="weighted"))]

        proof_limits = codec.Limits(max_size=4 << 20, max_depth=8, max_items=1 << 14)

        def run_proof(data: bytes) -> str:
            obj = codec.decode(data, proof_limits, canonical=True)
            if isinstance(obj, dict) and "method" in obj:
                proof = BatchProof.from_wire(obj)
                return _ok([info.id for info, _ in verify_batch_proof(proof, acc, chain="fog-a")])
            info, header = verify_proof(TxProof.from_wire(obj), acc, chain="fog-a")
            return _ok(info.id, header.height)

        return [
            Target("transactions", "transactions: decode and admission (signatures, policy) as Chain.submit does",
                   tx_seeds, run_tx, (LedgerError,)),
            Target("blocks", "blocks: validate_block on top of genesis", block_seeds, run_block, (LedgerError,)),
            Target("proofs", "membership proofs and batch proofs (aggregated, weighted) against the accumulator",
                   proof_seeds, run_proof, (LedgerError, codec.CodecError, accumulator.AccumulatorError)),
        ]

    def accumulator(self) -> Target:
        from edgefl import codec
        from edgefl.crypto import accumulator
        from edgefl.crypto.accumulator import membership

        g = accumulator.GENERATOR
        x = 2**127 - 1  # a prime element
        acc = pow(g, x, accumulator.RSA2048_N)

        def seeds():
            return [codec.encode([accumulator.to_bytes(acc), accumulator.to_bytes(g), x]),
                    codec.encode([accumulator.to_bytes(g), accumulator.to_bytes(g), 3])]

        def run(data: bytes) -> str:
            value, witness, element = _fields(codec.decode(data, codec.Limits(max_size=4096, max_depth=2,
                                                                              max_items=8)), 3)
            a, w = accumulator.from_bytes(value), accumulator.from_bytes(witness)
            if type(element) is not int:
                raise codec.SchemaError("element must be an int")
            return _ok(a, w, accumulator.verify_membership(w, element, a), membership.__name__)

        return Target("accumulator", "RSA accumulator values and witnesses (from_bytes, verify_membership)", seeds,
                      run, (codec.CodecError, accumulator.AccumulatorError, ValueError))

    # ------------------------------------------------------------------ the PKI

    def _pki(self):
        from edgefl.crypto.pki import PkiRegistry, issue

        k, t0 = self.keys, self.T0
        root = issue(k["root"], None, subject="root", role="cloud", site="cloud", public_key=k["root"].public_key,
                     not_before=t0 - 10, not_after=t0 + 10**6)
        fog = issue(k["root"], root, subject="fog-1", role="fog", site="s1", public_key=k["fog-1"].public_key,
                    not_before=t0 - 10, not_after=t0 + 10**6)
        dev = issue(k["fog-1"], fog, subject="dev-a", role="device", site="s1", public_key=k["dev-a"].public_key,
                    not_before=t0 - 10, not_after=t0 + 10**6)
        reg = PkiRegistry(root)
        reg.add(fog)
        return root, fog, dev, reg

    def certificate(self) -> Target:
        from edgefl import codec
        from edgefl.crypto.envelope import IdentityRejected
        from edgefl.crypto.pki import Certificate, PkiError

        root, fog, dev, reg = self._pki()

        def run(data: bytes) -> str:
            cert = Certificate.from_bytes(data)
            reg.validate(cert, at=self.T0)
            return _ok(cert.subject, cert.serial)

        return Target("certificates", "edgefl certificates (Certificate.from_bytes, PkiRegistry.validate)",
                      lambda: [root.to_bytes(), fog.to_bytes(), dev.to_bytes()], run,
                      (codec.CodecError, IdentityRejected, PkiError))

    def crl(self) -> Target:
        from edgefl import codec
        from edgefl.crypto.pki import Crl, PkiError, PkiRegistry, Revocation, sign_crl

        root, fog, dev, _ = self._pki()
        t0 = self.T0

        def seeds():
            return [sign_crl(self.keys["fog-1"], "fog-1", 2, [Revocation(serial=dev.serial, at=t0, reason="lost"),
                                                             Revocation(serial=dev.serial + 1, at=t0)],
                             this_update=t0, next_update=t0 + 99).to_bytes(),
                    sign_crl(self.keys["root"], "root", 1, [], this_update=t0, next_update=t0 + 99).to_bytes()]

        def run(data: bytes) -> str:
            crl = Crl.from_bytes(data)
            reg = PkiRegistry(root)
            reg.add(fog)
            return _ok(crl.number, reg.add_crl(crl, at=t0, persist=False))

        return Target("crls", "revocation lists (Crl.from_bytes, PkiRegistry.add_crl)", seeds, run,
                      (codec.CodecError, PkiError))

    # ------------------------------------------------------------------ consensus

    def pbft(self) -> Target:
        from edgefl import codec
        from edgefl.consensus import simnet
        from edgefl.consensus.pbft import Replica
        from edgefl.runtime.metrics import Metrics

        def seeds():
            sim = simnet.Sim(n=4, seed=1)
            for i in range(6):
                sim.submit(b"req-%d" % i, at=0.01 * i)
            sim.run(0.5)
            sim.restart("r01", sim.votelogs.get("r01") or simnet.VoteLog())
            wires = list(dict.fromkeys(w for _, w in sim.history))
            return [codec.encode([k % 4, w]) for k, w in enumerate(wires[:200])]

        sim = simnet.Sim(n=4, seed=1)
        limits = codec.Limits(max_size=1 << 20, max_depth=16, max_items=1 << 14)

        def run(data: bytes) -> str:
            sender, wire = _fields(codec.decode(data, codec.Limits(max_size=1 << 20, max_depth=2, max_items=8)), 2)
            if type(wire) is not bytes:
                raise codec.SchemaError("the message must be a byte string")
            t, v, body = _fields(codec.decode(wire, limits, canonical=True), 3)
            if type(t) is not str or type(v) is not int:
                raise codec.SchemaError("[type, version, body]")
            msg = codec.lookup(t, v).from_wire(body)
            replica = Replica("r00", sim.keys["r00"], sim.committee, "sim", sim.app, height=0, tip_hash=sim.genesis,
                              metrics=Metrics(), window=4, checkpoint_every=4, view_timeout=0.2)
            replica.receive(sim.ids[sender % 4] if type(sender) is int else str(sender), msg)
            return _ok(sorted(type(a).__name__ for a in replica.take()))

        return Target("consensus", "PBFT messages into a replica (edgefl.consensus.pbft.Replica.receive)", seeds, run,
                      (codec.CodecError,))

    # ------------------------------------------------------------------ files on disk

    def state_files(self) -> list[Target]:
        from edgefl import codec
        from edgefl.consensus.votelog import VoteLog
        from edgefl.crypto.envelope import SequenceCounter
        from edgefl.crypto.keys import KeyFileError, SigningKey, load_public, save_public
        from edgefl.ledger.blobs import BlobStore
        from edgefl.ledger.errors import LedgerError
        from edgefl.ml.privacy import PrivacyAccountant, PrivacyError
        from edgefl.runtime.state import StateError, StateFile

        d = self.dir / "files"
        d.mkdir(exist_ok=True)

        def file_target(name, what, make, read, typed):
            path = d / name

            def seeds():
                make(path)
                return [path.read_bytes()]

            def run(data: bytes) -> str:
                path.write_bytes(data)
                path.chmod(0o600)  # as the node writes its files (a key file readable by others is refused)
                return _ok(read(path))

            return Target(name.split(".")[0], what, seeds, run, typed)

        def accountant(path):
            acct = PrivacyAccountant(10.0, device="dev-a", path=path)
            acct.charge(np.arange(5), 1.0, task="t", round=0, mechanism="discrete_laplace", sensitivity=2.0,
                        scale=2.0, grid=0.01)

        def votelog(path):
            log = VoteLog(path)
            log.guard(("prepare", 0, 1), b"h" * 32)
            log.enter_view(2)

        blobs = BlobStore(d / "blobs")
        cid = blobs.put(b"a model" * 100)

        def read_blob(path):
            blobs.path(cid).write_bytes(path.read_bytes())
            return blobs.get(cid)

        return [
            file_target("state.cbor", "a node's round state file (runtime.state.StateFile)",
                        lambda p: StateFile(p).save({"task": "t", "round": 3, "acked": [b"x" * 32]}),
                        lambda p: StateFile(p).load(None), (StateError,)),
            file_target("privacy.cbor", "the privacy accountant's ledger (ml.privacy.PrivacyAccountant)",
                        accountant, lambda p: sorted(PrivacyAccountant(10.0, device="dev-a", path=p)._spent.items()),
                        (PrivacyError,)),
            file_target("votes.cbor", "a PBFT replica's vote log (consensus.votelog.VoteLog)", votelog,
                        lambda p: (VoteLog(p).view, sorted(VoteLog(p).entries.items(), key=repr)),
                        (codec.CodecError,)),
            file_target("seq.state", "the envelope sequence counter's state (crypto.envelope.SequenceCounter)",
                        lambda p: SequenceCounter(p).next(), lambda p: SequenceCounter(p).next(), (ValueError,)),
            file_target("key.file", "key files (crypto.keys: SigningKey.load, load_public)",
                        lambda p: SigningKey(bytes(31) + b"\x07").save(p), lambda p: SigningKey.load(p).public_key.raw,
                        (KeyFileError,)),
            file_target("pub.file", "public key files (crypto.keys.load_public)",
                        lambda p: save_public(SigningKey(bytes(31) + b"\x07").public_key, p),
                        lambda p: load_public(p).raw, (KeyFileError,)),
            file_target("blob.bin", "a stored blob read back (ledger.blobs.BlobStore.get: content id checked)",
                        lambda p: p.write_bytes(b"a model" * 100), read_blob, (LedgerError,)),
        ]

    def profile(self) -> Target:
        from edgefl import resources
        from edgefl.runtime.config import ConfigError, load_config

        path = self.dir / "profile.toml"

        def seeds():
            return [p.read_bytes() for p in sorted((resources.folder("firmware_profiles")).glob("*.toml"))]

        def run(data: bytes) -> str:
            path.write_bytes(data)
            cfg = load_config(path, env={})
            return _ok(dataclasses.asdict(cfg)["node"], cfg.mqtt.port)

        return Target("profiles", "firmware profiles (runtime.config.load_config, TOML)", seeds, run, (ConfigError,))


# --------------------------------------------------------------------------- running


def inputs_of(target: Target, seeds: list[bytes], seed: int, start: int, count: int):
    for i in range(start, start + count):
        yield i, mutate(seeds, RandomSource(f"{target.name}/{seed}/{i}"))


def seeds_path(workdir: Path, target: str) -> Path:
    return workdir / f"{target}.seeds"


def save_seeds(workdir: Path, target: Target) -> list[bytes]:
    from edgefl import codec

    seeds = target.seeds()
    seeds_path(workdir, target.name).write_bytes(codec.encode(seeds))
    return seeds


def load_seeds(workdir: Path, target: str) -> list[bytes]:
    from edgefl import codec

    return codec.decode(seeds_path(workdir, target).read_bytes(), codec.Limits(max_size=1 << 30, max_items=1 << 20))


def corpus_inputs(target: str) -> list[bytes]:
    folder = FUZZ_DIR / "corpus" / target
    return [p.read_bytes() for p in sorted(folder.glob("*.bin"))] if folder.is_dir() else []


def save_crash(crash: Crash, extra: str = "") -> Path:
    folder = FUZZ_DIR / "crashers"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{crash.target}-{hashlib.sha256(crash.data).hexdigest()[:12]}"
    (folder / f"{name}.bin").write_bytes(crash.data)
    (folder / f"{name}.txt").write_text(crash.trace + extra)
    return folder / f"{name}.bin"


def run_target(target: Target, seeds: list[bytes], *, seed: int, count: int, verdicts_out: Path | None = None,
               save_corpus: bool = False, stop_after: int = 20) -> dict:
    """Run ``count`` mutated inputs (and the corpus) through ``target``; returns its figures."""
    counts: dict[str, int] = {}
    crashes: list[str] = []
    kept: dict[str, bytes] = {}
    out = verdicts_out.open("w") if verdicts_out else None
    t0 = time.perf_counter()
    corpus = corpus_inputs(target.name)
    n = 0
    given = ((-1 - k, d) for k, d in enumerate([*seeds, *corpus]))  # as they are, then mutated, one at a time
    for i, data in itertools.chain(given, inputs_of(target, seeds, seed, 0, count)):
        try:
            v = verdict(target, data)
        except Crash as crash:
            crashes.append(str(save_crash(crash)))
            v = "CRASH"
            if len(crashes) >= stop_after:
                break
        n += 1
        key = "ok" if v.startswith("ok:") else v
        counts[key] = counts.get(key, 0) + 1
        if save_corpus and key not in kept and len(kept) < MAX_CORPUS and len(data) <= 64 << 10:
            kept[key] = data
        if out is not None:
            out.write(f"{i}\t{v}\n")
    if out is not None:
        out.close()
    if save_corpus:
        folder = FUZZ_DIR / "corpus" / target.name
        folder.mkdir(parents=True, exist_ok=True)
        for data in kept.values():
            (folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)
    return {"target": target.name, "inputs": n, "seconds": round(time.perf_counter() - t0, 1),
            "verdicts": dict(sorted(counts.items())), "crashes": crashes,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _atheris(args) -> int:
    """Coverage-guided: libFuzzer (via atheris) drives our mutations of one target's inputs."""
    import logging

    import atheris

    logging.disable(logging.CRITICAL)
    (name,) = args.target
    target = targets()[name]
    seeds = target.seeds()
    atheris.instrument_all()  # every Python function loaded so far reports its coverage
    corpus = FUZZ_DIR / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashers = FUZZ_DIR / "crashers"
    crashers.mkdir(parents=True, exist_ok=True)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        return mutate([data, *seeds[:3]] if data else seeds, RandomSource(f"{name}/atheris/{seed}"))[:max_size]

    def one(data: bytes) -> None:
        verdict(target, data)  # a Crash propagates: atheris reports it and writes the input

    for s in seeds:
        (corpus / f"seed-{hashlib.sha256(s).hexdigest()[:16]}.bin").write_bytes(s)
    atheris.Setup([sys.argv[0], f"-runs={args.inputs}", f"-artifact_prefix={crashers}/{name}-",
                   f"-timeout={int(HANG_S) + 1}", "-rss_limit_mb=2048", "-max_len=65536", str(corpus)],
                  one, custom_mutator=mutator)
    atheris.Fuzz()
    return 0


def _child(args) -> int:
    """One implementation's pass over the shared seeds: figures as JSON on stdout, verdicts to a file."""
    import logging

    from edgefl import native

    logging.disable(logging.CRITICAL)  # every rejection logs a warning: millions of them here
    workdir = Path(args.workdir)
    results = []
    for name in args.target:
        target = targets()[name]
        results.append(run_target(target, load_seeds(workdir, name), seed=args.seed, count=args.inputs,
                                  verdicts_out=workdir / f"{name}.{args.impl}.verdicts",
                                  save_corpus=args.save_corpus and args.impl == "native"))
    results.append({"implementations": native.implementations()})
    print(json.dumps(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", help="a target (repeatable; default: all)")
    p.add_argument("--inputs", type=int, default=100_000, help="mutated inputs per target (default 100,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--impl", choices=["both", "native", "pure"], default="both",
                   help="both: run the compiled extensions and the pure twins and compare every verdict")
    p.add_argument("--save-corpus", action="store_true", help="keep one input per distinct verdict in tests/fuzz/")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    p.add_argument("--atheris", action="store_true", help="coverage-guided with atheris (one target, this process)")
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.list:
        for t in targets().values():
            print(f"{t.name:14} {t.what}")
        return 0
    args.target = args.target or list(targets())
    unknown = [t for t in args.target if t not in targets()]
    if unknown:
        p.error(f"unknown target(s) {unknown}; known: {', '.join(targets())}")
    if args.atheris:
        if len(args.target) != 1:
            p.error("--atheris fuzzes one --target at a time")
        return _atheris(args)
    if args.workdir:
        return _child(args)
    workdir = Path(tempfile.mkdtemp(prefix="edgefl-fuzz-run-"))
    for name in args.target:
        save_seeds(workdir, targets()[name])
    impls = ["native", "pure"] if args.impl == "both" else [args.impl]
    figures = {}
    for impl in impls:
        env = {**os.environ, "EDGEFL_NO_EXTENSIONS": "1" if impl == "pure" else "0",
               "EDGEFL_REQUIRE_EXTENSIONS": "1" if impl == "native" else "0"}
        cmd = [sys.executable, "-m", "edgefl.fuzz", "--workdir", str(workdir), "--impl", impl, "--seed",
               str(args.seed), "--inputs", str(args.inputs), *sum((["--target", t] for t in args.target), [])]
        if args.save_corpus:
            cmd.append("--save-corpus")
        print(f"== {impl}: {len(args.target)} targets x {args.inputs:,} inputs", flush=True)
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode:
            print(f"{impl} pass failed ({done.returncode})")
            return 1
        figures[impl] = json.loads(done.stdout.strip().splitlines()[-1])
    failed = False
    table = []
    for k, name in enumerate(args.target):
        rows = {impl: figures[impl][k] for impl in impls}
        differ = _first_difference(workdir, name, impls)
        crashes = sum(len(r["crashes"]) for r in rows.values())
        failed |= bool(crashes or differ)
        first = rows[impls[0]]
        table.append({"target": name, "inputs": first["inputs"], "crashes": crashes, "differential": differ or "same",
                      "seconds": {i: r["seconds"] for i, r in rows.items()}, "verdicts": first["verdicts"],
                      "max_rss_mb": max(r["max_rss_mb"] for r in rows.values())})
        print(f"{name:14} {first['inputs']:>8,} inputs  crashes {crashes}  "
              f"{'verdicts differ at ' + differ if differ else 'native = pure' if len(impls) == 2 else impls[0]}  "
              f"{' / '.join('%.0f s' % r['seconds'] for r in rows.values())}  {len(first['verdicts'])} verdict kinds")
        for r in rows.values():
            for c in r["crashes"][:3]:
                print(f"    crash saved: {c}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "targets": table,
                                               "implementations": {i: figures[i][-1] for i in impls}}, indent=1))
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


def _first_difference(workdir: Path, name: str, impls: list[str]) -> str:
    if len(impls) < 2:
        return ""
    a = (workdir / f"{name}.{impls[0]}.verdicts").read_text().splitlines()
    b = (workdir / f"{name}.{impls[1]}.verdicts").read_text().splitlines()
    for x, y in zip(a, b):
        if x != y:
            return f"input {x.split(chr(9))[0]}: {x.split(chr(9))[1]} vs {y.split(chr(9))[1]}"
    return "" if len(a) == len(b) else f"{len(a)} vs {len(b)} verdicts"


if __name__ == "__main__":
    sys.exit(main())
