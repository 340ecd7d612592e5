"""FFG finality of the main chain over a real Mosquitto: the cloud calls, the fogs vote, byzantine and silent members."""

import asyncio

import pytest

from edgefl.consensus.evidence import Behaviour, check_behaviour
from edgefl.consensus.finality import Vote, vote
from edgefl.ledger.cluster import LocalCluster
from edgefl.ledger.protocol import Submit
from edgefl.ledger.records import Note
from edgefl.ledger.tx import decode_tx, record_tx
from tests.ledger_helpers import KEYS

pytestmark = pytest.mark.broker
FOGS = ("fog-a", "fog-b", "fog-c")
WEIGHTS = {"cloud-1": 1, "fog-a": 1, "fog-b": 1, "fog-c": 1}


async def until(predicate, timeout=20.0, every=0.05):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(every)


def records(chain, cls):
    return [decode_tx(chain.store.tx(t)[2]).body.unwrap() for t, _, _ in chain.store.find(rtype=cls.TYPE)]


async def note_final(c, i: int) -> int:
    main = c.ledgers["cloud-1"]
    raw = record_tx(Note("reading", bytes([i])), "dev-1", KEYS["dev-1"], device="dev-1")
    receipt = (await c.sessions["dev-1"].request("cloud-1", Submit(raw))).message
    await until(lambda: main.finality.finalized_height >= receipt.height)
    return receipt.height


async def test_fogs_vote_a_byzantine_double_vote_is_recorded_and_finality_stays_safe(broker, tmp_path):
    async with LocalCluster(tmp_path, broker.port, keys=KEYS, subchains=FOGS, finality=WEIGHTS) as c:
        main = c.ledgers["cloud-1"]
        h = await note_final(c, 1)
        # h is final once a checkpoint at or above it is: on a busy machine the tip moved on before the votes
        voters = {v.signer for v in records(main.chain, Vote) if v.target_epoch >= h}
        assert len(voters) >= 3 and voters <= set(WEIGHTS)
        # fog-c also signs a second, conflicting vote for a target it voted for: genesis -> that block
        await until(lambda: any(v.signer == "fog-c" and v.target_epoch >= 2 for v in records(main.chain, Vote)))
        mine = next(v for v in records(main.chain, Vote) if v.signer == "fog-c" and v.target_epoch >= 2)
        other = 0 if mine.source_epoch else 1  # another source, the same target epoch
        double = vote("main", "fog-c", KEYS["fog-c"], (other, main.chain.store.block_row(other)[0]),
                      (mine.target_epoch, mine.target))
        await c.sessions["dev-1"].request("cloud-1", Submit(record_tx(double, "fog-c", KEYS["fog-c"])))
        await until(lambda: any(b.member == "fog-c" for b in records(main.chain, Behaviour)))
        evidence = [b for b in records(main.chain, Behaviour) if b.member == "fog-c"]
        assert evidence[0].kind == "equivocated"
        a, b = check_behaviour(evidence[0], main.chain.spec.committee)
        assert a.conflicts(b)
        assert c.metrics["cloud-1"].get("ffg_equivocation", member="fog-c") >= 1
        # finality goes on, one branch only (every finalized checkpoint is an ancestor of the tip)
        h2 = await note_final(c, 2)
        core = main.finality.core
        latest = max(core.checkpoints.values(), key=lambda cp: cp.epoch)  # the tip may be newer than what it read
        assert all(core.is_ancestor(cp, latest.hash) for cp in core.finalized) and h2 > h
        assert set(core.slashed) == {"fog-c"}


async def test_a_silent_member_does_not_stop_finality(broker, tmp_path):
    async with LocalCluster(tmp_path, broker.port, keys=KEYS, subchains=FOGS, finality=WEIGHTS) as c:
        names = list(c.ledgers)
        silent = c._tasks[names.index("fog-c")]
        silent.cancel()  # fog-c's node stops: it never votes
        main = c.ledgers["cloud-1"]
        for i in range(3):
            h = await note_final(c, i)
        assert not any(v.signer == "fog-c" for v in records(main.chain, Vote))
        core = main.finality.core
        assert [b.kind for b in core.behaviour(h) if b.member == "fog-c"] == ["silent"]
        assert not core.evidence


async def test_without_two_thirds_nothing_is_final_and_anchors_stay_pending(broker, tmp_path):
    async with LocalCluster(tmp_path, broker.port, keys=KEYS, subchains=FOGS, finality=WEIGHTS) as c:
        names = list(c.ledgers)
        for fog in ("fog-b", "fog-c"):
            c._tasks[names.index(fog)].cancel()
        main = c.ledgers["cloud-1"]
        await until(lambda: main.chain.store.find(kind="anchor"))  # fog-a anchors, votes, but 2 of 4 < 2/3
        await asyncio.sleep(0.5)
        assert main.finality.finalized_height == 0
        with pytest.raises(Exception) as err:
            main._anchor_proof("fog-a", None)
        assert getattr(err.value, "reason", None) == "not_anchored"
