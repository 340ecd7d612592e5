"""The ledger's seams for committee consensus: propose / validate-proposal / commit-sealed, BFT quorums,
and the block-production seam of the ledger service (stopping never strands a submitter)."""

import asyncio
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefl.ledger.block import Seal
from edgefl.ledger.chain import Chain
from edgefl.ledger.committee import Committee, bft_threshold, sign_all
from edgefl.ledger.errors import InvalidBlock, LedgerError
from edgefl.ledger.sealer import QuorumSealer
from edgefl.ledger.tx import txid
from edgefl.ledger.validation import validate_block
from tests.ledger_helpers import KEYS, T0, note, registry, sub_spec

MEMBERS = ["fog-a", "dev-1", "dev-2", "peer-1"]


def bft_spec():
    spec = sub_spec(sealer="quorum", members=MEMBERS)
    return dataclasses.replace(spec, committee=Committee.bft([(m, KEYS[m].public_key) for m in MEMBERS]))


def replicas(tmp_path, n=2):
    spec = bft_spec()
    genesis = QuorumSealer("fog-a", [(m, KEYS[m]) for m in MEMBERS])
    return [Chain.create(tmp_path / f"r{i}.db", spec, genesis, registry=registry()) for i in range(n)]


def seal(block, signers):
    return Seal("quorum", sign_all(block.hash, [(m, KEYS[m]) for m in signers]))


@given(st.integers(1, 64))
def test_bft_threshold_gives_intersecting_quorums_that_n_minus_f_can_form(n):
    t = bft_threshold(n)
    f = (n - 1) // 3
    assert 2 * t - n >= f + 1  # any two quorums share an honest member
    assert n - f >= t  # the honest members alone make a quorum
    assert t == -(-(2 * n + 1) // 3)
    c = Committee.bft([(f"m{i:02}", KEYS["fog-a"].public_key) for i in range(n)])
    assert c.threshold == t and c.faults == f


def test_a_replica_validates_an_unsealed_proposal_and_commits_it_with_the_quorum(tmp_path):
    leader, backup = replicas(tmp_path)
    raws = [note(i) for i in range(5)]
    for raw in raws:
        leader.submit(raw)
    backup.submit(raws[0])  # the backup saw one of them before
    proposal = leader.propose("fog-a", ts_ms=T0 + 1000)
    assert proposal.seal.sigs == [] and proposal.header.proposer == "fog-a"
    with pytest.raises(InvalidBlock) as err:  # the full validation refuses it: no certificate yet
        validate_block(proposal.raw, backup.tip, backup.state, registry())
    assert err.value.reason == "bad_quorum"
    checked, state = backup.validate_proposal(proposal.raw)
    assert checked.hash == proposal.hash and len(checked.txs) == 5
    with pytest.raises(InvalidBlock) as err:  # two of four is no BFT quorum
        backup.commit_sealed(checked, seal(checked, ["dev-1", "fog-a"]), state)
    assert err.value.reason == "bad_quorum" and backup.tip.height == 0
    forged = Seal("quorum", sign_all(b"\x00" * 32, [(m, KEYS[m]) for m in ["dev-1", "dev-2", "fog-a"]]))
    with pytest.raises(InvalidBlock) as err:
        backup.commit_sealed(checked, forged, state)
    assert err.value.reason == "bad_signature"
    cert = seal(checked, ["dev-1", "dev-2", "fog-a"])
    a = leader.commit_sealed(proposal, cert)
    b = backup.commit_sealed(checked, cert, state)
    assert a.raw == b.raw and leader.tip == backup.tip and leader.pending == backup.pending == 0
    for c in (leader, backup):
        assert c.verify() == 2
        c.close()


def test_validate_proposal_refuses_what_the_chain_would_refuse(tmp_path):
    leader, backup = replicas(tmp_path)
    leader.submit(note(1))
    proposal = leader.propose("fog-a", ts_ms=T0 + 1000)
    outsider = leader.propose("fog-b", ts_ms=T0 + 1000)  # not a member of the committee
    with pytest.raises(InvalidBlock) as err:
        backup.validate_proposal(outsider.raw)
    assert err.value.field == "header.proposer"
    tampered = bytearray(proposal.raw)
    at = bytes(tampered).index(b"test") + 6  # inside the note's data
    tampered[at] ^= 1
    with pytest.raises(InvalidBlock):
        backup.validate_proposal(bytes(tampered))
    backup.commit_sealed(*backup.validate_proposal(proposal.raw)[:1], seal(proposal, MEMBERS[:3]))
    with pytest.raises(InvalidBlock) as err:  # the same proposal again no longer extends the tip
        backup.validate_proposal(proposal.raw)
    assert err.value.reason == "bad_link"
    with pytest.raises(InvalidBlock):
        backup.commit_sealed(proposal, seal(proposal, MEMBERS[:3]))
    leader.close()
    backup.close()


def test_committing_a_peers_block_revalidates_the_local_mempool(tmp_path):
    leader, backup = replicas(tmp_path)
    for i in range(3):
        leader.submit(note(i))
    backup.submit(note(1))
    backup.submit(note(7))
    block = leader.propose("fog-a", ts_ms=T0 + 1000)
    backup.commit_sealed(backup.validate_proposal(block.raw)[0], seal(block, MEMBERS[1:]))
    assert backup.pending == 1  # note 1 is on the chain now, note 7 still waits
    nxt = backup.propose("dev-1", ts_ms=T0 + 2000)
    assert [t.raw for t in nxt.txs] == [note(7)]
    leader.close()
    backup.close()


@pytest.mark.broker
async def test_stopping_the_node_fails_waiting_submitters_instead_of_hanging(broker, tmp_path):
    from edgefl.ledger.cluster import LocalCluster
    async with LocalCluster(tmp_path, broker.port, keys=KEYS, block_interval_s=3600) as c:
        node = c.ledgers["fog-a"]
        waiting = asyncio.create_task(node.submit(note(1)))
        cancelled = asyncio.create_task(node.submit(note(2)))
        async with asyncio.timeout(5):
            while not {txid(note(1)), txid(note(2))} <= set(node.chain._pool):
                await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert txid(note(1)) in node._waiters and txid(note(2)) not in node._waiters  # the cancelled one left nothing behind
        for t in c._tasks:  # the node stops: its producer will never make that block
            t.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(LedgerError) as err:
                await waiting
        assert err.value.reason == "stopped"
        with pytest.raises(LedgerError) as err:
            await node.submit(note(3))
        assert err.value.reason == "stopped"
