"""Sessions against a real Mosquitto started on a free loopback port."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import pytest

from edgefl.crypto.keys import save_public
from edgefl.transport import topics
from edgefl.transport.messages import Ping
from edgefl.transport.mosquitto import LocalMosquitto
from edgefl.transport.session import RequestTimeout
from tests.conftest import Nodes, connected, need_mosquitto, topics_seen_until

pytestmark = pytest.mark.broker


async def test_signed_request_response_and_liveness(broker):
    nodes = Nodes(broker.port, "dev-a", "fog-1")
    a, fog = nodes.session("dev-a"), nodes.session("fog-1", role="fog")
    async with fog:
        async with fog.subscribe(topics.pattern(kind="status")) as status:
            async with a:
                await connected(a, fog)
                reply = await a.request("fog-1", Ping(nonce=b"hi", payload=b"x" * 1000))
                assert reply.sender == "fog-1" and reply.message.payload == b"x" * 1000
                while fog.peers.get("dev-a", ("",))[0] != "online":
                    await status.get(timeout=5)
            while fog.peers["dev-a"][0] != "offline":  # a clean close says offline, too
                await status.get(timeout=5)
    assert nodes.metrics["dev-a"].total("envelope_rejected") == 0


async def test_request_to_absent_peer_times_out(broker):
    nodes = Nodes(broker.port, "dev-a")
    async with nodes.session("dev-a") as a:
        await connected(a)
        with pytest.raises(RequestTimeout):
            await a.request("nobody", Ping(nonce=b"?"), timeout=0.3)
    assert nodes.metrics["dev-a"].get("request_timeout") == 1


async def test_qos1_messages_survive_a_broker_restart(broker):
    """Published while the broker is down, delivered after it restarts on the same port: nothing lost."""
    nodes = Nodes(broker.port, "dev-a", "fog-1")
    a, fog = nodes.session("dev-a"), nodes.session("fog-1", role="fog")
    got = []
    async with a, fog, fog.subscribe(topics.pattern(node="dev-a", kind="data")) as sub:
        await connected(a, fog)
        await a.publish("data", Ping(nonce=b"before"))
        got.append((await sub.get(timeout=5)).message.nonce)
        broker.stop()
        await asyncio.sleep(0.3)
        pending = [asyncio.create_task(a.publish("data", Ping(nonce=b"m%d" % i))) for i in range(40)]
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in pending)  # held in the outbox, not dropped
        broker.start()
        await asyncio.wait_for(asyncio.gather(*pending), 20)
        while len(got) < 41:
            got.append((await sub.get(timeout=10)).message.nonce)
    assert sorted(got) == sorted([b"before"] + [b"m%d" % i for i in range(40)])
    assert a.reconnects >= 1 and fog.reconnects >= 1


async def test_queued_for_an_offline_subscriber(broker):
    """The broker keeps QoS1 messages for a persistent session that is away."""
    nodes = Nodes(broker.port, "dev-a", "fog-1")
    fog = nodes.session("fog-1", role="fog")
    async with fog, fog.subscribe(topics.pattern(node="dev-a", kind="data")):
        await connected(fog)
    async with nodes.session("dev-a") as a:
        await connected(a)
        for i in range(5):
            await a.publish("data", Ping(nonce=b"q%d" % i))
    fog = nodes.session("fog-1", role="fog")
    async with fog, fog.subscribe(topics.pattern(node="dev-a", kind="data")) as sub:
        got = [(await sub.get(timeout=10)).message.nonce for _ in range(5)]
    assert sorted(got) == [b"q%d" % i for i in range(5)]


async def test_close_drains_inflight_publishes(broker):
    nodes = Nodes(broker.port, "dev-a", "fog-1")
    fog = nodes.session("fog-1", role="fog")
    async with fog, fog.subscribe(topics.pattern(node="dev-a", kind="data")) as sub:
        a = nodes.session("dev-a", drain_timeout_s=20)
        await a.__aenter__()
        await connected(a, fog)
        broker.stop()
        await asyncio.sleep(0.2)
        sending = asyncio.create_task(a.publish("data", Ping(nonce=b"last words")))
        closing = asyncio.create_task(a.close())
        await asyncio.sleep(0.5)
        assert not closing.done()
        broker.start()
        await asyncio.wait_for(closing, 20)
        assert sending.done() and sending.exception() is None
        assert (await sub.get(timeout=10)).message.nonce == b"last words"


async def test_five_megabytes_cross_in_chunks(broker):
    nodes = Nodes(broker.port, "dev-a", "fog-1")
    a = nodes.session("dev-a", max_packet_size=256 << 10)
    fog = nodes.session("fog-1", role="fog", max_packet_size=256 << 10)
    payload = os.urandom(5 << 20)
    async with a, fog, fog.subscribe(a.topic("msg", "fog-1")) as sub:
        await connected(a, fog)
        await a.publish("msg", Ping(nonce=b"big", payload=payload), to="fog-1")
        rx = await sub.get(timeout=30)
    assert rx.message.payload == payload
    assert nodes.metrics["fog-1"].get("chunk_transfer_complete") == 1


async def test_tampered_bytes_on_the_wire_are_rejected_and_counted(broker):
    nodes = Nodes(broker.port, "dev-a", "fog-1")
    a, fog = nodes.session("dev-a"), nodes.session("fog-1", role="fog")
    async with a, fog, fog.subscribe(a.topic("msg", "fog-1")) as sub:
        await connected(a, fog)
        wire = bytearray(a.signer.seal(Ping(nonce=b"n"), to="fog-1"))
        wire[-3] ^= 0x40
        await a.send(a.topic("msg", "fog-1"), bytes(wire))
        stolen = a.signer.seal(Ping(nonce=b"for someone else"), to="fog-2")
        await a.send(a.topic("msg", "fog-1"), stolen)  # re-addressed: the topic says fog-1
        await a.publish("msg", Ping(nonce=b"ok"), to="fog-1")
        assert (await sub.get(timeout=5)).message.nonce == b"ok"
    m = nodes.metrics["fog-1"]
    assert m.get("envelope_rejected", reason="bad_signature") == 1
    assert m.get("envelope_rejected", reason="topic_mismatch") == 1


async def test_acl_confines_each_identity_to_its_own_topics(tmp_path):
    need_mosquitto()
    users = {"dev-a": "pw-a", "dev-b": "pw-b", "fog-1": "pw-f"}
    with LocalMosquitto(tmp_path / "b", auth="password", users=users, readers=["fog-1"]) as broker:
        nodes = Nodes(broker.port, *users)
        for name, pw in users.items():
            (tmp_path / f"{name}.pw").write_text(pw)

        def session(name, role="device", pw=None):
            return nodes.session(name, role=role, password_file=str(tmp_path / f"{pw or name}.pw"))

        a, fog = session("dev-a"), session("fog-1", role="fog")
        async with a, fog, fog.subscribe("edgefl/v1/#", raw=True) as everything:
            await connected(a, fog)
            wire = a.signer.seal(Ping(nonce=b"spoof"), to="fog-1")
            await a.send(topics.topic("t", "device", "dev-b", "msg", "fog-1"), wire)  # dev-b's subtree
            await a.send(a.topic("msg", "fog-1"), a.signer.seal(Ping(nonce=b"own"), to="fog-1"))
            seen = await topics_seen_until(everything, "dev-a/msg/fog-1")
            assert not any("/dev-b/" in t for t in seen), seen
        intruder = session("dev-b", pw="dev-a")  # wrong password
        async with intruder:
            with pytest.raises(TimeoutError):
                await intruder.wait_connected(1.5)


async def test_last_will_reports_a_killed_peer(broker, tmp_path):
    """A node process killed with SIGKILL: the broker publishes its pre-signed offline will."""
    nodes = Nodes(broker.port, "fog-1", "dev-x")
    data = tmp_path / "dev-x"
    nodes.keys["dev-x"].save(data / "keys" / "dev-x.key")
    for name, key in nodes.keys.items():
        save_public(key.public_key, data / "trust" / f"{name}.pub")
    proc = subprocess.Popen([sys.executable, "-m", "edgefl", "--set", "node.id=dev-x", "--set", "node.site=t",
                             "--set", "node.fog=fog-1", "--set", f"node.data_dir={data}", "--set",
                             f"mqtt.port={broker.port}", "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        fog = nodes.session("fog-1", role="fog")
        async with fog, fog.subscribe(topics.pattern(node="dev-x", kind="status")) as status:
            await connected(fog)
            rx = await status.get(timeout=20)
            assert rx.message.state == "online", proc.stderr.read1().decode() if proc.poll() is not None else ""
            reply = await fog.request("dev-x", Ping(nonce=b"alive?"))
            assert reply.message.nonce == b"alive?"
            proc.send_signal(signal.SIGKILL)
            rx = await status.get(timeout=20)
            assert rx.message.state == "offline" and fog.peers["dev-x"][0] == "offline"
    finally:
        proc.kill()
        proc.wait()


async def test_a_cancellation_racing_a_completed_mqtt_operation_is_not_lost():
    """aiomqtt bounds its waits with wait_for, which on Python 3.11 drops a cancel that races the operation's
    completion; the session's wrapper must keep it, or a task group shutting down waits forever."""
    from edgefl.transport.mqtt import _mqtt

    done = asyncio.get_running_loop().create_future()
    after = []

    async def operation():  # as aiomqtt's _wait_for
        return await asyncio.wait_for(done, 5)

    async def caller():
        await _mqtt(operation())
        after.append("went on")

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)  # the caller waits on the operation
    done.set_result(None)   # the operation completes ...
    task.cancel()           # ... as the cancellation arrives
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == []


async def test_an_old_cancellation_a_task_group_left_counted_does_not_stop_later_operations():
    """A 3.11 task group that failed leaves its parent's cancel count raised; a reconnect must still work."""
    from edgefl.transport.mqtt import _mqtt

    async def failing_group():
        with contextlib.suppress(ExceptionGroup):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(asyncio.sleep(0, result=None))
                tg.create_task(_boom())
        return await _mqtt(asyncio.sleep(0, result="sent"))

    async def _boom():
        raise ConnectionError("broker gone")

    assert await asyncio.create_task(failing_group()) == "sent"
