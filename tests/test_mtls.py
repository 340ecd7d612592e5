"""The PKI against a real Mosquitto: mTLS identities, per-identity ACLs, CRLs distributed over MQTT."""

import asyncio
import contextlib
import time

import pytest

from edgefl.crypto.ca import CaDirectory
from edgefl.crypto.envelope import IdentityRejected
from edgefl.nodes.node import crl_service
from edgefl.runtime.config import load_config
from edgefl.runtime.metrics import Metrics
from edgefl.transport.messages import Ping
from edgefl.transport.mosquitto import LocalMosquitto
from edgefl.transport.session import Session
from tests.conftest import connected, need_mosquitto, topics_seen_until

pytestmark = pytest.mark.broker


@pytest.fixture
def site(tmp_path):
    """A fog host whose data directory is its PKI directory, and a TLS Mosquitto using the fog's certificate."""
    need_mosquitto()
    ca = CaDirectory(tmp_path / "fog-1")
    ca.init("root", "cloud")
    ca.issue("fog-1", "fog", site="s1", hosts=("127.0.0.1",))
    for dev in ("dev-a", "dev-b"):
        ca.issue(dev, "device")
    t = ca.path / "tls"
    with LocalMosquitto(tmp_path / "broker", auth="tls", readers=["fog-1"], site="s1",
                        tls=dict(cafile=str(t / "fog-1-trust.pem"), certfile=str(t / "fog-1.pem"),
                                 keyfile=str(t / "fog-1.key"), crlfile=str(t / "crl.pem"))) as broker:
        yield ca, broker


def config(ca, broker, node, role, *extra, data_dir=None):
    if data_dir is None:
        data_dir = ca.path.parent / node
        ca.export(node, data_dir)
    return load_config(overrides=[
        f"node.id={node}", f"node.role={role}", "node.site=s1", f"node.data_dir={data_dir}",
        f"mqtt.port={broker.port}", "mqtt.reconnect_min_s=0.05", "mqtt.reconnect_max_s=0.5",
        "security.registry=pki", "mqtt.tls_ca={data_dir}/tls/ca.pem", "mqtt.tls_cert={data_dir}/tls/{id}.pem",
        "mqtt.tls_key={data_dir}/tls/{id}.key", *extra], env={})


async def test_certificate_identity_confines_publishing(site, tmp_path):
    ca, broker = site
    fog_m, a_m = Metrics(), Metrics()
    fog = Session.from_config(config(ca, broker, "fog-1", "fog", data_dir=ca.path), metrics=fog_m)
    a = Session.from_config(config(ca, broker, "dev-a", "device"), metrics=a_m)
    # dev-b's own key and node id, presenting dev-a's TLS certificate: the broker sees dev-a
    b_cfg = config(ca, broker, "dev-b", "device")
    b_cfg.mqtt.tls_cert = str(tmp_path / "dev-a/tls/dev-a.pem")
    b_cfg.mqtt.tls_key = str(tmp_path / "dev-a/tls/dev-a.key")
    impostor = Session.from_config(b_cfg, client_id="impostor")
    async with fog, a, impostor, fog.subscribe("edgefl/v1/#", raw=True) as everything, \
            fog.subscribe(a.topic("msg", "fog-1")) as inbox:
        await connected(fog, a, impostor)
        await impostor.publish("msg", Ping(nonce=b"as dev-b"), to="fog-1")  # dev-b's topic: the ACL drops it
        await a.publish("msg", Ping(nonce=b"own"), to="fog-1")
        rx = await inbox.get(timeout=5)
        assert rx.envelope.sender == "dev-a" and rx.message.nonce == b"own"  # verified through the PKI
        seen = await topics_seen_until(everything, "dev-a/msg/fog-1")
        assert not any("/dev-b/" in t for t in seen), seen
    assert fog_m.total("envelope_rejected") == 0 and fog_m.get("envelope_accepted") >= 1


async def test_a_device_cannot_publish_as_its_fog_nor_read_other_devices_traffic(site):
    """With mTLS and the rendered ACL the broker itself refuses: dev-a publishing on its fog's retained task
    topic or on dev-b's, and reading the fog's responses to dev-b or dev-b's messages to the fog."""
    ca, broker = site
    fog = Session.from_config(config(ca, broker, "fog-1", "fog", data_dir=ca.path))
    a = Session.from_config(config(ca, broker, "dev-a", "device"))
    b = Session.from_config(config(ca, broker, "dev-b", "device"))
    async with fog, a, b, fog.subscribe("edgefl/v1/#", raw=True) as fog_sees, \
            a.subscribe("edgefl/v1/s1/fog/fog-1/#", raw=True) as a_sees_fog, \
            a.subscribe("edgefl/v1/s1/device/dev-b/#", raw=True) as a_sees_b:
        await connected(fog, a, b)
        forged = a.signer.seal(Ping(nonce=b"a task"))
        await a.send("edgefl/v1/s1/fog/fog-1/task", forged, retain=True)  # as its fog
        await a.send("edgefl/v1/s1/device/dev-b/msg/fog-1", forged)  # as dev-b
        await a.send("edgefl/v1/s2/device/dev-a/msg/fog-1", forged)  # in another site
        await fog.publish("resp", Ping(nonce=b"for b"), to="dev-b")
        await b.publish("msg", Ping(nonce=b"from b"), to="fog-1")
        await fog.publish("beacon", Ping(nonce=b"for everyone"))
        await a.publish("msg", Ping(nonce=b"own"), to="fog-1")
        seen = await topics_seen_until(fog_sees, "dev-a/msg/fog-1")
        await asyncio.sleep(0.3)
        a_got = [a_sees_fog.queue.get_nowait().topic for _ in range(a_sees_fog.queue.qsize())] + \
            [a_sees_b.queue.get_nowait().topic for _ in range(a_sees_b.queue.qsize())]
    assert not any(t.endswith("/task") or "/s2/" in t for t in seen), seen
    assert [t for t in seen if t.startswith("edgefl/v1/s1/device/dev-b/msg")] == \
        ["edgefl/v1/s1/device/dev-b/msg/fog-1"]  # dev-b's own, once: not dev-a's forgery
    assert "edgefl/v1/s1/fog/fog-1/beacon" in a_got
    assert not any(t.endswith("/resp/dev-b") or "/dev-b/msg" in t for t in a_got), a_got


async def test_clients_without_a_site_certificate_cannot_connect(site, tmp_path):
    ca, broker = site
    no_cert = config(ca, broker, "dev-a", "device", "mqtt.tls_cert=none", "mqtt.tls_key=none")
    foreign = CaDirectory(tmp_path / "elsewhere")  # a complete PKI of somebody else's
    foreign.init("root", "cloud")
    foreign.issue("fog-1", "fog", site="s1")
    foreign.issue("dev-a", "device")
    forged = config(ca, broker, "dev-a", "device", data_dir=tmp_path / "dev-a")
    forged.mqtt.tls_cert = str(foreign.tls_path("dev-a", "pem"))
    forged.mqtt.tls_key = str(foreign.tls_path("dev-a", "key"))
    for cfg in (no_cert, forged):
        async with Session.from_config(cfg, client_id="intruder") as s:
            with pytest.raises(TimeoutError):
                await s.wait_connected(1.5)
    assert "peer did not return a certificate" in broker.log_tail(50)


async def test_a_revoked_certificate_cannot_connect_after_a_reload(site):
    """`edgefl pki revoke` also rewrites tls/crl.pem, Mosquitto's crlfile; a reload (SIGHUP) applies it."""
    ca, broker = site
    ca.revoke("dev-b", reason="stolen")
    broker.reload()
    await asyncio.sleep(0.3)
    async with Session.from_config(config(ca, broker, "dev-b", "device")) as b, \
            Session.from_config(config(ca, broker, "dev-a", "device")) as a:
        await a.wait_connected(10)  # the others are unaffected
        with pytest.raises(TimeoutError):
            await b.wait_connected(1.5)
    assert "certificate verify failed" in broker.log_tail(50)


async def settle(predicate, timeout: float = 30.0) -> None:
    """Wait until ``predicate()`` holds; the caller's assertion then says what did not."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


async def test_revocation_travels_as_a_retained_crl(site):
    ca, broker = site
    fog_m, a_m = Metrics(), Metrics()
    fog_cfg = config(ca, broker, "fog-1", "fog", data_dir=ca.path)
    fog = Session.from_config(fog_cfg, metrics=fog_m)
    a_cfg = config(ca, broker, "dev-a", "device")
    a = Session.from_config(a_cfg, metrics=a_m)
    b = Session.from_config(config(ca, broker, "dev-b", "device"))
    own_crl = fog_cfg.path(fog_cfg.security.crl_dir) / "fog-1.crl"
    async with fog, a, b, fog.subscribe(b.topic("msg", "fog-1")) as inbox:
        await connected(fog, a, b)
        services = [asyncio.create_task(crl_service(fog, fog.verifier.registry, own_crl, poll_s=0.05)),
                    asyncio.create_task(crl_service(a, a.verifier.registry))]
        try:
            await b.publish("msg", Ping(nonce=b"before"), to="fog-1")
            assert (await inbox.get(timeout=5)).message.nonce == b"before"
            ca.revoke("dev-b", reason="stolen")  # what `edgefl pki revoke` does on the fog host
            # the fog republishes its CRL; dev-a learns it from the retained topic
            await settle(lambda: a.verifier.registry.crl("fog-1").number == 2)
            with pytest.raises(IdentityRejected, match="revoked"):
                a.verifier.registry.key_for("dev-b", ca.registry().crl("fog-1").this_update + 1)
            await b.publish("msg", Ping(nonce=b"after"), to="fog-1")
            await b.publish("msg", Ping(nonce=b"after"), to="fog-1")
            await settle(lambda: fog_m.get("envelope_rejected", reason="revoked") >= 2)
            assert fog_m.get("envelope_rejected", reason="revoked") == 2
            assert inbox.queue.empty()
        finally:
            for t in services:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    # dev-a kept what it learned: its data directory holds the new CRL
    assert (a_cfg.path(a_cfg.security.crl_dir) / "fog-1.crl").read_bytes() == own_crl.read_bytes()
    # a late joiner gets the retained CRL on subscribing
    late_cfg = config(ca, broker, "dev-a", "device", data_dir=a_cfg.path("{data_dir}"))
    (late_cfg.path(late_cfg.security.crl_dir) / "fog-1.crl").unlink()
    late_m = Metrics()
    late = Session.from_config(late_cfg, metrics=late_m, client_id="dev-a-late")
    async with late:
        await connected(late)
        task = asyncio.create_task(crl_service(late, late.verifier.registry))
        await settle(lambda: late.verifier.registry.crl("fog-1") is not None)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert late.verifier.registry.crl("fog-1").number == 2


async def test_what_another_sites_fog_certifies_cannot_log_in(tmp_path):
    """The fogs' X.509 CAs were intermediates under the root: certificates fog-1's CA minted for dev-2, fog-2
    or cloud-1 were accepted by fog-2's broker (which then let them overwrite retained status, model and task
    messages and read dev-2's responses). A fog's broker now trusts the root's CA and its own only."""
    import ssl

    from edgefl.crypto import tls
    from edgefl.transport.cli import tls_files

    need_mosquitto()
    ca = CaDirectory(tmp_path / "pki")
    ca.init("root", "cloud")
    ca.issue("fog-1", "fog", site="s1", hosts=("127.0.0.1",))
    ca.issue("fog-2", "fog", site="s2", hosts=("127.0.0.1",))
    ca.issue("dev-2", "device", issuer="fog-2")
    fog2_cfg = load_config(overrides=["node.id=fog-2", f"node.data_dir={ca.path}"], env={})
    files = tls_files(fog2_cfg, "fog")
    fog1_ca, fog1_key = tls.load_chain(ca.tls_path("fog-1-ca", "pem"))[0], tls.load_key(ca.tls_path("fog-1-ca", "key"))
    fog2_ca, fog2_key = tls.load_chain(ca.tls_path("fog-2-ca", "pem"))[0], tls.load_key(ca.tls_path("fog-2-ca", "key"))
    forged = {}
    for by, name, role, site in [("fog-1", "dev-2", "device", "s1"), ("fog-1", "dev-2", "device", "s2"),
                                 ("fog-1", "fog-2", "fog", "s2"), ("fog-1", "cloud-1", "cloud", "cloud"),
                                 # fog-2's own CA is trusted here, but only for devices of its site
                                 ("fog-2", "fog-2", "fog", "s2"), ("fog-2", "dev-9", "device", "s1")]:
        issuer, issuer_key = (fog1_ca, fog1_key) if by == "fog-1" else (fog2_ca, fog2_key)
        key = tls.new_key()
        leaf = tls.certificate(subject=name, role=role, site=site, public_key=key.public_key(), serial=len(forged) + 7,
                               not_before=int(time.time()) - 60, not_after=int(time.time()) + 3600, issuer=issuer,
                               issuer_key=issuer_key)
        forged[f"{name}@{site} by {by}"] = (tls.save_chain([leaf, issuer], tmp_path / f"{by}-{name}-{site}.pem"),
                                            tls.save_key(key, tmp_path / f"{by}-{name}-{site}.key"))
    with LocalMosquitto(tmp_path / "broker", auth="tls", readers=["fog-2"], site="s2",
                        tls={k: files[k] for k in ("cafile", "certfile", "keyfile", "crlfile")}) as broker:

        async def handshake(cert, key) -> bool:
            ctx = ssl.create_default_context(cafile=str(ca.tls_path("ca", "pem")))
            ctx.load_cert_chain(str(cert), str(key))
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", broker.port, ssl=ctx)
                writer.write(bytes.fromhex("101000044d5154540402003c0004") + b"test")  # MQTT CONNECT
                await writer.drain()
                ok = (await asyncio.wait_for(reader.read(4), 3))[:1] == b"\x20"  # CONNACK
                writer.close()
                return ok
            except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                return False

        assert await handshake(ca.tls_path("dev-2", "pem"), ca.tls_path("dev-2", "key"))
        for who, (cert, key) in forged.items():
            assert not await handshake(cert, key), who
    assert "fog-1" not in files["cafile"] and "fog-2-trust" in files["cafile"]


async def test_a_revoked_device_loses_its_open_connection(site):
    """`pki revoke` on the fog host and a broker reload: the fog's node closes the device's open connection
    (taking over its client id), and the device cannot connect again."""
    ca, broker = site
    fog_cfg = config(ca, broker, "fog-1", "fog", data_dir=ca.path)
    fog = Session.from_config(fog_cfg)
    b = Session.from_config(config(ca, broker, "dev-b", "device"))
    a = Session.from_config(config(ca, broker, "dev-a", "device"))
    own_crl = fog_cfg.path(fog_cfg.security.crl_dir) / "fog-1.crl"
    async with fog, a, b:
        await connected(fog, a, b)
        service = asyncio.create_task(crl_service(fog, fog.verifier.registry, own_crl, poll_s=0.05))
        try:
            await asyncio.sleep(0.3)
            assert b.connected.is_set()
            ca.revoke("dev-b", reason="stolen")
            broker.reload()
            for _ in range(200):
                if not b.connected.is_set() and b.reconnects:
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                await b.wait_connected(1.5)
            assert a.connected.is_set()  # the others are unaffected
        finally:
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service
    assert fog.metrics.get("mqtt_client_closed") >= 1
