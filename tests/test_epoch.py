"""Epoch randomness: committee claims, seed shares, the next seed, and penalties for withholding."""

import dataclasses
import random

import pytest

from edgefl import codec
from edgefl.consensus import sortition
from edgefl.consensus.epoch import (
    COMMITTEE_ROLE,
    Draw,
    EpochBeacon,
    EpochError,
    EpochSeed,
    ReputationPenalty,
    SeedShare,
    check_epoch,
    check_penalty,
    next_seed,
    seed_share,
)
from edgefl.consensus.sortition import SortitionClaim
from edgefl.crypto import vrf
from edgefl.runtime.metrics import Metrics

RNG = random.Random(99)
NODES = {f"n{i}": RNG.getrandbits(255).to_bytes(32, "big") for i in range(16)}
PUBLIC = {n: vrf.public_key(sk) for n, sk in NODES.items()}
WEIGHT = {n: 1 + i % 5 for i, n in enumerate(NODES)}
TOTAL = sum(WEIGHT.values())
TAU = 6


def make_draw(epoch, seed):
    return Draw(epoch=epoch, seed=seed, total=TOTAL, tau=TAU, public_key=PUBLIC.__getitem__,
                weight=WEIGHT.__getitem__)


def committee(draw):
    """Every node draws privately; the selected ones claim their seats."""
    claims, idle = [], []
    for n, sk in NODES.items():
        sel = sortition.draw(sk, draw.seed, COMMITTEE_ROLE, WEIGHT[n], TOTAL, TAU, n)
        (claims if sel.selected else idle).append(
            SortitionClaim(epoch=draw.epoch, member=n, role=COMMITTEE_ROLE, proof=sel.proof))
    return claims, idle


def run_epoch(epoch, seed, withhold=(), metrics=None):
    draw = make_draw(epoch, seed)
    beacon = EpochBeacon(draw, metrics=metrics or Metrics())
    claims, _ = committee(draw)
    for c in claims:
        beacon.claim(c)
    for c in claims:
        if c.member not in withhold:
            beacon.offer(seed_share(NODES[c.member], epoch, c.member, seed))
    return draw, beacon, claims


SEED0 = b"\x00" * 32


def test_an_epoch_closes_into_a_verifiable_record():
    draw, beacon, claims = run_epoch(1, SEED0)
    assert len(claims) >= 2
    record, penalties = beacon.close()
    assert not penalties and not record.withheld
    check_epoch(record, draw)
    outputs = [vrf.proof_to_hash(s.proof) for s in record.shares]
    assert record.next_seed == next_seed(SEED0, outputs) == next_seed(SEED0, outputs[::-1])
    assert beacon.leader().member in {c.member for c in claims}
    # the record is a ledger payload: canonical bytes that decode to the same record
    wire = codec.encode_message(record)
    assert EpochSeed.from_wire(codec.decode(wire, codec.Limits(max_size=EpochSeed.MAX_SIZE))) == record


def test_arrival_order_does_not_matter():
    draw, beacon, claims = run_epoch(1, SEED0)
    shuffled = EpochBeacon(draw)
    order = claims[:]
    random.Random(5).shuffle(order)
    for c in order:
        shuffled.claim(c)
    for c in order[::-1]:
        shuffled.offer(seed_share(NODES[c.member], 1, c.member, SEED0))
    assert shuffled.close()[0] == beacon.close()[0]


def test_withholding_is_the_only_choice_and_it_is_penalised():
    draw, full, claims = run_epoch(1, SEED0)
    quiet = claims[0].member
    _, partial, _ = run_epoch(1, SEED0, withhold={quiet})
    record, penalties = partial.close(penalty=5)
    assert record.withheld == [quiet] and record.next_seed != full.close()[0].next_seed
    assert [(p.member, p.amount, p.record) for p in penalties] == [(quiet, 5, record.digest)]
    check_penalty(penalties[0], record, draw)
    # the share is unique: a member cannot offer another output for the same seed
    assert seed_share(NODES[quiet], 1, quiet, SEED0) == seed_share(NODES[quiet], 1, quiet, SEED0)
    other = vrf.prove(NODES[quiet], sortition.alpha(SEED0, "seed") + b"!")
    with pytest.raises(EpochError, match="bad_share"):
        partial.offer(SeedShare(epoch=1, member=quiet, proof=other))
    # a penalty cannot be pinned on a member that revealed, nor justified by a doctored record
    revealed = claims[1].member
    with pytest.raises(EpochError, match="not_withheld"):
        check_penalty(dataclasses.replace(penalties[0], member=revealed), record, draw)
    doctored = dataclasses.replace(record, withheld=[quiet, revealed])
    with pytest.raises(EpochError):
        check_penalty(dataclasses.replace(penalties[0], record=doctored.digest), doctored, draw)


def test_bad_claims_and_shares_are_refused_and_counted():
    m = Metrics()
    draw = make_draw(2, SEED0)
    beacon = EpochBeacon(draw, metrics=m)
    claims, idle = committee(draw)
    beacon.claim(claims[0])
    for bad, why in [(claims[0], "duplicate"),
                     (idle[0], "bad_claim"),  # a valid proof that did not select its node
                     (dataclasses.replace(claims[1], proof=claims[2].proof), "bad_claim"),
                     (dataclasses.replace(claims[1], epoch=3), "wrong_epoch"),
                     (dataclasses.replace(claims[1], role="leader"), "wrong_epoch"),
                     (dataclasses.replace(claims[1], member="stranger"), "unknown_member")]:
        with pytest.raises(EpochError) as exc:
            beacon.claim(bad)
        assert exc.value.reason == why
        assert m.get("sortition_claim_rejected", reason=why) >= 1
    member = claims[0].member
    for bad, why in [(seed_share(NODES[claims[1].member], 2, claims[1].member, SEED0), "not_member"),
                     (seed_share(NODES[member], 3, member, SEED0), "wrong_epoch"),
                     (seed_share(NODES[member], 2, member, b"\x01" * 32), "bad_share"),
                     (SeedShare(epoch=2, member=member, proof=b"\x02" * 81), "bad_share")]:
        with pytest.raises(EpochError) as exc:
            beacon.offer(bad)
        assert exc.value.reason == why
        assert m.get("seed_share_rejected", reason=why) >= 1
    beacon.offer(seed_share(NODES[member], 2, member, SEED0))
    with pytest.raises(EpochError, match="duplicate"):
        beacon.offer(seed_share(NODES[member], 2, member, SEED0))


def test_check_epoch_catches_every_doctoring():
    draw, beacon, _ = run_epoch(1, SEED0)
    record, _ = beacon.close()
    for doctored in [dataclasses.replace(record, next_seed=b"\x00" * 32),
                     dataclasses.replace(record, shares=record.shares[1:]),  # withheld not updated
                     dataclasses.replace(record, shares=record.shares[::-1]),
                     dataclasses.replace(record, committee=record.committee[1:]),  # a share without a seat
                     dataclasses.replace(record, seed=b"\x01" * 32),
                     dataclasses.replace(record, epoch=7)]:
        with pytest.raises(EpochError):
            check_epoch(doctored, draw)


def test_seeds_chain_and_committees_change():
    seed, committees = SEED0, []
    for epoch in range(1, 5):
        draw, beacon, claims = run_epoch(epoch, seed)
        record, _ = beacon.close()
        check_epoch(record, draw)
        committees.append(tuple(c.member for c in record.committee))
        seed = record.next_seed
    assert len(set(committees)) > 1 and len({seed, SEED0}) == 2


def test_penalty_record_decodes_strictly():
    p = ReputationPenalty(epoch=1, member="n1", amount=3, reason="withheld_seed_share", record=b"\x00" * 32)
    assert ReputationPenalty.from_wire(codec.decode(codec.encode_message(p))) == p
    with pytest.raises(codec.SchemaError) as exc:
        ReputationPenalty.from_wire({**p.to_wire(), "amount": 0})
    assert exc.value.field == "ReputationPenalty.amount"
