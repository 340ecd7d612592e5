"""Reputation and coins folded from ledger records; a batch's provenance (DataCollected); a round with a quorum.

The fold is checked against hand-computed scores and payouts; over a real
Mosquitto a fog refuses batches whose DataCollected does not attest them
(counted, recorded as an Offence), and a round goes on without a device that
dropped out, recording it as a straggler, with the payout recomputed from the
main chain alone.
"""

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edgefl import codec
from edgefl.fl.protocol import Aggregation, FogUpdate, Task, decode_batch
from edgefl.fl.reputation import INITIAL, OFFENCE, Offence, chain_records, fold, payout, payout_reason
from edgefl.ledger.protocol import Submit
from edgefl.ledger.records import CoinUpdate, DataCollected
from edgefl.ledger.tx import decode_tx, record_tx
from edgefl.ml.privacy import PrivacySpend
from edgefl.ml.trainer import TrainConfig
from edgefl.runtime.metrics import METRICS
from edgefl.transport.session import RemoteError
from tests.ledger_helpers import KEYS
from tests.test_fl_round import SETTINGS, chain_of, final_model, records, until

CID = b"\x11" * 32


def rec(msg, signer):
    return decode_tx(record_tx(msg, signer, KEYS.get(signer) or KEYS["dev-1"])).body


def agg(senders, weights, shares, round=0):
    return Aggregation(task="t", round=round, aggregator="krum", senders=senders, models=[CID] * len(senders),
                       weights=weights, model=CID, kept=[i for i, s in enumerate(shares) if s > 0], shares=shares)


def test_reputation_follows_shares_and_offences_against_hand_computed_scores():
    records_ = [
        rec(agg(["a", "b", "c"], [10.0, 10.0, 20.0], [0.5, 0.5, 0.0]), "fog-a"),  # a, b above fair; c rejected
        rec(agg(["a", "c"], [30.0, 10.0], [0.375, 0.625]), "fog-a"),  # a kept half its fair 0.75; c above its 0.25
        rec(Offence("b", "bad_provenance", "t", 0, CID), "fog-a"),
        rec(Offence("fog-a", "failed_audit", "t", 0, CID), "fog-a"),  # about itself: ignored
    ]
    st = fold(records_)
    # a: good 1 + 0.5, bad 0.5; b: good 1, bad OFFENCE; c: good 1, bad 1
    assert st.reputation == pytest.approx({"a": 2.5 / 4, "b": 2 / (3 + OFFENCE), "c": 2 / 4})
    assert st.of("newcomer") == INITIAL == 0.5 and "fog-a" not in st.reputation
    assert fold(records_).reputation == st.reputation  # deterministic
    assert fold(records_[:1]).of("c") < INITIAL < fold(records_[:1]).of("a")


def test_coins_are_the_owners_payout_and_nobody_elses():
    task = Task(task="t", rounds=2, epsilon=1.0, unit="feature", noise="discrete_laplace",
                config=TrainConfig(layers=[3920, 20, 10]),
                epochs=1, trainer="dense", extractors=[_extractor()], model=CID, reward=1000)
    updates = {"fog-a": FogUpdate(task="t", round=0, fog="fog-a", model=CID, examples=30, devices=["d1", "d2"],
                                  aggregation=CID, weights=[10.0, 20.0], shares=[0.25, 0.75]),
               "fog-b": FogUpdate(task="t", round=0, fog="fog-b", model=CID, examples=10, devices=["d3", "d4"],
                                  aggregation=CID, weights=[5.0, 5.0], shares=[1.0, 0.0])}
    cloud = agg(["fog-a", "fog-b"], [30.0, 10.0], [0.6, 0.4])
    coins = payout(task, cloud, updates)
    # ⌊1000·0.6·0.25⌋ = 150, ⌊1000·0.6·0.75⌋ = 450, ⌊1000·0.4·1⌋ = 400; d4 was rejected: nothing
    assert [(c.account, c.delta) for c in coins] == [("d1", 150), ("d2", 450), ("d3", 400)]
    assert {c.reason for c in coins} == {payout_reason("t", 0)}
    chain = [rec(task, "cloud-1"), *(rec(u, u.fog) for u in updates.values()), rec(cloud, "cloud-1"),
             *(rec(c, "cloud-1") for c in coins), rec(CoinUpdate("d4", 10**6, "forged"), "fog-b")]
    st = fold(chain)
    assert dict(st.balances) == {"d1": 150, "d2": 450, "d3": 400}  # fog-b owns no task: its coins count nothing
    assert st.of("d4") < INITIAL < st.of("d3")


def _extractor():
    from edgefl.fl.protocol import Extractor
    from edgefl.ml.export import ModelRelease

    return Extractor(ModelRelease(name="x", version=1, format="onnx", hash=CID, size=1), CID)


async def test_a_batch_its_device_did_not_attest_is_rejected_counted_and_recorded(broker, tmp_path):
    """dev-2 sends dev-1's batch (with dev-2's own spend record) under three DataCollected variants."""
    from edgefl.nodes.site import LocalSite

    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-1", "dev-2"]}, clients=("auditor",),
                     settings=[*SETTINGS, "fl.round_timeout_s=300"], per_node={"cloud-1": ["fl.items=200",
                                                                                           "fl.rounds=1"]})
    for node in ("cloud-1", "fog-a", "dev-1"):
        await site.start(node)
    try:
        fog, dev1 = site.nodes["fog-a"], site.nodes["dev-1"]
        await until(lambda: _acked(dev1))
        cid = fog.doc["batches"]["0"]["dev-1"]
        data = fog.blobs.get(cid)
        batch = decode_batch(data)
        with chain_of(site, "fog-a") as sub:
            [(_, spend)] = [(r, s) for r, s in records(sub, PrivacySpend) if s.device == "dev-1"]
            [(dc_rec, dc)] = records(sub, DataCollected)
        assert dc_rec.signer == "dev-1" and dc.data == cid and dc.verify(site.key("dev-1").public_key, data)

        key2 = site.key("dev-2")
        dev2 = site.session("dev-2")
        async with dev2:
            async def submit(msg, **kw):
                await dev2.request("fog-a", Submit(record_tx(msg, "dev-2", key2, device="dev-2", **kw)), timeout=20)

            async def refused(reason):
                before = METRICS.get("fl_batch_rejected", reason=reason)
                with pytest.raises(RemoteError) as err:
                    await dev2.request("fog-a", batch, timeout=20)
                assert err.value.reason == reason
                assert METRICS.get("fl_batch_rejected", reason=reason) == before + 1

            await submit(dataclasses.replace(spend, device="dev-2"))
            await refused("uncollected")  # no DataCollected of these bytes at all
            # a record signed by dev-2 whose attestation is dev-1's signature: not dev-2's word for these bytes
            forged = DataCollected.of("dev-2", cid, len(data), len(batch.ids), site.key("dev-1"))
            await submit(forged, model=cid, refs=[cid])
            await refused("bad_provenance")
            other = codec.encode_message(dataclasses.replace(batch, labels=(batch.labels + 1) % 10))
            assert not DataCollected.of("dev-2", cid, len(data), 1, key2).verify(key2.public_key, other)
            await submit(DataCollected.of("dev-2", cid, len(data), len(batch.ids), key2), model=cid, refs=[cid])
            ack = (await dev2.request("fog-a", batch, timeout=20)).message  # attested now: taken
            assert ack.batch == cid and not ack.duplicate
        await final_model(site, rounds=1)
        with chain_of(site, "fog-a") as sub:
            offences = [(r.signer, o.account, o.kind) for r, o in records(sub, Offence)]
            assert offences == [("fog-a", "dev-2", "bad_provenance")]  # recorded once, not for 'uncollected'
            st = fold(chain_records(sub))
        assert st.of("dev-2") < st.of("dev-1")
    finally:
        for node in list(site.nodes):
            await site.stop(node)


async def _acked(dev, round="0"):
    return dev.sent["rounds"].get(round, {}).get("acked", False)


async def test_a_device_dropping_out_does_not_stop_the_round_and_coins_recompute_from_the_main_chain(broker,
                                                                                                     tmp_path):
    from edgefl.nodes.site import LocalSite

    fogs = {"fog-a": ["dev-1", "dev-2", "dev-3"], "fog-b": ["dev-4"]}
    site = LocalSite(tmp_path, broker.port, fogs, clients=("auditor",),
                     settings=[*SETTINGS, "fl.round_timeout_s=5", "fl.quorum=0.6"],
                     per_node={"cloud-1": ["fl.items=200", "fl.reward=1000"]})
    for node in site.roles:
        if node not in site.clients:
            await site.start(node)
    try:
        await until(lambda: _acked(site.nodes["dev-3"]))
        await site.stop("dev-3")  # gone after round 0: round 1 goes on without it at its deadline
        final = await final_model(site, rounds=2)
        main = chain_of(site, "cloud-1")
        updates = {(u.fog, u.round): u for _, u in records(main, FogUpdate)}
        assert updates["fog-a", 0].devices == ["dev-1", "dev-2", "dev-3"] and updates["fog-a", 0].stragglers == []
        assert updates["fog-a", 1].devices == ["dev-1", "dev-2"] and updates["fog-a", 1].stragglers == ["dev-3"]
        [(_, task)] = records(main, Task)
        cloud_aggs = {a.round: a for r, a in records(main, Aggregation) if r.signer == "cloud-1"}
        assert cloud_aggs[1].model == final.model
        # the recorded payout is exactly what anyone recomputes from the main chain's other records
        paid = [(r.signer, c) for r, c in records(main, CoinUpdate)]
        expected = [c for rnd in (0, 1) for c in payout(task, cloud_aggs[rnd],
                                                        {f: u for (f, r), u in updates.items() if r == rnd})]
        assert sorted((c.account, c.delta, c.reason) for _, c in paid) == sorted(
            (c.account, c.delta, c.reason) for c in expected)
        assert {s for s, _ in paid} == {"cloud-1"}
        st = fold(chain_records(main))
        assert sum(st.balances.values()) <= 2 * task.reward and set(st.balances) == {f"dev-{i}" for i in range(1, 5)}
        assert st.balances["dev-3"] < st.balances["dev-1"]  # paid for round 0 only
        main.close()
        # and from the command line, as anyone holding the chain runs it
        cfg = site.cfgs["cloud-1"]
        out = subprocess.run([sys.executable, "-m", "edgefl", "--set", "node.id=cloud-1", "--set", "node.role=cloud",
                              "--set", f"node.data_dir={cfg.node.data_dir}", "--set",
                              f"security.trust_dir={cfg.security.trust_dir}", "ledger", "show", "--reputation",
                              "--balances", "--json"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert shown["balances"] == dict(sorted(st.balances.items()))
        assert shown["reputation"] == {a: round(r, 4) for a, r in st.reputation.items()}
    finally:
        for node in list(site.nodes):
            await site.stop(node)


# Krum sees the attackers only when local training may move away from the round's model: no warm start
# (its ridge is fitted to every batch, the poisoned ones too) and no FedProx pull; measured with both on,
# Multi-Krum kept the label flipper and the backdoor in both rounds.
ROBUST = ["ml.aggregator=multikrum", 'ml.aggregator_options=["f=2"]', "fl.warm_start=false", "ml.prox_mu=0"]
ATTACKERS = {"dev-3": ["fl.attack=labelflip", 'fl.attack_options=["source=1", "target=7"]'],
             "dev-5": ["fl.attack=backdoor", 'fl.attack_options=["fraction=1.0"]']}


async def test_two_rounds_with_a_label_flipper_and_a_backdoor_under_multikrum(broker, tmp_path):
    """Accuracy rises, the attackers' reputation falls and they earn less; balances recompute from the ledger
    alone, every chain verifies, every aggregation replays and a random step audits."""
    from edgefl.fl.protocol import run_id
    from edgefl.fl.round import check_aggregation
    from edgefl.ledger.audit import LocalSource, audit
    from edgefl.nodes.site import LocalSite

    devices = [f"dev-{i}" for i in range(1, 8)]
    site = LocalSite(tmp_path, broker.port, {"fog-a": devices}, clients=("auditor",), settings=SETTINGS,
                     per_node={"cloud-1": ["fl.items=200", *ROBUST], **ATTACKERS})
    async with site:
        await final_model(site, rounds=2, timeout=120)
        acc = site.nodes["cloud-1"].accuracy
        assert acc[0] < min(acc[1], acc[2]) and acc[2] > 0.5, acc  # chance is 0.1
        main, sub = chain_of(site, "cloud-1"), chain_of(site, "fog-a")
        fog_aggs = [a for _, a in records(sub, Aggregation)]
        assert [(a.round, a.aggregator) for a in fog_aggs] == [(0, "multikrum"), (1, "multikrum")]
        blobs = site.nodes["fog-a"].blobs
        assert all(check_aggregation(a, blobs.get) for a in fog_aggs)
        assert all(check_aggregation(a, site.nodes["cloud-1"].blobs.get) for r, a in records(main, Aggregation)
                   if r.signer == "cloud-1")
        honest = [d for d in devices if d not in ATTACKERS]
        for st in (fold(chain_records(main)), fold(chain_records(sub))):  # the global view and the fog's
            assert max(st.of(d) for d in ATTACKERS) < INITIAL < min(st.of(d) for d in honest), st.reputation
        # coins: what the main chain's records alone give, the attackers less than any honest device
        st = fold(chain_records(main))
        [(_, task)] = records(main, Task)
        updates = {(u.fog, u.round): u for _, u in records(main, FogUpdate)}
        expected = {}
        for _rec, a in records(main, Aggregation):
            for c in payout(task, a, {f: u for (f, rnd), u in updates.items() if rnd == a.round}):
                expected[c.account] = expected.get(c.account, 0) + c.delta
        assert dict(st.balances) == expected
        assert max(st.balances.get(d, 0) for d in ATTACKERS) < min(st.balances.get(d, 0) for d in honest)
        device = random.Random().choice(devices)
        report = await audit(LocalSource(sub, blobs), device, task=run_id("digits", 1), samples=1)
        assert report.ok and len(report.steps) == 1, report
        main.close()
        sub.close()
    for node in ("cloud-1", "fog-a"):  # every chain verifies from genesis, once nobody writes any more
        with chain_of(site, node) as chain:
            assert chain.verify() == chain.tip.height + 1


async def test_the_demo_under_attack_writes_its_report(broker, tmp_path):
    from edgefl.nodes.demo import demo, topology

    assert topology(2, 5) == {"fog-a": ["dev-a1", "dev-a2", "dev-a3"], "fog-b": ["dev-b1", "dev-b2"]}
    lines = []
    result = await demo(port=broker.port, out=lines.append, devices=4, rounds=2, aggregator="median",
                        attack="labelflip", malicious=0.5, seed=3, report=tmp_path / "report")
    text = "\n".join(lines)
    assert len(result["attackers"]) == 2 and text.count("(attacker)") == 2
    for r in (0, 1):  # each round's phases as they completed
        assert f"· round {r}, " in text and text.count(f"· round {r}, ") == 2, text
    assert "malicious (labelflip, 50 % drawn with seed 3): " + ", ".join(result["attackers"]) in text
    assert result["audit_ok"] and result["accuracy"][2] > result["accuracy"][0]
    assert set(result["devices"]) == {"dev-a1", "dev-a2", "dev-b1", "dev-b2"}
    assert sum(d["coins"] for d in result["devices"].values()) <= 2 * 1000  # two rounds' reward at most
    report = (tmp_path / "report" / "report.md").read_text()
    for d, row in result["devices"].items():
        assert f"| {d} | {'yes' if row['attacker'] else ''} | {row['reputation']:.3f} | {row['coins']} |" in report
    assert "| main |" in report and "| fog-b |" in report
    assert json.loads((tmp_path / "report" / "report.json").read_text())["attackers"] == result["attackers"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in report
    else:
        assert (tmp_path / "report" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
