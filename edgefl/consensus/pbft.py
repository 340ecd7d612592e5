"""PBFT (Castro–Liskov) for a chain's committee, linear variant, as a sans-I/O state machine.

Inputs: ``receive(sender, msg)`` (a message whose envelope the shell has
opened), ``validated(view, height, hash, ok)`` (the chain's own validation of a
proposal, run off the protocol path), ``timeout(now)`` and ``propose(raw, hash)``
on the leader.  Outputs, drained with ``take()``: ``Send`` (to one member or
to all), ``Validate`` (check this proposal against the chain), ``Commit`` (a
block and its commit certificate, in height order), ``Serve`` (answer a peer's
state-transfer request from the store) and ``Evidence`` (Behaviour records).

Normal case, view v, leader ids[v mod n], quorum q = the committee's threshold
(⌈(2n+1)/3⌉):

    leader   Propose(PrePrepare(v, h, hash) signed, block)        → all
    replica  validates the block, Vote(prepare)                    → leader
    leader   q prepare votes: Cert(prepare)                        → all
    replica  prepared; Vote(commit) = signature over the block hash → leader
    leader   q commit votes: Cert(commit)                          → all
    replica  commits: the commit certificate is the block's ``quorum`` seal

Linear rather than all-to-all: every vote goes to the leader, which
broadcasts the quorum certificate (as SBFT and HotStuff do), so a block costs
about 5(n−1) received messages instead of 2n² (docs/consensus.md).  Several
heights are in flight between the watermarks (stable checkpoint, +window);
every ``checkpoint_every`` blocks the replicas exchange signed checkpoints, q
of them make it stable and the log below it is dropped.  A replica whose
timer expires (or that holds proof its leader equivocated) moves to view v+1
with a ViewChange carrying its prepared certificates; the new leader sends
NewView with q view changes and re-proposes, for each height, the block of
the highest-view prepared certificate (stopping at the first height with none,
or whose block does not extend the previous: nothing above it can have
committed).  Every signature a replica gives goes through its ``VoteLog``
first, so it never signs two different digests for one slot, even across a
kill -9 and restart; a prepare reserves the commit slot of the same block (and
the leader's pre-prepare its own prepare and commit), so a block costs each
replica one durable write.  A replica that learns of committed heights beyond its
own asks a peer for the blocks and checks each commit certificate.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Annotated, Callable, Iterable

from edgefl import codec
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.consensus.evidence import Behaviour, Statement, equivocation
from edgefl.consensus.votelog import VoteLog
from edgefl.crypto import SigningKey, tagged_hash
from edgefl.ledger import Committee, LedgerError, Sig
from edgefl.runtime import METRICS, Metrics

log = logging.getLogger("edgefl.pbft")

TAG = b"edgefl/pbft/v1"
Id = Annotated[str, MaxLen(128)]
Hash = Annotated[bytes, MaxLen(32)]
Signature = Annotated[bytes, MaxLen(64)]
Sigs = Annotated[list[Sig], MaxLen(64)]
MAX_BLOCK = 64 << 20


def _digest(*parts) -> bytes:
    return tagged_hash(TAG, codec.encode(list(parts)))


# --------------------------------------------------------------------------- messages


@message("pbft.pre-prepare", max_size=1024)
class PrePrepare(Statement):
    chain: Annotated[str, MaxLen(64)]
    view: Annotated[int, Range(0)]
    height: Annotated[int, Range(0)]
    hash: Hash
    signer: Id
    sig: Signature = b""

    def digest(self) -> bytes:
        return _digest("pre-prepare", self.chain, self.view, self.height, self.hash)

    def slot(self):
        return ("pre-prepare", self.chain, self.view, self.height)


@message("pbft.vote", max_size=1024)
class Vote(Statement):
    """A prepare (signs the phase, view, height and hash) or a commit (signs the block hash: the seal)."""

    chain: Annotated[str, MaxLen(64)]
    phase: Annotated[str, MaxLen(8)]
    view: Annotated[int, Range(0)]
    height: Annotated[int, Range(0)]
    hash: Hash
    signer: Id
    sig: Signature = b""

    def digest(self) -> bytes:
        return vote_digest(self.chain, self.phase, self.view, self.height, self.hash)

    def slot(self):
        # a commit signs only the block hash, which does not bind the view: it proves no equivocation by itself
        return ("prepare", self.chain, self.view, self.height) if self.phase == "prepare" else None


def vote_digest(chain: str, phase: str, view: int, height: int, h: bytes) -> bytes:
    return h if phase == "commit" else _digest(phase, chain, view, height, h)


@message("pbft.propose", max_size=MAX_BLOCK + 4096)
class Propose(Message):
    pre: PrePrepare
    block: bytes


@message("pbft.cert", max_size=16 << 10)
class Cert(Message):
    """q votes of one phase for one (view, height, hash), gathered by the leader."""

    phase: Annotated[str, MaxLen(8)]
    view: Annotated[int, Range(0)]
    height: Annotated[int, Range(0)]
    hash: Hash
    sigs: Sigs


@message("pbft.checkpoint", max_size=1024)
class Checkpoint(Statement):
    chain: Annotated[str, MaxLen(64)]
    height: Annotated[int, Range(0)]
    hash: Hash
    signer: Id
    sig: Signature = b""

    def digest(self) -> bytes:
        return _digest("checkpoint", self.chain, self.height, self.hash)


@message("pbft.prepared", max_size=MAX_BLOCK + (20 << 10))
class Prepared(Message):
    cert: Cert
    block: bytes


@message("pbft.view-change", max_size=MAX_BLOCK * 4)
class ViewChange(Statement):
    chain: Annotated[str, MaxLen(64)]
    view: Annotated[int, Range(0)]  # the view it moves to
    stable: Annotated[int, Range(-1)]  # its stable checkpoint height
    stable_hash: Hash
    stable_sigs: Sigs  # the checkpoint certificate (empty for -1 / genesis)
    prepared: Annotated[list[Prepared], MaxLen(256)]
    signer: Id
    sig: Signature = b""

    def digest(self) -> bytes:
        body = [[p.cert.view, p.cert.height, p.cert.hash] for p in self.prepared]
        return _digest("view-change", self.chain, self.view, self.stable, self.stable_hash, body, self.signer)


@message("pbft.new-view", max_size=MAX_BLOCK * 8)
class NewView(Message):
    view: Annotated[int, Range(0)]
    changes: Annotated[list[ViewChange], MaxLen(64)]


@message("pbft.fetch", max_size=256)
class Fetch(Message):
    """State transfer: send me your committed blocks from ``height`` on."""

    height: Annotated[int, Range(0)]


@message("pbft.blocks", max_size=MAX_BLOCK + (64 << 10))
class Blocks(Message):
    start: Annotated[int, Range(0)]
    blocks: Annotated[list[bytes], MaxLen(64)]
    seals: Annotated[list[Sigs], MaxLen(64)]


@message("pbft.requests", max_size=MAX_BLOCK + 4096)
class Requests(Message):
    """Transactions a member admitted, shared so that whoever leads can propose them (a shell-level message)."""

    txs: Annotated[list[bytes], MaxLen(4096)]


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Send:
    to: str | None  # None: every other member
    msg: Message


@dataclass(frozen=True, slots=True)
class Validate:
    view: int
    height: int
    hash: bytes
    block: bytes
    prev: bytes  # the hash it must extend


@dataclass(frozen=True, slots=True)
class Commit:
    height: int
    hash: bytes
    block: bytes
    sigs: list[Sig]  # the commit certificate: a ``quorum`` seal over ``hash``


@dataclass(frozen=True, slots=True)
class Serve:
    to: str
    height: int


@dataclass(frozen=True, slots=True)
class Evidence:
    record: Behaviour


class App:
    """What the core needs from the chain, all pure: the hash of a block's bytes and the hash it extends."""

    def block_hash(self, raw: bytes) -> bytes:
        raise NotImplementedError

    def prev_hash(self, raw: bytes) -> bytes:
        raise NotImplementedError


@dataclass
class _Slot:
    """One height in the current view."""

    hash: bytes | None = None
    block: bytes | None = None
    pre: PrePrepare | None = None
    valid: bool = False
    asked: bool = False  # Validate emitted
    prepare_votes: dict[str, bytes] = field(default_factory=dict)
    commit_votes: dict[str, bytes] = field(default_factory=dict)
    prepared: Cert | None = None
    certs: dict[str, Cert] = field(default_factory=dict)  # leader: the certificates it sent, by phase


class Replica:
    def __init__(self, me: str, key: SigningKey, committee: Committee, chain: str, app: App, *,
                 height: int = 0, tip_hash: bytes = bytes(32), tip_sigs: list[Sig] | None = None, votelog: VoteLog | None = None,
                 window: int = 8, checkpoint_every: int = 16, view_timeout: float = 1.0,
                 now: float = 0.0, metrics: Metrics = METRICS, primary: Callable[[int], str] | None = None,
                 limit: int | None = None, base: tuple[int, bytes] | None = None, peers: Iterable[str] = (),
                 changing: bool | None = None):
        """``primary``: the leader of a view (the chain's proposal rule; default member ``view mod n``).

        A committee of one epoch (``edgefl.consensus.epoch``) certifies heights up to ``limit`` (its epoch
        block) and stands on ``base``, the last block of the epoch before, whose certificate is the previous
        committee's; ``peers`` (the pool) may ask it for blocks and follow it. A replica that is not a member
        follows: it validates and commits what the committee certifies, and never signs. ``changing``: whether
        it starts waiting for its view's NewView (default: when its vote log is past view 0, i.e. a restart;
        a committee seated at an epoch block starts in the view it carries on from).
        """
        self.me, self.key, self.committee, self.chain, self.app = me, key, committee, chain, app
        self.ids = committee.ids
        self.member = me in self.ids
        self.limit = limit
        self.base = base or (0, b"")
        self.peers = set(peers) | set(self.ids)
        self.primary = primary or (lambda view: self.ids[view % self.n])
        self.n, self.q = len(self.ids), committee.threshold
        self.f = committee.faults
        self.votelog = votelog or VoteLog()
        self.window, self.checkpoint_every, self.view_timeout = window, checkpoint_every, view_timeout
        self.metrics = metrics
        self.view = self.votelog.view
        # restarted mid-run: wait for the current view's NewView (or move on)
        self.changing = self.view > 0 if changing is None else changing
        self.committed, self.committed_hash = height, tip_hash  # the last height handed out as Commit
        self.committed_sigs = list(tip_sigs or [])  # its commit certificate
        # the stable point: a checkpoint certificate, or the tip's own commit certificate (its seal) after a restart
        self.stable, self.stable_hash, self.stable_sigs = height, tip_hash, list(tip_sigs or [])
        self.slots: dict[int, _Slot] = {}
        # certified blocks waiting for the heights below, by height and hash: a certificate at h counts only on
        # top of the block committed at h-1 (one certified in an earlier view may extend a block that never was)
        self.done: dict[int, dict[bytes, tuple[bytes, list[Sig]]]] = {}
        self.early: list[tuple[str, Message]] = []  # proposals and certificates of a view not entered yet
        self.spare: dict[bytes, bytes] = {}  # hash -> block: proposals of another view (see _keep_spare)
        self.resend_at: float | None = None
        self.prepared: dict[int, Prepared] = {}  # highest-view prepared certificate per height (for view changes)
        self.checkpoints: dict[tuple[int, bytes], dict[str, bytes]] = {}
        self.changes: dict[int, dict[str, ViewChange]] = {}
        self.seen_pre: dict[tuple[int, int], PrePrepare] = {}  # (view, height) → the leader's first statement
        self.out: list = []
        self.now = now
        self.deadline: float | None = None
        self.next_height = height + 1  # leader: the next height to propose
        self.last_proposed = tip_hash
        self.fetch_until = -1.0  # a state-transfer request is outstanding until then
        self.mandated: dict[int, bytes] = {}  # what the NewView obliges the leader to re-propose, by height
        self.redo: dict[int, tuple[bytes, bytes]] = {}  # leader: those blocks (hash, block) not proposed yet
        self.floor = 0  # the NewView's stable point: a leader proposes only once it holds the block there
        self.attempts = 0  # view changes since the last NewView: each waits twice as long
        self.stalls = 0  # new views since the last commit
        self.my_checkpoint: Checkpoint | None = None
        self.ahead_peer: str | None = None  # who last showed us a certificate above our next height

    # ------------------------------------------------------------------ helpers

    def leader(self, view: int | None = None) -> str:
        return self.primary(self.view if view is None else view)

    @property
    def is_leader(self) -> bool:
        return not self.changing and self.leader() == self.me

    def take(self) -> list:
        out, self.out = self.out, []
        return out

    def _send(self, to: str | None, msg: Message) -> None:
        if to == self.me:
            self.receive(self.me, msg)
        else:
            self.out.append(Send(to, msg))

    def _sign(self, st: Statement, slot: tuple | None = None, also: tuple = ()) -> Statement | None:
        """``st`` signed, unless this replica already signed something else in its slot, or follows (then None).

        ``also``: (slot, digest) pairs this replica will sign next, reserved in the same durable vote-log write.
        """
        if not self.member:
            return None
        digest = st.digest()
        if slot is not None and not self.votelog.guard(slot, digest, also):
            self.metrics.inc("pbft_refused_to_sign", kind=st.TYPE)
            return None
        return dataclasses.replace(st, sig=self.key.sign(digest))

    def _drop(self, why: str, sender: str) -> None:
        self.metrics.inc("pbft_rejected", reason=why)
        log.debug("%s: dropped a message from %s: %s", self.me, sender, why)

    def _verified(self, st: Statement, sender: str) -> bool:
        key = self.committee.key_of(st.signer)
        if st.signer != sender or key is None or not key.verify(st.sig, st.digest()):
            self._drop("bad_signature", sender)
            return False
        return True

    def _quorum(self, cert: Cert, digest: bytes) -> bool:
        try:
            self.committee.verify_quorum(digest, cert.sigs, field="cert.sigs")
            return True
        except LedgerError:
            return False

    def _in_window(self, height: int) -> bool:
        """Between the watermarks: above the stable checkpoint, at most two checkpoint intervals beyond it, and
        within this committee's epoch."""
        return (self.stable < height <= self.stable + 2 * self.checkpoint_every
                and (self.limit is None or height <= self.limit))

    def _patience(self) -> float:
        """The view timeout, one more for every new view since the last commit: a committee too slow for one
        timeout (a loaded machine) gets a longer one in the next view instead of changing views forever."""
        return self.view_timeout * (1 + min(self.stalls, 16))

    def _arm(self) -> None:
        if self.deadline is None:
            self.deadline = self.now + self._patience()
        if self.resend_at is None:
            self.resend_at = self.now + self.view_timeout / 4

    def _resend(self) -> None:
        """Leader: messages get lost; propose again (and certify again) what is not committed yet."""
        self.resend_at = None
        for height, slot in sorted(self.slots.items()):
            if height > self.committed and slot.pre is not None:
                self.out.append(Send(None, Propose(slot.pre, slot.block)))
                self.resend_at = self.now + self.view_timeout / 4

    def pending(self, now: float) -> None:
        """The shell holds requests not yet committed: expect progress within the view timeout."""
        self.now = now
        self._arm()

    def _progress(self) -> None:
        waiting = any(s.pre is not None and h > self.committed for h, s in self.slots.items())
        self.deadline = (self.now + self._patience()) if waiting else None
        self.resend_at = (self.now + self.view_timeout / 4) if waiting else None

    # ------------------------------------------------------------------ leader

    def can_propose(self) -> bool:
        """Leader: room for a new block. The NewView's own blocks go first, and nothing goes before the leader
        holds the NewView's stable point (a leader that lagged would build on a block the others replaced)."""
        return self._room() and self.committed >= self.floor and self.next_height not in self.mandated

    def _room(self) -> bool:
        return (self.is_leader and self._in_window(self.next_height)
                and self.next_height <= self.committed + self.window)  # at most ``window`` heights in flight

    @property
    def tip_for_proposal(self) -> tuple[int, bytes]:
        """The height and prev hash the leader's next block must have."""
        return self.next_height, self.last_proposed

    def propose(self, raw: bytes, h: bytes | None = None) -> bool:
        """Leader: put ``raw`` (a block extending ``tip_for_proposal``) to the committee."""
        if not self.can_propose():
            return False
        return self._put(raw, h or self.app.block_hash(raw))

    def _put(self, raw: bytes, h: bytes) -> bool:
        pre = self._sign(PrePrepare(self.chain, self.view, self.next_height, h, self.me),
                         ("pre-prepare", self.chain, self.view, self.next_height),
                         self._vote_slots(("prepare", "commit"), self.next_height, h))
        if pre is None:
            return False
        self.next_height += 1
        self.last_proposed = h
        self.out.append(Send(None, Propose(pre, raw)))
        self._on_propose(self.me, Propose(pre, raw))
        return True

    def _propose_redo(self) -> None:
        """New leader: re-propose the NewView's blocks in order, once it holds the stable point below them."""
        while (self.redo and not self.changing and self.committed >= self.floor and self._room()
               and self.next_height in self.redo):
            h, raw = self.redo.pop(self.next_height)
            if not self._put(raw, h):
                break

    # ------------------------------------------------------------------ inputs

    def timeout(self, now: float) -> None:
        self.now = now
        if now >= self.fetch_until:
            self.fetch_until = -1.0
        if self.is_leader and self.resend_at is not None and now >= self.resend_at:
            self._resend()
        if self.deadline is not None and now >= self.deadline:
            if self.my_checkpoint is not None and self.my_checkpoint.height > self.stable:
                self.out.append(Send(None, self.my_checkpoint))  # it may have been lost: the log waits on it
            ahead = [h for h in self.done if h > self.committed + 1]
            if ahead and self.ahead_peer is not None and not self.changing:
                # the others are certifying blocks: we lost some, fetch them rather than depose a working leader
                self.fetch_until = -1.0
                self._fetch(self.ahead_peer)
                self.deadline = now + self.view_timeout
                return
            if not self.member:  # a follower cannot depose a leader: it asks for what it may have missed
                self.fetch_until = -1.0
                self._fetch(self.ahead_peer or self.leader())
                self.deadline = now + self._patience()
                return
            self.metrics.inc("pbft_view_timeout")
            self.fetch_until = -1.0
            self._fetch(self.ahead_peer or self.leader())  # perhaps only we lost the last certificates
            self._start_view_change(self.view + 1)

    def receive(self, sender: str, msg: Message) -> None:
        if sender not in self.ids and not (sender in self.peers and isinstance(msg, (Fetch, Blocks))):
            return self._drop("not_member", sender)
        handler = {Propose: self._on_propose, Vote: self._on_vote, Cert: self._on_cert,
                   Checkpoint: self._on_checkpoint, ViewChange: self._on_view_change, NewView: self._on_new_view,
                   Fetch: self._on_fetch, Blocks: self._on_blocks}.get(type(msg))
        if handler is None:
            return self._drop("unknown_type", sender)
        handler(sender, msg)

    def _on_propose(self, sender: str, m: Propose) -> None:
        pre = m.pre
        if pre.chain != self.chain or sender != self.leader(pre.view) or not self._verified(pre, sender):
            return self._drop("not_leader", sender) if pre.chain == self.chain else self._drop("wrong_chain", sender)
        first = self.seen_pre.get((pre.view, pre.height))
        if first is not None and first.hash != pre.hash:
            return self._equivocated(first, pre)
        self.seen_pre.setdefault((pre.view, pre.height), pre)
        if pre.view != self.view or self.changing:
            self._keep_spare(pre, m.block)  # the committee may go on in that view: its commit certificate will do
            if pre.view > self.view or (pre.view == self.view and self.changing):
                return self._defer(sender, m)
            return self._drop("stale_view", sender)
        if not self._in_window(pre.height) or pre.height <= self.committed:
            return self._drop("outside_window", sender)
        if self.mandated.get(pre.height, pre.hash) != pre.hash:
            return self._drop("violates_new_view", sender)
        if len(self.seen_pre) > 4 * self.window * self.n:
            self._trim_seen()
        h = self.app.block_hash(m.block)
        if h != pre.hash:
            return self._drop("hash_mismatch", sender)
        slot = self.slots.setdefault(pre.height, _Slot())
        if slot.pre is not None:  # a duplicate: the leader resends what it lacks votes for
            if slot.hash == h and slot.valid:
                self._vote("commit" if slot.prepared else "prepare", pre.height, h)
            return
        prev = self._prev_for(pre.height)
        if self.app.prev_hash(m.block) != prev and prev is not None:
            return self._drop("does_not_extend", sender)
        slot.hash, slot.block, slot.pre = h, m.block, pre
        self._arm()
        if prev is not None:  # else the block below is not known yet; validated when it is
            self._ask(pre.height, slot, prev)

    def _keep_spare(self, pre: PrePrepare, block: bytes) -> None:
        """A leader's block this replica will not vote on (another view than its own): kept, a few, so that a
        commit certificate for it commits here at once instead of after a state transfer — a replica alone in
        a later view (it timed out, the others did not) follows the committee this way."""
        if pre.height > self.committed and pre.hash not in self.spare and self.app.block_hash(block) == pre.hash:
            self.spare[pre.hash] = block
            while len(self.spare) > 2 * self.window + 4:
                self.spare.pop(next(iter(self.spare)))

    def _ask(self, height: int, slot: _Slot, prev: bytes) -> None:
        if not slot.asked:
            slot.asked = True
            self.out.append(Validate(self.view, height, slot.hash, slot.block, prev))

    def _defer(self, sender: str, m: Message) -> None:
        """Keep what the leader of a view we have not entered sent (it may overtake the NewView)."""
        if len(self.early) < 4 * (self.window + 2 * self.checkpoint_every):
            self.early.append((sender, m))

    def _prev_for(self, height: int) -> bytes | None:
        if height == self.committed + 1:
            return self.committed_hash
        below = self.slots.get(height - 1)
        return below.hash if below is not None and below.hash is not None else None

    def validated(self, view: int, height: int, h: bytes, ok: bool) -> None:
        slot = self.slots.get(height)
        if view != self.view or self.changing or slot is None or slot.hash != h or slot.valid:
            return
        if not ok:
            self.metrics.inc("pbft_invalid_proposal")
            return self._start_view_change(self.view + 1)
        slot.valid = True
        self._vote("prepare", height, h)
        nxt = self.slots.get(height + 1)  # a proposal that waited for this one
        if nxt is not None and nxt.pre is not None:
            self._ask(height + 1, nxt, h)

    def _on_vote(self, sender: str, v: Vote) -> None:
        if v.chain != self.chain or not self._verified(v, sender):
            return
        if v.view != self.view or self.changing or self.leader() != self.me or v.phase not in ("prepare", "commit"):
            return self._drop("stale_view", sender)
        slot = self.slots.get(v.height)
        if slot is None or slot.hash != v.hash:
            return self._drop("unknown_proposal", sender)
        sent = slot.certs.get(v.phase)
        if sent is not None:  # a late or repeated vote: its sender missed the certificate
            if v.signer != self.me:
                self.out.append(Send(v.signer, sent))
            return
        votes = slot.prepare_votes if v.phase == "prepare" else slot.commit_votes
        votes[v.signer] = v.sig
        if len(votes) >= self.q:
            cert = slot.certs[v.phase] = Cert(v.phase, v.view, v.height, v.hash,
                                              [Sig(s, votes[s]) for s in sorted(votes)])
            self.out.append(Send(None, cert))
            self._on_cert(self.me, cert)

    def _on_cert(self, sender: str, c: Cert) -> None:
        if c.phase == "commit":
            return self._on_commit_cert(sender, c)
        if c.phase == "prepare" and (c.view > self.view or (c.view == self.view and self.changing)):
            return self._defer(sender, c)
        if c.phase != "prepare" or c.view != self.view:
            return self._drop("stale_view", sender)
        slot = self.slots.get(c.height)
        if slot is None or slot.hash != c.hash or not slot.valid or slot.prepared is not None:
            return
        if not self._quorum(c, vote_digest(self.chain, "prepare", c.view, c.height, c.hash)):
            return self._drop("bad_quorum", sender)
        slot.prepared = c
        self.prepared[c.height] = Prepared(c, slot.block)
        self._vote("commit", c.height, c.hash)

    def _vote_slots(self, phases: tuple[str, ...], height: int, h: bytes) -> tuple:
        return tuple(((p, self.chain, self.view, height), vote_digest(self.chain, p, self.view, height, h))
                     for p in phases)

    def _vote(self, phase: str, height: int, h: bytes) -> None:
        # the prepare reserves the commit of the same block: one durable write (one fsync) per block, not two.
        # Safe: a commit at (view, height) follows a prepare certificate, and one for another block than the one
        # this replica prepared there would take more than f members signing two prepares
        also = self._vote_slots(("commit",), height, h) if phase == "prepare" else ()
        vote = self._sign(Vote(self.chain, phase, self.view, height, h, self.me), (phase, self.chain, self.view, height),
                          also)
        if vote is not None:
            self._send(self.leader(), vote)

    def _on_commit_cert(self, sender: str, c: Cert) -> None:
        if c.height <= self.committed or c.hash in self.done.get(c.height, ()):
            return
        if self.limit is not None and c.height > self.limit:
            # the next committee's (its replica checks it): this epoch's end is certified, fetch the blocks to it
            self.ahead_peer = sender
            self._fetch(sender)
            return self._drop("next_epoch", sender)
        if not self._quorum(c, c.hash):
            return self._drop("bad_quorum", sender)
        slot = self.slots.get(c.height)
        spare = self.spare.pop(c.hash, None)
        if spare is not None and (slot is None or slot.hash != c.hash or slot.block is None):
            slot = _Slot(hash=c.hash, block=spare)
        if slot is None or slot.hash != c.hash or slot.block is None:
            self.ahead_peer = sender
            self._fetch(sender)  # certified, but we lack the block: state transfer fetches it
            return
        self.done.setdefault(c.height, {})[c.hash] = (slot.block, c.sigs)
        self._deliver()
        if c.height > self.committed + 1 and self.committed + 1 not in self.done:
            self.ahead_peer = sender
            self._fetch(sender)  # the certificate of a height below went missing

    def _deliver(self) -> None:
        while self.committed + 1 in self.done:
            found = [(h, b, sigs) for h, (b, sigs) in self.done.pop(self.committed + 1).items()
                     if self.app.prev_hash(b) == self.committed_hash]
            if not found:
                break
            h, block, sigs = found[0]
            self.committed += 1
            self.committed_hash, self.committed_sigs = h, list(sigs)
            self.stalls = 0  # progress: the view timeout is back to its base
            self.slots.pop(self.committed, None)  # its block is in the store now: a replica's memory stays bounded
            self.out.append(Commit(self.committed, h, block, sigs))
            self.metrics.inc("pbft_committed")
            if self.committed % self.checkpoint_every == 0:
                # a committed block's own certificate makes it stable here; the checkpoint shares tell
                # lagging members that they are behind
                self.stable, self.stable_hash, self.stable_sigs = self.committed, h, list(sigs)
                self._truncate()
                cp = self.my_checkpoint = self._sign(Checkpoint(self.chain, self.committed, h, self.me))
                if cp is not None:
                    self.out.append(Send(None, cp))
                    self._on_checkpoint(self.me, cp)
        if self.next_height <= self.committed:
            self.next_height, self.last_proposed = self.committed + 1, self.committed_hash
        self._propose_redo()
        nxt = self.slots.get(self.committed + 1)
        if nxt is not None and nxt.pre is not None and not self.changing:
            self._ask(self.committed + 1, nxt, self.committed_hash)
        self._progress()

    # ------------------------------------------------------------------ checkpoints

    def _on_checkpoint(self, sender: str, cp: Checkpoint) -> None:
        if cp.chain != self.chain or not self._verified(cp, sender) or cp.height <= self.stable:
            return
        votes = self.checkpoints.setdefault((cp.height, cp.hash), {})
        votes[cp.signer] = cp.sig
        if len(votes) >= self.q:
            if cp.height > self.committed:
                self._fetch(sender)  # q members have it: we are behind
                return
            self.stable, self.stable_hash = cp.height, cp.hash
            self.stable_sigs = [Sig(s, votes[s]) for s in sorted(votes)]
            self._truncate()

    def _truncate(self) -> None:
        low = self.stable
        self.checkpoints = {k: v for k, v in self.checkpoints.items() if k[0] > low}
        self.prepared = {h: p for h, p in self.prepared.items() if h > low}
        self.seen_pre = {k: v for k, v in self.seen_pre.items() if k[1] > low}
        self.votelog.truncate(low)

    def _trim_seen(self) -> None:
        self.seen_pre = {k: v for k, v in self.seen_pre.items() if k[0] >= self.view - 1}

    # ------------------------------------------------------------------ view change

    def _equivocated(self, a: PrePrepare, b: PrePrepare) -> None:
        self.metrics.inc("pbft_equivocation")
        self.out.append(Evidence(equivocation(a, b, chain=self.chain, view=a.view, height=a.height)))
        if a.view == self.view:
            self._start_view_change(self.view + 1)

    def _start_view_change(self, view: int) -> None:
        if view <= self.view and self.changing:
            return
        if view < self.view:
            return
        self.view, self.changing = view, True
        self.votelog.enter_view(view)
        self.slots, self.redo = {}, {}
        self.deadline = None
        # the stable point: the last committed block, whose commit certificate proves it as a checkpoint
        # certificate would (so the view change carries the prepared blocks above it, not those since the checkpoint)
        stable, stable_hash, stable_sigs = self.stable, self.stable_hash, self.stable_sigs
        if self.committed > stable and self.committed_sigs:
            stable, stable_hash, stable_sigs = self.committed, self.committed_hash, self.committed_sigs
        vc = self._sign(ViewChange(self.chain, view, stable, stable_hash, stable_sigs,
                                   [p for h, p in sorted(self.prepared.items()) if h > stable], self.me),
                        ("view-change", self.chain, view, 1 << 62))
        self.attempts += 1
        self.deadline = self.now + self.view_timeout * 2 ** min(self.attempts, 6)  # this one stalls: try the next
        if vc is None:
            return
        self.out.append(Send(None, vc))
        self._on_view_change(self.me, vc)

    def _check_vc(self, vc: ViewChange) -> bool:
        base, base_hash = self.base
        if vc.stable < base:
            return False  # from before this committee's epoch
        if vc.stable == base and base > 0:  # the epoch's first stable point: certified by the committee before
            if vc.stable_hash != base_hash:
                return False
        elif vc.stable > 0:  # block 0, the genesis, is fixed by the chain spec
            cp = Cert("checkpoint", 0, vc.stable, vc.stable_hash, vc.stable_sigs)
            if not (self._quorum(cp, _digest("checkpoint", self.chain, vc.stable, vc.stable_hash))
                    or self._quorum(cp, vc.stable_hash)):
                return False
        for p in vc.prepared:
            c = p.cert
            if (c.phase != "prepare" or c.view >= vc.view or self.app.block_hash(p.block) != c.hash
                    or not self._quorum(c, vote_digest(self.chain, "prepare", c.view, c.height, c.hash))):
                return False
        return True

    def _on_view_change(self, sender: str, vc: ViewChange) -> None:
        if vc.chain != self.chain or not self._verified(vc, sender) or vc.view < self.view:
            return
        if not self._check_vc(vc):
            return self._drop("bad_view_change", sender)
        got = self.changes.setdefault(vc.view, {})
        got[vc.signer] = vc
        if vc.view > self.view and len(got) > self.f:  # f+1 want a later view: one of them is honest, join
            self._start_view_change(vc.view)
        if vc.view == self.view and self.changing and self.leader() == self.me and len(got) >= self.q:
            nv = NewView(vc.view, [got[s] for s in sorted(got)][:self.q])
            self.out.append(Send(None, nv))
            self._on_new_view(self.me, nv)

    def _on_new_view(self, sender: str, nv: NewView) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.changing) or sender != self.leader(nv.view):
            return self._drop("stale_view", sender)
        signers = {vc.signer for vc in nv.changes}
        if len(signers) < self.q or len(signers) != len(nv.changes) or any(
                vc.view != nv.view or vc.chain != self.chain or not self._verified(vc, vc.signer)
                or not self._check_vc(vc) for vc in nv.changes):
            return self._drop("bad_new_view", sender)
        self.view, self.changing = nv.view, False
        self.votelog.enter_view(nv.view)
        self.slots = {}
        self.changes = {v: c for v, c in self.changes.items() if v > nv.view}
        top = max(nv.changes, key=lambda vc: vc.stable)
        best: dict[int, Prepared] = {}
        for vc in nv.changes:
            for p in vc.prepared:
                c = p.cert
                if c.height > top.stable and (c.height not in best or c.view > best[c.height].cert.view):
                    best[c.height] = p
        # re-propose the highest-view prepared block of each height, as long as they chain from the checkpoint
        redo, prev, h = [], top.stable_hash, top.stable + 1
        while h in best and self.app.prev_hash(best[h].block) == prev:
            redo.append((h, best[h].cert.hash, best[h].block))
            prev, h = best[h].cert.hash, h + 1
        self.mandated = {height: hsh for height, hsh, _ in redo}
        self.redo = {height: (hsh, block) for height, hsh, block in redo} if self.leader() == self.me else {}
        self.floor = top.stable
        if top.stable > self.committed:
            self._fetch(top.signer)
        self.next_height, self.last_proposed = self.committed + 1, self.committed_hash
        self.attempts = 0
        self.stalls += 1
        self.deadline = self.now + self._patience() if redo else None
        self.metrics.inc("pbft_new_view")
        self._propose_redo()
        early, self.early = self.early, []
        for sender, m in early:
            if (m.pre.view if isinstance(m, Propose) else m.view) >= self.view:
                self.receive(sender, m)

    # ------------------------------------------------------------------ state transfer

    def _fetch(self, peer: str) -> None:
        if self.fetch_until < 0 and peer != self.me:
            self.fetch_until = self.now + self.view_timeout / 2
            self.out.append(Send(peer, Fetch(self.committed + 1)))

    def _on_fetch(self, sender: str, m: Fetch) -> None:
        # answered even when there is nothing above: an empty answer ends the asker's transfer at once (else it
        # would not ask again, for the next certified block, until its request timed out)
        self.out.append(Serve(sender, m.height))

    def _on_blocks(self, sender: str, m: Blocks) -> None:
        self.fetch_until = -1.0
        if len(m.blocks) != len(m.seals):
            return self._drop("malformed", sender)
        for i, (raw, sigs) in enumerate(zip(m.blocks, m.seals)):
            height = m.start + i
            if self.limit is not None and height > self.limit:
                break  # the next epoch's blocks: its committee's replica checks them
            if height != self.committed + 1:
                continue
            h = self.app.block_hash(raw)
            if not self._quorum(Cert("commit", 0, height, h, sigs), h):
                return self._drop("bad_quorum", sender)
            self.done.setdefault(height, {})[h] = (raw, sigs)
            self._deliver()
        if m.blocks and (self.limit is None or self.committed < self.limit):
            self._fetch(sender)  # more may follow; an empty answer ends it
