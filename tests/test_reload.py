"""Learned at run time: a device the fog refused for now retries with backoff, and a running fog takes a changed
device list and new nodes' keys or certificates on SIGHUP (`systemctl reload`), without a restart."""

import asyncio
import contextlib
import os
import signal
import time

import pytest

from edgefl.crypto.ca import CaDirectory
from edgefl.crypto.envelope import IdentityRejected
from edgefl.crypto.keys import SigningKey, save_public
from edgefl.nodes.node import running
from edgefl.nodes.site import LocalSite
from edgefl.runtime.config import load_config
from edgefl.runtime.metrics import METRICS
from tests.conftest import need_mosquitto


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_refused_device_retries_until_the_fog_reloads_its_device_list_and_keys(tmp_path):
    need_mosquitto()
    from edgefl.transport.mosquitto import LocalMosquitto

    with LocalMosquitto(tmp_path / "broker") as broker:
        site = LocalSite(tmp_path / "site", broker.port, {"fog-1": ["dev-1", "dev-2"]},
                         settings=["fl.rounds=1", "fl.hidden=[20]", "fl.items=32", "ml.batch_size=16",
                                   "ml.local_epochs=1", "fl.warm_start=false", "fl.round_timeout_s=600"])
        # the fog runs from a profile file, as `edgefl --profile … run` does: it lists only dev-1
        profile = tmp_path / "fog-1.toml"
        profile.write_text('[fl]\ndevices = ["dev-1"]\n')
        sets = [s for s in site.overrides["fog-1"] if not s.startswith("fl.devices=")]
        fog_cfg = load_config(profile, overrides=sets, env={})
        deferred0 = METRICS.get("fl_batch_deferred", reason="unknown_device")
        rejected0 = METRICS.get("fl_batch_rejected", reason="unknown_device")
        reloads0 = METRICS.get("reload")
        async with contextlib.AsyncExitStack() as stack:
            await site.start("cloud-1")
            stack.push_async_callback(site.stop, "cloud-1")
            fog, _ = await stack.enter_async_context(running(fog_cfg, handle_signals=True))
            await site.start("dev-2")
            stack.push_async_callback(site.stop, "dev-2")
            # refused as unknown: dev-2 keeps trying, with backoff, while the round is open
            await until(lambda: METRICS.get("fl_batch_deferred", reason="unknown_device") >= deferred0 + 3, 60,
                        "dev-2 to be refused three times")
            assert METRICS.get("fl_batch_rejected", reason="unknown_device") >= rejected0 + 3
            assert not fog.doc["batches"].get("0", {})
            # the operator adds dev-2 to the fog's profile and a new node's key to its trust directory
            newcomer = SigningKey()
            save_public(newcomer.public_key, tmp_path / "site/trust/dev-9.pub")
            for registry in (fog.session.verifier.registry, fog.ledger.chain.registry):
                with pytest.raises(IdentityRejected):
                    registry.key_for("dev-9", time.time())
            profile.write_text('[fl]\ndevices = ["dev-2"]\n')
            os.kill(os.getpid(), signal.SIGHUP)
            await until(lambda: METRICS.get("reload") > reloads0, 10, "the fog to reload")
            assert fog.cfg.fl.devices == ["dev-2"]
            for registry in (fog.session.verifier.registry, fog.ledger.chain.registry):
                assert registry.key_for("dev-9", time.time()) == newcomer.public_key
            # dev-2's next attempt is taken
            await until(lambda: "dev-2" in fog.doc["batches"].get("0", {}), 60, "the fog to take dev-2's batch")


async def test_a_reload_with_a_broken_profile_changes_nothing(tmp_path):
    need_mosquitto()
    from edgefl.nodes.node import reload
    from edgefl.transport.mosquitto import LocalMosquitto

    with LocalMosquitto(tmp_path / "broker") as broker:
        site = LocalSite(tmp_path / "site", broker.port, {"fog-1": ["dev-1"]})
        profile = tmp_path / "fog-1.toml"
        profile.write_text('[fl]\ndevices = ["dev-1"]\n')
        sets = [s for s in site.overrides["fog-1"] if not s.startswith("fl.devices=")]
        cfg = load_config(profile, overrides=sets, env={})
        async with running(cfg, handle_signals=False) as (fog, _):
            failed = METRICS.get("reload_failed")
            profile.write_text('[fl]\ndevices = "dev-1, dev-2"\n')  # not a list
            reload(cfg, fog.session, fog)
            assert METRICS.get("reload_failed") == failed + 1 and fog.cfg.fl.devices == ["dev-1"]


def test_the_pki_registry_learns_certificates_issued_after_it_started(tmp_path):
    ca = CaDirectory(tmp_path / "pki")
    ca.init("root", "site-1")
    ca.issue("fog-1", "fog")
    ca.issue("dev-1", "device", issuer="fog-1")
    registry = ca.registry()
    registry.key_for("dev-1", time.time())
    with pytest.raises(IdentityRejected) as e:
        registry.key_for("dev-2", time.time())
    assert e.value.reason == "unknown_sender"
    ca.issue("dev-2", "device", issuer="fog-1")  # `edgefl site init` run again, the fog still running
    assert registry.reload() == ["dev-2"]
    assert registry.key_for("dev-2", time.time()) == SigningKey.load(ca.key_path("dev-2")).public_key
    assert registry.reload() == []  # nothing new: nothing learned
    ca.revoke("dev-2")  # and the revocation its CA wrote since
    registry.reload()
    with pytest.raises(IdentityRejected) as e:
        registry.key_for("dev-2", time.time())
    assert e.value.reason == "revoked"
