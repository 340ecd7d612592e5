"""Ledger services in one process over a real Mosquitto: submit, anchor, beacon, Protocol 1, remote audit."""

import asyncio

import pytest

from edgefl.codec import CodecError
from edgefl.ledger.audit import RemoteSource, audit
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.cluster import LocalCluster
from edgefl.ledger.crosschain import ACCEPT, PENDING, REJECT, Verdict
from edgefl.ledger.protocol import MAX_SUBMIT_ALL, Find, HeadQuery, Receipt, Receipts, Submit, SubmitAll
from edgefl.ledger.records import Note
from edgefl.ledger.tx import record_tx
from edgefl.transport.session import RemoteError
from tests.ledger_helpers import KEYS
from tests.test_ledger_audit import CONFIG, LAYERS, batches, flip_weight

pytestmark = pytest.mark.broker


async def until(predicate, timeout=20.0, every=0.05):
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(every)


async def test_records_anchor_beacon_and_verify_across_chains(broker, tmp_path):
    async with LocalCluster(tmp_path, broker.port, keys=KEYS) as c:
        dev = c.sessions["dev-1"]
        raw = record_tx(Note("reading", b"21.5 C"), "dev-1", KEYS["dev-1"], device="dev-1")
        receipt = (await dev.request("fog-b", Submit(raw))).message
        assert isinstance(receipt, Receipt) and receipt.chain == "fog-b" and receipt.height >= 1
        again = (await dev.request("fog-b", Submit(raw))).message  # a retried submission gets the same receipt
        assert again == receipt
        with pytest.raises(RemoteError) as err:
            await dev.request("fog-b", Submit(raw[:-1]))
        assert err.value.reason == "truncated"
        found = (await dev.request("fog-b", Find(device="dev-1"))).message
        assert found.txids == [receipt.txid]

        async def verdict():
            cc = c.verifier("fog-a", timeout=10)
            try:
                v = await cc.verify_tx("fog-b", receipt.txid)
            finally:
                cc.local.close()
            assert v.verdict in (ACCEPT, PENDING), v
            return v if v.ok else None

        v = None

        async def accepted():
            nonlocal v
            v = await verdict()
            return v is not None

        await until(accepted)
        assert [line.split(".")[0] for line in v.steps] == ["1", "2", "3", "4", "5", "6"]
        assert "signed by 'dev-1' (signature verified)" in v.steps[-1]
        head = (await dev.request("cloud-1", HeadQuery("fog-b"))).message
        assert head.anchored >= receipt.height and head.beacon
        # the main chain and both sub-chains are valid, interlocked chains
        for node in c.ledgers.values():
            assert await node.call(node.chain.verify) == node.chain.tip.height + 1
        assert c.ledgers["fog-a"].chain.state.anchors["main"][0] >= 1
        assert c.ledgers["cloud-1"].chain.state.anchors["fog-b"][0] >= receipt.height

        # a transaction fog-b never recorded, and one of the main chain itself
        cc = c.verifier("fog-a", timeout=10)
        missing = await cc.verify_tx("fog-b", b"\x11" * 32)
        assert missing.verdict == REJECT and "step 5" in missing.reason
        beacon_tx = c.ledgers["cloud-1"].chain.store.find(kind="anchor")[0][0]
        on_main = await cc.verify_tx("main", beacon_tx)
        assert on_main.ok, on_main
        cc.local.close()


async def test_submit_all_answers_once_every_record_is_durable(broker, tmp_path):
    async with LocalCluster(tmp_path, broker.port, keys=KEYS) as c:
        dev = c.sessions["dev-1"]
        raws = [record_tx(Note("reading", b"%d" % i), "dev-1", KEYS["dev-1"], device="dev-1") for i in range(3)]
        first = (await dev.request("fog-b", Submit(raws[0]))).message
        answer = (await dev.request("fog-b", SubmitAll(raws))).message  # one of them is already on the chain
        assert isinstance(answer, Receipts) and [r.txid for r in answer.receipts] == [
            (await dev.request("fog-b", Submit(raw))).message.txid for raw in raws]
        assert answer.receipts[0] == first  # answered as the first time
        chain = c.ledgers["fog-b"].chain
        assert all(chain.store.tx(r.txid) is not None for r in answer.receipts)
        with pytest.raises(RemoteError) as err:  # a bad one: an error, the good ones still recorded
            await dev.request("fog-b", SubmitAll([raws[1], raws[2][:-1]]))
        assert err.value.reason == "truncated"
    with pytest.raises(CodecError):  # more than a submission may hold: refused on the wire
        SubmitAll.from_wire({"txs": [raws[0]] * (MAX_SUBMIT_ALL + 1)})


async def test_several_transactions_verified_across_chains_by_one_batch_proof(broker, tmp_path):
    async with LocalCluster(tmp_path, broker.port, keys=KEYS) as c:
        dev = c.sessions["dev-1"]
        ids = []
        for i in range(5):
            raw = record_tx(Note("reading", f"{i} C".encode()), "dev-1", KEYS["dev-1"], device="dev-1")
            ids.append((await dev.request("fog-b", Submit(raw))).message.txid)
        cc = c.verifier("fog-a", timeout=10)
        try:
            result = None

            async def accepted():
                nonlocal result
                result = await cc.verify_txs("fog-b", ids)
                assert result.verdict in (ACCEPT, PENDING), result
                return result.ok

            await until(accepted)
            assert [t.id for t in result.txs] == ids
            assert any("one aggregated batch proof of 5 transaction(s)" in line for line in result.steps)
            assert sum("signed by 'dev-1' (signature verified)" in line for line in result.steps) == 5
            weighted = await cc.verify_txs("fog-b", ids[::-1], method="weighted")
            assert weighted.ok and [t.id for t in weighted.txs] == ids[::-1]
            missing = await cc.verify_txs("fog-b", [ids[0], b"\x11" * 32])
            assert missing.verdict == REJECT and "step 5" in missing.reason
        finally:
            cc.local.close()


async def test_remote_audit_through_protocol_1_and_blob_fetch(broker, tmp_path):
    from edgefl.ledger.audit import Tracker
    from edgefl.ml.trainer import init_model, init_state

    async with LocalCluster(tmp_path, broker.port, keys=KEYS) as c:
        fog = c.ledgers["fog-b"]
        tracker = Tracker(fog.blobs, task="mnist", device="dev-1", trainer_name="dense", config=CONFIG.to_bytes(),
                          signer="fog-b", key=KEYS["fog-b"])
        model = init_model(LAYERS, seed=1)
        origin, state = model.to_bytes(), init_state(model, CONFIG).to_bytes()
        for i, data in enumerate(batches(4, seed=2), start=1):
            out = tracker.fn(state, origin, data, tracker.config)
            state, tx = tracker.step(i, state, origin, data, result=flip_weight(out, 1, 5, 3) if i == 3 else out)
            last = await fog.submit(tx)

        async def anchored():
            cc = c.verifier("fog-a", timeout=10)
            try:
                trusted = await cc.anchor_of("fog-b", Verdict())
                return trusted.height >= last.height
            except Exception:
                return False
            finally:
                cc.local.close()

        await until(anchored)
        cc = c.verifier("fog-a", timeout=10)
        lines = []
        report = await audit(RemoteSource(cc, "fog-b", blobs=BlobStore(tmp_path / "auditor-blobs")), "dev-1",
                             report=lines.append)
        cc.local.close()
        assert [(s.step, s.ok) for s in report.steps] == [(1, True), (2, True), (3, False), (4, True)], lines
        assert not report.ok
