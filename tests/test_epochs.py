"""A chain whose committee is re-drawn every epoch from its pool: the epoch block's change, recorded claims and
seed shares, validation against the committee of each block's epoch, restart, and forged or misplaced changes."""

import dataclasses

import pytest

from edgefl import codec
from edgefl.consensus import epoch as epochs
from edgefl.consensus.proposal import ProposalSpec, claimer
from edgefl.fl.reputation import INITIAL, WITHHELD, chain_records, fold, fold_chain
from edgefl.ledger.chain import Chain, verify_blocks
from edgefl.ledger.committee import Committee
from edgefl.ledger.errors import InvalidBlock, InvalidTx
from edgefl.ledger.sealer import QuorumSealer
from edgefl.ledger.tx import ChainSpec, decode_tx, make_tx, record_tx
from edgefl.ledger.validation import propose_block
from tests.ledger_helpers import KEYS, T0, committee, note, registry

POOL = ["dev-1", "dev-2", "fog-a", "fog-b", "fog-c", "peer-1", "peer-2"]
FIRST = ["dev-1", "dev-2", "fog-a", "fog-b"]
B = 4


def spec(**kw) -> ChainSpec:
    e = epochs.EpochSpec(blocks=B, seats=kw.pop("seats", 4), first=FIRST, always=["fog-a"])
    return ChainSpec(chain="fog-a", role="sub", sealer="quorum",
                     committee=Committee.bft([(m, KEYS[m].public_key) for m in POOL]), max_block=1 << 20, ts=T0,
                     parent="main", parent_committee=committee("cloud-1"), proposal=ProposalSpec("pbft"),
                     epochs=kw.pop("epochs", e), **kw)


def new(tmp_path, s=None) -> Chain:
    s = s or spec()
    return Chain.create(tmp_path / "fog-a.db", s, QuorumSealer(POOL[0], [(m, KEYS[m]) for m in POOL]),
                        registry=registry())


def seal(chain: Chain, block, members=None):
    members = members or chain.current.committee.ids
    return QuorumSealer(block.header.proposer, [(m, KEYS[m]) for m in members]).seal(block.hash)


def step(chain: Chain, txs=(), ts=None):
    """One block by the current committee: its view-0 primary proposes, every member signs."""
    for raw in txs:
        chain.submit(raw)
    leader = chain.current.committee.ids[0]
    block = chain.propose(leader, allow_empty=True, ts_ms=ts or T0 + 1000 * (chain.tip.height + 1),
                          claim=claimer(chain.current, chain.tip, leader, KEYS[leader]))
    return chain.commit_sealed(block, seal(chain, block))


def records(chain: Chain, members=POOL) -> list[bytes]:
    """What each of ``members`` records at the start of the chain's epoch: its share, its claim if drawn."""
    return [record_tx(m, who, KEYS[who], ts_ms=T0 + chain.tip.height)
            for who in members for m in epochs.my_records(chain.spec, chain.state, who, KEYS[who].secret)]


def run_epochs(chain: Chain, n: int, members=POOL) -> list[list[str]]:
    """``n`` epochs, every pool member recording at each start; the committee of each epoch."""
    seen = [list(chain.current.committee.ids)]
    for _ in range(n):
        step(chain, records(chain, members))
        while chain.tip.height % B != B - 1:
            step(chain, [note(chain.tip.height)])
        block = step(chain)  # the epoch block
        assert [t.kind.name for t in block.txs] == ["epoch"]
        seen.append(list(chain.current.committee.ids))
    return seen


def test_each_epoch_block_names_the_next_committee_drawn_from_recorded_claims(tmp_path):
    chain = new(tmp_path)
    assert chain.current.committee.ids == FIRST and chain.state.epoch == 0
    committees = run_epochs(chain, 6)
    assert chain.state.epoch == 6 and chain.tip.height == 6 * B
    assert len({tuple(c) for c in committees}) > 1, committees  # the draw moved seats
    changes = [decode_tx(chain.store.tx(tid)[2]).body for tid, _, _ in chain.store.find(kind="epoch")]
    assert [c.epoch for c in changes] == list(range(1, 7))
    for i, change in enumerate(changes):
        drawn = sorted({"fog-a"} | {c.member for c in change.claims})
        assert change.members == committees[i + 1] == (drawn if len(drawn) >= 4 else committees[i])
        # every member of the closing committee revealed its share: the next seed hashes all of them
        assert [s.member for s in change.shares] == committees[i]
    # the seals of every block were checked against the committee of its own epoch, from genesis
    assert chain.verify() == chain.tip.height + 1
    assert verify_blocks(chain.store.blocks(), registry=registry()) == chain.tip.height + 1
    reopened_committee = list(chain.current.committee.ids)
    chain.close()
    again = Chain.open(tmp_path / "fog-a.db", registry=registry())
    assert again.current.committee.ids == reopened_committee and again.state.epoch == 6
    assert again.state.seed == chain.state.seed
    step(again, [note(999)])  # and it goes on under that committee
    again.close()


def test_a_withheld_share_is_left_out_and_the_seed_still_moves(tmp_path):
    chain = new(tmp_path)
    quiet = "dev-2"
    step(chain, [r for r in records(chain) if decode_tx(r).body.signer != quiet or
                 decode_tx(r).body.type != "seed-share"])
    while chain.tip.height % B != B - 1:
        step(chain)
    seed0 = chain.state.seed
    change = decode_tx(step(chain).txs[0].raw).body
    assert quiet not in {s.member for s in change.shares} and len(change.shares) == 3
    assert chain.state.seed == change.next_seed != seed0
    # the incentive layer reads it off the chain: the withholder, and only it, loses reputation
    run_epochs(chain, 2)  # every member shares from here on
    st = fold_chain(chain)
    assert st.bad == {quiet: WITHHELD} and st.of(quiet) < INITIAL
    assert fold(chain_records(chain)).bad == {}  # without epoch 0's committee its change cannot be judged


def epoch_info(chain: Chain, change):
    return decode_tx(make_tx("epoch", change))


def proposal_with(chain: Chain, txs, height_ok=True):
    leader = chain.current.committee.ids[0]
    return propose_block(chain.tip, chain.id, txs, leader, T0 + 10_000 * (chain.tip.height + 1),
                         claim=claimer(chain.current, chain.tip, leader, KEYS[leader]))


def to_boundary(chain: Chain) -> None:
    step(chain, records(chain))
    while chain.tip.height % B != B - 1:
        step(chain, [note(chain.tip.height + 100)])


def test_epoch_blocks_hold_exactly_the_change_and_no_other_block_holds_one(tmp_path):
    chain = new(tmp_path)
    to_boundary(chain)
    good = chain._epoch_change()
    with pytest.raises(InvalidBlock) as exc:  # the epoch block with ordinary transactions instead
        chain.validate_proposal(proposal_with(chain, [decode_tx(note(7))]).raw)
    assert exc.value.reason == "bad_epoch"
    with pytest.raises(InvalidBlock) as exc:  # the change beside another transaction
        chain.validate_proposal(proposal_with(chain, [good, decode_tx(note(8))]).raw)
    assert exc.value.reason == "bad_epoch"
    chain.validate_proposal(proposal_with(chain, [good]).raw)  # alone, it passes
    step(chain)
    with pytest.raises(InvalidBlock) as exc:  # a change in the middle of an epoch
        chain.validate_proposal(proposal_with(chain, [good]).raw)
    assert exc.value.reason in ("bad_epoch", "duplicate")
    with pytest.raises(InvalidTx) as txe:  # and nobody can queue one: the epoch block's proposer makes it
        chain.submit(good.raw)
    assert txe.value.reason == "misplaced"


@pytest.mark.parametrize("forgery", ["claim_of_another", "unselected_claim", "members", "seed", "share_of_outsider"])
def test_a_forged_change_is_refused(tmp_path, forgery):
    chain = new(tmp_path)
    to_boundary(chain)
    change = chain._epoch_change().body
    others = [m for m in POOL if m not in {c.member for c in change.claims}]
    if forgery == "claim_of_another":  # a seat claimed with someone else's proof
        c = change.claims[0]
        bad = dataclasses.replace(change, claims=sorted([*change.claims[1:], dataclasses.replace(c, member=others[0])],
                                                        key=lambda x: x.member))
    elif forgery == "unselected_claim":  # a member the draw did not select, proving its own (unselected) output
        alpha_proof = epochs.seed_share(KEYS[others[0]].secret, change.epoch, others[0], change.seed).proof
        claim = epochs.SortitionClaim(epoch=change.epoch, member=others[0], role="committee", proof=alpha_proof)
        bad = dataclasses.replace(change, claims=sorted([*change.claims, claim], key=lambda x: x.member))
    elif forgery == "members":  # the change names a committee the claims do not give
        bad = dataclasses.replace(change, members=sorted(set(change.members) ^ {others[0]}))
    elif forgery == "seed":
        bad = dataclasses.replace(change, next_seed=bytes(32))
    else:  # a share from a pool member outside the closing committee
        outsider = next(m for m in POOL if m not in chain.current.committee.ids)
        share = epochs.seed_share(KEYS[outsider].secret, chain.state.epoch, outsider, chain.state.seed)
        bad = dataclasses.replace(change, shares=sorted([*change.shares, share], key=lambda x: x.member))
    with pytest.raises(InvalidBlock) as exc:
        chain.validate_proposal(proposal_with(chain, [epoch_info(chain, bad)]).raw)
    assert exc.value.reason == "bad_epoch", exc.value


def test_after_the_change_only_the_new_committee_seals(tmp_path):
    chain = new(tmp_path)
    committees = run_epochs(chain, 6)
    e = next(i for i in range(1, len(committees)) if set(committees[i - 1]) - set(committees[i]))  # one left
    chain.close()
    # replay to that change, then offer the next block sealed by the committee before it
    fresh = Chain.create(tmp_path / "replay.db", spec(), QuorumSealer(POOL[0], [(m, KEYS[m]) for m in POOL]),
                         registry=registry())
    src = Chain.open(tmp_path / "fog-a.db", registry=registry())
    for raw in list(src.store.blocks(1, e * B)):
        fresh.append(raw)
    assert fresh.current.committee.ids == committees[e]
    fresh.submit(note(4242))
    block = fresh.propose(committees[e][0], ts_ms=T0 + 10 ** 7,
                          claim=claimer(fresh.current, fresh.tip, committees[e][0], KEYS[committees[e][0]]))
    with pytest.raises(InvalidBlock) as exc:
        fresh.commit_sealed(block, seal(fresh, block, committees[e - 1]))
    assert exc.value.reason in ("bad_seal", "bad_quorum"), exc.value
    fresh.commit_sealed(block, seal(fresh, block))
    src.close()
    fresh.close()


def test_the_spec_refuses_an_epoch_committee_pbft_cannot_run(tmp_path):
    for bad in (epochs.EpochSpec(blocks=B, seats=4, first=["dev-1", "fog-a", "fog-b"]),  # three: no f = 1
                epochs.EpochSpec(blocks=B, seats=4, first=["fog-a", "dev-1", "dev-2", "fog-b"]),  # unsorted
                epochs.EpochSpec(blocks=B, seats=4, first=FIRST, always=["peer-1"]),  # always, yet not in epoch 0
                epochs.EpochSpec(blocks=B, seats=4, first=["dev-1", "dev-2", "fog-a", "stranger"])):
        with pytest.raises(InvalidTx):
            new(tmp_path, spec(epochs=bad))
    assert codec.decode(codec.encode_message(spec()))  # a good one encodes


def equivocation_by(member: str, chain: str = "fog-a"):
    """Two conflicting pre-prepares ``member`` signed for one view and height, as a Behaviour record."""
    from edgefl.consensus.evidence import equivocation
    from edgefl.consensus.pbft import PrePrepare

    a, b = (PrePrepare(chain, 0, 1, bytes([i]) * 32, member).signed(KEYS[member]) for i in (1, 2))
    return equivocation(a, b, chain=chain, view=0, height=1)


def test_a_member_proven_to_equivocate_is_banned_for_good(tmp_path):
    chain = new(tmp_path)
    cheat = "dev-2"
    proof = equivocation_by(cheat)
    step(chain, [*records(chain), record_tx(proof, "fog-a", KEYS["fog-a"], ts_ms=T0 + 1)])
    while chain.tip.height % B != B - 1:
        step(chain)
    change = decode_tx(step(chain).txs[0].raw).body
    assert [b.member for b in change.evidence] == [cheat] and change.banned == [cheat]
    assert cheat not in change.members and cheat not in {c.member for c in change.claims}
    committees = run_epochs(chain, 3)  # it keeps recording claims; none counts again
    assert all(cheat not in c for c in committees) and chain.state.banned == [cheat]
    chain.close()
    with Chain.open(tmp_path / "fog-a.db", registry=registry()) as again:
        assert again.state.banned == [cheat] and again.verify() == again.tip.height + 1


@pytest.mark.parametrize("forgery", ["no_conflict", "other_signer", "unban", "banned_claim"])
def test_a_ban_needs_a_proof_and_lasts(tmp_path, forgery):
    chain = new(tmp_path)
    to_boundary(chain)
    change = chain._epoch_change().body
    if forgery == "no_conflict":  # the same statement twice proves nothing
        from edgefl.consensus.evidence import encode_statement
        from edgefl.consensus.pbft import PrePrepare

        st = encode_statement(PrePrepare("fog-a", 0, 1, b"\x01" * 32, "dev-2").signed(KEYS["dev-2"]))
        fake = dataclasses.replace(equivocation_by("dev-2"), proof=[st, st])
        bad = dataclasses.replace(change, evidence=[fake], banned=["dev-2"],
                                  members=epochs.members_after(chain.spec, chain.current.committee.ids,
                                                               change.claims, ["dev-2"]))
    elif forgery == "other_signer":  # statements signed by someone else, blamed on dev-2
        other = equivocation_by("dev-1")
        bad = dataclasses.replace(change, evidence=[dataclasses.replace(other, member="dev-2")], banned=["dev-2"])
    elif forgery == "unban":  # a banned member quietly dropped from the list
        step_chain = new(tmp_path / "b")
        step(step_chain, [*records(step_chain), record_tx(equivocation_by("dev-2"), "fog-a", KEYS["fog-a"],
                                                          ts_ms=T0 + 1)])
        while step_chain.tip.height % B != B - 1:
            step(step_chain)
        step(step_chain)
        to_boundary(step_chain)
        c2 = step_chain._epoch_change().body
        assert c2.banned == ["dev-2"]
        with pytest.raises(InvalidBlock) as exc:
            step_chain.validate_proposal(proposal_with(step_chain, [epoch_info(step_chain,
                                                                               dataclasses.replace(c2, banned=[]))]).raw)
        assert exc.value.reason == "bad_epoch"
        return
    else:  # a claim of a member banned in this very change
        member = change.claims[0].member
        bad = dataclasses.replace(change, evidence=[equivocation_by(member)], banned=[member])
    with pytest.raises(InvalidBlock) as exc:
        chain.validate_proposal(proposal_with(chain, [epoch_info(chain, bad)]).raw)
    assert exc.value.reason == "bad_epoch", exc.value
