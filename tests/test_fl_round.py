"""The federated round over a real Mosquitto: a cloud, two fogs and their devices as `edgefl run` composes them.

What the chains hold afterwards (the task and its model releases, every
device's privacy spend, every training step, the fogs' and the cloud's
aggregations, anchors and beacons), what the global model learnt, audits of
recorded steps, a device refusing a model that is not the released one, bad
batches refused and counted, and a fog restarting mid-round without losing or
double-counting a batch.
"""

import asyncio
import dataclasses

import numpy as np
import pytest

from edgefl import codec
from edgefl.codec import SchemaError
from edgefl.fl.protocol import Aggregation, Extractor, FogUpdate, GlobalModel, Task, WarmStart, decode_batch, run_id
from edgefl.fl.round import (
    check_aggregation,
    check_warm_start,
    kept_releases,
    release_mean,
    steps_per_round,
    train_device,
    warm_start,
)
from edgefl.ledger.audit import LocalSource, RemoteSource, Tracker, audit
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.chain import Chain
from edgefl.ledger.crosschain import CrossChain
from edgefl.ledger.errors import LedgerError
from edgefl.ledger.records import TrainingStep
from edgefl.ledger.service import db_path, registry_for, server_of
from edgefl.ledger.tx import decode_tx
from edgefl.ml import trainer as T
from edgefl.ml.backends import open_backend
from edgefl.ml.data import synthetic_digits
from edgefl.ml.device import FeatureBatch
from edgefl.ml.export import ModelRelease, export
from edgefl.ml.extractor import ExtractorWeights
from edgefl.ml.privacy import PrivacyAccountant, PrivacySpend, normalise
from edgefl.nodes.site import LocalSite
from edgefl.runtime.metrics import METRICS
from edgefl.transport import topics
from edgefl.transport.session import RemoteError
from tests.ledger_helpers import KEYS, new_chain, sealer_for, sub_spec

pytestmark = pytest.mark.broker

FOGS = {"fog-a": ["dev-a1", "dev-a2"], "fog-b": ["dev-b1"]}
ITEMS, BATCH, EPOCHS, EPS = 64, 32, 2, 20.0
SETTINGS = ["fl.hidden=[20]", f"fl.items={ITEMS}", f"ml.epsilon={EPS}", "ml.epsilon_budget=1000.0",
            f"ml.batch_size={BATCH}", "ml.lr=0.01", f"ml.local_epochs={EPOCHS}", "fl.round_timeout_s=120"]
CLOUD = ["fl.items=200"]


def chain_of(site: LocalSite, node: str) -> Chain:
    cfg = site.cfgs[node]
    return Chain.open(db_path(cfg), readonly=True, registry=registry_for(cfg))


def records(chain: Chain, cls) -> list:
    return [(rec, rec.unwrap()) for _, rec in chain.records(cls.TYPE, limit=10000, newest=False)]


async def until(predicate, timeout=60.0, every=0.05):
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(every)


async def final_model(site: LocalSite, rounds: int, timeout: float = 90.0) -> GlobalModel:
    """Watch the cloud's retained ``model`` topic, as anyone can, until the last round's model is out."""
    watcher = site.session("auditor")
    async with watcher, watcher.subscribe(topics.pattern(node=site.cloud, kind="model")) as sub:
        async with asyncio.timeout(timeout):
            async for rx in sub:
                if rx.message.round == rounds:
                    return rx.message


async def test_two_rounds_over_mqtt_recorded_on_every_chain(broker, tmp_path):
    site = LocalSite(tmp_path, broker.port, FOGS, clients=("auditor",), settings=SETTINGS,
                     per_node={"cloud-1": CLOUD})
    async with site:
        final = await final_model(site, rounds=2)
        cloud = site.nodes["cloud-1"]
        assert final.accuracy == cloud.accuracy[2]

        main = chain_of(site, "cloud-1")
        [(task_rec, task)] = records(main, Task)
        assert (task.task, task.rounds, task.epsilon, task.unit, task.batch_size) == ("digits", 2, EPS, "feature", BATCH)
        assert task.config.layers == [3920, 20, 10] and task.warm_start and task_rec.signer == "cloud-1"
        releases = [m for _, m in records(main, ModelRelease)]
        assert sorted(r.format for r in releases) == ["onnx", "tflite"]
        assert {r.hash for r in releases} == {e.release.hash for e in task.extractors}

        # each fog's update per round, and the cloud's aggregation of them, recomputable from the blobs
        updates = {(u.fog, u.round): (rec, u) for rec, u in records(main, FogUpdate)}
        assert sorted(updates) == [(f, r) for f in FOGS for r in (0, 1)]
        for (fog, _round), (rec, u) in updates.items():
            assert rec.signer == fog and u.examples == ITEMS * len(FOGS[fog]) and u.devices == sorted(FOGS[fog])
        cloud_aggs = sorted((a for rec, a in records(main, Aggregation) if rec.signer == "cloud-1"),
                            key=lambda a: a.round)
        assert [(a.round, a.senders) for a in cloud_aggs] == [(0, ["fog-a", "fog-b"]), (1, ["fog-a", "fog-b"])]
        assert cloud_aggs[-1].model == final.model
        blobs = cloud.blobs
        for a in cloud_aggs:
            assert (a.aggregator, a.options, a.kept) == ("fedavg", [], [0, 1]) and check_aggregation(a, blobs.get)
            assert a.shares == [w / sum(a.weights) for w in a.weights]
        # both sub-chains are anchored in the main chain (Type-II), and record the main chain's beacons (Type-III)
        for fog in FOGS:
            await until(lambda: _anchored(site, fog))
            assert main.store.latest_anchor(fog) is not None

        steps_each = steps_per_round(ITEMS, BATCH, EPOCHS)
        for fog, devices in FOGS.items():
            sub = chain_of(site, fog)
            spends = [s for rec, s in records(sub, PrivacySpend)]
            assert sorted((s.device, s.round) for s in spends) == sorted((d, r) for d in devices for r in (0, 1))
            assert all(s.epsilon == EPS and s.items == ITEMS and s.task == "digits" for s in spends)
            steps = [(rec, s) for rec, s in records(sub, TrainingStep)]
            for d in devices:
                for r in (0, 1):
                    mine = sorted(s.step for rec, s in steps if s.device == d and s.task == run_id("digits", r))
                    assert mine == list(range(1, steps_each + 1)), (d, r, mine)
            assert all(rec.signer == fog for rec, _ in steps)
            fog_aggs = [a for rec, a in records(sub, Aggregation)]
            assert sorted((a.round, a.senders) for a in fog_aggs) == [(0, sorted(devices)), (1, sorted(devices))]
            assert all(check_aggregation(a, site.nodes[fog].blobs.get) for a in fog_aggs)  # from the TrainStates
            # round 1 started from the fog's recorded warm start: recomputed bit for bit from its blobs
            [(ws_rec, ws)] = records(sub, WarmStart)
            fog_blobs = site.nodes[fog].blobs
            assert ws_rec.signer == fog and (ws.task, ws.round, len(ws.batches)) == ("digits", 0, len(devices))
            assert ws.origin == task.model and ws.model != ws.origin
            assert {s.origin for _, s in steps if s.task == run_id("digits", 0)} == {ws.model}
            assert check_warm_start(ws, fog_blobs.get)
            assert {ws.origin, ws.model, *ws.batches} <= sub.store.referenced()  # blob gc keeps its inputs
            # round 2 trains on the mean of each item's two releases: step 1's batch, rebuilt from the blobs
            kept = site.nodes[fog].doc["batches"]
            releases = [decode_batch(fog_blobs.get(kept[str(r)][devices[0]])) for r in (0, 1)]
            first = next(s for _, s in steps if s.device == devices[0] and s.task == run_id("digits", 1)
                         and s.step == 1)
            rows = T.batch_indices(ITEMS, BATCH, task.config.seed, 0)
            d1 = codec.decode(fog_blobs.get(first.data))
            assert d1["x"].tobytes() == release_mean(releases)[rows].tobytes()
            assert not np.array_equal(d1["x"], releases[1].features[rows])
            if len(ws.batches) > 1:  # fitted to fewer batches it is another model
                other = WarmStart(task=ws.task, round=ws.round, origin=ws.origin, batches=ws.batches[1:],
                                  model=ws.model)
                assert not check_warm_start(other, fog_blobs.get)
            assert sub.state.anchors["main"][0] >= 1
            sub.close()
        for devices in FOGS.values():  # each device's persisted accountant: two rounds at ε each
            for d in devices:
                cfg = site.cfgs[d]
                acct = PrivacyAccountant(1000.0, device=d, path=cfg.path(cfg.ml.privacy_file))
                assert acct.spent(0) == acct.spent(ITEMS - 1) == 2 * EPS and acct.spent(ITEMS) == 0

        # the global model learnt: accuracy on held-out generated digits none of the nodes has seen
        onnx = next(e for e in task.extractors if e.release.format == "onnx")
        test = synthetic_digits(300, seed=12345)
        with open_backend("onnxruntime", blobs.get(onnx.cid)) as backend:
            x = normalise(backend.run(test.images), BATCH).astype(np.float32)
        acc = T.accuracy(T.DenseModel.from_bytes(blobs.get(final.model)), x, test.labels)
        assert acc > 0.4, acc  # chance is 0.1; about 0.7 here

        # fog-b audits a step of dev-a1 recorded on fog-a: records through Protocol 1, blobs over MQTT
        auditor = site.session("auditor")
        async with auditor:
            report = await _remote_audit(site, auditor, "dev-a1", run_id("digits", 1), samples=2)
            assert report.ok and len(report.steps) == 2, report
            # one flipped weight in a stored blob (a step's output at fog-a): that blob no longer matches its id
            rec = next(s for _, s in records(chain_of(site, "fog-a"), TrainingStep)
                       if s.device == "dev-a1" and s.task == run_id("digits", 1) and s.step == 2)
            _flip_a_weight(site.nodes["fog-a"].blobs.path(rec.model_out))
            report = await _remote_audit(site, auditor, "dev-a1", run_id("digits", 1), samples=None)
        assert [s.step for s in report.steps if not s.ok] == [2, 3], report  # M_2 is step 2's output, step 3's input
        assert all("does not match its content id" in s.detail for s in report.steps if not s.ok)
        main.close()


def _anchored(site, fog):
    async def check():
        with chain_of(site, "cloud-1") as main:
            return main.store.latest_anchor(fog) is not None
    return check()


async def _remote_audit(site, session, device, task, samples):
    cfg = site.cfgs["fog-b"]
    verdicts = []

    async def ready():  # fog-a's steps must be anchored, and fog-b must have seen that anchor
        local = chain_of(site, "fog-b")
        try:
            cc = CrossChain(session, local, main_node="cloud-1", server_of=lambda c: server_of(cfg, c),
                            registry=registry_for(cfg), timeout=10)
            verdicts.append(await audit(RemoteSource(cc, "fog-a"), device, task=task, samples=samples, seed=1))
            return verdicts[-1].steps and all("PENDING" not in s.detail and "not_anchored" not in s.detail
                                              for s in verdicts[-1].steps)
        except Exception:  # noqa: BLE001 - not anchored yet: Protocol 1 answers PENDING
            return False
        finally:
            local.close()

    await until(ready, timeout=60, every=0.3)
    return verdicts[-1]


def _flip_a_weight(path):
    """One bit of one first-layer weight of the stored training state, in place."""
    data = bytearray(path.read_bytes())
    weights = T.TrainState.from_bytes(bytes(data)).model.params[0]
    at = data.find(weights.tobytes()[:256])  # a typed array's bytes lie in the CBOR as they are
    assert at > 0
    data[at + 4 * 123 + 2] ^= 0x04  # weight 123
    path.write_bytes(bytes(data))


async def test_a_device_refuses_a_model_that_is_not_the_released_one(broker, tmp_path):
    """The fog serves real extractor bytes; the task claims another model's hash for them."""
    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-a1"]}, settings=SETTINGS)
    from edgefl.ledger import blobs as blobstore
    from edgefl.nodes.device import DeviceNode, Refused

    fog_session, dev_session = site.session("fog-a"), site.session("dev-a1")
    store = BlobStore(tmp_path / "served")
    blobstore.serve(fog_session, store)
    good, other = ExtractorWeights.random(seed=1), ExtractorWeights.random(seed=2)
    model = export(good, "onnx")
    served = Extractor(ModelRelease.of(model, good, "onnx"), store.put(model))
    wrong = Extractor(ModelRelease.of(export(other, "onnx"), other, "onnx"), served.cid)
    config = T.TrainConfig(layers=[3920, 16, 10], batch_size=BATCH)

    def task(extractor):
        return Task(task="digits", rounds=1, epsilon=EPS, unit="feature", noise="discrete_laplace", config=config,
                    epochs=1, trainer="dense", extractors=[extractor], model=b"\0" * 32)

    async with fog_session, dev_session:
        device = DeviceNode(site.cfgs["dev-a1"], dev_session)
        before = METRICS.get("fl_model_refused")
        with pytest.raises(Refused) as err:
            await device.extractor(task(wrong))
        assert err.value.reason == "model_hash" and "does not match the published" in str(err.value)
        assert METRICS.get("fl_model_refused") == before + 1
        fx = await device.extractor(task(served))  # the released bytes themselves are accepted
        assert fx.release == served.release and fx.features(synthetic_digits(2).images).shape == (2, 3920)
        with pytest.raises(Refused, match="epsilon"):  # more ε than this device allows per release
            await device.extractor(dataclasses.replace(task(served), epsilon=2 * EPS))
        with pytest.raises(SchemaError, match="at least 20 wide"):  # 16 hidden units cannot carry 2 × 10 logits
            dataclasses.replace(task(served), warm_start=True)
        on_device = dataclasses.replace(task(served), train_at="device")
        with pytest.raises(SchemaError, match="a device trains on its own"):  # fitted to all of a fog's batches
            dataclasses.replace(on_device, config=T.TrainConfig(layers=[3920, 20, 10]), warm_start=True)
        device.cfg.ml.local_training = False  # a board that does not train (a Pi Zero 2 W) refuses such a task
        with pytest.raises(Refused, match="train_at"):
            await device.extractor(on_device)
        device.close()
    cfg = site.cfgs["dev-a1"]
    assert not cfg.path(cfg.ml.privacy_file).exists()  # nothing was released


async def test_a_fog_restart_mid_round_neither_loses_nor_double_counts_a_batch(broker, tmp_path):
    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-1", "dev-2"]}, clients=("auditor",),
                     settings=[*SETTINGS, "fl.round_timeout_s=300"], per_node={"cloud-1": [*CLOUD, "fl.rounds=1"]})
    for node in ("cloud-1", "fog-a", "dev-1"):  # dev-2 comes later: the round waits for it
        await site.start(node)
    try:
        dev1 = site.nodes["dev-1"]

        async def acknowledged():
            return dev1.sent["rounds"].get("0", {}).get("acked", False)

        await until(acknowledged)
        stored = dict(site.nodes["fog-a"].doc["batches"]["0"])
        assert list(stored) == ["dev-1"] and not dev1.blobs.has(stored["dev-1"])  # the device let its copy go
        await site.stop("fog-a")  # mid-round: one batch taken, the other device not there yet
        fog = await site.start("fog-a")
        assert fog.doc["batches"]["0"] == stored  # the acknowledged batch survived

        async def following():  # the retained task and global model reach the restarted fog
            return fog.view.open_round() is not None

        await until(following)

        # dev-1 sends the same batch again (as after a lost acknowledgement): acknowledged, not counted again
        batch = decode_batch(fog.blobs.get(stored["dev-1"]))
        ack = (await dev1.session.request("fog-a", batch, timeout=20)).message
        assert ack.duplicate and ack.batch == stored["dev-1"]
        # before dev-2 runs: a batch at other privacy terms, and one whose release dev-2 never recorded,
        # are refused with their reason and counted
        dev2 = site.session("dev-2")
        async with dev2:
            for changed, reason in ((dict(epsilon=EPS / 2), "privacy_terms"), ({}, "unrecorded_release")):
                before = METRICS.get("fl_batch_rejected", reason=reason)
                with pytest.raises(RemoteError) as err:
                    await dev2.request("fog-a", dataclasses.replace(batch, **changed), timeout=20)
                assert err.value.reason == reason and METRICS.get("fl_batch_rejected", reason=reason) == before + 1

        await site.start("dev-2")
        final = await final_model(site, rounds=1)
        main, sub = chain_of(site, "cloud-1"), chain_of(site, "fog-a")
        [(_, update)] = records(main, FogUpdate)
        assert update.examples == 2 * ITEMS and update.devices == ["dev-1", "dev-2"]
        spends = [s for _, s in records(sub, PrivacySpend) if s.device == "dev-1"]
        assert len(spends) == 1  # dev-1 released once
        steps = sorted(s.step for _, s in records(sub, TrainingStep) if s.device == "dev-1")
        assert steps == list(range(1, steps_per_round(ITEMS, BATCH, EPOCHS) + 1))
        assert final.model == [a for _, a in records(main, Aggregation)][0].model
        main.close()
        sub.close()
    finally:
        for node in list(site.nodes):
            await site.stop(node)


async def test_training_resumes_after_the_last_recorded_step(tmp_path):
    """Interrupted after 3 recorded steps, training goes on from step 4 and ends where an uninterrupted run does."""
    chain, blobs = new_chain(tmp_path, sub_spec("fog-a")), BlobStore(tmp_path / "blobs")
    config = T.TrainConfig(layers=[20, 8, 10], optimizer="adam", lr=0.01, batch_size=8, seed=4)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 20)).astype(np.float32), rng.integers(0, 10, 40)
    origin = T.init_model(config.layers, seed=1).to_bytes()
    tracker = Tracker(blobs, task="t/round-0", device="dev-1", trainer_name="dense", config=config.to_bytes(),
                      signer="fog-a", key=KEYS["fog-a"])

    async def submit(tx):
        chain.submit(tx)
        chain.mine(sealer_for("fog-a"))

    async def crash_after_3(tx):  # steps 4.. were computed but lost with the mempool
        if decode_tx(tx).body.unwrap().step <= 3:
            await submit(tx)

    def recorded():
        return {s.step: s.model_out for _, rec in chain.records(TrainingStep.TYPE, device="dev-1")
                if (s := rec.unwrap())}

    full, n = await train_device(tracker, origin, x, y, config, 2, {}, lambda tx: asyncio.sleep(0))
    assert n == 10 and recorded() == {}
    await train_device(tracker, origin, x, y, config, 2, {}, crash_after_3)
    assert sorted(recorded()) == [1, 2, 3]
    state, n = await train_device(tracker, origin, x, y, config, 2, recorded(), submit)
    assert state == full and n == 10
    assert sorted(recorded()) == list(range(1, 11))  # steps 4..10 added, none twice
    assert (await audit(LocalSource(chain, blobs), "dev-1", task="t/round-0")).ok


async def test_training_stopped_mid_round_ends_with_its_cancellation_not_the_stopping_ledgers_refusals(tmp_path):
    """A fog stopped while it trains: the submits pending at the ledger fail as the ledger stops. That error
    replaced the cancellation, so the node's supervisor saw a crash instead of a stop."""
    config = T.TrainConfig(layers=[20, 8, 10], optimizer="adam", lr=0.01, batch_size=8, seed=4)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 20)).astype(np.float32), rng.integers(0, 10, 40)
    origin = T.init_model(config.layers, seed=1).to_bytes()
    tracker = Tracker(BlobStore(tmp_path / "blobs"), task="t/round-0", device="dev-1", trainer_name="dense",
                      config=config.to_bytes(), signer="fog-a", key=KEYS["fog-a"])
    stopping, submitted = asyncio.Event(), []

    async def submit(tx):  # as LedgerNode.submit when the node stops before the block is made
        submitted.append(tx)
        await stopping.wait()
        raise LedgerError("tx: the ledger node stopped before the block was made")

    task = asyncio.create_task(train_device(tracker, origin, x, y, config, 50, {}, submit))
    while len(submitted) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    stopping.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # finished normally, a refused step is still the error it is
    with pytest.raises(LedgerError):
        stopping.set()
        await train_device(tracker, origin, x, y, config, 1, {}, submit)


def test_a_recorded_warm_start_is_recomputed_from_its_blobs(tmp_path):
    """An empty batch adds nothing; a batch with a changed label, or another origin, gives another model."""
    blobs = BlobStore(tmp_path / "blobs")
    rng = np.random.default_rng(0)
    origin = T.init_model([3920, 20, 10], seed=1).to_bytes()

    def batch(n, seed):
        r = np.random.default_rng(seed)
        return FeatureBatch(task="t", round=0, model=b"\0" * 32, ids=np.arange(n, dtype=np.int64),
                            labels=r.integers(0, 10, n).astype(np.uint8),
                            features=r.standard_normal((n, 3920)).astype(np.float32), grid=0.0, epsilon=1.0,
                            unit="feature")

    parts = [batch(30, 1), batch(0, 2), batch(25, 3)]
    cids = [blobs.put(codec.encode_message(b)) for b in parts]
    warm = warm_start(origin, parts)
    assert warm == warm_start(origin, [parts[0], parts[2]]) != origin
    record = WarmStart(task="t", round=0, origin=blobs.put(origin), batches=cids, model=blobs.put(warm))
    assert check_warm_start(record, blobs.get)
    relabelled = dataclasses.replace(parts[2], labels=(parts[2].labels + 1) % 10)
    assert not check_warm_start(dataclasses.replace(record, batches=[*cids[:2], blobs.put(
        codec.encode_message(relabelled))]), blobs.get)
    other = blobs.put(T.init_model([3920, 20, 10], seed=2).with_input_transform(rng.standard_normal((5, 3920)))
                      .to_bytes())
    assert not check_warm_start(dataclasses.replace(record, origin=other), blobs.get)


def test_release_mean_averages_every_release_of_the_last_batchs_items():
    def batch(ids, values):
        ids = np.array(ids, np.int64)
        return FeatureBatch(task="t", round=0, model=b"\0" * 32, ids=ids, labels=np.zeros(len(ids), np.uint8),
                            features=np.array(values, np.float32).reshape(len(ids), 1), grid=0.5, epsilon=1.0,
                            unit="feature")

    got = release_mean([batch([1, 2, 3], [1.0, 2.0, 3.0]), batch([3, 1], [5.0, 0.0]), batch([2, 3, 4], [4.0, 1.0, 9.0])])
    assert got.dtype == np.float32 and got.ravel().tolist() == [3.0, 3.0, 9.0]  # (2+4)/2, (3+5+1)/3, 9
    one = batch([7, 8], [0.5, -1.5])
    assert release_mean([one]).tobytes() == one.features.tobytes()  # a single release is itself



def test_kept_releases_leaves_out_what_is_gone(tmp_path, caplog):
    blobs = BlobStore(tmp_path / "blobs")

    def batch(r):
        return FeatureBatch(task="t", round=r, model=b"\0" * 32, ids=np.arange(2, dtype=np.int64),
                            labels=np.zeros(2, np.uint8), features=np.full((2, 3), float(r), np.float32), grid=0.5,
                            epsilon=1.0, unit="feature")

    cids = [blobs.put(codec.encode_message(batch(r))) for r in range(3)]
    blobs.path(cids[1]).unlink()  # collected
    kept = kept_releases([cids[0], None, cids[1], cids[2]], blobs.get)
    assert [b.round for b in kept] == [0, 2]
    assert "left out of the mean" in caplog.text and cids[1].hex() in caplog.text
