"""Pluggable block proposal: PBFT leader, proof of credit (VRF in the header), proof of work (nonce in the header)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from edgefl.consensus.proposal import PROPOSALS, ProofOfCredit, ProposalSpec, claimer, from_spec, pow_hash
from edgefl.crypto.hashing import tagged_hash
from edgefl.ledger.block import Header, Tip, decode_block, decode_header, encode_header
from edgefl.ledger.chain import Chain
from edgefl.ledger.errors import InvalidBlock, InvalidTx, LedgerError
from edgefl.ledger.sealer import QuorumSealer, SingleSealer
from edgefl.ledger.tx import genesis_tx
from edgefl.ledger.validation import finish_block
from tests.ledger_helpers import KEYS, T0, note, registry, sub_spec

MEMBERS = ["fog-a", "peer-1", "peer-2", "dev-1"]
CREDIT = {"fog-a": 6, "peer-1": 3, "peer-2": 1, "dev-1": 2}


def spec_for(rule: ProposalSpec, sealer="single", threshold=None):
    base = sub_spec(members=MEMBERS, sealer=sealer, threshold=threshold)
    return dataclasses.replace(base, proposal=rule)


def chain_for(tmp_path, spec) -> Chain:
    first = SingleSealer("fog-a", KEYS["fog-a"]) if spec.sealer == "single" else QuorumSealer(
        "fog-a", [(m, KEYS[m]) for m in MEMBERS])
    return Chain.create(tmp_path / "c.db", spec, first, registry=registry())


def test_headers_without_a_claim_keep_their_bytes():
    h = Header("c", 1, bytes(32), T0, bytes(32), 0, bytes(256), "fog-a")
    assert set(decode_header(encode_header(h)).to_wire()) == {"chain", "height", "prev", "ts", "root", "n", "acc",
                                                             "proposer"}
    assert sorted(PROPOSALS) == ["credit", "pbft", "pow"]


def test_proof_of_work_nonce_is_mined_and_checked(tmp_path):
    spec = spec_for(ProposalSpec("pow", difficulty=8))
    chain = chain_for(tmp_path, spec)
    sealer = SingleSealer("peer-1", KEYS["peer-1"])
    chain.submit(note(1))
    with pytest.raises(InvalidBlock) as err:  # no nonce: the chain will not build it
        chain.mine(sealer)
    assert err.value.field == "header.nonce"
    block = chain.mine(sealer, claim=claimer(spec, chain.tip, "peer-1"))
    assert pow_hash(block.header)[0] == 0 and block.header.nonce is not None
    assert chain.verify() == 2
    # a replica refuses a block whose nonce misses the target
    chain.submit(note(2))
    good = chain.build(sealer, claim=claimer(spec, chain.tip, "peer-1"))
    bad_header = dataclasses.replace(good.header, nonce=good.header.nonce + 1)
    while pow_hash(bad_header)[0] == 0:
        bad_header = dataclasses.replace(bad_header, nonce=bad_header.nonce + 1)
    other = Chain.open(tmp_path / "c.db", registry=registry())
    forged = _reseal(other, bad_header, good, sealer)
    with pytest.raises(InvalidBlock) as err:
        other.append(forged)
    assert err.value.reason == "bad_proposer" and err.value.field == "header.nonce"
    other.append(good.raw)


def _reseal(chain, header, like, sealer):
    """``like`` with another header (accumulator recomputed) and a valid seal on it."""
    from edgefl.crypto import accumulator
    from edgefl.ledger.validation import propose_block
    block = propose_block(chain.tip, chain.id, like.txs, header.proposer, header.ts, sealer=sealer.name,
                          claim=lambda h: dataclasses.replace(h, view=header.view, nonce=header.nonce,
                                                              vrf=header.vrf, proposer=header.proposer))
    assert accumulator.to_bytes(block.acc) == block.header.acc
    return finish_block(block, sealer.seal(block.hash)).raw


def test_pbft_leader_is_the_views_primary(tmp_path):
    spec = spec_for(ProposalSpec("pbft"), sealer="quorum", threshold=3)
    chain = chain_for(tmp_path, spec)
    seal = QuorumSealer("x", [(m, KEYS[m]) for m in MEMBERS])
    ids = sorted(MEMBERS)
    for view in (0, 1, 5):
        chain.submit(note(view))
        primary = ids[view % 4]
        wrong = ids[(view + 1) % 4]
        with pytest.raises(InvalidBlock) as err:
            chain.propose(wrong, claim=claimer(spec, chain.tip, wrong, view=view))
        assert err.value.reason == "bad_proposer" and err.value.field == "header.proposer"
        block = chain.propose(primary, claim=claimer(spec, chain.tip, primary, view=view))
        assert (block.header.view or 0) == view
        chain.commit_sealed(block, seal.seal(block.hash))
    assert chain.verify() == 4


def test_bft_rules_refuse_a_threshold_below_two_thirds():
    for rule in (ProposalSpec("pbft"), ProposalSpec("credit", credit=CREDIT)):
        with pytest.raises(InvalidTx) as err:
            genesis_tx(spec_for(rule, sealer="quorum", threshold=2))  # 2 of 4: a majority, not BFT
        assert err.value.field == "genesis.committee.threshold" and "ceil((2n+1)/3) = 3" in err.value.detail
        genesis_tx(spec_for(rule, sealer="quorum", threshold=3))
    for bad, field in [(ProposalSpec("lottery"), "name"), (ProposalSpec("pow"), "difficulty"),
                       (ProposalSpec("credit", credit={"fog-a": 1}), "credit")]:
        with pytest.raises(InvalidTx) as err:
            genesis_tx(spec_for(bad))
        assert err.value.field == f"genesis.proposal.{field}"


def test_proof_of_credit_draws_proposers_by_credit_and_checks_the_vrf(tmp_path):
    spec = spec_for(ProposalSpec("credit", credit=CREDIT, tau=1))
    rule: ProofOfCredit = from_spec(spec.proposal)
    wins = Counter()
    for i in range(300):
        tip = Tip(i, tagged_hash(b"test/tip", i.to_bytes(4, "big")), 2, T0)
        for m in MEMBERS:
            if rule.eligible(tip, spec.committee, m, KEYS[m].secret).selected:
                wins[m] += 1
    # more credit, more slots: P(selected) = 1 - (1 - 1/12)^credit
    assert wins["fog-a"] > wins["peer-1"] > wins["peer-2"] and wins["dev-1"] > wins["peer-2"]
    assert 300 * 0.3 < wins["fog-a"] < 300 * 0.6
    chain = chain_for(tmp_path, spec)
    chain.submit(note(1))
    round_, member = next((r, m) for r in range(50) for m in MEMBERS
                          if rule.eligible(chain.tip, spec.committee, m, KEYS[m].secret, r).selected)
    loser = next(m for m in MEMBERS if not rule.eligible(chain.tip, spec.committee, m, KEYS[m].secret,
                                                         round_).selected)
    with pytest.raises(LedgerError, match="not eligible"):
        chain.mine(SingleSealer(loser, KEYS[loser]), claim=claimer(spec, chain.tip, loser, KEYS[loser], round_))
    good = chain.build(SingleSealer(member, KEYS[member]), claim=claimer(spec, chain.tip, member, KEYS[member],
                                                                          round_))
    assert decode_header(decode_block(good.raw, 1 << 20).header).vrf == good.header.vrf
    other = Chain.open(tmp_path / "c.db", registry=registry())
    # the loser copies the winner's proof: it does not verify under the loser's key
    stolen = _reseal(other, dataclasses.replace(good.header, proposer=loser), good, SingleSealer(loser, KEYS[loser]))
    with pytest.raises(InvalidBlock) as err:
        other.append(stolen)
    assert err.value.field == "header.vrf"
    other.append(good.raw)
    assert other.verify() == 2
