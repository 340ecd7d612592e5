"""Casper-FFG finality for the main chain, as a sans-I/O core.

The final committee (the cloud and the fog aggregators) votes on checkpoints:
every ``interval``-th block of the main chain, checkpoint epoch e being the
block at height e * interval.  A vote is a signed ``Vote`` statement for a
*link* source -> target between two checkpoints on one branch (the source an
ancestor of the target, of a lower epoch), weighted by the voter's credit.

* The genesis checkpoint is justified and final.
* A checkpoint t is **justified** when members holding at least two thirds of
  the total weight voted for one link s -> t whose source s is justified.
* A justified checkpoint s is **final** when such a supermajority link leads
  from s to a checkpoint of epoch s + 1 (its direct child).

An honest member never signs two votes of one target epoch (a *double vote*)
nor a vote whose span surrounds another of its own (s1 < s2 < t2 < t1, a
*surround vote*); the honest rule that keeps it so is ``HonestVoter``: vote
from the highest justified checkpoint it knows to the next checkpoint on its
branch, target epochs strictly increasing.  Both violations are two signed
conflicting statements, which ``Finality`` turns into an ``equivocated``
``Behaviour`` record (edgefl.consensus.evidence) as soon as it holds both.

Accountable safety (Buterin and Griffith, 2017): if two conflicting
checkpoints (neither an ancestor of the other) are both final, members
holding at least one third of the weight signed a double or surround vote, so
the evidence the core records covers at least a third of the weight.
tests/test_finality.py checks exactly that over seeded adversarial schedules.

Votes count as they arrive, in any order: a vote whose checkpoints are not
known yet waits for ``add_checkpoint``; a link whose source is not justified
yet is counted, and becomes effective when the source is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Iterable

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.consensus.evidence import Behaviour, InvalidEvidence, Statement, encode_statement, equivocation
from edgefl.crypto import SigningKey
from edgefl.ledger import Committee, LedgerError

HASH = 32


@message("consensus.ffg-vote")
class Vote(Statement):
    """A member's vote for the link source -> target between two checkpoints of ``chain``."""

    chain: Annotated[str, MaxLen(64)]
    signer: Annotated[str, MaxLen(128)]
    source_epoch: Annotated[int, Range(0)]
    source: Annotated[bytes, MaxLen(HASH)]
    target_epoch: Annotated[int, Range(1)]
    target: Annotated[bytes, MaxLen(HASH)]
    sig: Annotated[bytes, MaxLen(64)] = b""

    def slot(self):
        return (self.chain, self.target_epoch)

    def conflicts(self, other: Statement) -> bool:
        """A double vote (one target epoch, two links) or a surround vote (one span strictly inside the other)."""
        if type(other) is not Vote or other.signer != self.signer or other.chain != self.chain:
            return False
        if self.body() == other.body():
            return False
        a, b = sorted((self, other), key=lambda v: (v.source_epoch, v.target_epoch))
        return a.target_epoch == b.target_epoch or (a.source_epoch < b.source_epoch and b.target_epoch < a.target_epoch)


def vote(chain: str, signer: str, key: SigningKey, source: tuple[int, bytes], target: tuple[int, bytes]) -> Vote:
    return Vote(chain, signer, source[0], source[1], target[0], target[1]).signed(key)


class FinalityError(InvalidEvidence):
    reason = "bad_vote"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    epoch: int
    hash: bytes
    parent: bytes | None  # the previous checkpoint's hash (None: genesis)


@dataclass
class Outcome:
    """What one input changed: newly justified and finalized checkpoints, new evidence."""

    justified: list[Checkpoint] = field(default_factory=list)
    finalized: list[Checkpoint] = field(default_factory=list)
    evidence: list[Behaviour] = field(default_factory=list)


class Finality:
    """One chain's FFG state: checkpoints, votes, justified and final checkpoints, slashing evidence."""

    def __init__(self, chain: str, committee: Committee, weights: dict[str, int], genesis: bytes):
        ids = [m.id for m in committee.members]
        if set(weights) != set(ids) or any(not isinstance(w, int) or w <= 0 for w in weights.values()):
            raise ValueError("every committee member needs a positive integer weight, and only members")
        self.chain = chain
        self.committee = committee
        self.weights = dict(weights)
        self.total = sum(weights.values())
        root = Checkpoint(0, genesis, None)
        self.checkpoints: dict[bytes, Checkpoint] = {genesis: root}
        self.justified: dict[bytes, Checkpoint] = {genesis: root}
        self.finalized: dict[bytes, Checkpoint] = {genesis: root}
        self.votes: dict[str, list[Vote]] = {}  # by signer, every distinct vote counted
        self.links: dict[tuple[bytes, bytes], set[str]] = {}  # (source, target) -> voters
        self.waiting: list[Vote] = []  # votes naming checkpoints not known yet
        self.evidence: list[Behaviour] = []
        self.slashed: dict[str, Behaviour] = {}

    # ------------------------------------------------------------------ queries

    def supermajority(self, voters: Iterable[str]) -> bool:
        return 3 * sum(self.weights[v] for v in voters) >= 2 * self.total

    def is_ancestor(self, a: bytes, b: bytes) -> bool:
        """Whether checkpoint ``a`` is ``b`` or one of its ancestors."""
        cp = self.checkpoints.get(b)
        while cp is not None:
            if cp.hash == a:
                return True
            cp = self.checkpoints.get(cp.parent) if cp.parent is not None else None
        return False

    def conflicting(self, a: bytes, b: bytes) -> bool:
        return not (self.is_ancestor(a, b) or self.is_ancestor(b, a))

    @property
    def last_finalized(self) -> Checkpoint:
        return max(self.finalized.values(), key=lambda c: c.epoch)

    @property
    def last_justified(self) -> Checkpoint:
        return max(self.justified.values(), key=lambda c: c.epoch)

    def slashed_weight(self) -> int:
        return sum(self.weights[m] for m in self.slashed)

    # ------------------------------------------------------------------ inputs

    def add_checkpoint(self, epoch: int, hash: bytes, parent: bytes) -> Outcome:
        """Checkpoint ``hash`` at ``epoch`` whose previous checkpoint is ``parent`` (a block the chain holds)."""
        up = self.checkpoints.get(parent)
        if up is None or epoch <= up.epoch:
            raise FinalityError(f"checkpoint at epoch {epoch} needs a known parent of a lower epoch",
                                field="checkpoint.parent")
        known = self.checkpoints.get(hash)
        if known is not None:
            if (known.epoch, known.parent) != (epoch, parent):
                raise FinalityError("the checkpoint is known at another place", field="checkpoint.hash")
            return Outcome()
        self.checkpoints[hash] = Checkpoint(epoch, hash, parent)
        waiting, self.waiting = self.waiting, []
        out = Outcome()
        for v in waiting:
            self._merge(out, self.on_vote(v))
        return out

    def on_vote(self, v: Vote) -> Outcome:
        """Count a vote (raises FinalityError for one that is not a valid vote of a member)."""
        if v.chain != self.chain:
            raise FinalityError(f"vote for chain {v.chain!r}", field="vote.chain")
        v.verify(self.committee, "vote")
        if v.target_epoch <= v.source_epoch:
            raise FinalityError("the target must come after the source", field="vote.target_epoch")
        src, tgt = self.checkpoints.get(v.source), self.checkpoints.get(v.target)
        if src is None or tgt is None:
            self.waiting.append(v)
            return Outcome()
        if (src.epoch, tgt.epoch) != (v.source_epoch, v.target_epoch) or not self.is_ancestor(v.source, v.target):
            raise FinalityError("the link does not join two checkpoints of one branch at those epochs",
                                field="vote.source")
        out = Outcome()
        mine = self.votes.setdefault(v.signer, [])
        if any(w.body() == v.body() for w in mine):
            return out  # a replay
        for w in mine:
            if w.conflicts(v):
                self._slash(out, w, v)
                break
        mine.append(v)
        self.links.setdefault((v.source, v.target), set()).add(v.signer)
        self._settle(out, (v.source, v.target))
        return out

    # ------------------------------------------------------------------ rules

    def _slash(self, out: Outcome, a: Vote, b: Vote) -> None:
        if a.signer in self.slashed:
            return  # one record per member is enough to show its weight
        record = equivocation(a, b, chain=self.chain, height=-1, epoch=max(a.target_epoch, b.target_epoch))
        self.slashed[a.signer] = record
        self.evidence.append(record)
        out.evidence.append(record)

    def _settle(self, out: Outcome, first: tuple[bytes, bytes]) -> None:
        """Justify and finalize what the supermajority links now allow, following newly justified sources."""
        work = [first]
        while work:
            s, t = work.pop()
            if s not in self.justified or not self.supermajority(self.links.get((s, t), ())):
                continue
            src, tgt = self.checkpoints[s], self.checkpoints[t]
            if t not in self.justified:
                self.justified[t] = tgt
                out.justified.append(tgt)
                work.extend(link for link in self.links if link[0] == t)
            if tgt.epoch == src.epoch + 1 and s not in self.finalized:
                self.finalized[s] = src
                out.finalized.append(src)

    @staticmethod
    def _merge(out: Outcome, more: Outcome) -> None:
        out.justified += more.justified
        out.finalized += more.finalized
        out.evidence += more.evidence

    # ------------------------------------------------------------------ behaviour

    def behaviour(self, epoch: int, height: int = -1) -> list[Behaviour]:
        """Per member, what it did for target ``epoch``: ``voted`` with its vote, or ``silent``."""
        out = []
        for m in sorted(self.weights):
            mine = [v for v in self.votes.get(m, ()) if v.target_epoch == epoch]
            if mine:
                out.append(Behaviour(self.chain, m, "voted", 0, height, epoch, [encode_statement(mine[0])]))
            else:
                out.append(Behaviour(self.chain, m, "silent", 0, height, epoch, []))
        return out


class HonestVoter:
    """The FFG voting rule that never double-votes or surrounds: highest justified source, increasing targets."""

    def __init__(self, member: str, key: SigningKey, chain: str):
        self.member, self.key, self.chain = member, key, chain
        self.last_target = 0
        self.last_source = 0

    def vote(self, view: Finality, target: Checkpoint) -> Vote | None:
        """The vote for ``target`` (a checkpoint on this member's branch), or None if the rule forbids one."""
        source = max((c for c in view.justified.values() if view.is_ancestor(c.hash, target.hash)
                      and c.epoch < target.epoch), key=lambda c: c.epoch, default=None)
        return None if source is None else self.cast((source.epoch, source.hash), (target.epoch, target.hash))

    def cast(self, source: tuple[int, bytes], target: tuple[int, bytes]) -> Vote | None:
        """Sign source -> target unless that could double or surround one of this member's own votes.

        A member that does not hold the chain (a fog voting on the main chain) takes the source from the
        chain's node: whatever that node claims, this rule alone keeps the member unslashable.
        """
        if target[0] <= max(self.last_target, source[0]) or source[0] < self.last_source:
            return None  # a lower source than before could surround our own earlier vote
        self.last_target, self.last_source = target[0], source[0]
        return vote(self.chain, self.member, self.key, source, target)


@message("consensus.ffg-call")
class FfgCall(Message):
    """The main chain's node asks the final committee to vote source -> target (its justified head -> its tip)."""

    chain: Annotated[str, MaxLen(64)]
    source_epoch: Annotated[int, Range(0)]
    source: Annotated[bytes, MaxLen(HASH)]
    target_epoch: Annotated[int, Range(1)]
    target: Annotated[bytes, MaxLen(HASH)]


# --------------------------------------------------------------------------- over a stored chain


def enabled(spec) -> bool:
    """Whether a chain runs FFG: its spec names the final committee's weights (``ChainSpec.finality``)."""
    return bool(getattr(spec, "finality", None))


class ChainFinality:
    """FFG over a stored chain: every block is a checkpoint (epoch = height), votes are its Type-I vote records.

    The votes travel as ordinary records (``record_tx(vote, member, key)``), so every replica and every later
    audit replays the same finality from the chain alone.  A vote record that does not check out (bad
    signature, unknown member, a link between blocks of no branch) is skipped and counted.  ``update`` reads
    the blocks committed since the last call.
    """

    def __init__(self, chain, metrics=None):
        from edgefl.runtime.metrics import METRICS

        spec = chain.spec
        self.chain = chain
        self.metrics = metrics or METRICS
        self.core = Finality(spec.chain, spec.committee, dict(spec.finality), chain.store.block_row(0)[0])
        self.height = 0
        self.content = 0  # the last height holding anything but votes

    def update(self) -> Outcome:
        from edgefl.ledger.block import decode_header
        from edgefl.ledger.tx import decode_tx

        out = Outcome()
        store = self.chain.store
        while self.height < self.chain.tip.height:
            h = self.height + 1
            row = store.block_row(h)
            self.core._merge(out, self.core.add_checkpoint(h, row[0], decode_header(row[1]).prev))
            rows = store.db.execute("SELECT data, rtype FROM txs WHERE height = ? ORDER BY idx", (h,)).fetchall()
            for data, rtype in rows:
                if rtype != Vote.TYPE:
                    if rtype != Behaviour.TYPE:  # evidence about votes needs no votes itself
                        self.content = h
                    continue
                try:
                    self.core._merge(out, self.core.on_vote(decode_tx(data).body.unwrap()))
                except LedgerError as exc:  # InvalidEvidence, or a record that is no vote
                    self.metrics.inc("ffg_vote_rejected", reason=exc.reason)
            self.height = h
        return out

    @property
    def finalized_height(self) -> int:
        return self.core.last_finalized.epoch

    @property
    def justified(self) -> Checkpoint:
        return self.core.last_justified

    def needs_votes(self) -> bool:
        """Whether a block holding more than votes is not final yet (votes for vote-only blocks stop there)."""
        return self.content > self.finalized_height


class Caller:
    """Which link the main chain's node asks the final committee to vote on, so that the votes converge.

    Every block is a checkpoint and the votes themselves make blocks, so a call on every new tip splits the
    members' votes over ever newer targets, none reaching two thirds: nothing becomes final while votes keep
    arriving (seen as soon as blocks are sealed faster than votes come back).  So one call stands until its
    target is justified, or ``patience`` seconds pass (votes were lost: call again on the tip).  First the justified
    checkpoint → the tip; once a checkpoint at or above the last content is justified, it → its direct child,
    which makes it final.  Two rounds of votes per finality, whatever the block rate.
    """

    def __init__(self, finality: ChainFinality, patience: float = 1.0):
        self.finality = finality
        self.patience = patience
        self.standing: FfgCall | None = None
        self.since = 0.0

    def next(self, now: float) -> FfgCall | None:
        """The call to publish now, or None (nothing needs votes, or the standing call is still gathering them)."""
        f, chain = self.finality, self.finality.chain
        if not f.needs_votes():
            self.standing = None
            return None
        j, tip = f.justified, chain.tip.height
        fresh = self.standing is not None and now - self.since < self.patience
        if fresh and j.epoch < self.standing.target_epoch:
            return None
        if j.epoch >= f.content:  # the content is justified: its child's justification finalizes it
            if tip <= j.epoch:
                return None
            target = j.epoch + 1
        else:
            target = tip
        if fresh and (self.standing.source_epoch, self.standing.target_epoch) == (j.epoch, target):
            return None
        self.standing = FfgCall(chain.id, j.epoch, j.hash, target, chain.store.block_row(target)[0])
        self.since = now
        return self.standing
