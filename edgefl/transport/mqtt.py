"""The one place the session touches aiomqtt and paho: a connection, its publishes, subscriptions and frames.

Everything above this adapter sees topics as ``str`` and payloads as
``bytes``; ``LinkError`` (an alias of ``aiomqtt.MqttError``) is the one
exception type a broken or refused connection raises, besides ``OSError``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import AsyncIterator, Awaitable, NamedTuple

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefl.runtime import MqttSection

LinkError = aiomqtt.MqttError


class _PipelineNoise(logging.Filter):
    """aiomqtt warns on every publish while more than 10 are unacknowledged: that is pipelining, not trouble."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.msg


MQTT_LOG = logging.getLogger("edgefl.mqtt")  # the logger handed to aiomqtt/paho clients
MQTT_LOG.addFilter(_PipelineNoise())


async def _mqtt(aw: Awaitable):
    """Await an aiomqtt operation without losing a cancellation.

    aiomqtt waits with ``asyncio.wait_for``, which on Python 3.11 returns the result when a cancellation
    arrives just as the operation completes: the caller went on as if never cancelled, and a task group
    shutting down waited forever for it (fixed in 3.12).  A cancel requested while it ran is re-raised.
    """
    before = cancels()
    result = await aw
    raise_dropped_cancel(before)
    return result


def cancels() -> int:
    """Cancellations requested of the current task so far (``Task.cancelling``)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_dropped_cancel(before: int) -> None:
    """Re-raise a cancellation requested since ``cancels()`` said ``before`` and swallowed on the way.

    Only a new one counts: the count is not reset when a cancellation is handled (a task group
    that failed leaves its parent's count raised on 3.11), so "any at all" would stop a session
    that merely reconnected after losing its broker.
    """
    if cancels() > before:
        raise asyncio.CancelledError


class Frame(NamedTuple):
    """One MQTT message as it arrived: what raw subscriptions get."""

    topic: str
    payload: bytes
    retain: bool = False


class Link:
    """``async with Link(...) as link``: one broker connection (persistent MQTT session, last will, TCP_NODELAY)."""

    def __init__(self, cfg: MqttSection, *, client_id: str, username: str, password: str | None,
                 tls_context: ssl.SSLContext | None, will: tuple[str, bytes] | None, clean: bool = False):
        """``clean``: a new MQTT session that ends with the connection (what the broker held for the id goes)."""
        v5 = cfg.protocol == "5"
        args = dict(
            hostname=cfg.host, port=cfg.port, identifier=client_id, logger=MQTT_LOG,
            username=username, password=password, keepalive=cfg.keepalive_s,
            max_inflight_messages=cfg.max_inflight, timeout=cfg.request_timeout_s, tls_context=tls_context,
            # without it a QoS1 round trip waits on Nagle's algorithm and delayed ACKs (~88 ms instead of ~0.4 ms)
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None,
        )
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if clean else cfg.session_expiry_s
            args.update(clean_start=clean, properties=props)
        else:
            args.update(clean_session=clean)
        self._client = aiomqtt.Client(**args)
        self.max_packet: int | None = None  # what the broker's CONNACK says it takes (MQTT 5), once connected
        paho = self._client._client  # aiomqtt drops the CONNACK's properties: read them on the way
        forward = paho.on_connect

        def on_connect(client, userdata, flags, reason_code, properties=None):
            self.max_packet = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
            forward(client, userdata, flags, reason_code, properties)

        paho.on_connect = on_connect

    async def __aenter__(self) -> "Link":
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._client.__aexit__(*exc)

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=qos, retain=retain)  # the caller honours a dropped cancel

    async def subscribe(self, pattern: str) -> None:
        await _mqtt(self._client.subscribe(pattern, qos=1))

    async def unsubscribe(self, pattern: str) -> None:
        await _mqtt(self._client.unsubscribe(pattern))

    async def frames(self) -> AsyncIterator[Frame]:
        async for m in self._client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else bytes(m.payload or b"")
            yield Frame(m.topic.value, payload, bool(m.retain))
