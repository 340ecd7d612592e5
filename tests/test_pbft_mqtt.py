"""PBFT committees over a real Mosquitto: every member a ledger node with its own session, SQLite chain and vote
log; blocks carry the committee's commit certificate as their quorum seal."""

import asyncio
import time

import pytest

from edgefl.consensus.byzantine import ByzantineProducer
from edgefl.consensus.proposal import ProposalSpec
from edgefl.consensus.shell import PbftProducer
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.chain import Chain
from edgefl.ledger.committee import Committee
from edgefl.ledger.records import Note
from edgefl.ledger.sealer import QuorumSealer
from edgefl.ledger.service import LedgerNode
from edgefl.ledger.tx import ChainSpec, record_tx
from edgefl.runtime.metrics import Metrics
from tests.conftest import Nodes, connected

pytestmark = pytest.mark.broker


class Members:
    def __init__(self, tmp_path, port, n=4, view_timeout=0.5, byzantine=None, epochs=None, pace=0.0):
        """``epochs``: the committee is re-drawn from these ``n`` (the pool) as that ``EpochSpec`` says."""
        self.ids = ["fog-a"] + [f"dev-{i:02}" for i in range(1, n)]
        self.byzantine = byzantine or {}
        self.nodes = Nodes(port, *self.ids, "client")
        keys = self.nodes.keys
        self.committee = Committee.bft([(i, keys[i].public_key) for i in self.ids])
        self.spec = ChainSpec(chain="fog-a", role="sub", sealer="quorum", committee=self.committee,
                              max_block=1 << 20, ts=time.time_ns() // 1_000_000, parent="main",
                              parent_committee=Committee.of([("fog-a", keys["fog-a"].public_key)]),
                              proposal=ProposalSpec("pbft"), epochs=epochs)
        genesis = QuorumSealer("fog-a", [(i, keys[i]) for i in self.ids])
        self.tmp, self.view_timeout, self.pace = tmp_path, view_timeout, pace
        self.ledgers, self.tasks = {}, {}
        for i in self.ids:
            chain = Chain.create(tmp_path / f"{i}.db", self.spec, genesis, registry=self.nodes.registry,
                                 metrics=self.nodes.metrics.setdefault(i, Metrics()))
            session = self.nodes.session(i, "fog" if i == "fog-a" else "device")
            self.ledgers[i] = LedgerNode(
                chain, session, BlobStore(tmp_path / i / "blobs"), genesis, keys={i: keys[i]}, main_node="cloud-1",
                metrics=self.nodes.metrics[i],
                producer=lambda node, i=i: self.producer(node, i))

    def producer(self, node, i):
        kw = dict(votelog=self.tmp / f"{i}.votes", view_timeout=self.view_timeout, pace=self.pace)
        if i in self.byzantine:
            return ByzantineProducer(node, self.nodes.keys[i], self.byzantine[i], **kw)
        return PbftProducer(node, self.nodes.keys[i], **kw)

    async def __aenter__(self):
        for node in self.ledgers.values():
            await node.session.__aenter__()
        await connected(*(n.session for n in self.ledgers.values()))
        for i, node in self.ledgers.items():
            self.tasks[i] = asyncio.create_task(node.producer.run())
        await asyncio.sleep(0.2)  # subscriptions in place
        return self

    async def restart(self, i):
        """``i`` again from its SQLite chain and vote log, with a new session."""
        old = self.ledgers[i]
        old.close()
        keys = self.nodes.keys
        chain = Chain.open(self.tmp / f"{i}.db", registry=self.nodes.registry, metrics=self.nodes.metrics[i])
        node = self.ledgers[i] = LedgerNode(
            chain, self.nodes.session(i, "fog" if i == "fog-a" else "device"), old.blobs, old.sealer,
            keys={i: keys[i]}, main_node="cloud-1", metrics=self.nodes.metrics[i],
            producer=lambda n: self.producer(n, i))
        await node.session.__aenter__()
        await connected(node.session)
        self.tasks[i] = asyncio.create_task(node.producer.run())
        await asyncio.sleep(0.2)

    async def stop(self, i):
        self.tasks[i].cancel()
        await asyncio.gather(self.tasks[i], return_exceptions=True)
        await self.ledgers[i].session.__aexit__(None, None, None)

    async def __aexit__(self, *exc):
        for i in list(self.tasks):
            if not self.tasks[i].done():
                await self.stop(i)
        for node in self.ledgers.values():
            node.close()

    async def submit_all(self, raw, among=None):
        """A client hands the transaction to every member (whoever leads proposes it); returns the receipts."""
        return await asyncio.gather(*(self.ledgers[i].submit(raw) for i in (among or self.ids)))

    def check_safety(self, among=None):
        chains = [self.ledgers[i].chain for i in (among or self.ids)]
        top = min(c.tip.height for c in chains)
        for h in range(top + 1):
            assert len({c.store.block_row(h)[0] for c in chains}) == 1, f"fork at {h}"
        for c in chains:
            assert c.verify() == c.tip.height + 1  # every seal a valid commit certificate
        return top


def note(i, signer="client", nodes=None):
    return record_tx(Note("t", b"%d" % i), signer, nodes.keys[signer], ts_ms=time.time_ns() // 1_000_000)


async def test_four_replicas_commit_blocks_sealed_by_the_committee(broker, tmp_path):
    async with Members(tmp_path, broker.port) as c:
        raws = [note(i, nodes=c.nodes) for i in range(6)]
        async with asyncio.timeout(15):
            receipts = [await c.submit_all(raw) for raw in raws]
        for rs in receipts:
            assert len({(r.height, r.block) for r in rs}) == 1  # the same block at every member
        assert c.check_safety() >= 1
        seal = c.ledgers[c.ids[1]].chain.store.blocks(1, 1)
        from edgefl.ledger.block import decode_block
        sigs = decode_block(next(seal), 1 << 20).seal.sigs
        assert len(sigs) >= c.committee.threshold == 3


async def test_a_paced_leader_puts_what_arrives_meanwhile_in_one_block(broker, tmp_path):
    """Sixty records over 1.2 s: with a pace of 0.25 s the leader proposes at most once per pace, so they commit
    in a handful of blocks, every one of them at every member; without it, in many more."""
    blocks = {}
    for pace in (0.25, 0.0):
        async with Members(tmp_path / f"pace-{pace}", broker.port, view_timeout=2.0, pace=pace) as c:
            raws = [note(i, nodes=c.nodes) for i in range(60)]

            async def later(i, raw):
                await asyncio.sleep(0.02 * i)  # one every 20 ms, as devices' records come
                return await c.submit_all(raw)

            t0 = time.monotonic()
            async with asyncio.timeout(60):
                receipts = await asyncio.gather(*(later(i, raw) for i, raw in enumerate(raws)))
            elapsed = time.monotonic() - t0
            assert all(len({(r.height, r.block) for r in rs}) == 1 for rs in receipts)
            blocks[pace] = c.check_safety()
            if pace:  # one block at once, then at most one per pace (the first may wait a pace for the last)
                assert blocks[pace] <= elapsed / pace + 2, (blocks[pace], elapsed)
    assert blocks[0.25] < blocks[0.0], blocks


async def test_progress_after_the_leader_is_stopped_and_it_catches_up_after_restart(broker, tmp_path):
    async with Members(tmp_path, broker.port, view_timeout=0.4) as c:
        leader = c.committee.ids[0]
        await c.submit_all(note(0, nodes=c.nodes))
        await c.stop(leader)
        others = [i for i in c.ids if i != leader]
        async with asyncio.timeout(20):
            for i in range(1, 4):  # to one member only: it shares the request with whoever leads
                await c.submit_all(note(i, nodes=c.nodes), among=[others[i % len(others)]])
        assert c.check_safety(others) >= 2
        assert c.ledgers[others[0]].producer.replica.view >= 1
        await c.restart(leader)
        async with asyncio.timeout(20):
            await c.submit_all(note(9, nodes=c.nodes), among=others)
            while c.ledgers[leader].chain.tip.height < c.ledgers[others[0]].chain.tip.height:
                await asyncio.sleep(0.05)  # state transfer from its peers
        assert c.check_safety() >= 4


async def test_sixteen_members_with_five_byzantine_never_fork_and_make_progress(broker, tmp_path):
    ids = ["fog-a"] + [f"dev-{i:02}" for i in range(1, 16)]
    order = sorted(ids)  # the leader of view v is order[v % 16]
    byz = {order[0]: "equivocate", order[5]: "silent", order[7]: "bad_sig", order[9]: "replay", order[11]: "silent"}
    async with Members(tmp_path, broker.port, n=16, view_timeout=0.5, byzantine=byz) as c:
        honest = [i for i in c.ids if i not in byz]
        async with asyncio.timeout(60):  # progress, not speed: the machine may be loaded
            for i in range(3):
                await c.submit_all(note(i, nodes=c.nodes), among=[honest[i]])
            while min(c.ledgers[i].chain.tip.height for i in honest) < 3:
                await asyncio.sleep(0.05)
        assert c.check_safety(honest) >= 3
        assert c.ledgers[honest[0]].producer.replica.view >= 1  # the equivocating leader was deposed
        seen = sum(c.nodes.metrics[i].get("pbft_equivocation") for i in honest)
        assert seen >= 1  # and its two signed proposals were caught
        assert sum(c.nodes.metrics[i].get("pbft_rejected", reason="bad_signature") for i in honest) >= 1


async def test_a_request_its_peers_missed_is_passed_on_again_without_a_view_change(broker, tmp_path):
    """A member admits a request while its peers are not yet subscribed (the broker drops the broadcast): it
    passes the request on again after a view timeout, and the leader of view 0 commits it."""
    c = Members(tmp_path, broker.port, view_timeout=2.0)  # ample: the peers subscribe long before it expires
    member = c.committee.ids[1]  # not the leader: without a second copy only a view change would bring it in
    try:
        for node in c.ledgers.values():
            await node.session.__aenter__()
        await connected(*(n.session for n in c.ledgers.values()))
        c.tasks[member] = asyncio.create_task(c.ledgers[member].producer.run())
        await asyncio.sleep(0.2)
        receipt = asyncio.create_task(c.ledgers[member].submit(note(1, nodes=c.nodes)))
        await asyncio.sleep(0.1)  # its Requests went out to nobody
        assert c.nodes.metrics[member].get("pbft_request_resent") == 0
        for i in c.ids:
            if i != member:
                c.tasks[i] = asyncio.create_task(c.ledgers[i].producer.run())
        async with asyncio.timeout(20):
            r = await receipt
        assert r.height == 1
        assert c.nodes.metrics[member].get("pbft_request_resent") >= 1
        assert all(c.ledgers[i].producer.replica.view == 0 for i in c.ids)  # the leader of view 0 proposed it
        async with asyncio.timeout(10):
            while min(c.ledgers[i].chain.tip.height for i in c.ids) < 1:
                await asyncio.sleep(0.05)
        c.check_safety()
    finally:
        await c.__aexit__(None, None, None)


async def test_the_committee_is_redrawn_each_epoch_without_stopping_the_chain(broker, tmp_path):
    """Seven replicas, four seated at first; every fourth block an epoch block seats the members the recorded
    VRF claims drew. A silent member (seated in epoch 0) records no claim and loses its seat; the chain goes on
    through every change, the replicas never fork, and each block's seal is its own epoch's certificate."""
    from edgefl.consensus.epoch import EpochSpec

    first = ["dev-01", "dev-02", "dev-03", "fog-a"]
    silent = "dev-02"
    spec = EpochSpec(blocks=4, seats=6, first=first, always=["fog-a"])
    async with Members(tmp_path, broker.port, n=7, view_timeout=0.5, byzantine={silent: "silent"},
                       epochs=spec) as c:
        honest = [i for i in c.ids if i != silent]
        assert c.ledgers["fog-a"].producer.replica.ids == first
        i = 0
        async with asyncio.timeout(120):  # progress, not speed: the machine may be loaded
            while min(c.ledgers[m].chain.state.epoch for m in honest) < 3:
                await c.submit_all(note(i, nodes=c.nodes), among=[honest[i % len(honest)]])
                i += 1
        top = c.check_safety(honest)
        assert top >= 12
        chain = c.ledgers["fog-a"].chain
        from edgefl.ledger.tx import decode_tx
        changes = [decode_tx(chain.store.tx(t)[2]).body for t, _, _ in chain.store.find(kind="epoch")]
        assert [ch.epoch for ch in changes][:3] == [1, 2, 3]
        assert all(silent not in {cl.member for cl in ch.claims} for ch in changes)  # it never spoke
        seated = [first] + [ch.members for ch in changes]
        assert any(silent not in m for m in seated[1:]), seated  # so it lost its seat
        assert all("fog-a" in m and len(m) >= 4 for m in seated)
        for m in honest:  # every replica, seated or following, runs the committee of the epoch it is in
            p = c.ledgers[m].producer
            assert p.replica.ids == c.ledgers[m].chain.current.committee.ids
            assert p.replica.member == (m in p.replica.ids)


async def test_a_replica_restarted_epochs_later_catches_up_through_every_committee_change(broker, tmp_path):
    """A pool member away for three epochs fetches the blocks it lacks, each checked against the certificate of
    its own epoch's committee (they change under it), and rejoins as the replica of the current epoch."""
    from edgefl.consensus.epoch import EpochSpec

    first = ["dev-01", "dev-02", "dev-03", "fog-a"]
    away = "dev-01"  # seated in epoch 0: it leaves with its seat
    async with Members(tmp_path, broker.port, n=7, view_timeout=0.5,
                       epochs=EpochSpec(blocks=4, seats=6, first=first, always=["fog-a"])) as c:
        others = [i for i in c.ids if i != away]
        await c.submit_all(note(0, nodes=c.nodes), among=others)
        await c.stop(away)
        i = 1
        async with asyncio.timeout(120):
            while min(c.ledgers[m].chain.state.epoch for m in others) < 3:
                await c.submit_all(note(i, nodes=c.nodes), among=[others[i % len(others)]])
                i += 1
        assert c.ledgers[away].chain.state.epoch == 0
        await c.restart(away)
        async with asyncio.timeout(60):
            while c.ledgers[away].chain.tip.height < c.ledgers["fog-a"].chain.tip.height:
                await c.submit_all(note(i, nodes=c.nodes), among=others)  # traffic: it learns it is behind
                i += 1
                await asyncio.sleep(0.2)
        assert c.check_safety() >= 12
        p = c.ledgers[away].producer
        assert p.epoch == c.ledgers[away].chain.state.epoch >= 3
        assert c.nodes.metrics[away].get("pbft_epoch_entered") >= 3  # entered each on the way
        assert p.replica.ids == c.ledgers["fog-a"].chain.current.committee.ids


async def test_an_equivocating_leader_is_proven_and_loses_its_seat_for_good(broker, tmp_path):
    """The view-0 leader of epoch 0 proposes two blocks for one height: the members it showed both record the
    proof, it is deposed, and the next epoch block bans it from every later draw (its claims count for nothing)."""
    from edgefl.consensus.epoch import EpochSpec
    from edgefl.ledger.tx import decode_tx

    first = ["dev-01", "dev-02", "dev-03", "fog-a"]
    cheat = "dev-01"  # the first id: it leads view 0
    async with Members(tmp_path, broker.port, n=7, view_timeout=1.5, byzantine={cheat: "equivocate"},
                       epochs=EpochSpec(blocks=4, seats=6, first=first, always=["fog-a"])) as c:
        honest = [i for i in c.ids if i != cheat]
        i = 0
        async with asyncio.timeout(120):
            while min(c.ledgers[m].chain.state.epoch for m in honest) < 2:
                await c.submit_all(note(i, nodes=c.nodes), among=[honest[i % len(honest)]])
                i += 1
        c.check_safety(honest)
        chain = c.ledgers["fog-a"].chain
        changes = [decode_tx(chain.store.tx(t)[2]).body for t, _, _ in chain.store.find(kind="epoch")]
        assert changes[0].banned == [cheat] and [b.member for b in changes[0].evidence] == [cheat]
        assert all(cheat not in ch.members for ch in changes)
        assert chain.state.banned == [cheat]
        # each new committee started in the view the old one ended in (1, after the cheat was deposed), without
        # a view change of its own
        assert {c.ledgers[m].producer.replica.view for m in honest} == {1}
