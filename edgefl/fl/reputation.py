"""Reputation and coins, derived only from ledger records: a pure, deterministic fold anyone can recompute.

    standing = fold_chain(chain)                                       # edgefl ledger show --reputation/--balances
    standing.reputation["dev-1"], standing.balances["dev-1"]

**Reputation** is a beta score, (good + 1) / (good + bad + 2): every account
starts at ``INITIAL`` = 0.5 with nothing recorded.  Each recorded aggregation
scores its inputs: an input whose share of the result is at least its fair
share (its examples over all examples) adds 1 to good; one rejected (share 0)
adds 1 to bad; one down-weighted adds the fraction it kept to good and the
rest to bad.  An ``Offence`` (a batch that fails its provenance, a failed
audit, a bad signature) recorded by a node other than the offender adds
``OFFENCE`` to bad, and so does a consensus ``Behaviour`` (equivocation and
the like, ``edgefl.consensus.evidence``) of a committee member.  On a chain whose
committee is re-drawn every epoch (``edgefl.consensus.epoch``), a member of the
closing committee whose seed share is missing from the epoch block's change (it
withheld it, perhaps to bias the next draw) adds ``WITHHELD`` to bad.  On the main chain the scores come from the cloud's
``Aggregation`` (the fogs) and every ``FogUpdate``'s shares (its devices); on
a fog's chain from the fog's ``Aggregation`` (its devices) — fold one chain.

**Coins** are ``CoinUpdate`` records signed by a task's owner (the signer of
an ``fl.task`` record on that chain; others' coin records count for nothing).
The cloud pays each round's ``Task.reward`` out after aggregating
(``payout``): a device earns ⌊reward · its fog's share · its share in the
fog⌋, so a rejected update earns nothing and a down-weighted one less; what
rounding leaves is not paid.  ``payout`` is a pure function of records on
the main chain, so anyone can check the recorded payout.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Iterable

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.consensus import Behaviour, EpochChange
from edgefl.fl.protocol import Aggregation, FogUpdate, Task
from edgefl.ledger import CoinUpdate

INITIAL = 0.5  # (0 + 1) / (0 + 0 + 2): an account nothing was recorded about
OFFENCE = 2.0  # an offence weighs as much as two rejected updates
WITHHELD = 1.0  # a withheld seed share weighs as much as one rejected update
OFFENCES = ("bad_provenance", "bad_signature", "failed_audit", "consensus")


@message("fl.offence")
class Offence(Message):
    """A node's signed statement that ``account`` misbehaved (``kind``), with the evidence's id (a blob, a tx)."""

    account: Annotated[str, MaxLen(128)]
    kind: Annotated[str, MaxLen(32)]
    task: Annotated[str, MaxLen(128)]
    round: Annotated[int, Range(0, 1 << 20)]
    evidence: Annotated[bytes, MaxLen(32)]
    detail: Annotated[str, MaxLen(256)] = ""


@dataclass
class Standing:
    """Everything the fold derives: scores per account, balances per account, who may pay."""

    good: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bad: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    payers: set[str] = field(default_factory=set)

    def of(self, account: str) -> float:
        return (self.good.get(account, 0.0) + 1.0) / (self.good.get(account, 0.0) + self.bad.get(account, 0.0) + 2.0)

    @property
    def reputation(self) -> dict[str, float]:
        return {a: self.of(a) for a in sorted(set(self.good) | set(self.bad))}

    def score(self, senders, weights, shares) -> None:
        """One aggregation's inputs: kept at their fair share (or more) is good, rejected is bad."""
        total = float(sum(weights))
        for sender, w, s in zip(senders, weights, shares):
            fair = w / total if total > 0 else 0.0
            kept = 1.0 if fair <= 0 else min(1.0, s / fair)
            self.good[sender] += kept
            self.bad[sender] += 1.0 - kept


def shares_of(agg: Aggregation) -> list[float]:
    """Each input's share of the result as recorded (a record without shares: the weights, normalised)."""
    if agg.shares:
        return list(agg.shares)
    total = float(sum(agg.weights)) or 1.0
    return [w / total for w in agg.weights]


def fold(records: Iterable, *, first: Iterable[str] | None = None) -> Standing:
    """Reputation and balances from one chain's Type-I records (``edgefl.ledger.tx.Record``) and epoch changes,
    oldest first; ``first``: epoch 0's committee, of a chain re-drawn every epoch (the shares its first change
    must hold)."""
    st = Standing()
    seated = list(first) if first is not None else None  # the committee the next change closes
    for rec in records:
        if isinstance(rec, EpochChange):
            shared = {s.member for s in rec.shares}
            for member in seated or ():
                if member not in shared and member not in rec.banned:  # a ban already weighs its proof
                    st.bad[member] += WITHHELD
            seated = list(rec.members)
        elif rec.type == Task.TYPE:
            st.payers.add(rec.signer)
        elif rec.type == Aggregation.TYPE:
            agg = rec.unwrap()
            st.score(agg.senders, agg.weights, shares_of(agg))
        elif rec.type == FogUpdate.TYPE:
            u = rec.unwrap()
            if u.shares and u.fog == rec.signer:
                st.score(u.devices, u.weights, u.shares)
        elif rec.type == Offence.TYPE:
            o = rec.unwrap()
            if o.account != rec.signer:  # nobody lowers, or games, its own score
                st.bad[o.account] += OFFENCE
        elif rec.type == Behaviour.TYPE:  # consensus misbehaviour, proven by the record (consensus.evidence)
            b = rec.unwrap()
            if b.member != rec.signer:
                st.bad[b.member] += OFFENCE
        elif rec.type == CoinUpdate.TYPE:
            c = rec.unwrap()
            if rec.signer in st.payers:
                st.balances[c.account] += c.delta
    return st


FOLDED = (Task.TYPE, Aggregation.TYPE, FogUpdate.TYPE, Offence.TYPE, Behaviour.TYPE, CoinUpdate.TYPE)


def chain_records(chain) -> list:
    """The records and epoch changes ``fold`` reads from a ``Chain``, in chain order (height, index)."""
    from edgefl.ledger.tx import decode_tx

    rows = sorted([(h, i, t) for rtype in FOLDED for t, h, i in chain.store.find(rtype=rtype, limit=1 << 40)]
                  + [(h, i, t) for t, h, i in chain.store.find(kind="epoch", limit=1 << 40)])
    return [decode_tx(chain.store.tx(t)[2]).body for _, _, t in rows]


def fold_chain(chain) -> Standing:
    """``fold`` over everything a ``Chain`` holds that it reads."""
    epochs = chain.spec.epochs
    return fold(chain_records(chain), first=epochs.first if epochs is not None else None)


def payout(task: Task, cloud: Aggregation, updates: dict[str, FogUpdate]) -> list[CoinUpdate]:
    """The round's reward split over the devices behind the cloud's aggregation, in a fixed order.

    ``updates`` are the fogs' recorded ``FogUpdate``s of the round by fog id.
    """
    out: dict[str, int] = {}
    for fog, fog_share in zip(cloud.senders, shares_of(cloud)):
        u = updates.get(fog)
        if u is None or not u.shares:
            continue
        for device, share in zip(u.devices, u.shares):
            coins = int(task.reward * fog_share * share)
            if coins > 0:
                out[device] = out.get(device, 0) + coins
    return [CoinUpdate(account=a, delta=out[a], reason=payout_reason(task.task, cloud.round)) for a in sorted(out)]


def payout_reason(task: str, round: int) -> str:
    return f"reward {task}/round-{round}"
