"""Epoch randomness: each epoch's committee derives the next epoch's seed from VRF outputs.

    seed_{e+1} = tagged_hash("edgefl/epoch-seed/v1", seed_e || sorted(beta_i for each share revealed))

where beta_i is member i's VRF output on ``seed_e || "seed"`` (a role no
sortition uses, so the share is unknown to anyone until its owner reveals it).
The committee is the set of members whose sortition claims for epoch e (role
"committee") were recorded; at the epoch's deadline the leader proposes an
``EpochSeed`` record, the committee checks it with ``check_epoch`` and agrees
on it, and the ledger records it.

Why a member can at most withhold its output, not choose it:

* the seed it draws on, seed_e, was fixed before epoch e began, and the keys
  and weights that count in epoch e were certified and recorded before that,
  so nobody can grind keys against a known seed;
* ECVRF outputs are unique: for a given key and input exactly one beta
  verifies, and it is pseudorandom to everyone without the secret key;
* the outputs are sorted before hashing, so neither arrival order nor the
  proposer's ordering matters.

A member's only freedom is to reveal its share or not: one bit, or 2^k
candidate seeds for k colluding members who wait to reveal last.  Withholding
is visible (the member's claim is on record, its share is not), and costs it:
the record lists it as ``withheld`` and a ``ReputationPenalty`` is recorded on
the ledger, lowering the reputation that weighs its future draws.

Ledger hook: ``EpochSeed`` and ``ReputationPenalty`` are recorded as Type-I
transactions whose payloads are their canonical bytes (``codec.encode_message``);
a penalty is verified with ``check_penalty`` against the ``EpochSeed`` record it
names by digest.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Callable, Iterable

from edgefl import codec
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.consensus import sortition
from edgefl.consensus.evidence import Behaviour, check_behaviour
from edgefl.consensus.sortition import SortitionClaim
from edgefl.crypto import IdentityRejected, tagged_hash, vrf
from edgefl.errors import EdgeflError
from edgefl.ledger import LedgerError
from edgefl.runtime import METRICS, Metrics, RateLimited

log = logging.getLogger("edgefl.epoch")

SEED_TAG = b"edgefl/epoch-seed/v1"
RECORD_TAG = b"edgefl/epoch-record/v1"
SEED_ROLE = "seed"
COMMITTEE_ROLE = "committee"
MAX_COMMITTEE = 1024
WITHHELD = "withheld_seed_share"

Id = Annotated[str, MaxLen(64)]


def next_seed(seed: bytes, outputs: Iterable[bytes]) -> bytes:
    return tagged_hash(SEED_TAG, bytes(seed) + b"".join(sorted(outputs)))


@message("seed-share")
class SeedShare(Message):
    """A committee member's VRF proof on ``seed_e || "seed"``: its contribution to seed_{e+1}."""

    epoch: Annotated[int, Range(0)]
    member: Id
    proof: Annotated[bytes, MaxLen(vrf.PROOF_SIZE)]


def seed_share(sk: bytes, epoch: int, member: str, seed: bytes) -> SeedShare:
    return SeedShare(epoch=epoch, member=member, proof=vrf.prove(sk, sortition.alpha(seed, SEED_ROLE)))


@message("epoch-seed", max_size=1 << 20)
class EpochSeed(Message):
    """The closing record of an epoch: who sat on the committee, who revealed, the next seed."""

    epoch: Annotated[int, Range(0)]
    seed: Annotated[bytes, MaxLen(32)]
    committee: Annotated[list[SortitionClaim], MaxLen(MAX_COMMITTEE)]  # sorted by member
    shares: Annotated[list[SeedShare], MaxLen(MAX_COMMITTEE)]  # sorted by member
    withheld: Annotated[list[Id], MaxLen(MAX_COMMITTEE)]  # committee members without a share, sorted
    next_seed: Annotated[bytes, MaxLen(32)]

    @property
    def digest(self) -> bytes:
        return tagged_hash(RECORD_TAG, codec.encode_message(self))


@message("reputation-penalty")
class ReputationPenalty(Message):
    """A reputation deduction with its evidence: ``record`` is the digest of the ``EpochSeed`` that shows it."""

    epoch: Annotated[int, Range(0)]
    member: Id
    amount: Annotated[int, Range(1)]
    reason: Annotated[str, MaxLen(32)]
    record: Annotated[bytes, MaxLen(32)]


class EpochError(EdgeflError, ValueError):
    """A share or record that does not check out; ``reason`` is a short stable label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Draw:
    """The public inputs of an epoch's committee draw."""

    epoch: int
    seed: bytes
    total: int
    tau: sortition.Tau
    public_key: Callable[[str], bytes]  # the member's certified key, e.g. registry.key_for(m, t).raw
    weight: Callable[[str], int]  # the member's weight in the epoch's weight table (KeyError if none)

    def member(self, claim: SortitionClaim) -> sortition.Selection:
        """The verified selection of a committee claim; EpochError if it is invalid or not selected."""
        if claim.epoch != self.epoch or claim.role != COMMITTEE_ROLE:
            raise EpochError("wrong_epoch", f"{claim.member}: claim for {claim.role} of epoch {claim.epoch}")
        try:
            pk, weight = self.public_key(claim.member), self.weight(claim.member)
        except (KeyError, ValueError, IdentityRejected) as exc:  # no certified key, or no weight
            raise EpochError("unknown_member", f"{claim.member}: {exc}") from None
        sel = sortition.verify(pk, claim.proof, self.seed, COMMITTEE_ROLE, weight, self.total, self.tau,
                               claim.member)
        if sel is None or not sel.selected:
            raise EpochError("bad_claim", f"{claim.member}: {'invalid proof' if sel is None else 'not selected'}")
        return sel

    def share_output(self, share: SeedShare) -> bytes:
        if share.epoch != self.epoch:
            raise EpochError("wrong_epoch", f"{share.member}: share for epoch {share.epoch}")
        beta = vrf.verify(self.public_key(share.member), share.proof, sortition.alpha(self.seed, SEED_ROLE))
        if beta is None:
            raise EpochError("bad_share", f"{share.member}: the proof does not verify")
        return beta


class EpochBeacon:
    """Collects one epoch's committee claims and seed shares, then closes the epoch.

    Every offer is verified; a bad one is refused with its reason, logged and
    counted (``seed_share_rejected{reason}``), and nothing it carried is kept.
    """

    def __init__(self, draw: Draw, *, metrics: Metrics = METRICS):
        self.draw = draw
        self.metrics = metrics
        self.claims: dict[str, SortitionClaim] = {}
        self.selections: dict[str, sortition.Selection] = {}
        self.shares: dict[str, tuple[SeedShare, bytes]] = {}
        self._log = RateLimited(log)

    def _refuse(self, exc: EpochError, what: str) -> None:
        self.metrics.inc(f"{what}_rejected", reason=exc.reason)
        self._log.warning(exc.reason, "epoch %d: refused %s: %s", self.draw.epoch, what, exc, reason=exc.reason)

    def claim(self, claim: SortitionClaim) -> sortition.Selection:
        try:
            if claim.member in self.claims:
                raise EpochError("duplicate", f"{claim.member} already claimed")
            sel = self.draw.member(claim)
        except EpochError as exc:
            self._refuse(exc, "sortition_claim")
            raise
        self.claims[claim.member] = claim
        self.selections[claim.member] = sel
        return sel

    def offer(self, share: SeedShare) -> bytes:
        try:
            if share.member not in self.claims:
                raise EpochError("not_member", f"{share.member} has no committee seat in epoch {self.draw.epoch}")
            if share.member in self.shares:
                raise EpochError("duplicate", f"{share.member} already revealed")
            beta = self.draw.share_output(share)
        except EpochError as exc:
            self._refuse(exc, "seed_share")
            raise
        self.shares[share.member] = (share, beta)
        return beta

    def leader(self) -> sortition.Selection | None:
        return sortition.leader(self.selections.values())

    def close(self, penalty: int = 1) -> tuple[EpochSeed, list[ReputationPenalty]]:
        """The epoch's record and a penalty of ``penalty`` reputation units for each member that withheld."""
        members = sorted(self.claims)
        record = EpochSeed(
            epoch=self.draw.epoch, seed=self.draw.seed, committee=[self.claims[m] for m in members],
            shares=[self.shares[m][0] for m in sorted(self.shares)],
            withheld=[m for m in members if m not in self.shares],
            next_seed=next_seed(self.draw.seed, (beta for _, beta in self.shares.values())))
        penalties = [ReputationPenalty(epoch=record.epoch, member=m, amount=penalty, reason=WITHHELD,
                                       record=record.digest) for m in record.withheld]
        return record, penalties


def check_epoch(record: EpochSeed, draw: Draw) -> None:
    """Recompute an ``EpochSeed`` from its claims and shares; raise EpochError naming the first discrepancy."""
    if record.epoch != draw.epoch or record.seed != draw.seed:
        raise EpochError("wrong_epoch", f"record of epoch {record.epoch} with another seed")
    members = [c.member for c in record.committee]
    if members != sorted(set(members)):
        raise EpochError("malformed", "committee must be sorted by member, without repeats")
    for claim in record.committee:
        draw.member(claim)
    sharers = [s.member for s in record.shares]
    if sharers != sorted(set(sharers)) or not set(sharers) <= set(members):
        raise EpochError("malformed", "shares must be sorted, unique and from committee members")
    outputs = [draw.share_output(s) for s in record.shares]
    if record.withheld != [m for m in members if m not in set(sharers)]:
        raise EpochError("malformed", "withheld must list exactly the members without a share")
    if record.next_seed != next_seed(record.seed, outputs):
        raise EpochError("wrong_seed", "next_seed is not the hash of the revealed outputs")


def check_penalty(penalty: ReputationPenalty, record: EpochSeed, draw: Draw) -> None:
    """A withholding penalty is justified by a valid record that lists the member as withheld."""
    if penalty.reason != WITHHELD:
        raise EpochError("unknown_reason", penalty.reason)
    if penalty.record != record.digest or penalty.epoch != record.epoch:
        raise EpochError("wrong_record", "the penalty names another record")
    check_epoch(record, draw)
    if penalty.member not in record.withheld:
        raise EpochError("not_withheld", f"{penalty.member} revealed its share or held no seat")



# --------------------------------------------------------------------------- a chain's committee, epoch by epoch
#
# A chain with ``ChainSpec.epochs`` keeps its spec's committee as the *pool* (every member runs a replica and may
# endorse its anchors) and has each epoch's committee drawn from it. Epoch e is heights (e·B, (e+1)·B]; its
# last block, height (e+1)·B, holds exactly one ``EpochChange`` and nothing else: sealed by epoch e's committee,
# it names epoch e+1's. At the start of epoch e every pool member draws, on seed_e, whether it sits in e+1
# (role "committee", weighted by its stake) and records its ``SortitionClaim``; every member of epoch e records
# its ``SeedShare`` on seed_e. The epoch block gathers what was recorded and seed_{e+1} hashes the shares'
# outputs, so a claim for e+1 is drawn on a seed fixed a whole epoch before e+1 begins and nobody chooses it.
# Its leader may leave out a claim or a share (as any block's leader may leave out a transaction) but cannot
# forge one; a draw too small for PBFT (fewer than four) keeps the current committee. A member proven to
# equivocate (a ``Behaviour`` record: two conflicting statements it signed, checked against its pool key) is
# banned for good: the epoch block carries the proof, and no claim of a banned member counts again.

MIN_SEATED = 4  # PBFT's smallest committee that survives one byzantine member


@message("ledger.epochs")
class EpochSpec(Message):
    """How a chain's committee is re-drawn from its pool."""

    blocks: Annotated[int, Range(3, 1 << 20)]  # B: the epoch length in blocks, the last one the epoch block
    seats: Annotated[int, Range(1, MAX_COMMITTEE)]  # expected members drawn per epoch (tau), beside ``always``
    first: Annotated[list[Id], MaxLen(MAX_COMMITTEE)]  # epoch 0's committee, sorted
    always: Annotated[list[Id], MaxLen(MAX_COMMITTEE)] = dataclasses.field(default_factory=list)  # in every one
    weights: dict[Id, Annotated[int, Range(1, sortition.MAX_WEIGHT)]] | None = None  # stake; None: 1 each


@message("epoch-change", max_size=1 << 20)
class EpochChange(Message):
    """The epoch block's one transaction: epoch ``epoch``'s committee and the seed the next draw uses."""

    epoch: Annotated[int, Range(1)]  # the epoch it opens
    seed: Annotated[bytes, MaxLen(32)]  # the closing epoch's seed: what the claims and shares are drawn on
    claims: Annotated[list[SortitionClaim], MaxLen(MAX_COMMITTEE)]  # drawn pool members, sorted by member
    shares: Annotated[list[SeedShare], MaxLen(MAX_COMMITTEE)]  # the closing committee's, sorted by member
    members: Annotated[list[Id], MaxLen(MAX_COMMITTEE)]  # the committee it opens, sorted
    next_seed: Annotated[bytes, MaxLen(32)]
    evidence: Annotated[list[Behaviour], MaxLen(MAX_COMMITTEE)] = dataclasses.field(default_factory=list)
    banned: Annotated[list[Id], MaxLen(MAX_COMMITTEE)] = dataclasses.field(default_factory=list)  # all so far


def first_seed(spec) -> bytes:
    return tagged_hash(SEED_TAG, b"genesis\0" + spec.chain.encode() + b"\0" + spec.ts.to_bytes(8, "big"))


def is_epoch_block(spec, height: int) -> bool:
    return spec.epochs is not None and height > 0 and height % spec.epochs.blocks == 0


def epoch_of(spec, height: int) -> int:
    """The epoch a block of ``height`` belongs to (the epoch block is its epoch's last)."""
    return 0 if spec.epochs is None or height <= 0 else (height - 1) // spec.epochs.blocks


def seated(spec, members: Iterable[str]):
    """``spec`` with ``members`` (of its pool) as the committee, under a BFT quorum."""
    from edgefl.ledger.committee import Committee

    pool = spec.committee
    return dataclasses.replace(spec, committee=Committee.bft([(m, pool.key_of(m)) for m in sorted(members)]))


def open_chain(state) -> None:
    """A state at genesis: epoch 0, its seed and committee (nothing for a chain without epochs)."""
    spec = state.spec
    if spec is not None and spec.epochs is not None:
        state.epoch, state.seed, state.current = 0, first_seed(spec), seated(spec, spec.epochs.first)


def draw_of(spec, epoch: int, seed: bytes) -> Draw:
    """The public inputs of the draw for epoch ``epoch`` on ``seed`` (weights from the spec: stake)."""
    weights = spec.epochs.weights or {}
    pool = spec.committee
    total = sum(weights.get(m, 1) for m in pool.ids)

    def key(member: str) -> bytes:
        k = pool.key_of(member)
        if k is None:
            raise KeyError(f"{member} is not in the pool")
        return k.raw

    def weight(member: str) -> int:
        if pool.key_of(member) is None:
            raise KeyError(f"{member} is not in the pool")
        return weights.get(member, 1)

    return Draw(epoch, seed, total, spec.epochs.seats, key, weight)


def members_after(spec, current: Iterable[str], claims: Iterable[SortitionClaim], banned: Iterable[str]) -> list[str]:
    out = set(banned)
    drawn = sorted((set(spec.epochs.always) | {c.member for c in claims}) - out)
    kept = sorted(set(current) - out)
    return drawn if len(drawn) >= MIN_SEATED or len(kept) < MIN_SEATED else kept


def _proven(spec, b: Behaviour) -> bool:
    """Whether ``b`` proves that a pool member equivocated (two conflicting statements it signed)."""
    from edgefl.consensus import pbft  # noqa: F401  (registers the statements a proof holds)

    if b.kind != "equivocated" or b.chain != spec.chain:
        return False
    try:
        check_behaviour(b, spec.committee)
    except LedgerError:
        return False
    return True


def my_records(spec, state, member: str, sk: bytes) -> list[Message]:
    """What ``member`` records at the start of the state's epoch: its share (if it sits in it) and its claim to
    a seat in the next one (if drawn)."""
    out: list[Message] = []
    if member in state.current.committee.ids:
        out.append(seed_share(sk, state.epoch, member, state.seed))
    draw = draw_of(spec, state.epoch + 1, state.seed)
    sel = sortition.draw(sk, state.seed, COMMITTEE_ROLE, draw.weight(member), draw.total, spec.epochs.seats, member)
    if sel.selected:
        out.append(SortitionClaim(epoch=state.epoch + 1, member=member, role=COMMITTEE_ROLE, proof=sel.proof))
    return out


def build_change(spec, state, recorded: Iterable[Message]) -> EpochChange:
    """The epoch block's change from the claims and shares recorded in the closing epoch: the first valid one
    of each member counts, the rest are left out."""
    e = state.epoch
    claims_draw, share_draw = draw_of(spec, e + 1, state.seed), draw_of(spec, e, state.seed)
    sitting = set(state.current.committee.ids)
    claims: dict[str, SortitionClaim] = {}
    shares: dict[str, tuple[SeedShare, bytes]] = {}
    evidence: dict[str, Behaviour] = {}
    recorded = list(recorded)
    for msg in recorded:  # proofs first: a banned member's claim counts for nothing
        if (isinstance(msg, Behaviour) and msg.member not in state.banned and msg.member not in evidence
                and _proven(spec, msg)):
            evidence[msg.member] = msg
    banned = set(state.banned) | set(evidence)
    for msg in recorded:
        try:
            if isinstance(msg, SortitionClaim) and msg.member not in claims and msg.member not in banned:
                claims_draw.member(msg)
                claims[msg.member] = msg
            elif isinstance(msg, SeedShare) and msg.member in sitting and msg.member not in shares:
                shares[msg.member] = (msg, share_draw.share_output(msg))
        except (EpochError, KeyError, ValueError):
            continue
    chosen = [claims[m] for m in sorted(claims)]
    return EpochChange(epoch=e + 1, seed=state.seed, claims=chosen, shares=[shares[m][0] for m in sorted(shares)],
                       members=members_after(spec, sitting, chosen, banned),
                       next_seed=next_seed(state.seed, (beta for _, beta in shares.values())),
                       evidence=[evidence[m] for m in sorted(evidence)], banned=sorted(banned))


def check_change(change: EpochChange, spec, state) -> None:
    """Recompute an epoch block's change against the state before it; EpochError naming the first discrepancy."""
    if change.epoch != state.epoch + 1 or change.seed != state.seed:
        raise EpochError("wrong_epoch", f"a change to epoch {change.epoch} on another seed; this is epoch "
                                        f"{state.epoch}")
    claimers, sharers = [c.member for c in change.claims], [s.member for s in change.shares]
    sitting = set(state.current.committee.ids)
    if claimers != sorted(set(claimers)) or sharers != sorted(set(sharers)) or not set(sharers) <= sitting:
        raise EpochError("malformed", "claims and shares sorted, one per member, shares from the closing committee")
    proven = [b.member for b in change.evidence]
    if (proven != sorted(set(proven)) or set(proven) & set(state.banned)
            or not all(_proven(spec, b) for b in change.evidence)):
        raise EpochError("bad_evidence", "evidence: one valid proof of equivocation per member not banned yet")
    if change.banned != sorted(set(state.banned) | set(proven)):
        raise EpochError("wrong_banned", "banned must be the members banned before and those proven now")
    if set(claimers) & set(change.banned):
        raise EpochError("banned", f"a claim of a banned member: {sorted(set(claimers) & set(change.banned))}")
    claims_draw, share_draw = draw_of(spec, change.epoch, state.seed), draw_of(spec, state.epoch, state.seed)
    for claim in change.claims:
        claims_draw.member(claim)
    outputs = [share_draw.share_output(s) for s in change.shares]
    if change.members != members_after(spec, sitting, change.claims, change.banned):
        raise EpochError("wrong_members", f"members {change.members} are not the draw's")
    if change.next_seed != next_seed(state.seed, outputs):
        raise EpochError("wrong_seed", "next_seed is not the hash of the revealed outputs")


def enter(change: EpochChange, spec, state) -> None:
    state.epoch, state.seed, state.current = change.epoch, change.next_seed, seated(spec, change.members)
    state.banned = list(change.banned)
