"""On-device training (``fl.train_at = "device"``): the device-side clip, the model-poisoning attacks applied on
the device only when on, the audit of a device's update, and a networked round over a real Mosquitto with a
sign-flipping device under a robust aggregator."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from edgefl import codec
from edgefl.fl import attacks
from edgefl.fl.ondevice import (
    PEERS,
    audit_update,
    check_update,
    clip_update,
    device_steps,
    device_update,
    peer_views,
    platform_id,
    step_norm,
    training_input,
)
from edgefl.fl.protocol import (
    Aggregation,
    DeviceUpdate,
    Extractor,
    ProtocolError,
    Task,
    UpdateAck,
    UpdateOffer,
    decode_batch,
    run_id,
)
from edgefl.fl.reputation import INITIAL, Offence, chain_records, fold
from edgefl.fl.round import check_aggregation, steps_per_round
from edgefl.ledger.audit import Tracker, batch_bytes
from edgefl.ledger.blobs import BlobStore, cid_of
from edgefl.ledger.records import TrainingStep
from edgefl.ml import trainer as T
from edgefl.ml.device import FeatureBatch
from edgefl.ml.export import ModelRelease
from edgefl.runtime.metrics import METRICS
from tests.ledger_helpers import KEYS, new_chain, sealer_for, sub_spec
from tests.test_fl_round import SETTINGS, chain_of, final_model, records


def models(seed=0, layers=(6, 4, 3)):
    rng = np.random.default_rng(seed)
    origin = T.init_model(list(layers), seed=seed)
    moved = origin.with_params([p + rng.normal(0, 1, p.shape).astype(np.float32) for p in origin.params])
    return origin, moved


def test_the_device_clips_its_step_to_the_norm_and_leaves_a_shorter_one_as_it_is():
    origin, moved = models()
    norm = step_norm(moved, origin)
    clipped = clip_update(moved, origin, norm / 4)
    assert step_norm(clipped, origin) == pytest.approx(norm / 4, rel=1e-6)
    delta = [c - o for c, o in zip(clipped.params, origin.params)]  # the same direction
    full = [m - o for m, o in zip(moved.params, origin.params)]
    assert all(np.allclose(d, f / 4, atol=1e-5) for d, f in zip(delta, full))
    assert clip_update(moved, origin, 2 * norm).to_bytes() == moved.to_bytes()  # within the norm: untouched
    assert clip_update(moved, origin, 0).to_bytes() == moved.to_bytes()  # 0: no clip
    assert clip_update(moved, origin, norm / 4).to_bytes() == clipped.to_bytes()  # deterministic
    rec = DeviceUpdate(task="t", round=0, device="dev-1", origin=b"\0" * 32, releases=[b"\1" * 32], examples=8,
                       steps=2, state=b"\2" * 32, model=cid_of(clipped.to_bytes()), clip=norm / 4)
    assert check_update(rec, clipped.to_bytes(), origin).params[0].shape == (6, 4)
    for data, reason in ((moved.to_bytes(), "unclipped"), (b"\x00junk", "bad_update"),
                         (T.init_model([6, 5, 3]).to_bytes(), "shape"),
                         (origin.with_params([p * np.float32("nan") for p in origin.params]).to_bytes(),
                          "not_finite")):
        with pytest.raises(ProtocolError) as err:
            check_update(rec, data, origin)
        assert err.value.reason == reason


def trained(tmp_path, seed=0):
    config = T.TrainConfig(layers=[12, 8, 10], optimizer="adam", lr=0.05, batch_size=8, seed=seed)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((32, 12)).astype(np.float32), rng.integers(0, 10, 32)
    origin = T.init_model(config.layers, seed=1)
    state = T.Trainer(config).fit(origin, x, y, epochs=2)
    return config, x, y, origin, state


@pytest.mark.parametrize("name", ["signflip", "scaling", "gaussian", "alie", "fang"])
def test_each_model_poisoning_attack_changes_the_update_only_when_on(tmp_path, name):
    config, x, y, origin, state = trained(tmp_path)
    o, s = origin.to_bytes(), state.to_bytes()
    honest = device_update(s, o, 0.0)
    assert honest == state.model.to_bytes()  # no attack, no clip: the trained model
    for off in (None, attacks.make("none"), attacks.make("labelflip")):  # off, or a data attack: nothing changes
        assert device_update(s, o, 0.0, attack=off) == honest
    attack = attacks.make(name)
    peers = peer_views(origin, x, y, config, 2) if attack.needs_peers else ()
    assert len(peers) == (PEERS if attack.needs_peers else 0)
    poisoned = T.DenseModel.from_bytes(device_update(s, o, 0.0, attack=attack, peers=peers, seed=1))
    assert poisoned.layers == state.model.layers and poisoned.to_bytes() != honest
    expected = attack.update(state.model.params, list(peers) or [state.model.params], origin=origin.params, seed=1)
    assert all(np.array_equal(p, e) for p, e in zip(poisoned.params, expected))
    if name == "signflip":  # the step reversed
        assert all(np.allclose(p - q, q - h, atol=1e-5) for p, q, h in
                   zip(poisoned.params, origin.params, state.model.params))
    # the clip bounds every attack like any update
    c = step_norm(state.model, origin) / 2
    bounded = T.DenseModel.from_bytes(device_update(s, o, c, attack=attack, peers=peers, seed=1))
    assert step_norm(bounded, origin) <= c * (1 + 1e-6)


def test_peers_are_models_trained_on_disjoint_shards_of_the_devices_own_data(tmp_path):
    config, x, y, origin, _ = trained(tmp_path)
    peers = peer_views(origin, x, y, config, 1, k=4, seed=3)
    again = peer_views(origin, x, y, config, 1, k=4, seed=3)
    assert len(peers) == 4 and all(np.array_equal(a, b) for p, q in zip(peers, again) for a, b in zip(p, q))
    assert not any(np.array_equal(peers[0][0], p[0]) for p in peers[1:])  # each shard trains another model


def recorded_round(tmp_path, *, forge_step: int | None = None, attack=None):
    """A device's round as ``LocalTraining`` runs it, on one chain: its signed steps and its DeviceUpdate;
    ``forge_step``: that step's recorded output is not what T computed (the model negated)."""
    chain, blobs = new_chain(tmp_path, sub_spec("fog-a")), BlobStore(tmp_path / "blobs")
    config = T.TrainConfig(layers=[3920, 8, 10], optimizer="adam", lr=0.01, batch_size=8, seed=2)
    rng = np.random.default_rng(5)
    batch = FeatureBatch(task="t", round=0, model=b"\7" * 32, ids=np.arange(20),
                         labels=rng.integers(0, 10, 20).astype(np.uint8),
                         features=rng.standard_normal((20, 3920)).astype(np.float32), grid=0.0, epsilon=1.0,
                         unit="feature")
    release = blobs.put(codec.encode_message(batch))
    origin = T.init_model(config.layers, seed=1).to_bytes()
    extractor = Extractor(ModelRelease(name="x", version=1, format="onnx", hash=b"\7" * 32, size=1), b"\7" * 32)
    task = Task(task="t", rounds=1, epsilon=1.0, unit="feature", noise="discrete_laplace", config=config, epochs=2,
                trainer="dense", extractors=[extractor], model=cid_of(origin), train_at="device", clip_norm=0.5)
    x, y = training_input([batch], task.average_releases)
    tracker = Tracker(blobs, task=run_id("t", 0), device="dev-1", trainer_name="dense", config=config.to_bytes(),
                      signer="dev-1", key=KEYS["dev-1"])
    total = steps_per_round(len(y), config.batch_size, task.epochs)
    state = T.init_state(T.DenseModel.from_bytes(origin), config).to_bytes()
    for i in range(total):
        rows = T.batch_indices(len(y), config.batch_size, config.seed, i)
        data, forged = batch_bytes(x[rows], y[rows]), None
        if i + 1 == forge_step:
            s = T.TrainState.from_bytes(tracker.fn(state, origin, data, tracker.config))
            forged = dataclasses.replace(s, model=s.model.with_params([-p for p in s.model.params])).to_bytes()
        state, tx = tracker.step(i + 1, state, origin, data, result=forged)
        chain.submit(tx)
    chain.mine(sealer_for("fog-a"))
    update = device_update(state, origin, task.clip_norm, attack=attack, seed=0)
    rec = DeviceUpdate(task="t", round=0, device="dev-1", origin=cid_of(origin), releases=[release], examples=len(y),
                       steps=total, state=blobs.put(state), model=blobs.put(update), clip=task.clip_norm,
                       platform=platform_id())

    async def blob(cid):
        return blobs.get(cid)

    return rec, device_steps(chain, "dev-1", run_id("t", 0)), blob, task


async def test_an_honest_update_audits_and_a_poisoned_or_forged_one_does_not(tmp_path):
    rec, steps, blob, task = recorded_round(tmp_path / "honest")
    report = await audit_update(rec, steps, blob, task=task, samples=None)
    assert report.ok, report.failed()
    assert [f.what for f in report.findings] == ["steps", "terms", "chain", "data", "update",
                                                 *(f"step {i}" for i in range(1, rec.steps + 1))]
    # the update is not the clip of its recorded training: a sign flipper that recorded honest steps
    rec2, steps2, blob2, task2 = recorded_round(tmp_path / "flip", attack=attacks.make("signflip"))
    report = await audit_update(rec2, steps2, blob2, task=task2, samples=0)
    assert not report.ok and [f.what for f in report.findings if not f.ok] == ["update"]
    # a recorded step T did not compute (so that the update is the clip of the last one): its replay fails
    rec3, steps3, blob3, task3 = recorded_round(tmp_path / "forged", forge_step=3)
    report = await audit_update(rec3, steps3, blob3, task=task3, samples=None)
    assert [f.what for f in report.findings if not f.ok] == ["step 3"], report.findings
    assert "re-running T gives a different" in report.failed()
    # the update says it trained on other data, or another task's steps
    report = await audit_update(dataclasses.replace(rec, examples=rec.examples - 1), steps, blob, task=task)
    assert [f.what for f in report.findings if not f.ok] == ["steps"]
    other = dataclasses.replace(task, config=dataclasses.replace(task.config, lr=0.02))
    report = await audit_update(rec, steps, blob, task=other, samples=0)
    assert [f.what for f in report.findings if not f.ok] == ["terms"]  # the steps name another configuration
    # trained on another platform: the replay is left to an auditor there (its last bits may differ), the rest holds
    report = await audit_update(dataclasses.replace(rec3, platform="machine=aarch64"), steps3, blob3, task=task3,
                                samples=None)
    assert report.ok and report.findings[-1].what == "replay" and "machine=aarch64" in report.findings[-1].detail


ON_DEVICE = ["fl.train_at=device", "ml.prox_mu=0", "fl.clip_norm=5.0",  # fl.warm_start is fog-only
             "ml.aggregator=multikrum", 'ml.aggregator_options=["f=1"]']


@pytest.mark.broker
async def test_two_rounds_trained_on_device_with_a_sign_flipper_under_multikrum(broker, tmp_path):
    """Every device trains and records its own steps and update; the fog aggregates the updates: accuracy rises,
    Multi-Krum leaves the sign flipper out and its reputation falls, its update fails the audit (recorded as an
    offence), the honest ones pass; every aggregation replays and every chain verifies."""
    from edgefl.nodes.site import LocalSite

    devices = [f"dev-{i}" for i in range(1, 6)]
    site = LocalSite(tmp_path, broker.port, {"fog-a": devices}, clients=("auditor",), settings=SETTINGS,
                     per_node={"cloud-1": ["fl.items=200", *ON_DEVICE], "dev-3": ["fl.attack=signflip"]})
    async with site:
        await final_model(site, rounds=2, timeout=120)
        fog = site.nodes["fog-a"]
        await fog.desk.wait()
        acc = site.nodes["cloud-1"].accuracy
        main, sub = chain_of(site, "cloud-1"), chain_of(site, "fog-a")
        [(_, task)] = records(main, Task)
        assert (task.train_at, task.clip_norm, task.warm_start) == ("device", 5.0, False)
        # every step of every device recorded, signed by the device itself; one signed update per device and round
        for r in (0, 1):
            ups = {rec.signer: u for rec, u in records(sub, DeviceUpdate) if u.round == r}
            assert sorted(ups) == devices and all(u.device == d for d, u in ups.items())
            for d, u in ups.items():
                assert sorted(device_steps(sub, d, run_id("digits", r))) == list(range(1, u.steps + 1))
        assert not [s for rec, s in records(sub, TrainingStep) if rec.signer != s.device]
        for _, u in records(sub, DeviceUpdate):  # every update within the norm (honest ones here are about 6.5)
            assert step_norm(T.DenseModel.from_bytes(fog.blobs.get(u.model)),
                             T.DenseModel.from_bytes(fog.blobs.get(u.origin))) <= 5.0 * (1 + 1e-6)
        fog_aggs = [a for _, a in records(sub, Aggregation)]
        assert [(a.round, a.aggregator) for a in fog_aggs] == [(0, "multikrum"), (1, "multikrum")]
        for a in fog_aggs:  # the inputs are the devices' own updates, and the sign flipper is not kept
            assert a.models == [u.model for _, u in sorted((rec.signer, u) for rec, u in records(sub, DeviceUpdate)
                                                           if u.round == a.round)]
            assert a.senders.index("dev-3") not in a.kept and check_aggregation(a, fog.blobs.get)
        assert acc[0] < acc[1] < acc[2] and acc[2] > 0.5, acc
        honest = [d for d in devices if d != "dev-3"]
        for st in (fold(chain_records(main)), fold(chain_records(sub))):
            assert st.of("dev-3") < INITIAL < min(st.of(d) for d in honest), st.reputation
        # the fog's audits: the flipper's update is not the clip of its recorded training, recorded as an offence
        offences = [(o.account, o.kind, o.round) for _, o in records(sub, Offence)]
        assert sorted(offences) == [("dev-3", "failed_audit", 0), ("dev-3", "failed_audit", 1)], offences
        assert METRICS.get("fl_update_audit", result="ok") >= 8
        main.close()
        sub.close()
    for node in ("cloud-1", "fog-a"):
        with chain_of(site, node) as chain:
            assert chain.verify() == chain.tip.height + 1


@pytest.mark.broker
async def test_the_demo_trains_on_device_and_shows_the_audits(broker, tmp_path):
    from edgefl.nodes.demo import demo

    with pytest.raises(ValueError, match="needs --train-at device"):  # a device sending features has no model
        await demo(port=broker.port, out=lambda line: None, attack="signflip", malicious=0.25)
    lines = []
    result = await demo(port=broker.port, out=lines.append, devices=4, rounds=2, aggregator="median",
                        attack="signflip", malicious=0.25, seed=1, report=tmp_path / "report", train_at="device")
    text = "\n".join(lines)
    [attacker] = result["attackers"]
    assert result["options"]["train_at"] == "device" and result["audit_ok"]
    assert result["update_audits"] == {attacker: [0, 1]}, text  # its update is not the clip of its training
    assert f"failed, recorded as offences: {attacker} (rounds 0, 1)" in text
    assert "its blobs from fog-a and dev-a1, which trained it," in text
    for r in (0, 1):
        assert text.count(f"· round {r}, ") == 3, text  # batches, the devices' updates, the fogs' updates
    assert result["accuracy"][2] > result["accuracy"][0]
    assert "trained at the device" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.broker
async def test_offers_that_do_not_fit_are_refused_counted_and_a_failed_audit_recorded(broker, tmp_path):
    """dev-3 (a bare session) releases dev-2's batch as its own, then offers updates that do not fit, each
    refused with its reason and counted, until one that passes the fog's cheap checks — whose audit fails."""
    from edgefl.ledger import blobs as blobstore
    from edgefl.ledger.protocol import Submit
    from edgefl.ledger.records import DataCollected
    from edgefl.ledger.tx import record_tx
    from edgefl.ml.privacy import PrivacySpend
    from edgefl.nodes.site import LocalSite
    from edgefl.transport.session import RemoteError
    from tests.test_fl_round import until

    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-1", "dev-2", "dev-3"]}, clients=("auditor",),
                     settings=[*SETTINGS, "fl.round_timeout_s=300"],
                     per_node={"cloud-1": ["fl.items=200", "fl.rounds=1", *ON_DEVICE, "ml.aggregator=fedavg",
                                           "ml.aggregator_options=[]"]})
    for node in ("cloud-1", "fog-a", "dev-1", "dev-2"):
        await site.start(node)
    try:
        fog = site.nodes["fog-a"]
        await until(lambda: _updated(fog, "dev-2"), timeout=60)
        with chain_of(site, "fog-a") as sub:
            [(_, u2)] = [(r, u) for r, u in records(sub, DeviceUpdate) if u.device == "dev-2"]
            [spend] = [s for _, s in records(sub, PrivacySpend) if s.device == "dev-2"]
            last = device_steps(sub, "dev-2", run_id("digits", 0))[u2.steps]
            offer2 = sub.store.tx(fog.doc["updates"]["0"]["dev-2"]["tx"])[2]
        key3, dev3, store = site.key("dev-3"), site.session("dev-3"), BlobStore(tmp_path / "dev-3-blobs")
        data = fog.blobs.get(u2.releases[-1])
        async with dev3:
            blobstore.serve(dev3, store)

            async def submit(msg, **kw):
                await dev3.request("fog-a", Submit(record_tx(msg, "dev-3", key3, device="dev-3", **kw)), timeout=20)

            async def offered(tx, reason=None):
                before = METRICS.get("fl_device_update_rejected", reason=reason)
                if reason is None:
                    return (await dev3.request("fog-a", UpdateOffer(tx), timeout=20)).message
                with pytest.raises(RemoteError) as err:
                    await dev3.request("fog-a", UpdateOffer(tx), timeout=20)
                assert err.value.reason == reason, err.value
                assert METRICS.get("fl_device_update_rejected", reason=reason) == before + 1

            def signed(**changes):
                u = dataclasses.replace(u2, device="dev-3", **changes)
                return record_tx(u, "dev-3", key3, device="dev-3", model=u.model)

            await offered(b"\x00not a transaction", "bad_update")
            await offered(offer2, "bad_update")  # dev-2's own record, offered by dev-3
            await offered(signed(), "unknown_release")  # dev-3 sent no batch here
            await submit(dataclasses.replace(spend, device="dev-3"))  # dev-2's release, now as dev-3's
            await submit(DataCollected.of("dev-3", u2.releases[-1], len(data), spend.items, key3),
                         model=u2.releases[-1], refs=[u2.releases[-1]])
            assert (await dev3.request("fog-a", decode_batch(data), timeout=20)).message.batch == u2.releases[-1]
            await offered(signed(steps=u2.steps + 1), "bad_update")  # more steps than the batch makes
            await offered(signed(), "unrecorded_training")  # the last step is dev-2's record, not dev-3's
            await submit(dataclasses.replace(last, device="dev-3"), model=last.model_out)
            await offered(signed(), "internal")  # the update is not on dev-3 to fetch: try again
            origin = T.DenseModel.from_bytes(fog.blobs.get(u2.origin))
            far = origin.with_params([p + np.float32(1.0) for p in origin.params])  # a step far beyond the clip
            await offered(signed(model=store.put(far.to_bytes())), "unclipped")
            store.put(fog.blobs.get(u2.model))
            ack = await offered(signed())  # dev-2's update, as dev-3's: the cheap checks pass
            assert isinstance(ack, UpdateAck) and not ack.duplicate and ack.model == u2.model
            assert (await offered(signed())).duplicate
        await final_model(site, rounds=1, timeout=60)
        await fog.desk.wait()
        with chain_of(site, "fog-a") as sub:
            offences = [(r.signer, o.account, o.kind, o.round) for r, o in records(sub, Offence)]
            assert offences == [("fog-a", "dev-3", "failed_audit", 0)]  # it recorded one step of its own
            assert [a.senders for _, a in records(sub, Aggregation)] == [["dev-1", "dev-2", "dev-3"]]
    finally:
        for node in list(site.nodes):
            await site.stop(node)


async def _updated(fog, device, round="0"):
    return device in fog.doc.get("updates", {}).get(round, {})


@pytest.mark.broker
async def test_a_device_restarted_mid_training_resumes_after_its_last_confirmed_step(broker, tmp_path):
    """dev-1 trained and offered round 0; its state is then rewound to 'two steps confirmed, nothing offered'
    (a crash mid-training) and it restarts: it trains on from step 3 to the same state and update, the fog
    answers its offer as a duplicate, and the round completes once dev-2 comes."""
    from edgefl.nodes.site import LocalSite
    from edgefl.runtime.state import StateFile
    from tests.test_fl_round import until

    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-1", "dev-2"]}, clients=("auditor",),
                     settings=[*SETTINGS, "fl.round_timeout_s=300"],
                     per_node={"cloud-1": ["fl.items=200", "fl.rounds=1", *ON_DEVICE, "ml.aggregator=fedavg",
                                           "ml.aggregator_options=[]"]})
    for node in ("cloud-1", "fog-a", "dev-1"):
        await site.start(node)
    try:
        fog = site.nodes["fog-a"]
        await until(lambda: _updated(fog, "dev-1"), timeout=60)
        await until(lambda: _offered(site.nodes["dev-1"]), timeout=30)
        await site.stop("dev-1")
        state = StateFile(site.cfgs["dev-1"].path(site.cfgs["dev-1"].fl.state_file))
        doc = state.load(None)
        entry = doc["rounds"]["0"]
        first = entry.pop("offer")
        total = len(entry["steps"])
        entry["steps"] = {k: v for k, v in entry["steps"].items() if int(k) <= 2}
        del entry["offered"]
        state.save(doc)
        before = METRICS.get("fl_device_update_duplicate")
        await site.start("dev-1")
        await until(lambda: _offered(site.nodes["dev-1"]), timeout=60)
        again = site.nodes["dev-1"].sent["rounds"]["0"]
        assert sorted(map(int, again["steps"])) == list(range(1, total + 1))
        from edgefl.ledger.tx import decode_tx

        old, new = decode_tx(first).body.unwrap(), decode_tx(again["offer"]).body.unwrap()
        assert (new.state, new.model, new.steps) == (old.state, old.model, old.steps)  # trained to the same bytes
        assert METRICS.get("fl_device_update_duplicate") == before + 1  # the fog had it: counted once
        await site.start("dev-2")
        await final_model(site, rounds=1, timeout=60)
        await fog.desk.wait()
        with chain_of(site, "fog-a") as sub:
            assert [u.device for _, u in records(sub, DeviceUpdate)].count("dev-1") == 1
            assert sorted(device_steps(sub, "dev-1", run_id("digits", 0))) == list(range(1, total + 1))
            recorded = Counter(s.step for rec, s in records(sub, TrainingStep) if rec.signer == "dev-1")
            # steps 1 and 2 were not trained again; 3 … were (the rewound state forgot they were recorded): the first
            # record of each counts, the second is the same step again
            assert recorded == {i: 1 if i <= 2 else 2 for i in range(1, total + 1)}, recorded
            assert not records(sub, Offence)  # both updates pass the fog's audit
    finally:
        for node in list(site.nodes):
            await site.stop(node)


async def _offered(dev, round="0"):
    return bool(dev.sent["rounds"].get(round, {}).get("offered"))
