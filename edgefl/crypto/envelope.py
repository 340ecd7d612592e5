"""Signed envelopes: every message on the wire, signed by its sender over its exact bytes.

Wire form: an RFC 8742 CBOR sequence of two canonical items::

    [1, sender, signature]  signed
    signed    = canonical CBOR map {"type", "v", "from", "seq", "ts", "msg", ?"to", ?"corr"}
    signature = ECDSA-secp256k1 (compact, low-s) over tagged_hash("edgefl/envelope/v1", signed)

The small head comes first, so a receiver finds the sender's key and checks
the signature over the exact bytes that follow before decoding them:
unauthenticated input only ever meets the decoder of a three-item array.  The
signed map repeats the sender, which must match.  (Not wrapping ``signed`` in
a byte string also saves copying large messages once more.)  Receivers reject, log and count (``envelope_rejected{reason}``):
malformed or oversize input, unknown or unacceptable senders (the key registry
decides; the PKI plugs in there), bad signatures, replays outside a sequence window
(one per sender and lane, ``SequenceCounter``) and timestamps outside the allowed clock skew.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgefl import codec
from edgefl.crypto.hashing import tagged_hash
from edgefl.crypto.keys import SigningKey, VerifyingKey, load_public
from edgefl.errors import EdgeflError
from edgefl.runtime import METRICS, Metrics, RateLimited, write_atomic

ENVELOPE_TAG = b"edgefl/envelope/v1"
WIRE_VERSION = 1
MAX_ID_LEN = 128
HEADER_SLACK = 4096  # envelope fields around a message of the type's MAX_SIZE
_HEAD_LIMITS = codec.Limits(max_size=MAX_ID_LEN + 128, max_depth=1, max_items=4)

log = logging.getLogger("edgefl.envelope")


def envelope_digest(signed: bytes) -> bytes:
    return tagged_hash(ENVELOPE_TAG, signed)


# --------------------------------------------------------------------------- rejections


class Rejected(EdgeflError):
    """An envelope failed a check. ``reason`` is a short stable label used in metrics."""

    def __init__(self, reason: str, detail: str = "", sender: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.sender = sender


class IdentityRejected(Rejected):
    """Raised by a key registry: the sender is unknown, revoked, expired, or otherwise not accepted."""


# --------------------------------------------------------------------------- key registry


class KeyRegistry(Protocol):
    """Who may send: maps a sender id to its verifying key at a given time.

    ``role`` and ``site``, when given, are the role and site the sender acts
    in (the topic's segments); a registry that knows them refuses a
    mismatch (``site`` is passed only when known, by keyword).  Raises
    ``IdentityRejected`` with reason ``unknown_sender`` (or, for
    certificate-backed registries such as ``edgefl.crypto.pki.PkiRegistry``,
    ``revoked``, ``expired``, ``wrong_issuer``, ``wrong_role``, ``wrong_site`` …).
    """

    def key_for(self, sender: str, at: float, role: str | None = None, site: str | None = None) -> VerifyingKey: ...


class StaticKeyRegistry:
    """A fixed mapping of sender id to key (tests, demos, small static deployments)."""

    def __init__(self, keys: dict[str, VerifyingKey] | None = None):
        self._keys = dict(keys or {})

    def add(self, sender: str, key: VerifyingKey) -> None:
        self._keys[sender] = key

    def key_for(self, sender: str, at: float, role: str | None = None, site: str | None = None) -> VerifyingKey:
        key = self._keys.get(sender)  # roles and sites are not known here: any is accepted
        if key is None:
            raise IdentityRejected("unknown_sender", f"no key for {sender!r}", sender)
        return key


class DirectoryKeyRegistry(StaticKeyRegistry):
    """Trust every ``<sender>.pub`` file in a directory (as written by ``edgefl keygen``)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        super().__init__({p.stem: load_public(p) for p in sorted(self.directory.glob("*.pub"))})

    def reload(self) -> list[str]:
        """Learn the keys written to the directory since (a node's SIGHUP); the senders new or changed."""
        learned = []
        for path in sorted(self.directory.glob("*.pub")):
            key = load_public(path)
            if self._keys.get(path.stem) != key:
                self._keys[path.stem] = key
                learned.append(path.stem)
        return learned


# --------------------------------------------------------------------------- sequence numbers


LANE_BITS = 32  # seq = lane << LANE_BITS | n
LANE_MASK = (1 << LANE_BITS) - 1
MAX_LANES = 16  # signers of one identity a receiver follows at once (restarts, commands run under a node's name)
MAX_RETIRED = 4096  # lanes a receiver set aside per sender until their messages are stale (a crash loop)


class SequenceCounter:
    """Sequence numbers no other signer of this identity uses: ``lane << 32 | n``, n = 1, 2, …

    A counter claims a lane of its own when it starts: with a state file the one after the last
    claimed there (under a lock), so neither a restarted node nor a command run under a running node's
    name (`edgefl ledger verify-tx`, `ping`) ever reuses a number; without a file a random lane.
    Receivers keep a replay window per lane (``Verifier``): two processes signing as one node at once
    no longer push each other's numbers out of the window, which made every peer refuse the node's
    own messages as replays once a command had run beside it.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._claim()

    def _claim(self) -> None:
        if self.path is None:
            self.lane = 1 << 30 | int.from_bytes(os.urandom(4), "big") >> 2
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once get two lanes
                try:
                    last = int(self.path.read_text().strip() or 0)
                except FileNotFoundError:
                    last = 0
                except ValueError as exc:
                    raise ValueError(f"{self.path}: corrupt sequence state ({exc})") from None
                self.lane = last + 1
                write_atomic(self.path, str(self.lane).encode())
        self._n = 0

    def next(self) -> int:
        with self._lock:
            if self._n >= LANE_MASK:
                self._claim()
            self._n += 1
            return self.lane << LANE_BITS | self._n


class _Lanes:
    """One sender's replay windows, one per lane.  The ``MAX_LANES`` most recently used are followed; an
    older one is retired: all its messages are refused until every message it carried is stale (its last
    use plus twice the allowed skew), after which it is forgotten, as is a lane quiet that long."""

    __slots__ = ("windows", "retired")

    def __init__(self):
        self.windows: dict[int, list] = {}  # lane -> [ReplayWindow, last accepted at]
        self.retired: dict[int, float] = {}  # lane -> refused until

    def window(self, lane: int, now: float, stale_after: float, size: int, sender: str) -> list:
        until = self.retired.get(lane)
        if until is not None and until >= now:
            raise Rejected("replay", f"sequence lane {lane} of {sender} retired", sender)
        entry = self.windows.get(lane)
        if entry is None:  # rare (a signer's first message): tidy up here
            self.retired = {k: t for k, t in self.retired.items() if t >= now}
            for k in [k for k, (_, used) in self.windows.items() if used < now - stale_after]:
                del self.windows[k]
            if len(self.windows) >= MAX_LANES:
                if len(self.retired) >= MAX_RETIRED:
                    raise Rejected("replay", f"{MAX_RETIRED} sequence lanes of {sender} retired", sender)
                old = min(self.windows, key=lambda k: self.windows[k][1])
                self.retired[old] = self.windows.pop(old)[1] + stale_after
            entry = self.windows[lane] = [ReplayWindow(size), now]
        return entry


class ReplayWindow:
    """Sliding window of seen sequence numbers (the IPsec anti-replay bitmap)."""

    __slots__ = ("size", "mask", "top", "bits")

    def __init__(self, size: int = 1024):
        self.size = size
        self.mask = (1 << size) - 1
        self.top = 0
        self.bits = 0  # bit i set: top - i seen

    def check(self, seq: int) -> str | None:
        """Why ``seq`` is unacceptable ('replay', 'too_old'), or None."""
        if seq > self.top:
            return None
        offset = self.top - seq
        if offset >= self.size:
            return "too_old"
        return "replay" if self.bits >> offset & 1 else None

    def commit(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & self.mask if shift < self.size else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


# --------------------------------------------------------------------------- seal / open


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified envelope and its decoded message."""

    sender: str
    type: str
    version: int
    seq: int
    ts_ms: int
    message: codec.Message
    to: str | None = None
    corr: bytes | None = None
    wire: bytes = b""
    start: int = 0  # where the signed bytes begin in ``wire``
    signature: bytes = b""

    @property
    def signed(self) -> bytes:
        """The exact bytes the signature covers."""
        return bytes(memoryview(self.wire)[self.start:])


class Signer:
    def __init__(self, node_id: str, key: SigningKey, seq: SequenceCounter | None = None):
        if not node_id or len(node_id) > MAX_ID_LEN:
            raise ValueError(f"node id must be 1..{MAX_ID_LEN} characters")
        self.node_id = node_id
        self.key = key
        self.seq = seq or SequenceCounter()

    def seal(self, msg: codec.Message, *, to: str | None = None, corr: bytes | None = None,
             ts_ms: int | None = None, seq: int | None = None) -> bytes:
        header = {
            "type": msg.TYPE,
            "v": msg.VERSION,
            "from": self.node_id,
            "seq": self.seq.next() if seq is None else seq,
            "ts": time.time_ns() // 1_000_000 if ts_ms is None else ts_ms,
            "msg": codec.message_to_wire(msg),
        }
        if to is not None:
            header["to"] = to
        if corr is not None:
            header["corr"] = corr
        signed = codec.encode(header)
        if len(signed) > msg.MAX_SIZE + HEADER_SLACK:
            raise codec.TooLarge(f"{len(signed)} bytes exceeds {msg.MAX_SIZE}", field=type(msg).__name__)
        return codec.encode([WIRE_VERSION, self.node_id, self.key.sign(envelope_digest(signed))]) + signed


class Verifier:
    """Opens envelopes: structure, identity, signature, freshness, replay, schema.

    One Verifier per receiving node; it holds the per-sender replay windows.
    """

    def __init__(self, registry: KeyRegistry, *, window: int = 1024, max_skew_s: float = 120.0,
                 limits: codec.Limits = codec.Limits(max_size=16 << 20, max_depth=16, max_items=1 << 16),
                 metrics: Metrics = METRICS, clock=time.time, name: str = ""):
        self.registry = registry
        self.window = window
        self.max_skew_ms = int(max_skew_s * 1000)
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
        self.name = name
        self._windows: dict[str, _Lanes] = {}
        self._log = RateLimited(log)

    def open(self, wire: bytes, *, check_fresh: bool = True, expect_sender: str | None = None,
             expect_to: str | None = None, expect_role: str | None = None,
             expect_site: str | None = None, expect_types: tuple[type, ...] | None = None) -> Envelope:
        """Verify and decode; on failure log, count and raise ``Rejected``.

        ``check_fresh=False`` skips the timestamp and replay checks, for
        messages signed ahead of time such as an MQTT last will.
        ``expect_sender``/``expect_to`` bind the envelope to the topic it came
        on (publisher and addressee segments), so a signed message cannot be
        re-published under another node's topic or re-addressed; ``expect_role``
        and ``expect_site`` (the topic's role and site segments) go to the key registry.
        ``expect_types``, when given, are the message classes acceptable here:
        any other is refused (``wrong_type``) before its body is decoded.
        """
        try:
            return self._open(wire, check_fresh, expect_sender, expect_to, expect_role, expect_site, expect_types)
        except Rejected as exc:
            self.metrics.inc("envelope_rejected", reason=exc.reason)
            self._log.warning(exc.reason, "%srejected envelope from %s: %s", f"{self.name}: " if self.name else "",
                              exc.sender or "?", exc, reason=exc.reason, sender=exc.sender or "")
            raise

    def _open(self, wire: bytes, check_fresh: bool, expect_sender: str | None, expect_to: str | None,
              expect_role: str | None, expect_site: str | None,
              expect_types: tuple[type, ...] | None) -> Envelope:
        if len(wire) > self.limits.max_size:
            raise Rejected("too_large", f"{len(wire)} bytes exceeds {self.limits.max_size}")
        try:
            head, start = codec.decode_first(wire, _HEAD_LIMITS, canonical=True)  # one byte form per message
        except codec.CodecError as exc:
            raise Rejected(exc.reason, f"envelope head: {exc}") from None
        if not (isinstance(head, list) and len(head) == 3):
            raise Rejected("malformed", "envelope head must be [version, sender, signature]")
        version, sender, sig = head
        if version != WIRE_VERSION:
            raise Rejected("unsupported_version", f"envelope version {version!r}")
        if not (isinstance(sender, str) and 0 < len(sender) <= MAX_ID_LEN):
            raise Rejected("malformed", "sender must be a short text string")
        if not isinstance(sig, bytes):
            raise Rejected("malformed", "signature must be a byte string", sender)
        if expect_sender is not None and sender != expect_sender:
            raise Rejected("topic_mismatch", f"sent on {expect_sender!r}'s topic", sender)
        signed = memoryview(wire)[start:]
        now = self.clock()
        where = {} if expect_site is None else {"site": expect_site}
        key = self.registry.key_for(sender, now, expect_role, **where)  # raises IdentityRejected
        if not key.verify(sig, envelope_digest(signed)):
            raise Rejected("bad_signature", "signature does not verify", sender)
        try:
            header = codec.decode(signed, self.limits)
        except codec.CodecError as exc:
            raise Rejected(exc.reason, str(exc), sender) from None
        if not isinstance(header, dict):
            raise Rejected("malformed", "signed part must be a map", sender)
        try:
            env = _parse_header(header, wire, start, sig, sender, expect_types)
        except codec.CodecError as exc:
            raise Rejected(exc.reason, str(exc), sender) from None
        except ValueError as exc:  # a message type's own invariants (__post_init__), e.g. rows that do not match
            raise Rejected("schema", str(exc), sender) from None
        if env.sender != sender:
            raise Rejected("sender_mismatch", f"signed sender {env.sender!r} differs", sender)
        if expect_to is not None and env.to != expect_to:
            raise Rejected("topic_mismatch", f"addressed to {env.to!r}, sent to {expect_to!r}", sender)
        if len(signed) > env.message.MAX_SIZE + HEADER_SLACK:
            raise Rejected("too_large", f"{env.type} limit is {env.message.MAX_SIZE} bytes", sender)
        if check_fresh:
            skew = env.ts_ms - int(now * 1000)
            if skew < -self.max_skew_ms:
                raise Rejected("stale", f"timestamp {-skew} ms old", sender)
            if skew > self.max_skew_ms:
                raise Rejected("future", f"timestamp {skew} ms ahead", sender)
            lanes = self._windows.get(sender) or self._windows.setdefault(sender, _Lanes())
            entry = lanes.window(env.seq >> LANE_BITS, now, 2 * self.max_skew_ms / 1000, self.window, sender)
            problem = entry[0].check(env.seq & LANE_MASK)
            if problem:
                raise Rejected("replay", f"sequence {env.seq} {problem.replace('_', ' ')}", sender)
            entry[0].commit(env.seq & LANE_MASK)
            entry[1] = now
        self.metrics.inc("envelope_accepted")
        return env


_HEADER_FIELDS = {"type": str, "v": int, "from": str, "seq": int, "ts": int, "msg": dict, "to": str, "corr": bytes}


def _parse_header(h: dict, wire: bytes, start: int, sig: bytes, sender: str,
                  expect_types: tuple[type, ...] | None) -> Envelope:
    for key, value in h.items():
        want = _HEADER_FIELDS.get(key)
        if want is None:
            raise codec.SchemaError(f"unknown field {key!r}", field="envelope")
        if type(value) is not want:
            raise codec.SchemaError(f"expected {want.__name__}, got {type(value).__name__}", field=f"envelope.{key}")
    for key in ("type", "v", "from", "seq", "ts", "msg"):
        if key not in h:
            raise codec.SchemaError("missing", field=f"envelope.{key}")
    if h["seq"] < 0 or h["ts"] < 0:
        raise codec.SchemaError("must not be negative", field="envelope.seq" if h["seq"] < 0 else "envelope.ts")
    cls = codec.lookup(h["type"], h["v"])
    if expect_types is not None and not issubclass(cls, expect_types):
        raise Rejected("wrong_type", f"a {h['type']} where {', '.join(t.TYPE for t in expect_types)} belongs", sender)
    return Envelope(
        sender=h["from"], type=h["type"], version=h["v"], seq=h["seq"], ts_ms=h["ts"],
        message=cls.from_wire(h["msg"]), to=h.get("to"), corr=h.get("corr"), wire=wire, start=start, signature=sig,
    )
