"""Type-I records carry any registered @message: the ledger's own and those of the PKI and consensus."""

import dataclasses

import pytest

from edgefl import codec
from edgefl.crypto.keys import SigningKey
from edgefl.ledger.chain import Chain
from edgefl.ledger.errors import InvalidTx
from edgefl.ledger.records import CoinUpdate, DataCollected, ModelUpload, TaskAdvert, TrainingStep
from edgefl.ledger.tx import decode_tx, record_tx
from tests.ledger_helpers import KEYS, T0, new_chain, sealer_for, sub_spec


def _roundtrip(chain: Chain, msg, signer="fog-a", **kw):
    info = chain.submit(record_tx(msg, signer, KEYS[signer], ts_ms=T0, **kw))
    chain.mine(sealer_for(chain.id), ts_ms=T0 + chain.tip.height + 1)
    stored = decode_tx(chain.store.tx(info.id)[2]).body
    assert stored.type == msg.TYPE and stored.v == msg.VERSION
    assert codec.encode(stored.msg) == codec.encode_message(msg)  # the message's canonical bytes, exactly
    return stored.unwrap()


def test_ledger_record_types_roundtrip(tmp_path):
    c = new_chain(tmp_path, sub_spec())
    cid = bytes(range(32))
    for msg in (TaskAdvert("mnist", "digits", cid, "dense", cid, 10), ModelUpload("mnist", 3, cid, 9_700_000),
                DataCollected("dev-1", cid, 1000, 8, KEYS["dev-1"].sign(cid)), CoinUpdate("dev-1", -5, "late"),
                TrainingStep("mnist", "dev-1", 1, "dense", cid, cid, cid, cid, cid, cid)):
        assert _roundtrip(c, msg, refs=[cid]) == msg
    assert c.verify() == 6


def test_a_record_points_at_up_to_max_refs_blobs_and_gc_keeps_them(tmp_path):
    from edgefl.ledger.tx import MAX_REFS

    c = new_chain(tmp_path, sub_spec())
    cids = [i.to_bytes(32, "big") for i in range(MAX_REFS + 1)]
    msg = ModelUpload("mnist", 0, cids[0], 1)
    assert _roundtrip(c, msg, refs=cids[:MAX_REFS]) == msg
    assert c.store.referenced() == set(cids[:MAX_REFS])  # what blob gc keeps
    with pytest.raises(codec.SchemaError, match="refs"):
        record_tx(msg, "fog-a", KEYS["fog-a"], refs=cids, ts_ms=T0)


def test_revocation_lists_and_reputation_penalties_are_records(tmp_path):
    from edgefl.consensus.epoch import ReputationPenalty
    from edgefl.crypto import pki

    c = new_chain(tmp_path, sub_spec())
    ca = SigningKey()
    crl = pki.sign_crl(ca, "cloud-1", 7, [pki.Revocation(serial=42, at=T0 // 1000, reason="key_compromise")],
                       this_update=T0 // 1000, next_update=T0 // 1000 + 86400)
    got = _roundtrip(c, crl)
    assert got == crl and pki.Crl.from_bytes(codec.encode_message(got)).to_bytes() == crl.to_bytes()
    penalty = ReputationPenalty(epoch=3, member="peer-1", amount=1, reason="withheld", record=b"\x07" * 32)
    assert _roundtrip(c, penalty) == penalty
    from edgefl.ml.export import ModelRelease
    release = ModelRelease(name="extractor", version=2, format="onnx", hash=b"\x05" * 32, size=1234)
    assert _roundtrip(c, release) == release
    assert c.verify() == 4
    # a record that breaks its type's own invariants is refused with the type's field name
    body = codec.decode(decode_tx(record_tx(crl, "fog-a", KEYS["fog-a"])).body_bytes)
    body["msg"]["revoked"] *= 2  # entries no longer sorted without repeats
    from tests.test_ledger_chain import _signed
    with pytest.raises(InvalidTx) as err:
        c.submit(_signed("record", codec.encode(body), "fog-a"))
    assert err.value.reason == "schema"


def test_unknown_record_types_are_refused_by_name(tmp_path):
    c = new_chain(tmp_path, sub_spec())
    body = codec.decode(decode_tx(record_tx(CoinUpdate("a", 1, "x"), "fog-a", KEYS["fog-a"])).body_bytes)
    from tests.test_ledger_chain import _signed
    for change, reason in (({"type": "no-such-record"}, "unknown_type"), ({"v": 9}, "unsupported_version")):
        with pytest.raises(InvalidTx) as err:
            c.submit(_signed("record", codec.encode({**body, **change}), "fog-a"))
        assert err.value.reason == reason
    assert dataclasses.is_dataclass(CoinUpdate)


# --------------------------------------------------------------------------- the ML accountant's recorder


def _charge(acct, items, eps=0.5):
    return acct.charge(items, eps, task="mnist", round=1, mechanism="discrete_laplace", sensitivity=2.0,
                       scale=4.0, grid=2.0 ** -10)


def test_privacy_spending_is_recorded_before_it_is_charged(tmp_path):
    from edgefl.ledger.recorder import Recorder, via_chain
    from edgefl.ml.privacy import PrivacyAccountant, PrivacySpend

    c = new_chain(tmp_path, sub_spec())
    acct = PrivacyAccountant(1.0, device="dev-1", recorder=Recorder(via_chain(c, sealer_for("fog-a")), "dev-1",
                                                                      KEYS["dev-1"]))
    spend = _charge(acct, [3, 1, 2])
    [(txid, height, _)] = c.store.find(device="dev-1", rtype=PrivacySpend.TYPE)
    assert decode_tx(c.store.tx(txid)[2]).body.unwrap() == spend and height == 1
    assert acct.spent(3) == 0.5
    # a recorder the chain refuses (an unknown signer) raises, and the accountant charges nothing
    refused = PrivacyAccountant(1.0, device="dev-9", recorder=Recorder(via_chain(c, sealer_for("fog-a")), "dev-9",
                                                                         SigningKey()))
    with pytest.raises(InvalidTx) as err:
        _charge(refused, [1])
    assert err.value.reason == "unknown_sender" and refused.spent(1) == 0.0
    assert c.verify() == 2


async def test_privacy_recorder_over_mqtt(broker, tmp_path):
    import asyncio

    from edgefl.ledger.cluster import LocalCluster
    from edgefl.ledger.recorder import Recorder, via_session
    from edgefl.ml.privacy import PrivacyAccountant, PrivacySpend

    async with LocalCluster(tmp_path, broker.port, keys=KEYS) as cluster:
        loop = asyncio.get_running_loop()
        recorder = Recorder(via_session(cluster.sessions["dev-1"], "fog-a", loop, timeout=10), "dev-1",
                            KEYS["dev-1"])
        acct = PrivacyAccountant(2.0, device="dev-1", recorder=recorder)
        spend = await asyncio.to_thread(_charge, acct, list(range(10)))
        with pytest.raises(RuntimeError, match="worker thread"):
            recorder(spend)  # from the loop itself it would deadlock: refused instead
        fog = cluster.ledgers["fog-a"]
        rows = await fog.call(lambda: fog.chain.store.find(device="dev-1", rtype=PrivacySpend.TYPE))
        assert len(rows) == 1 and acct.spent(9) == 0.5
