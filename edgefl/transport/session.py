"""An MQTT session that survives broker outages and speaks signed envelopes.

    async with Session.from_config(cfg) as s:
        await s.publish("model", msg)                       # signed, QoS1, waits for PUBACK
        async with s.subscribe(topics.pattern(kind="model")) as sub:
            async for rx in sub: ...                         # verified envelopes only
        pong = await s.request("fog-1", Ping(nonce=b"x"))   # correlation id, timeout

* Reconnects with exponential backoff and jitter; resubscribes every pattern.
* Persistent session (MQTT 5 clean_start=False with a session expiry, or
  3.1.1 clean_session=False) so the broker queues QoS1 messages for us while
  we are away; our own outbox keeps what we publish while the broker is away
  and re-sends anything not acknowledged, in order.  Duplicates that this
  at-least-once delivery can cause are dropped by signature (recent deliveries)
  or by the per-sender replay window.
* Last will: a pre-signed ``offline`` status, retained; ``online`` on connect.
* Payloads larger than the maximum packet size travel as chunks.
* TCP_NODELAY on the client socket: without it a QoS1 round trip waits on
  Nagle's algorithm and delayed ACKs (~88 ms instead of ~0.4 ms).
* Incoming bytes take the pure path of ``edgefl.transport.inbound`` (topic,
  chunks, duplicates, envelope, expected types, liveness); aiomqtt and paho
  are confined to ``edgefl.transport.mqtt``.  Nothing a peer sends and no
  failing handler or consumer stops the reader: each is a counted rejection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import random
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable

from edgefl import codec
from edgefl.crypto import DirectoryKeyRegistry, Envelope, KeyRegistry, SequenceCounter, Signer, SigningKey, Verifier
from edgefl.errors import EdgeflError
from edgefl.runtime import METRICS, Config, Metrics, MqttSection
from edgefl.transport import chunking, topics
from edgefl.transport.inbound import Inbound, RateLimit, Received
from edgefl.transport.messages import Error, Ping, Pong, Status
from edgefl.transport.mqtt import MQTT_LOG, Frame, Link, LinkError, _mqtt, cancels, raise_dropped_cancel

__all__ = ["MQTT_LOG", "Frame", "Received", "RemoteError", "RequestTimeout", "Session", "Subscription",
           "key_registry", "_mqtt"]

log = logging.getLogger("edgefl.session")

Handler = Callable[[Envelope], Awaitable[codec.Message | None]]


class RequestTimeout(EdgeflError, TimeoutError):
    reason = "timeout"


class RemoteError(EdgeflError, RuntimeError):
    """The peer answered with an error: its ``reason`` label and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(eq=False)  # identity semantics: items live in a heap and an in-flight set
class _Out:
    order: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    done: asyncio.Future

    def __lt__(self, other: "_Out") -> bool:
        return self.order < other.order


class Subscription:
    """``async with session.subscribe(pattern) as sub: async for rx in sub``.

    The queue is bounded: a consumer that falls behind slows the reader down
    (and MQTT flow control the broker) rather than dropping QoS1 messages.
    """

    def __init__(self, session: "Session", pattern: str, raw: bool, maxsize: int):
        self.session = session
        self.pattern = pattern
        self.raw = raw  # Frame as it arrived instead of a verified Received
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    async def __aenter__(self) -> "Subscription":
        await self.session._add_subscription(self)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session._remove_subscription(self)

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.queue.get()

    async def get(self, timeout: float | None = None):
        async with asyncio.timeout(timeout):
            return await self.queue.get()


def key_registry(cfg: Config, metrics: Metrics = METRICS) -> KeyRegistry:
    """The registry ``security.registry`` names: a directory of public keys, or the site PKI."""
    if cfg.security.registry == "pki":
        from edgefl.crypto.pki import PkiRegistry

        return PkiRegistry.from_config(cfg, metrics=metrics)
    return DirectoryKeyRegistry(cfg.path(cfg.security.trust_dir))


class Session:
    def __init__(self, *, site: str, role: str, signer: Signer, verifier: Verifier, mqtt: MqttSection,
                 client_id: str | None = None, metrics: Metrics = METRICS):
        self.node_id = signer.node_id
        self.site = topics.check_segment(site, "site")
        if role not in topics.ROLES:
            raise topics.TopicError(f"role {role!r} must be one of {topics.ROLES}")
        self.role = role
        topics.check_segment(self.node_id, "node id")
        self.signer = signer
        self.verifier = verifier
        self.cfg = mqtt
        self.client_id = client_id or self.node_id
        self.metrics = metrics
        self.connected = asyncio.Event()
        self._handlers: dict[str, tuple[Handler, bool]] = {Ping.TYPE: (self._pong, False)}
        self._pending: dict[bytes, tuple[str, asyncio.Future]] = {}
        self._subs: list[Subscription] = []
        self._patterns: dict[str, None] = {}  # subscribed at the broker for the session's lifetime
        self._held: deque[Frame] = deque()  # arrived before anyone here subscribed
        self._kinds: set[str] = set()  # the role/kind labels counted in mqtt_received
        self._held_bytes = 0
        self._internal = [topics.pattern(kind="req", target=self.node_id),
                          topics.pattern(kind="resp", target=self.node_id)]
        self._heap: list[_Out] = []
        self._nonempty = asyncio.Event()
        self._capacity = asyncio.Semaphore(mqtt.outbox_limit)
        self._inflight: set[_Out] = set()
        self._slots = asyncio.Semaphore(mqtt.max_inflight)
        self._order = itertools.count()
        self._reassembler = chunking.Reassembler(max_transfer=mqtt.max_message_size,
                                                 max_buffered=mqtt.reassembly_buffer,
                                                 timeout_s=mqtt.chunk_timeout_s, metrics=metrics)
        self.inbound = Inbound(verifier, self._reassembler, metrics=metrics, name=self.node_id,
                               rate=RateLimit(mqtt.rate_per_sender, mqtt.rate_burst))
        self._client: Link | None = None
        self._closing = False
        self._attempt = 0  # failed connection attempts in a row, for the backoff
        self._runner: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.reconnects = 0

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg: Config, *, metrics: Metrics = METRICS, client_id: str | None = None) -> "Session":
        key = SigningKey.load(cfg.path(cfg.security.key_file))
        seq_path = cfg.path("{data_dir}/state/{id}.seq")
        seq_path.parent.mkdir(parents=True, exist_ok=True)
        signer = Signer(cfg.node.id, key, SequenceCounter(seq_path))
        verifier = Verifier(key_registry(cfg, metrics),
                            window=cfg.security.replay_window, max_skew_s=cfg.security.max_clock_skew_s,
                            limits=codec.Limits(max_size=cfg.mqtt.max_message_size, max_depth=16,
                                                max_items=1 << 16),
                            metrics=metrics, name=cfg.node.id)
        tls = {k: str(cfg.path(v)) for k in ("tls_ca", "tls_cert", "tls_key") if (v := getattr(cfg.mqtt, k))}
        return cls(site=cfg.node.site, role=cfg.node.role, signer=signer, verifier=verifier,
                   mqtt=dataclasses.replace(cfg.mqtt, **tls), client_id=client_id, metrics=metrics)

    def topic(self, kind: str, target: str | None = None) -> str:
        return topics.topic(self.site, self.role, self.node_id, kind, target)

    @property
    def peers(self) -> dict[str, tuple[str, bytes]]:
        """Liveness as the status topics said it: node -> (state, session nonce)."""
        return self.inbound.peers

    def expect(self, kind: str, *types: type[codec.Message]) -> None:
        """Refuse (and count) any message but ``types`` on ``kind`` topics; see ``Inbound.expect``."""
        self.inbound.expect(kind, *types)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "Session":
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-session-{self.node_id}")
        self._spawn(self._expire_transfers())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self.connected.wait()

    async def close(self) -> None:
        """Graceful: wait (bounded) for queued QoS1 publishes, say offline, disconnect."""
        if self._runner is None or self._closing:
            return
        self._closing = True
        try:
            async with asyncio.timeout(self.cfg.drain_timeout_s):
                while self._heap or self._inflight:
                    await asyncio.sleep(0.01)
                if self._client is not None and self.connected.is_set():
                    offline = self.signer.seal(Status(state="offline", session=self._nonce))
                    await self._client.publish(self.topic("status"), offline, qos=1, retain=True)
        except (TimeoutError, LinkError) as exc:
            left = len(self._heap) + len(self._inflight)
            if left:
                log.warning("%s: closing with %d unacknowledged publishes (%s)", self.node_id, left, exc)
        for task in list(self._tasks):
            task.cancel()
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        for item in self._heap:
            if not item.done.done():
                item.done.set_exception(ConnectionError("session closed before the message was sent"))

    async def _run(self) -> None:
        """Connect, serve, reconnect: until close() cancels it (after draining, so not on ``_closing``)."""
        while True:
            try:
                await self._connect_once()
            except* (LinkError, OSError) as group:
                log.info("%s: broker connection lost or refused: %s", self.node_id, group.exceptions[0])
            except* Exception:
                log.exception("%s: session error; reconnecting", self.node_id)
            finally:
                self.connected.clear()
                self._client = None
                self._requeue_inflight()
            delay = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** min(self._attempt, 30))
            self._attempt += 1
            self.reconnects += 1
            self.metrics.inc("mqtt_reconnect")
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))  # "equal jitter"

    def _password(self) -> str | None:
        if not self.cfg.password_file:
            return None
        with open(os.path.expanduser(self.cfg.password_file)) as f:
            return f.readline().strip()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_ca:
            return None
        ctx = ssl.create_default_context(cafile=os.path.expanduser(self.cfg.tls_ca))
        if self.cfg.tls_cert:
            ctx.load_cert_chain(os.path.expanduser(self.cfg.tls_cert),
                                os.path.expanduser(self.cfg.tls_key) if self.cfg.tls_key else None)
        return ctx

    async def close_client(self, client_id: str) -> None:
        """Close another client's connection at the broker, and drop what the broker keeps for it.

        MQTT lets one connection per client id live: connecting under ``client_id``
        (a clean session that expires at once) makes Mosquitto close the older one.
        A fog shuts a revoked device out this way; once the broker has reloaded
        its CRL file, the device's reconnection fails the TLS handshake.
        """
        link = Link(self.cfg, client_id=client_id, username=self.cfg.username or self.node_id,
                    password=self._password(), tls_context=self._tls_context(), will=None, clean=True)
        async with link:
            pass
        self.metrics.inc("mqtt_client_closed")
        log.info("%s: closed the broker connection of client %s", self.node_id, client_id)

    async def _connect_once(self) -> None:
        self._nonce = os.urandom(8)
        will = (self.topic("status"), self.signer.seal(Status(state="offline", session=self._nonce)))
        link = Link(self.cfg, client_id=self.client_id, username=self.cfg.username or self.node_id,
                    password=self._password(), tls_context=self._tls_context(), will=will)
        async with link as client:
            self._client = client
            for pattern in [*self._internal, *self._patterns]:
                await client.subscribe(pattern)
            await _mqtt(client.publish(self.topic("status"),
                                       self.signer.seal(Status(state="online", session=self._nonce)), qos=1,
                                       retain=True))
            self.connected.set()
            self._attempt = 0
            log.info("%s: connected to %s:%d", self.node_id, self.cfg.host, self.cfg.port)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_loop(client))
                tg.create_task(self._send_loop(client))

    # ------------------------------------------------------------------ outgoing

    async def publish(self, kind: str, msg: codec.Message, *, to: str | None = None, corr: bytes | None = None,
                      qos: int | None = None, retain: bool = False) -> None:
        """Sign ``msg`` and publish it on this node's ``kind`` topic; returns once the broker has it."""
        wire = self.signer.seal(msg, to=to, corr=corr)
        await self.send(self.topic(kind, to), wire, qos=self.cfg.qos if qos is None else qos, retain=retain)

    async def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish bytes as they are (chunked if larger than a packet); returns once the broker has them.

        With the connection up, nothing queued and an in-flight slot free, a
        single packet goes straight out from the caller's task; otherwise it
        waits in the outbox, which a sender task drains in order.
        """
        limit = self._max_packet() - len(topic) - 64  # fixed header, topic, properties
        frames = [payload] if len(payload) <= limit else chunking.split(payload, limit)
        if retain and len(frames) > 1:
            raise ValueError("a retained message must fit in one packet")
        loop = asyncio.get_running_loop()
        items = []
        for frame in frames:
            await self._capacity.acquire()
            items.append(_Out(next(self._order), topic, frame, qos, retain, loop.create_future()))
        client = self._client
        if len(items) == 1 and client is not None and not self._heap and not self._slots.locked():
            await self._slots.acquire()  # free: does not suspend
            self._inflight.add(items[0])
            await self._publish(client, items[0])  # on failure the sender task retries it
        else:
            for item in items:
                heapq.heappush(self._heap, item)
            self._nonempty.set()
        for item in items:  # awaiting a finished future does not yield to the loop; gather() would
            await item.done

    def _max_packet(self) -> int:
        """The configured packet size, or the broker's if it takes less (it closes the connection of a client
        that sends more, and the outbox would resend that packet forever)."""
        broker = self._client.max_packet if self._client is not None else None
        return min(self.cfg.max_packet_size, broker or self.cfg.max_packet_size)

    async def _publish(self, client: Link, item: _Out) -> bool:
        """One attempt for an in-flight item; on failure or cancellation it goes back to the outbox."""
        if client.max_packet and len(item.payload) + len(item.topic) + 64 > client.max_packet:
            self._fail(item, ValueError(f"{len(item.payload)} bytes on {item.topic}: more than the broker's "
                                        f"maximum packet size {client.max_packet} (queued before it said so)"))
            self._slots.release()
            return True
        before = cancels()
        try:
            await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
        except (LinkError, OSError):
            self._requeue(item)
            return False
        except BaseException:
            self._requeue(item)  # at least once: the sender task will finish what the caller abandoned
            raise
        finally:
            self._slots.release()
        if item in self._inflight:
            self._inflight.discard(item)
            self._capacity.release()
            if not item.done.done():
                item.done.set_result(None)
        raise_dropped_cancel(before)  # sent: only now honour a cancellation aiomqtt may have swallowed
        return True

    async def _send_loop(self, client: Link) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                if not self._heap:
                    self._nonempty.clear()
                    await self._nonempty.wait()
                    continue
                await self._slots.acquire()
                if not self._heap:
                    self._slots.release()
                    continue
                item = heapq.heappop(self._heap)
                self._inflight.add(item)
                tg.create_task(self._send_from_outbox(client, item))

    async def _send_from_outbox(self, client: Link, item: _Out) -> None:
        if not await self._publish(client, item):
            # Tear this connection down; _run reconnects and the outbox resends.
            raise LinkError(f"publish to {item.topic} failed")

    def _fail(self, item: _Out, exc: Exception) -> None:
        """Give up on an item that no broker connection can carry: its sender gets ``exc``."""
        self._inflight.discard(item)
        self._capacity.release()
        self.metrics.inc("mqtt_publish_refused")
        if not item.done.done():
            item.done.set_exception(exc)

    def _requeue(self, item: _Out) -> None:
        if item in self._inflight:  # not yet acknowledged: its original order number puts it first
            self._inflight.discard(item)
            heapq.heappush(self._heap, item)
            self._nonempty.set()

    def _requeue_inflight(self) -> None:
        if self._inflight:
            self.metrics.inc("mqtt_republish", len(self._inflight))
            for item in list(self._inflight):
                self._requeue(item)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, pattern: str, *, raw: bool = False, maxsize: int = 10000) -> Subscription:
        """Messages on topics matching ``pattern``: ``Received`` envelopes, or (``raw``) every ``Frame`` as it came.

        The broker-side subscription lasts as long as the MQTT session, beyond
        this context: a persistent session keeps collecting messages for a node
        that restarts.  Messages that arrive before any local subscription
        matches them (e.g. queued ones right after reconnecting) are held, up
        to ``HELD_LIMIT`` messages and ``mqtt.reassembly_buffer`` bytes, and
        handed to the first subscription that matches.
        ``unsubscribe()`` ends the broker-side subscription.
        """
        return Subscription(self, pattern, raw, maxsize)

    HELD_LIMIT = 10000

    async def _add_subscription(self, sub: Subscription) -> None:
        self._subs.append(sub)
        if sub.pattern not in self._patterns:
            self._patterns[sub.pattern] = None
            if self._client is not None:
                with contextlib.suppress(LinkError):  # on failure, the reconnect resubscribes
                    await self._client.subscribe(sub.pattern)
        early = [m for m in self._held if topics.matches(sub.pattern, m.topic)]
        for m in early:
            self._held.remove(m)
            self._held_bytes -= len(m.payload)
            await self._dispatch(m)

    async def _remove_subscription(self, sub: Subscription) -> None:
        self._subs.remove(sub)

    async def unsubscribe(self, pattern: str) -> None:
        """End the broker-side subscription for ``pattern`` (local subscriptions to it stop receiving)."""
        self._patterns.pop(pattern, None)
        if self._client is not None:
            with contextlib.suppress(LinkError):
                await self._client.unsubscribe(pattern)

    # ------------------------------------------------------------------ incoming

    async def _read_loop(self, client: Link) -> None:
        async for frame in client.frames():
            self.metrics.inc("mqtt_received", kind=self._kind_label(frame.topic))
            try:
                await self._dispatch(frame)
            except Exception:  # a bug in routing or a consumer: count it, keep reading
                self.metrics.inc("inbound_rejected", reason="internal")
                log.exception("%s: dispatching a message on %s failed", self.node_id, frame.topic[:200])

    def _kind_label(self, topic: str) -> str:
        """``role/kind`` of a topic, for counting what a node receives; a publisher names its own kinds, so
        past a few dozen distinct ones (or for a topic not in the scheme) it is ``other``."""
        parts = topic.split("/", 6)  # edgefl/v1/site/role/node/kind[/target]
        label = f"{parts[3]}/{parts[5]}" if len(parts) > 5 and parts[3] in topics.ROLES else "other"
        if label not in self._kinds:
            if len(self._kinds) >= 48:
                return "other"
            self._kinds.add(label)
        return label

    async def _dispatch(self, m: Frame) -> None:
        """Route one frame: hold it if nobody here wants it yet, else verify it once and deliver it."""
        if not self.inbound.admit(m.topic):
            return  # a sender over its rate: dropped before anything costs more than this
        subs = [s for s in self._subs if topics.matches(s.pattern, m.topic)]
        if not subs and not any(topics.matches(p, m.topic) for p in self._internal):
            self._held.append(m)
            self._held_bytes += len(m.payload)
            while len(self._held) > self.HELD_LIMIT or self._held_bytes > self.cfg.reassembly_buffer:
                self._held_bytes -= len(self._held.popleft().payload)
                self.metrics.inc("unrouted_dropped")
            return
        for s in subs:
            if s.raw:
                await s.queue.put(m)
        if all(s.raw for s in subs) and not any(topics.matches(p, m.topic) for p in self._internal):
            return  # nobody here wants this one verified
        rx = self.inbound.receive(m.topic, m.payload, admitted=True)
        if rx is None:
            return  # counted: rejected, a duplicate, or part of a chunked transfer
        where = rx.topic
        if where.kind == "req" and where.target == self.node_id:
            handler, concurrent = self._handlers.get(rx.envelope.type, (None, False))
            if concurrent:
                self._spawn(self._serve(rx, handler))
            else:
                await self._serve(rx, handler)
        elif where.kind == "resp" and where.target == self.node_id:
            self._resolve(rx)
        for s in subs:
            if not s.raw:
                await s.queue.put(rx)

    # ------------------------------------------------------------------ request / response

    def serve(self, message_type: type[codec.Message], handler: Handler, *, concurrent: bool = True) -> None:
        """Answer requests of ``message_type``; the handler returns the response message.

        Handlers run as their own tasks; ``concurrent=False`` runs a quick one
        inline in the reader instead (one event-loop hop less, strictly in order).
        """
        self._handlers[message_type.TYPE] = (handler, concurrent)

    async def request(self, target: str, msg: codec.Message, *, timeout: float | None = None) -> Envelope:
        """Send ``msg`` to ``target`` and wait for its signed response (raises RequestTimeout, RemoteError)."""
        corr = os.urandom(12)
        fut = asyncio.get_running_loop().create_future()
        self._pending[corr] = (target, fut)
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s if timeout is None else timeout):
                await self.publish("req", msg, to=target, corr=corr)
                env = await fut
        except TimeoutError:
            self.metrics.inc("request_timeout")
            raise RequestTimeout(f"no response from {target} to {msg.TYPE}") from None
        finally:
            self._pending.pop(corr, None)
        if isinstance(env.message, Error):
            raise RemoteError(env.message.code, env.message.detail)
        return env

    def _resolve(self, rx: Received) -> None:
        pending = self._pending.get(rx.envelope.corr or b"")
        if pending is None or pending[0] != rx.envelope.sender:
            self.metrics.inc("unexpected_response")
            return
        if not pending[1].done():
            pending[1].set_result(rx.envelope)

    async def _serve(self, rx: Received, handler: Handler | None) -> None:
        env = rx.envelope
        self.metrics.inc("request_served", type=env.type if handler is not None else "unsupported")
        try:
            reply = Error("unsupported", f"no handler for {env.type}") if handler is None else await handler(env)
        except Exception as exc:  # the requester gets an answer; the log gets the trace
            self.metrics.inc("handler_failed", type=env.type)
            log.exception("%s: handler for %s failed", self.node_id, env.type)
            reply = Error("internal", type(exc).__name__)
        if reply is None:
            return
        try:
            await self.publish("resp", reply, to=env.sender, corr=env.corr)
        except (codec.CodecError, ConnectionError) as exc:  # e.g. a reply over its type's size limit
            self.metrics.inc("handler_failed", type=env.type)
            log.warning("%s: cannot answer %s from %s: %s", self.node_id, env.type, env.sender, exc)

    async def _expire_transfers(self) -> None:
        """Free chunked transfers that stopped arriving, even if no further chunk comes to trigger it."""
        while True:
            await asyncio.sleep(max(0.1, self.cfg.chunk_timeout_s / 2))
            self._reassembler.expire()

    async def _pong(self, env: Envelope) -> Pong:
        return Pong(nonce=env.message.nonce, payload=env.message.payload)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
