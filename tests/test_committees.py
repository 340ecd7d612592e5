"""Sub-chains kept by committees in a deployment: the fog and its devices as PBFT replicas over a real Mosquitto,
each holding the chain; Type-II anchors carry the committee's quorum; the leader crashed, then back."""

import asyncio
import contextlib

import pytest

from edgefl.consensus import committees, endorse
from edgefl.crypto.keys import SigningKey
from edgefl.ledger.chain import Chain
from edgefl.ledger.crosschain import CrossChain
from edgefl.ledger.errors import LedgerError
from edgefl.ledger.records import Note
from edgefl.ledger.service import db_path, registry_for, server_of
from edgefl.ledger.tx import Anchor, decode_tx, record_tx
from edgefl.nodes.site import LocalSite
from tests.conftest import need_mosquitto

DEVICES = ["dev-1", "dev-2", "dev-3"]
SETTINGS = ["fl.rounds=1", "ledger.view_timeout_s=1.0", "ledger.anchor_interval_s=0.3"]


def test_a_committee_is_the_fog_and_its_first_devices_or_the_fog_alone():
    assert committees.members_of("fog-a", ["d3", "d1", "d2", "d4"], 4) == ["fog-a", "d1", "d2", "d3"]
    assert committees.members_of("fog-a", ["d1", "d2"], 7) == ["fog-a"]  # 3 members tolerate no fault
    assert committees.members_of("fog-a", ["d1", "d2", "d3"], 1) == ["fog-a"]
    keys = [(i, SigningKey().public_key) for i in ("a", "b", "c", "d", "e")]
    fields = committees.spec_fields(keys)
    assert fields["sealer"] == "quorum" and fields["committee"].threshold == 4 and fields["committee"].faults == 1
    assert committees.spec_fields(keys[:1])["sealer"] == "single"
    assert "epochs" not in fields and "epochs" not in committees.spec_fields(keys[:4], epoch_blocks=8, seats=4)
    pooled = committees.spec_fields(keys, epoch_blocks=8, seats=4)["epochs"]  # five in the pool, four seats
    assert (pooled.blocks, pooled.seats, pooled.first, pooled.always) == (8, 4, ["a", "b", "c", "d"], ["a"])


def heights(site: LocalSite, chain: str, holders: list[str]) -> dict[str, list[bytes]]:
    """Every holder's block hashes of ``chain``, read from its own SQLite file."""
    out = {}
    for n in holders:
        with contextlib.closing(Chain.open(db_path(site.cfgs[n], chain))) as c:
            out[n] = [c.store.block_row(h)[0] for h in range(c.tip.height + 1)]
    return out


def assert_safe(site: LocalSite, chain: str, holders: list[str]) -> None:
    """No two replicas hold different blocks at one height; every replica's chain verifies (quorum seals)."""
    seen = heights(site, chain, holders)
    for h in range(max(len(v) for v in seen.values())):
        assert len({v[h] for v in seen.values() if len(v) > h}) == 1, f"replicas differ at height {h}"
    for n in holders:
        with contextlib.closing(Chain.open(db_path(site.cfgs[n], chain), registry=registry_for(site.cfgs[n]))) as c:
            assert c.verify() == c.tip.height + 1


async def until(predicate, timeout: float = 60.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.1)


@pytest.mark.broker
async def test_the_fog_and_its_devices_keep_the_sub_chain_through_a_crashed_leader(broker, tmp_path):
    need_mosquitto()
    site = LocalSite(tmp_path, broker.port, {"fog-a": DEVICES, "fog-b": ["dev-b"]}, settings=SETTINGS)
    spec = site.spec("fog-a")
    assert spec.sealer == "quorum" and spec.committee.ids == [*DEVICES, "fog-a"] and spec.committee.threshold == 3
    assert site.spec("fog-b").sealer == "single"  # one device: the fog seals alone
    async with site:
        fog = site.nodes["fog-a"]
        assert all(site.nodes[d].ledger is not None for d in DEVICES) and site.nodes["dev-b"].ledger is None
        key = site.key("fog-a")

        async def note(text: str):
            return await asyncio.wait_for(fog.ledger.submit(record_tx(Note("t", text.encode()), "fog-a", key)), 30)

        first = await note("all four replicas up")
        await until(lambda: all(site.nodes[d].ledger.chain.tip.height >= first.height for d in DEVICES))

        # the anchor on the main chain carries the committee's quorum: Protocol 1 from fog-b says so
        cfg = site.cfgs["fog-b"]
        verdict = None
        async with site.session("fog-b") as s, asyncio.timeout(60):
            while verdict is None or not verdict.ok:  # PENDING until fog-a's anchor and its beacon reach fog-b
                await asyncio.sleep(0.3)
                with contextlib.closing(Chain.open(db_path(cfg), registry=registry_for(cfg))) as local:
                    cc = CrossChain(s, local, main_node="cloud-1", server_of=lambda c: server_of(cfg, c),
                                    registry=registry_for(cfg), timeout=10)
                    verdict = await cc.verify_tx("fog-a", first.txid)
        assert any("signed by 3 of 4 members of fog-a's committee" in line or
                   "signed by 4 of 4 members of fog-a's committee" in line for line in verdict.steps), verdict.steps

        # the main chain's final committee is the cloud and both fogs: they finalize its blocks by FFG votes
        cloud = site.nodes["cloud-1"].ledger
        assert sorted(cloud.chain.spec.finality) == ["cloud-1", "fog-a", "fog-b"]
        await until(lambda: cloud.finality.finalized_height >= 2)
        with contextlib.closing(Chain.open(db_path(site.cfgs["cloud-1"]))) as main:
            voters = {rec.signer for _, rec in main.records("consensus.ffg-vote", limit=500)}
        assert {"fog-a", "fog-b", "cloud-1"} <= voters

        # the leader of view 0 (dev-1, the first id) crashes: a view change, and the other three go on
        leader = spec.committee.ids[0]
        await site.stop(leader)
        second = await note("the leader is down")
        assert second.height > first.height
        live = [d for d in DEVICES if d != leader]
        await until(lambda: all(site.nodes[d].ledger.chain.tip.height >= second.height for d in live))
        assert max(site.nodes[d].ledger.producer.replica.view for d in live) >= 1

        def anchored_without_the_leader() -> bool:  # the three live members still make the anchor's quorum
            with contextlib.closing(Chain.open(db_path(site.cfgs["cloud-1"]))) as main:
                found = main.store.latest_anchor("fog-a")
                if found is None or found[0] < second.height:
                    return False
                sigs = decode_tx(main.store.tx(found[2])[2]).sigs
            assert len(sigs) >= 3 and leader not in {s.signer for s in sigs}, sigs
            return True

        await until(anchored_without_the_leader)

        # it comes back and catches up by state transfer from its peers
        await site.start(leader)
        third = await note("everyone again")
        await until(lambda: site.nodes[leader].ledger.chain.tip.height >= third.height)
    assert_safe(site, "fog-a", ["fog-a", *DEVICES])


async def test_a_member_endorses_only_the_anchor_its_own_replica_builds(tmp_path):
    """The fog cannot get an anchor endorsed for a history the members do not hold, nor before they hold it."""
    from tests.ledger_helpers import KEYS, new_chain, sealer_for, sub_spec

    chain = new_chain(tmp_path, sub_spec("fog-a"))
    for i in range(3):
        chain.submit(record_tx(Note("t", b"%d" % i), "fog-a", KEYS["fog-a"]))
        chain.mine(sealer_for("fog-a"))
    body = chain.anchor_body(-1)
    assert endorse.own_body(chain, body) == body
    forged = Anchor(body.chain, body.prev_height, [*body.digests[:-1], b"\1" * 32], body.header)
    with pytest.raises(LedgerError) as mismatch:
        endorse.own_body(chain, forged)
    assert mismatch.value.reason == "mismatch"
    ahead = Anchor(body.chain, body.prev_height, [*body.digests, b"\2" * 32], body.header)
    with pytest.raises(LedgerError) as behind:
        endorse.own_body(chain, ahead)
    assert behind.value.reason == "behind"
    chain.close()


def test_a_final_committee_of_four_makes_the_main_chains_blocks_by_pbft():
    keys = [(i, SigningKey().public_key) for i in ("cloud-1", "fog-a", "fog-b", "fog-c")]
    fields = committees.main_fields("cloud-1", keys)
    assert fields["sealer"] == "quorum" and fields["committee"].threshold == 3 and fields["proposal"].name == "pbft"
    assert fields["proposal"].credit == fields["finality"] == {i: 1 for i, _ in keys}
    three = committees.main_fields("cloud-1", keys[:3])  # tolerates no fault: every member signs every block
    assert three["sealer"] == "quorum" and three["committee"].threshold == 3 and three["proposal"].name == "pbft"
    alone = committees.main_fields("cloud-1", keys[:1])
    assert alone["sealer"] == "single" and "proposal" not in alone and alone["finality"] is None


def test_credit_weighted_leaders_lead_in_proportion_to_credit():
    from edgefl.consensus.proposal import PbftLeader, ProposalSpec
    from edgefl.ledger.committee import Committee

    committee = Committee.bft([(i, SigningKey().public_key) for i in ("a", "b", "c", "d")])
    credit = {"a": 1, "b": 1, "c": 2, "d": 4}
    rule = PbftLeader(ProposalSpec("pbft", credit=credit))
    leaders = [rule.primary(committee, v, "main") for v in range(8000)]
    for member, weight in credit.items():  # 1000 views per unit of credit, give or take sampling noise
        assert abs(leaders.count(member) - 1000 * weight) < 200, (member, leaders.count(member))
    assert leaders[:50] == [rule.primary(committee, v, "main") for v in range(50)]  # a pure function of the view
    assert leaders[:50] != [rule.primary(committee, v, "other") for v in range(50)]  # and of the chain
    plain = PbftLeader(ProposalSpec("pbft"))
    assert [plain.primary(committee, v) for v in range(5)] == ["a", "b", "c", "d", "a"]  # round robin
    with pytest.raises(LedgerError, match="every committee member"):
        PbftLeader(ProposalSpec("pbft", credit={"a": 1})).validate(committee, "genesis.proposal")


MAIN_FOGS = {"fog-a": ["dev-a"], "fog-b": ["dev-b"], "fog-c": ["dev-c"]}


@pytest.mark.broker
async def test_the_cloud_and_three_fogs_keep_the_main_chain_through_a_crashed_member(broker, tmp_path):
    """Four members: every fog holds a replica of the main chain, PBFT commits the cloud's records and the fogs'
    anchors; one fog down (the view-0 leader when a fog leads it), the other three go on; back, it catches up."""
    from edgefl.consensus.proposal import primary_of

    need_mosquitto()
    site = LocalSite(tmp_path, broker.port, MAIN_FOGS, settings=SETTINGS)
    spec = site.spec("cloud-1")
    members = ["cloud-1", *MAIN_FOGS]
    assert spec.sealer == "quorum" and spec.committee.ids == members and spec.proposal.credit
    main = spec.chain
    async with site:
        cloud = site.nodes["cloud-1"].ledger
        assert all(site.nodes[f].main is not None and site.nodes[f].main.chain.id == main for f in MAIN_FOGS)
        key = site.key("cloud-1")

        async def note(text: str):
            return await asyncio.wait_for(cloud.submit(record_tx(Note("t", text.encode()), "cloud-1", key)), 30)

        first = await note("four replicas of the main chain")
        await until(lambda: all(site.nodes[f].main.chain.tip.height >= first.height for f in MAIN_FOGS))
        await until(lambda: all(cloud.chain.store.latest_anchor(f) is not None for f in MAIN_FOGS))  # fogs' anchors

        leader = primary_of(spec)(0)
        victim = leader if leader != "cloud-1" else "fog-c"  # the cloud serves the chain: a fog goes down
        await site.stop(victim)
        second = await note(f"{victim} is down")
        live = [f for f in MAIN_FOGS if f != victim]
        await until(lambda: all(site.nodes[f].main.chain.tip.height >= second.height for f in live))
        if victim == leader:
            assert max(site.nodes[f].main.producer.replica.view for f in live) >= 1
        await site.start(victim)
        third = await note("all four again")
        await until(lambda: site.nodes[victim].main.chain.tip.height >= third.height)
        await until(lambda: cloud.finality.finalized_height >= 2)
    assert_safe(site, main, members)


@pytest.mark.broker
async def test_a_deployed_sub_chain_redraws_its_committee_every_epoch_and_anchors_still_verify(broker, tmp_path):
    """``ledger.epoch_blocks``: the fog and five devices are the pool, four seated at a time; every device keeps
    a replica, the chain changes committee at each epoch block, and Protocol 1 still checks a record of the first
    epoch through its anchor (endorsed by a quorum of the pool, every one of which holds the blocks)."""
    need_mosquitto()
    devices = [f"dev-{i}" for i in range(1, 6)]
    settings = [*SETTINGS, "ledger.committee_size=6", "ledger.epoch_blocks=4", "ledger.epoch_seats=4"]
    site = LocalSite(tmp_path, broker.port, {"fog-a": devices, "fog-b": ["dev-b"]}, settings=settings)
    spec = site.spec("fog-a")
    assert spec.epochs is not None and spec.epochs.first == ["dev-1", "dev-2", "dev-3", "fog-a"]
    assert spec.committee.ids == [*devices, "fog-a"]
    async with site:
        fog = site.nodes["fog-a"]
        assert all(site.nodes[d].ledger is not None for d in devices)  # the unseated follow
        key = site.key("fog-a")
        first = await asyncio.wait_for(fog.ledger.submit(record_tx(Note("t", b"epoch 0"), "fog-a", key)), 30)
        i = 0
        async with asyncio.timeout(90):
            while fog.ledger.chain.state.epoch < 2:
                await fog.ledger.submit(record_tx(Note("t", b"%d" % i), "fog-a", key))
                i += 1
        await until(lambda: all(site.nodes[d].ledger.chain.state.epoch >= 2 for d in devices))
        cfg = site.cfgs["fog-b"]
        verdict = None
        async with site.session("fog-b") as s, asyncio.timeout(60):
            while verdict is None or not verdict.ok:
                await asyncio.sleep(0.3)
                with contextlib.closing(Chain.open(db_path(cfg), registry=registry_for(cfg))) as local:
                    cc = CrossChain(s, local, main_node="cloud-1", server_of=lambda c: server_of(cfg, c),
                                    registry=registry_for(cfg), timeout=10)
                    verdict = await cc.verify_tx("fog-a", first.txid)
        assert any("of 6 members of fog-a's committee" in line for line in verdict.steps), verdict.steps
        with contextlib.closing(Chain.open(db_path(site.cfgs["fog-a"]), registry=registry_for(site.cfgs["fog-a"]))) as c:
            changes = [decode_tx(c.store.tx(t)[2]).body for t, _, _ in c.store.find(kind="epoch")]
        assert len(changes) >= 2 and all("fog-a" in ch.members for ch in changes)
    assert_safe(site, "fog-a", ["fog-a", *devices])
