"""The round's aggregating fog drawn by VRF sortition from the epoch seed (``fl.leader = "drawn"``): the draw, its
check from the record, the epoch seed, and rounds over a real Mosquitto — with honest leaders, and with a
byzantine one whose aggregation the cloud refuses, records and replaces."""

import dataclasses
from collections import Counter

import pytest

from edgefl.consensus.epoch import EpochSeed
from edgefl.fl.leader import LeaderDraw, check_leader, draw_leader, epoch_seed, genesis_seed, prove, units
from edgefl.fl.protocol import Aggregation, FogUpdate, Task
from edgefl.fl.reputation import Offence, chain_records, fold
from edgefl.fl.round import check_aggregation
from edgefl.ledger.tx import record_tx
from edgefl.runtime.metrics import METRICS
from tests.ledger_helpers import KEYS, main_spec, new_chain, sealer_for
from tests.test_fl_round import SETTINGS, chain_of, final_model, records

FOGS = ("fog-a", "fog-b", "fog-c")


def key(member):
    return KEYS[member].public_key.raw


def claims(seed, round, weights):
    return {f: (prove(KEYS[f].secret, seed, round), w) for f, w in weights.items()}


def test_the_draw_follows_the_weights_and_anyone_recomputes_it_from_the_record():
    weights = {"fog-a": 100, "fog-b": 10, "fog-c": 50}
    won = Counter()
    for r in range(150):
        draw, bad = draw_leader("t", b"\x01" * 32, r, claims(b"\x01" * 32, r, weights), key)
        assert not bad and draw.candidates == list(FOGS) and draw.weights == [100, 10, 50]
        won[draw.leader] += 1
    assert won["fog-a"] > won["fog-c"] > won["fog-b"] > 0, won  # more reputation, more rounds led; nobody never
    assert check_leader(draw, key)
    # the same seed and round draw the same leader; another seed another sequence
    again, _ = draw_leader("t", b"\x01" * 32, r, claims(b"\x01" * 32, r, weights), key)
    assert again == draw
    seq = [draw_leader("t", s, 0, claims(s, 0, weights), key)[0].leader for s in (b"\x02" * 32, b"\x03" * 32,
                                                                                   b"\x04" * 32, b"\x05" * 32)]
    assert len(set(seq)) > 1, seq


def test_a_record_that_does_not_recompute_is_refused_and_bad_proofs_are_no_candidates():
    seed = b"\x07" * 32
    draw, _ = draw_leader("t", seed, 3, claims(seed, 3, {f: 50 for f in FOGS}), key)
    other = next(f for f in FOGS if f != draw.leader)
    assert check_leader(draw, key)
    assert not check_leader(dataclasses.replace(draw, leader=other), key)  # another leader
    assert not check_leader(dataclasses.replace(draw, round=4), key)  # the proofs are for round 3
    swapped = list(draw.proofs)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert not check_leader(dataclasses.replace(draw, proofs=swapped), key)  # a proof under another's name
    # a claim that does not verify (another round's proof, or no key for it) is left out, and said so
    bad = {**claims(seed, 3, {"fog-a": 50, "fog-b": 50}), "fog-c": (prove(KEYS["fog-c"].secret, seed, 2), 50),
           "fog-x": (prove(KEYS["fog-c"].secret, seed, 3), 50)}
    d, rejected = draw_leader("t", seed, 3, bad, lambda m: key(m))
    assert rejected == ["fog-c", "fog-x"] and d.candidates == ["fog-a", "fog-b"] and check_leader(d, key)
    assert draw_leader("t", seed, 3, {}, key) == (None, [])
    with pytest.raises(ValueError):
        LeaderDraw(task="t", round=0, seed=seed, candidates=["fog-b", "fog-a"], proofs=[b"", b""], weights=[1, 1],
                   leader="fog-a")
    assert units(0.0) == 10 and units(0.5) == 50 and units(1.0) == 100  # the selection floor, then reputation


def test_the_epoch_seed_is_the_last_recorded_epochs_else_the_genesis_hash(tmp_path):
    chain = new_chain(tmp_path, main_spec())
    assert epoch_seed(chain) == genesis_seed(chain.store.block_row(0)[0])
    closing = EpochSeed(epoch=0, seed=epoch_seed(chain), committee=[], shares=[], withheld=[], next_seed=b"\x09" * 32)
    chain.submit(record_tx(closing, "cloud-1", KEYS["cloud-1"]))
    chain.mine(sealer_for("main"))
    assert epoch_seed(chain) == b"\x09" * 32


DRAWN = ["fl.leader=drawn", "fl.items=200"]


@pytest.mark.broker
async def test_each_round_a_drawn_fog_aggregates_and_the_record_checks(broker, tmp_path):
    from edgefl.nodes.site import LocalSite

    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-a1"], "fog-b": ["dev-b1"]}, clients=("auditor",),
                     settings=SETTINGS, per_node={"cloud-1": DRAWN})
    async with site:
        await final_model(site, rounds=2)
        acc = site.nodes["cloud-1"].accuracy
        registry = site.nodes["cloud-1"].session.verifier.registry
        with chain_of(site, "cloud-1") as main:
            [(_, task)] = records(main, Task)
            assert task.leader_seed == genesis_seed(main.store.block_row(0)[0])  # no epoch closed yet
            draws = {d.round: d for rec, d in records(main, LeaderDraw) if rec.signer == "cloud-1"}
            assert sorted(draws) == [0, 1]
            updates = {(u.fog, u.round): u for _, u in records(main, FogUpdate)}
            for r, d in draws.items():  # from the fogs' own proofs in their updates, checkable by anyone
                assert d.candidates == ["fog-a", "fog-b"] and d.proofs == [updates[f, r].draw for f in d.candidates]
                assert check_leader(d, lambda m: registry.key_for(m, 0).raw)
            aggs = {a.round: (rec.signer, a) for rec, a in records(main, Aggregation)}
            assert {r: s for r, (s, _) in aggs.items()} == {r: d.leader for r, d in draws.items()}
            assert all(check_aggregation(a, site.nodes["cloud-1"].blobs.get) for _, a in aggs.values())
            assert not records(main, Offence)
        assert acc[0] < acc[1] and acc[2] > 0.5, acc
    for node in ("cloud-1", "fog-a", "fog-b"):
        with chain_of(site, node) as chain:
            assert chain.verify() == chain.tip.height + 1


@pytest.mark.broker
async def test_a_byzantine_leaders_aggregation_is_refused_recorded_and_replaced(broker, tmp_path):
    """Both fogs poison what they send (a byzantine fog, fl.attack): whoever is drawn, the cloud's check of its
    aggregation fails, an offence is recorded on the main chain, and the cloud aggregates the round itself."""
    from edgefl.nodes.site import LocalSite

    byzantine = ["fl.attack=scaling", 'fl.attack_options=["factor=3.0"]']
    site = LocalSite(tmp_path, broker.port, {"fog-a": ["dev-a1"], "fog-b": ["dev-b1"]}, clients=("auditor",),
                     settings=SETTINGS, per_node={"cloud-1": [*DRAWN, "fl.rounds=1"], "fog-a": byzantine,
                                                  "fog-b": byzantine})
    before = METRICS.get("fl_leader_failed", reason="failed_audit")
    async with site:
        await final_model(site, rounds=1)
        with chain_of(site, "cloud-1") as main:
            [(_, d)] = records(main, LeaderDraw)
            [(rec, agg)] = records(main, Aggregation)
            assert rec.signer == "cloud-1" and check_aggregation(agg, site.nodes["cloud-1"].blobs.get)
            [(orec, o)] = records(main, Offence)
            assert (orec.signer, o.account, o.kind, o.round) == ("cloud-1", d.leader, "failed_audit", 0)
            assert fold(chain_records(main)).bad[d.leader] >= 2
        assert METRICS.get("fl_leader_failed", reason="failed_audit") == before + 1
