"""The chaos scenarios' short forms (edgefl.chaos), and the faults they found, one by one.

Each scenario runs as `edgefl chaos NAME --short` would: a site from `edgefl site init` with its mTLS
brokers, every node an `edgefl run` process, faults at points drawn from the seed, then the chains
checked.  ``hosts`` needs root and iproute2 (network namespaces): without them it fails under
EDGEFL_REQUIRE_BROKER=1 (CI runs as root) and is skipped otherwise.
"""

import asyncio
import shutil

import pytest

from edgefl.chaos import SCENARIOS, netns
from edgefl.chaos.scenario import run_scenario
from edgefl.ledger import SubmitAll, decode_tx
from edgefl.ledger.chain import Chain
from edgefl.ledger.service import db_path, registry_for
from edgefl.ml.privacy import PrivacyAccountant, PrivacySpend
from edgefl.nodes.site import LocalSite
from edgefl.transport import Session
from edgefl.transport.mosquitto import BrokerError, BrokerSettings, render
from tests.conftest import _required, need_mosquitto

SETTINGS = ["fl.hidden=[20]", "fl.items=64", "ml.epsilon=10", "ml.epsilon_budget=1000.0", "ml.batch_size=32",
            "ml.lr=0.01", "ml.local_epochs=1", "fl.round_timeout_s=120"]


# --------------------------------------------------------------------------- the bridge


def _bridge(**kw) -> str:
    s = BrokerSettings(role="fog", data_dir="/d", cloud_host="cloud.lan", fog_id="fog-1", site="fog-1", **kw)
    conf = render(s)["mosquitto.conf"]
    return conf[conf.index("connection "):]


def test_the_bridge_carries_what_other_sites_address_to_this_fog():
    """Protocol 1 step 5 and an audit's blob fetch go fog to fog: requests, responses and messages
    addressed to this fog come down from the cloud's broker, besides the cloud's own topics."""
    topics = [line for line in _bridge().splitlines() if line.startswith("topic ")]
    assert topics == ["topic edgefl/v1/fog-1/fog/fog-1/# out 1", "topic edgefl/v1/+/cloud/# in 1",
                      "topic edgefl/v1/+/fog/+/req/fog-1 in 1", "topic edgefl/v1/+/fog/+/resp/fog-1 in 1",
                      "topic edgefl/v1/+/fog/+/msg/fog-1 in 1", "topic edgefl/v1/+/fog/+/pbft-main in 1",
                      "topic edgefl/v1/+/fog/+/pbft-main/fog-1 in 1"]


def test_the_bridge_speaks_what_the_cloud_listener_speaks():
    plain = _bridge(auth="password", remote_password="pw")
    assert "address cloud.lan:1883" in plain and "bridge_cafile" not in plain and "remote_password pw" in plain
    tls = _bridge(auth="tls", cafile="/d/ca.pem", certfile="/d/fog-1.pem", keyfile="/d/fog-1.key", port=8883)
    assert "address cloud.lan:8883" in tls
    assert "bridge_cafile /d/ca.pem\nbridge_certfile /d/fog-1.pem\nbridge_keyfile /d/fog-1.key" in tls
    assert "bridge_tls_version tlsv1.2" in tls
    assert "address cloud.lan:9000" in _bridge(auth="tls", cafile="a", certfile="b", keyfile="c", cloud_port=9000)
    with pytest.raises(BrokerError, match="8883 is the cloud's TLS listener"):
        _bridge(auth="password", cloud_port=8883)  # plain MQTT to the TLS port never connects


# --------------------------------------------------------------------------- found by device-kill


async def test_a_device_dying_after_its_spend_is_recorded_releases_once(broker, tmp_path, monkeypatch):
    """device-kill found it: a device killed after the fog's chain held its privacy spend, but before it
    had kept its batch, drew a new release on restart and recorded a second spend of the same round.
    Here its first submission of the spend succeeds and the device then crashes (the service restarts)."""
    real = Session.request
    crashed = []

    async def crash_after_the_spend(self, target, msg, **kw):
        answer = await real(self, target, msg, **kw)
        if isinstance(msg, SubmitAll) and self.node_id == "dev-1" and not crashed:
            assert any(decode_tx(raw).body.type == PrivacySpend.TYPE for raw in msg.txs)
            crashed.append(answer)
            raise RuntimeError("killed after the spend was recorded")
        return answer

    monkeypatch.setattr(Session, "request", crash_after_the_spend)
    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-1"]}, settings=SETTINGS,
                     per_node={"cloud-1": ["fl.items=128", "fl.rounds=1"]})
    async with site:
        async with asyncio.timeout(120):
            while not site.nodes["dev-1"].sent["rounds"].get("0", {}).get("acked"):
                await asyncio.sleep(0.05)
        cfg = site.cfgs["fog-a"]
        with Chain.open(db_path(cfg), readonly=True, registry=registry_for(cfg)) as sub:
            spends = [r.unwrap() for _, r in sub.records(PrivacySpend.TYPE, device="dev-1")]
        dev = site.cfgs["dev-1"]
        acct = PrivacyAccountant(1000.0, device="dev-1", path=dev.path(dev.ml.privacy_file))
    assert crashed and len(spends) == 1
    assert {acct.spent(i) for i in range(64)} == {10.0}  # charged once, as recorded


# --------------------------------------------------------------------------- the scenarios, short


@pytest.mark.broker
@pytest.mark.timeout(600)  # a whole deployment per scenario: minutes on a loaded machine, ~30 s idle
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_short_form_passes(name, tmp_path):
    need_mosquitto()
    if name == "hosts" and (why := netns.unavailable()):
        if _required("EDGEFL_REQUIRE_BROKER"):
            pytest.fail(f"the hosts scenario needs network namespaces: {why}")
        pytest.skip(why)
    lines = []
    result = run_scenario(name, seed=1, short=True, workdir=tmp_path / name, say=lines.append)
    assert result.passed, "\n".join(lines)
    assert result.faults > 0 and result.tally.lost == 0 and result.tally.duplicates == 0
    if shutil.which("ip"):
        assert netns.ours() == []  # nothing left behind


# --------------------------------------------------------------------------- found by hosts


async def test_a_fog_holds_the_rounds_model_before_its_devices_send(broker, tmp_path):
    """hosts found it: a fog fetched the round's global model from the cloud only once every batch was in,
    so a link lost mid-round stalled its training until the link came back.  It fetches it as the round
    opens now: with no device running at all, the model is already there."""
    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-1"]}, settings=SETTINGS,
                     per_node={"cloud-1": ["fl.items=128", "fl.rounds=1"]})
    for node in ("cloud-1", "fog-a"):
        await site.start(node)
    try:
        fog = site.nodes["fog-a"]
        async with asyncio.timeout(60):
            while fog.view.open_round() is None or not fog.blobs.has(fog.view.model.model):
                await asyncio.sleep(0.05)
        assert not fog.doc["batches"].get("0")  # no batch came: the model was fetched for the round itself
    finally:
        for node in list(site.nodes):
            await site.stop(node)


# --------------------------------------------------------------------------- found by broker-restart


async def test_the_cloud_asks_again_for_a_model_it_could_not_fetch(broker, tmp_path, monkeypatch):
    """broker-restart found it: with the cloud's broker restarted while it fetched fog-1's model, the
    request timed out and the cloud aggregated the round without fog-1's recorded update (lost).  A model
    that cannot be fetched yet is asked for again until the round's deadline now."""
    from edgefl.fl.protocol import Aggregation
    from edgefl.nodes import cloud as cloud_module
    from edgefl.transport.session import RequestTimeout

    real, failed = cloud_module.fetch, []

    async def fetch(session, node, cid, store, **kw):
        if node == "fog-a" and not failed:
            failed.append(cid)
            raise RequestTimeout("no response from fog-a to ledger.blob-get")
        return await real(session, node, cid, store, **kw)

    monkeypatch.setattr(cloud_module, "fetch", fetch)
    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-1"], "fog-b": ["dev-2"]}, settings=SETTINGS,
                     per_node={"cloud-1": ["fl.items=128", "fl.rounds=1"]})
    async with site:
        cfg = site.cfgs["cloud-1"]
        async with asyncio.timeout(120):
            while True:
                with Chain.open(db_path(cfg), readonly=True, registry=registry_for(cfg)) as main:
                    aggs = [r.unwrap() for _, r in main.records(Aggregation.TYPE) if r.signer == "cloud-1"]
                if aggs:
                    break
                await asyncio.sleep(0.1)
    assert failed and aggs[0].senders == ["fog-a", "fog-b"]
