"""The session's inbound path as pure code: (topic, bytes) in, a verified typed delivery or a counted rejection out.

No I/O and no event loop: the session's reader feeds ``Inbound.receive``
what the broker delivers, and the fuzzers (``scripts/fuzz``) feed it whatever
they like.  In order:

1. the topic must be an edgefl topic (``edgefl/v1/site/role/node/kind[/target]``), and its publisher
   (the broker's ACL binds the node segment to the client's identity) within its rate: a token bucket
   per sender, so one flooding device costs a dictionary lookup per message, not a signature check,
   and cannot starve the others;
2. a chunk frame goes to the bounded reassembler (before any signature: see
   ``chunking``) and the path goes on once its payload is complete;
3. the duplicate filter drops what was delivered already (QoS1 redelivery,
   overlapping subscriptions): the canonical envelope head is unique per message;
4. the verifier opens the envelope, bound to the topic's publisher, addressee
   and role, with freshness and replay checks except on retained kinds;
5. a kind with expected types (``status``: ``Status``; others as consumers
   register them with ``expect``) refuses any other message type;
6. retained kinds other than ``status`` only move forward: a task, model or
   CRL signed before the last one seen from that sender (a captured older copy
   re-published) is refused;
7. ``status`` updates the liveness table (``peers``); an ``offline`` will of an
   older session than the one seen online is stale.

Every drop is logged (rate-limited) and counted as
``inbound_rejected{reason}``; the reassembler and verifier count their own
details as well.  Nothing raises out of ``receive``: an unexpected exception is
a bug, counted as reason ``internal`` with its trace logged, never a dead reader.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from edgefl import codec
from edgefl.crypto import Envelope, Rejected, Verifier
from edgefl.runtime import METRICS, Metrics, RateLimited
from edgefl.transport import chunking, topics
from edgefl.transport.messages import STATES, Status

log = logging.getLogger("edgefl.inbound")

FORWARD_ONLY = topics.RETAINED - {"status"}  # a status will is signed before its session's "online"


@dataclass(frozen=True, slots=True)
class Received:
    """A verified envelope and the topic it came on."""

    topic: topics.Topic
    envelope: Envelope

    @property
    def message(self) -> codec.Message:
        return self.envelope.message


class RateLimit:
    """A token bucket per sender: ``rate`` messages a second on average, bursts of ``burst``; 0 turns it off."""

    SENDERS = 4096  # buckets kept (least recently seen forgotten first)

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # sender -> [tokens, when]

    def allow(self, sender: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        bucket = self._buckets.pop(sender, None)
        if bucket is None:
            bucket = [float(self.burst), now]
            if len(self._buckets) >= self.SENDERS:
                self._buckets.popitem(last=False)
        bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        self._buckets[sender] = bucket
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True


class Inbound:
    RECENT = 4096  # deliveries remembered for the duplicate filter

    def __init__(self, verifier: Verifier, reassembler: chunking.Reassembler, *, metrics: Metrics = METRICS,
                 name: str = "", rate: RateLimit | None = None):
        self.verifier = verifier
        self.reassembler = reassembler
        self.metrics = metrics
        self.name = name
        self.rate = rate or RateLimit(0, 0)
        self.peers: dict[str, tuple[str, bytes]] = {}  # node -> (state, session nonce)
        self._expect: dict[str, tuple[type[codec.Message], ...]] = {"status": (Status,)}
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self._latest: dict[tuple[str, str], int] = {}  # (sender, retained kind) -> highest sequence delivered
        self._log = RateLimited(log)

    def expect(self, kind: str, *types: type[codec.Message]) -> None:
        """Only ``types`` are acceptable on ``kind`` topics (on top of any registered before)."""
        self._expect[kind] = tuple(dict.fromkeys((*self._expect.get(kind, ()), *types)))

    def admit(self, topic: str) -> bool:
        """Whether the topic's publisher is within its rate (the first, cheapest check; counted when not)."""
        parts = topic.split("/", 5)
        if len(parts) < 5 or self.rate.allow(parts[4]):
            return True
        self.metrics.inc("inbound_rejected", reason="rate_limited")
        return False

    def receive(self, topic: str, payload: bytes, *, admitted: bool = False) -> Received | None:
        """The verified delivery, or None: rejected (counted), a duplicate, or a chunk of an unfinished transfer.

        ``admitted``: the caller has checked ``admit`` already (the session does, before routing).
        """
        if not admitted and not self.admit(topic):
            return None
        try:
            return self._receive(topic, payload)
        except _Drop as drop:
            self.metrics.inc("inbound_rejected", reason=drop.reason)
            if drop.detail:
                self._log.warning(drop.reason, "%sdropped message on %s: %s", f"{self.name}: " if self.name else "",
                                  topic[:200], drop.detail, reason=drop.reason)
        except Exception:
            self.metrics.inc("inbound_rejected", reason="internal")
            log.exception("%s: inbound message on %s raised", self.name, topic[:200])
        return None

    def _receive(self, name: str, payload: bytes) -> Received | None:
        try:
            where = topics.parse(name)
        except topics.TopicError as exc:
            raise _Drop("topic", str(exc)) from None
        if chunking.is_chunk(payload):
            try:
                payload = self.reassembler.add(where.node, payload)
            except chunking.ChunkError as exc:
                raise _Drop(f"chunk_{exc.reason}") from None  # logged by the reassembler
            if payload is None:
                return None  # more chunks to come, or a late duplicate chunk
        key = payload[:256]  # the envelope head, signature included (canonical: one byte form per message)
        if key in self._recent:
            self.metrics.inc("duplicate_delivery")
            return None
        try:  # a message of a type the kind does not take is refused before its body is decoded
            env = self.verifier.open(payload, check_fresh=where.kind not in topics.RETAINED,
                                     expect_sender=where.node, expect_to=where.target, expect_role=where.role,
                                     expect_site=where.site, expect_types=self._expect.get(where.kind))
        except Rejected as exc:
            raise _Drop(exc.reason) from None  # logged by the verifier
        self._recent[key] = None
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        if where.kind in FORWARD_ONLY:
            last = self._latest.get((env.sender, where.kind), -1)
            if env.seq == last:  # the broker's retained copy again, e.g. after resubscribing
                self.metrics.inc("duplicate_delivery")
                return None
            if env.seq < last:
                raise _Drop("stale_retained", f"{where.kind} #{env.seq} from {env.sender}, #{last} seen")
            self._latest[(env.sender, where.kind)] = env.seq
        if where.kind == "status":
            self._track_status(env)
        return Received(where, env)

    def _track_status(self, env: Envelope) -> None:
        msg = env.message
        if msg.state not in STATES:
            raise _Drop("bad_status", f"state {msg.state!r} from {env.sender}")
        last = self.peers.get(env.sender)
        if msg.state == "offline" and last is not None and last[1] != msg.session:
            self.metrics.inc("status_stale")
            raise _Drop("stale_status")  # a will from an older session than the one seen online
        self.peers[env.sender] = (msg.state, msg.session)


class _Drop(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
