"""The asyncio shell around the PBFT replica: a ledger ``Producer`` for a chain kept by a committee.

It carries the replica's messages in signed envelopes over the node's MQTT
session (kind ``pbft``: broadcast on the sender's topic, or addressed to one
member), runs every chain operation on the ledger node's worker thread
(``validate_proposal``, ``commit_sealed``, reading blocks for state transfer),
and reports committed blocks to the node, which answers the submitters.

One action worker applies the replica's outputs in order, so commits reach the
store in height order.  The chain validates a proposal against its committed
tip, so this shell keeps one height in flight (``window`` 1); batching many
transactions per block is what carries the throughput.

Requests: a client hands a transaction to any member (``Submit``); members
admit it to their own mempools, and whichever member leads proposes it, so a
deposed leader does not strand what it held: submit to every member to be
independent of who leads (as PBFT clients broadcast on a timeout).  A member
passes on again what it admitted itself and still holds uncommitted after half
a view timeout (before it would suspect the leader; then after 1, 2, 4, 8
timeouts): a peer that subscribed late or was reconnecting missed the first
copy, and a leader that never saw a request would otherwise keep committing
others' blocks while it waits here for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from pathlib import Path

from edgefl import codec
from edgefl.consensus import epoch as epochs
from edgefl.consensus.pbft import App, Blocks, Commit, Evidence, Replica, Requests, Send, Serve, Validate
from edgefl.consensus.proposal import claimer, primary_of
from edgefl.consensus.votelog import VoteLog
from edgefl.crypto import SigningKey
from edgefl.ledger import (
    InvalidTx,
    LedgerError,
    LedgerNode,
    Producer,
    Seal,
    block_hash,
    decode_block,
    decode_header,
    record_tx,
    txid,
)
from edgefl.transport import topics

log = logging.getLogger("edgefl.pbft")
KIND = "pbft"  # a sub-chain committee's topic kind; the main chain's has its own (a fog is in both committees)
MAIN_KIND = "pbft-main"
MAX_UNCONFIRMED = 4096


def kind_of(spec) -> str:
    return MAIN_KIND if spec.role == "main" else KIND


class ChainApp(App):
    def __init__(self, max_block: int):
        self.max_block = max_block
        self._last: tuple[bytes, bytes, bytes] | None = None  # (raw, hash, prev) of the block decoded last

    def _decoded(self, raw: bytes) -> tuple[bytes, bytes]:
        # the core asks for a proposal's hash and then its parent: decode a (megabyte) block once, not twice
        if self._last is None or self._last[0] is not raw:
            header = decode_block(raw, self.max_block).header
            self._last = (raw, block_hash(header), decode_header(header).prev)
        return self._last[1], self._last[2]

    def block_hash(self, raw: bytes) -> bytes:
        return self._decoded(raw)[0]

    def prev_hash(self, raw: bytes) -> bytes:
        return self._decoded(raw)[1]


class PbftProducer(Producer):
    name = "pbft"

    def __init__(self, node: LedgerNode, key: SigningKey, *, votelog: str | Path | None = None,
                 view_timeout: float = 1.0, checkpoint_every: int = 16, tick: float = 0.01, idle: float = 0.25,
                 pace: float = 0.0):
        super().__init__(node)
        chain = node.chain
        self.me = node.session.signer.node_id
        self.key = key
        self.spec = chain.spec
        self.kind = kind_of(self.spec)
        self._settings = dict(window=1, checkpoint_every=checkpoint_every, view_timeout=view_timeout,
                              metrics=node.metrics)
        self.replica = self._replica(VoteLog(votelog) if votelog else VoteLog(), *self._stable_point())
        self.epoch = chain.state.epoch
        self._background: set[asyncio.Task] = set()
        self.tick, self.idle = tick, idle
        # the least time between two of this leader's proposals (``ledger.block_interval_s``): what arrives
        # meanwhile rides in the next block, so a loaded committee certifies fewer, larger blocks (each costs
        # about 5n messages); a full block goes at once. Well within the view timeout, so nobody times it out.
        self.pace = min(pace, view_timeout / 4)
        self._proposed_at = -float("inf")
        self._share_every = max(tick, self.pace / 4)  # requests passed on to the peers in batches this often
        self._checked: dict[bytes, tuple] = {}  # proposals validated here: hash -> (Verified, State)
        self._actions: asyncio.Queue = asyncio.Queue()
        self._kick = asyncio.Event()
        self.messages_in = 0
        self._share: list[bytes] = []  # admitted here, to pass on to the peers at the next tick
        self._share_bytes = 0
        self._share_at = 0.0  # when the first of them was admitted
        self._unconfirmed: OrderedDict[bytes, list] = OrderedDict()  # admitted here: txid -> [raw, resend at, tries]

    def _stable_point(self) -> tuple[list, tuple[int, bytes] | None]:
        """From the store (the worker thread, once running): the tip's certificate, and with epochs the last
        block of the epoch before, which the current committee stands on."""
        chain = self.node.chain
        seal = chain.store.block_row(chain.tip.height)[2]
        sigs = Seal.from_wire(codec.decode(seal)).sigs if seal else []
        if self.spec.epochs is None:
            return sigs, None
        start = chain.state.epoch * self.spec.epochs.blocks
        return sigs, (start, chain.store.block_row(start)[0])

    def _replica(self, votelog: VoteLog, sigs: list, base: tuple[int, bytes] | None,
                 changing: bool | None = None) -> Replica:
        """The replica of the committee the next block is checked against (with epochs, this epoch's: up to its
        epoch block, standing on ``base``)."""
        chain = self.node.chain
        current = chain.current
        limit = (chain.state.epoch + 1) * self.spec.epochs.blocks if self.spec.epochs is not None else None
        return Replica(self.me, self.key, current.committee, chain.id, ChainApp(self.spec.max_block),
                       height=chain.tip.height, tip_hash=chain.tip.hash, tip_sigs=sigs, votelog=votelog,
                       now=time.monotonic(), primary=primary_of(current), limit=limit, base=base,
                       peers=self.spec.committee.ids, changing=changing, **self._settings)

    async def _enter_epoch(self) -> None:
        """A new epoch: seat the replica of its committee and record this member's draw for the next one and,
        if it sits in this one, its seed share."""
        chain = self.node.chain
        old = self.replica
        # every member hands over at the same committed block: the new committee starts in the view it carries on
        self.replica = self._replica(old.votelog, *await self.node.call(self._stable_point), changing=False)
        self.replica.ahead_peer = old.ahead_peer
        # perhaps catching up: ask on into this epoch (an empty answer costs one message)
        self.replica._fetch(old.ahead_peer or self.replica.leader())
        self.epoch = chain.state.epoch
        self.node.metrics.inc("pbft_epoch_entered")
        log.info("%s: epoch %d, committee %s%s", chain.id, self.epoch, ", ".join(self.replica.ids),
                 "" if self.replica.member else " (following)")
        self._record_draw()

    def _record_draw(self) -> None:
        chain = self.node.chain
        for msg in epochs.my_records(self.spec, chain.state, self.me, self.key.secret):
            self._spawn(self._record(record_tx(msg, self.me, self.key)))

    def _spawn(self, coro) -> None:
        """A submission that waits for its block, off the action worker (kept referenced until it is done)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def wake(self) -> None:
        self._kick.set()

    def admitted(self, raw: bytes) -> None:
        self._unconfirmed[txid(raw)] = [raw, time.monotonic() + self.replica.view_timeout / 2, 1]
        if len(self._unconfirmed) > MAX_UNCONFIRMED:
            self._unconfirmed.popitem(last=False)  # the oldest stays in the mempool, it is only not passed on again
        self._enqueue(raw)

    def _enqueue(self, raw: bytes) -> None:
        if not self._share:
            self._share_at = time.monotonic()
        self._share.append(raw)
        self._share_bytes += len(raw)
        self._kick.set()  # the leader proposes now, not at the next tick (while a block is in flight, requests batch)
        if self._share_bytes > self.spec.max_block // 2 or len(self._share) >= 4096:
            self._send_requests()

    def _reshare(self, now: float) -> None:
        """Pass on again, with backoff, what was admitted here and is still in this member's mempool."""
        chain = self.node.chain
        while self._unconfirmed:
            tid, entry = next(iter(self._unconfirmed.items()))
            if entry[1] > now:
                break
            if not chain.pooled(tid):  # committed, or dropped from the mempool: nothing left to pass on
                del self._unconfirmed[tid]
                continue
            entry[1], entry[2] = now + self.replica.view_timeout / 2 * min(2 ** entry[2], 16), entry[2] + 1
            self._unconfirmed.move_to_end(tid)
            self.node.metrics.inc("pbft_request_resent")
            self._enqueue(entry[0])

    def _send_requests(self, now: float | None = None) -> None:
        """Pass on what was admitted here, at most ``_share_every`` after the first of it: one message per batch."""
        if self._share and (now is None or now >= self._share_at + self._share_every):
            self._actions.put_nowait(Send(None, Requests(self._share)))
            self._share, self._share_bytes = [], 0

    async def run(self) -> None:
        s = self.node.session
        async with contextlib.AsyncExitStack() as stack:
            # each peer's broadcasts (not our own, which the broker would echo back) and what is sent to us, from
            # any site: the main chain's members are the cloud and the fogs, each its own site
            # (with epochs, of the whole pool: whoever sits in the next epoch's committee)
            patterns = [topics.pattern(node=peer, kind=self.kind) for peer in self.spec.committee.ids
                        if peer != self.me] + [topics.pattern(kind=self.kind, target=self.me)]
            if self.spec.epochs is not None:  # at every start: a restarted member's record may have been lost
                self._record_draw()
            subs = [await stack.enter_async_context(s.subscribe(p)) for p in patterns]
            async with asyncio.TaskGroup() as tg:
                for sub in subs:
                    tg.create_task(self._receive(sub))
                tg.create_task(self._clock())
                tg.create_task(self._work())

    # ------------------------------------------------------------------ inputs

    async def _receive(self, sub) -> None:
        async for rx in sub:
            sender = rx.envelope.sender
            if sender == self.me or (rx.envelope.to is not None and rx.envelope.to != self.me):
                continue
            self.messages_in += 1
            self.node.metrics.inc("pbft_received", type=rx.message.TYPE)
            if isinstance(rx.message, Requests):
                if sender in self.replica.peers:
                    await self.node.call(self._admit, rx.message.txs)
                    self._kick.set()  # pending requests: the leader proposes them, the others time their leader
                continue
            self.replica.now = time.monotonic()
            self.replica.receive(sender, rx.message)
            self._flush()

    def _admit(self, txs: list[bytes]) -> None:
        """A peer's requests into our mempool (worker thread); duplicates and invalid ones are counted and dropped."""
        chain = self.node.chain
        for raw in txs:
            if not chain.has(txid(raw)):  # most arrive from several members: skip the known ones quietly
                with contextlib.suppress(InvalidTx):
                    chain.submit(raw)

    def _sleep(self) -> float:
        """Until the replica's next timer (leader's resend, view timeout, state transfer), within [tick, idle]: an
        idle member does not wake a hundred times a second; a kick (a request, a commit) wakes it at once."""
        r, now = self.replica, time.monotonic()
        again = next(iter(self._unconfirmed.values()))[1] if self._unconfirmed else None
        # the pace's end, while it is ahead (once it has passed, a commit or a request kicks the leader)
        due = self._proposed_at + self.pace if r.is_leader and self.node.chain.pending else None
        due = due if due is not None and due > now else None
        timers = [t for t in (r.deadline, r.resend_at, r.fetch_until if r.fetch_until >= 0 else None, again, due)
                  if t is not None]
        if self._share:
            return max(0.0, self._share_at + self._share_every - now)  # requests to pass on
        return min(self.idle, max(self.tick, min(timers, default=now + self.idle) - now))

    async def _clock(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep()):
                    await self._kick.wait()
            self._kick.clear()
            r, chain = self.replica, self.node.chain
            now = time.monotonic()
            self._reshare(now)
            self._send_requests(now)
            r.timeout(now)
            if chain.pending:
                r.pending(now)
                paced = now >= self._proposed_at + self.pace or chain.full_blocks > 0
                if paced and r.can_propose() and r.tip_for_proposal == (chain.tip.height + 1, chain.tip.hash):
                    claim = claimer(chain.current, chain.tip, self.me, self.key, view=r.view)
                    try:
                        block = await self.node.call(lambda: chain.propose(self.me, claim=claim))
                    except LedgerError as exc:
                        log.error("%s: cannot propose: %s", chain.id, exc)
                        block = None
                    if block is not None and r.can_propose() and block.header.prev == r.tip_for_proposal[1]:
                        self._checked[block.hash] = (block, None)
                        self._proposed_at = now
                        await self._propose(block)
            self._flush()

    def _flush(self) -> None:
        for action in self.replica.take():
            self._actions.put_nowait(action)

    # ------------------------------------------------------------------ outputs, in order

    async def _work(self) -> None:
        s, node, chain = self.node.session, self.node, self.node.chain
        while True:
            a = await self._actions.get()
            try:
                if isinstance(a, Send):
                    await self._publish(a)
                elif isinstance(a, Validate):
                    ok = chain.tip.hash == a.prev and a.hash in self._checked  # our own proposal: built valid
                    with contextlib.suppress(LedgerError):  # counted and logged by the chain
                        if chain.tip.hash == a.prev and not ok:
                            self._checked[a.hash] = await node.call(chain.validate_proposal, a.block)
                            ok = True
                    self.replica.now = time.monotonic()
                    self.replica.validated(a.view, a.height, a.hash, ok)
                elif isinstance(a, Commit):
                    await self._commit(a)
                elif isinstance(a, Serve):
                    raws = await node.call(lambda: list(chain.store.blocks(a.height, min(chain.tip.height,
                                                                                         a.height + 15))))
                    seals = [decode_block(r, self.spec.max_block).seal.sigs for r in raws]
                    await s.publish(self.kind, Blocks(a.height, raws, seals), to=a.to)
                elif isinstance(a, Evidence):
                    node.metrics.inc("pbft_evidence", kind=a.record.kind)
                    log.warning("%s: %s %s at view %d height %d", chain.id, a.record.member, a.record.kind,
                                a.record.view, a.record.height)
                    tx = record_tx(a.record, self.me, self.key)
                    self._spawn(self._record(tx))
            except LedgerError as exc:
                log.error("%s: %s failed: %s", chain.id, type(a).__name__, exc)
            self._flush()

    async def _propose(self, block) -> None:
        self.replica.propose(block.raw, block.hash)

    async def _publish(self, a: Send) -> None:
        await self.node.session.publish(self.kind, a.msg, to=a.to)

    async def _record(self, tx: bytes) -> None:
        with contextlib.suppress(LedgerError):
            await self.node.submit(tx)

    async def _commit(self, a: Commit) -> None:
        node, chain = self.node, self.node.chain
        checked = self._checked.pop(a.hash, None)
        if chain.tip.height >= a.height:
            return
        if checked is not None:
            verified, state = checked
            block = await node.call(chain.commit_sealed, verified, Seal(self.spec.sealer, a.sigs), state)
        else:  # fetched by state transfer, or validated before a view change: check it again, then seal
            verified, state = await node.call(chain.validate_proposal, a.block)
            block = await node.call(chain.commit_sealed, verified, Seal(self.spec.sealer, a.sigs), state)
        self._checked = {h: c for h, c in self._checked.items() if c[0].header.height > block.header.height}
        node.committed(block)
        for t in block.txs:
            self._unconfirmed.pop(t.id, None)
        if chain.state.epoch != self.epoch:  # an epoch block: the next committee takes over from here
            await self._enter_epoch()
        self._kick.set()  # the leader may propose the next one
