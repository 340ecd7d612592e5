"""One chain on one node: a mempool, mining, validated appends to the store, proofs, verification.

A ``Chain`` is not thread-safe; the ledger service confines each chain to one
worker thread.  Transactions are checked in full when submitted, against the
*pending* state (the committed state with the mempool applied in order), so
any prefix of the mempool makes a valid block.  Their admission verdicts stay
in a bounded cache keyed by tx id (which commits to the exact bytes): a block
proposed by a peer is then validated without decoding or verifying again the
transactions this node has already seen, as Bitcoin Core's signature cache does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from edgefl.consensus import epoch as epochs
from edgefl.consensus.proposal import check_header
from edgefl.crypto import KeyRegistry, MerkleFrontier, merkle_path
from edgefl.ledger.block import Seal, Tip, decode_header, frame_tx
from edgefl.ledger.errors import InvalidBlock, InvalidTx, LedgerError, ProofError, StoreError
from edgefl.ledger.proofs import BATCH_METHODS, MAX_BATCH, BatchProof, TxProof, make_aggregate, make_proof, witness_for
from edgefl.ledger.sealer import Sealer
from edgefl.ledger.store import Store
from edgefl.ledger.tx import (
    MAX_ANCHOR_BLOCKS,
    MAX_TX,
    Anchor,
    ChainSpec,
    Record,
    State,
    TxInfo,
    decode_tx,
    genesis_tx,
    make_tx,
)
from edgefl.ledger.validation import (
    Verified,
    build_block,
    check_seal,
    finish_block,
    propose_block,
    validate_block,
    validate_proposal,
)
from edgefl.runtime import METRICS, Metrics, RateLimited

log = logging.getLogger("edgefl.ledger")

BLOCK_OVERHEAD = 4096  # header, seal and framing; what a block keeps free beside its transactions


@dataclass
class _Pending:
    """Admitted transactions that will make one block, in order, and their Merkle tree so far.

    The mempool is cut into blocks as transactions arrive, so sealing a full
    block hashes O(log n) nodes, not n leaves.
    """

    txs: list[TxInfo] = field(default_factory=list)
    tree: MerkleFrontier = field(default_factory=MerkleFrontier)
    framed: bytearray = field(default_factory=bytearray)  # the block's ``txs`` array body, built as they come

    @property
    def size(self) -> int:
        return len(self.framed)

    def add(self, info: TxInfo) -> None:
        self.txs.append(info)
        self.tree.append(info.id)
        self.framed += frame_tx(info.raw)


class Chain:
    def __init__(self, store: Store, *, registry: KeyRegistry | None = None, metrics: Metrics = METRICS,
                 max_pool_bytes: int = 64 << 20, admitted_cache_bytes: int = 64 << 20):
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.max_pool_bytes = max_pool_bytes
        self.tip: Tip = store.tip()
        self.state: State = store.state()
        self._pool: dict[bytes, TxInfo] = {}  # the mempool, by id
        self._blocks: deque[_Pending] = deque()  # the same transactions, cut into blocks
        self._pool_bytes = 0
        self._pending = self.state.copy()
        self._admitted: OrderedDict[bytes, TxInfo] = OrderedDict()  # admit() verdicts, by tx id
        self._admitted_bytes = 0
        self._admitted_max = admitted_cache_bytes
        self._log = RateLimited(log)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | os.PathLike, *, readonly: bool = False, **kw) -> "Chain":
        chain = cls(Store(path, readonly=readonly), **kw)
        if chain.state.spec is None:
            chain.store.close()
            raise LedgerError(f"{path}: no genesis block (create the chain with `edgefl ledger init`)",
                              reason="not_found")
        return chain

    @classmethod
    def create(cls, path: str | os.PathLike, spec: ChainSpec, sealer: Sealer, **kw) -> "Chain":
        store = Store(path)
        if store.tip().height >= 0:
            store.close()
            raise LedgerError(f"{path}: chain exists already", reason="exists")
        chain = cls(store, **kw)
        genesis = decode_tx(genesis_tx(spec))
        block = build_block(Tip.genesis(), spec.chain, [genesis], sealer, spec.ts)
        state = State()
        genesis.kind.apply(genesis, state)
        chain._commit(block, state)
        chain._pending = state.copy()
        return chain

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Chain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def spec(self) -> ChainSpec:
        return self.state.spec

    @property
    def current(self) -> ChainSpec:
        """The spec the next block is checked against: with epochs, the genesis spec with this epoch's committee."""
        return self.state.effective

    @property
    def id(self) -> str:
        return self.state.spec.chain

    # ------------------------------------------------------------------ rejections

    def _reject(self, what: str, exc: LedgerError) -> None:
        self.metrics.inc(f"ledger_{what}_rejected", reason=exc.reason)
        self._log.warning(f"{what}:{exc.reason}", "%s: rejected %s (%s): %s", self.id if self.spec else "?", what,
                          exc.reason, exc, reason=exc.reason)

    # ------------------------------------------------------------------ mempool

    def submit(self, raw: bytes) -> TxInfo:
        """Validate a transaction in full and queue it for the next block (raises InvalidTx)."""
        try:
            if len(raw) > min(MAX_TX, self.spec.max_block - BLOCK_OVERHEAD):
                raise InvalidTx(f"{len(raw)} bytes does not fit in a block", field="tx", reason="too_large")
            info = decode_tx(raw)
            if info.kind.name == "epoch":  # the epoch block's proposer makes it; queued, it would land elsewhere
                raise InvalidTx("an epoch change is made by the epoch block's proposer, not submitted", field="tx.kind",
                                reason="misplaced")
            if info.id in self._pool or self.store.has_tx(info.id):
                raise InvalidTx("already submitted", field="tx", reason="duplicate")
            if self._pool_bytes + len(raw) > self.max_pool_bytes:
                raise InvalidTx("mempool is full", field="tx", reason="mempool_full")
            info.kind.admit(info, self.spec, self.registry)
            info.kind.check(info, self._pending)
        except InvalidTx as exc:
            self._reject("tx", exc)
            raise
        info.kind.apply(info, self._pending)
        self._remember(info)
        self._queue(info)
        self.metrics.inc("ledger_tx_accepted")
        return info

    def has(self, txid: bytes) -> bool:
        """Whether transaction ``txid`` is in the mempool or on the chain."""
        return txid in self._pool or self.store.has_tx(txid)

    def pooled(self, txid: bytes) -> bool:
        """Whether transaction ``txid`` waits in the mempool (memory only: safe on the event loop)."""
        return txid in self._pool

    def _queue(self, info: TxInfo) -> None:
        self._pool[info.id] = info
        self._pool_bytes += len(info.raw)
        if not self._blocks or self._blocks[-1].size + len(frame_tx(info.raw)) > self.spec.max_block - BLOCK_OVERHEAD:
            self._blocks.append(_Pending())
        self._blocks[-1].add(info)

    def _remember(self, info: TxInfo) -> None:
        self._admitted[info.id] = info
        self._admitted_bytes += len(info.raw)
        while self._admitted_bytes > self._admitted_max:
            self._admitted_bytes -= len(self._admitted.popitem(last=False)[1].raw)

    @property
    def pending_state(self) -> State:
        """The committed state with the mempool applied: what the next block will leave."""
        return self._pending

    @property
    def pending(self) -> int:
        return len(self._pool)

    @property
    def pending_bytes(self) -> int:
        return self._pool_bytes

    @property
    def full_blocks(self) -> int:
        """How many blocks the mempool fills completely (all but the last pending block)."""
        return max(0, len(self._blocks) - 1)

    # ------------------------------------------------------------------ blocks

    def propose(self, proposer: str, *, ts_ms: int | None = None, allow_empty: bool = False,
                claim=None) -> Verified | None:
        """The next block from the mempool, unsealed (for a committee to certify); None if there is nothing to do.

        ``claim``: fills in the proposal rule's header fields (``edgefl.consensus.proposal``).
        """
        if not self._blocks and not allow_empty:
            return None
        pending = self._blocks[0] if self._blocks else _Pending()
        txs, root, framed = pending.txs, pending.tree.root(), pending.framed
        if epochs.is_epoch_block(self.spec, self.tip.height + 1):  # the epoch's last block: the committee change
            txs, root, framed = [self._epoch_change()], None, None
        block = propose_block(self.tip, self.id, txs, proposer,
                              time.time_ns() // 1_000_000 if ts_ms is None else ts_ms, sealer=self.spec.sealer,
                              root=root, framed=framed, claim=claim)
        check_header(self.current, block.header, self.tip)  # never build what the chain's proposal rule refuses
        if len(block.raw) > self.spec.max_block:  # the overhead reserve makes this unreachable; guard it anyway
            raise LedgerError(f"proposed a {len(block.raw)}-byte block over the limit", reason="too_large")
        return block

    def _epoch_change(self) -> TxInfo:
        """The closing epoch's change, from the claims and shares recorded since it began (checked as a replica
        will check it)."""
        start = self.state.epoch * self.spec.epochs.blocks
        recorded = []
        for rtype in ("sortition-claim", "seed-share", "consensus.behaviour"):
            for tid, height, _ in self.store.find(rtype=rtype, limit=4 * epochs.MAX_COMMITTEE, newest=True):
                if height <= start:
                    break
                with contextlib.suppress(InvalidTx, LedgerError):
                    recorded.append(decode_tx(self.store.tx(tid)[2]).body.unwrap())
        info = decode_tx(make_tx("epoch", epochs.build_change(self.spec, self.state, reversed(recorded))))
        info.kind.admit(info, self.spec, self.registry)
        info.kind.check(info, self.state.copy())
        return info

    def build(self, sealer: Sealer, *, ts_ms: int | None = None, allow_empty: bool = False,
              claim=None) -> Verified | None:
        """Build and seal the next block from the mempool, without committing it; None if there is nothing to do."""
        block = self.propose(sealer.proposer, ts_ms=ts_ms, allow_empty=allow_empty, claim=claim)
        if block is None:
            return None
        block = finish_block(block, sealer.seal(block.hash), framed=self._blocks[0].framed if self._blocks else b"")
        if len(block.raw) > self.spec.max_block:
            raise LedgerError(f"built a {len(block.raw)}-byte block over the limit", reason="too_large")
        return block

    def mine(self, sealer: Sealer, *, ts_ms: int | None = None, allow_empty: bool = False,
             claim=None) -> Verified | None:
        """Build, seal and durably commit the next block from the mempool; None if there is nothing to do."""
        block = self.build(sealer, ts_ms=ts_ms, allow_empty=allow_empty, claim=claim)
        if block is None:
            return None
        state = self.state.copy()
        for t in block.txs:
            t.kind.apply(t, state)
        self._commit(block, state)  # raises, leaving the mempool as it was, if the store cannot commit
        self._drop_included(block)
        return block

    def validate_proposal(self, raw: bytes) -> tuple[Verified, State]:
        """Check a proposed (unsealed) block as the next one, without committing: what a replica votes on."""
        try:
            return validate_proposal(raw, self.tip, self.state, self.registry, seen=self.store.has_tx,
                                     admitted=self._admitted)
        except InvalidBlock as exc:
            self._reject("block", exc)
            raise

    def commit_sealed(self, block: Verified, seal: Seal, state: State | None = None) -> Verified:
        """Attach the committee's certificate to a validated proposal for the tip, check it, commit durably.

        ``state``: the state after ``block`` as ``validate_proposal`` returned it (recomputed when omitted).
        """
        if block.header.prev != self.tip.hash or block.header.height != self.tip.height + 1:
            raise InvalidBlock(f"block {block.header.height} does not extend the tip {self.tip.height}",
                               field="header.prev", reason="bad_link")
        sealed = finish_block(block, seal)
        try:
            if len(sealed.raw) > self.spec.max_block:
                raise InvalidBlock(f"{len(sealed.raw)} bytes sealed exceeds the block limit", field="block",
                                   reason="too_large")
            check_seal(sealed, self.current)
        except InvalidBlock as exc:
            self._reject("block", exc)
            raise
        if state is None:
            state = self.state.copy()
            for t in block.txs:
                t.kind.apply(t, state)
        self._commit(sealed, state)
        self._drop_included(sealed)
        return sealed

    def _drop_included(self, block: Verified) -> None:
        """Take a committed block's transactions out of the mempool (cheaply when it is the first pending block)."""
        first = self._blocks[0].txs if self._blocks else []
        if self._blocks and len(first) == len(block.txs) and all(a.id == b.id for a, b in zip(first, block.txs)):
            self._blocks.popleft()
            for t in block.txs:
                del self._pool[t.id]
                self._pool_bytes -= len(t.raw)
        else:
            self._revalidate_pool({t.id for t in block.txs})

    def append(self, raw: bytes) -> Verified:
        """Validate a block from elsewhere (a peer, an export) as the next one and commit it."""
        try:
            block, state = validate_block(raw, self.tip, self.state, self.registry, seen=self.store.has_tx,
                                          admitted=self._admitted)
        except InvalidBlock as exc:
            self._reject("block", exc)
            raise
        self._commit(block, state)
        self._revalidate_pool({t.id for t in block.txs})
        return block

    def _commit(self, block: Verified, state: State) -> None:
        self.store.commit(block, [t.kind.index(t) for t in block.txs])  # durable when it returns
        self.tip = block.tip
        self.state = state
        self.metrics.inc("ledger_block_committed")
        self.metrics.inc("ledger_tx_committed", len(block.txs))

    def _revalidate_pool(self, included: set[bytes]) -> None:
        old, self._pool, self._pool_bytes, self._blocks = self._pool, {}, 0, deque()
        self._pending = self.state.copy()
        for txid, info in old.items():
            if txid in included:
                continue
            try:
                info.kind.check(info, self._pending)
            except InvalidTx as exc:
                self._reject("tx", exc)
                continue
            info.kind.apply(info, self._pending)
            self._queue(info)

    # ------------------------------------------------------------------ verification

    def verify(self) -> int:
        """Re-validate every stored block from genesis, and every derived column; returns blocks checked."""
        with self.store.snapshot():  # a node appending meanwhile (`ledger verify` on a live chain) is not half seen
            return verify_blocks(self.store.blocks(), registry=self.registry, store=self.store)

    # ------------------------------------------------------------------ proofs and anchors

    def proof(self, txid: bytes, at: int | None = None) -> TxProof:
        """Membership proof of a committed transaction against the accumulator at height ``at`` (default: tip)."""
        at = self.tip.height if at is None else at
        found = self.store.tx(txid)
        if found is None:
            raise ProofError(f"no transaction {txid.hex()} on {self.id}", field="txid", reason="not_found")
        height, index, raw = found
        if height > at:
            raise ProofError(f"transaction is in block {height}, after height {at}", field="at",
                             reason="not_anchored")
        if at > self.tip.height:
            raise ProofError(f"height {at} is beyond the tip {self.tip.height}", field="at", reason="not_found")
        prev_acc = self.store.accumulator_at(height - 1)
        header = self._row(height)[1]
        witness = witness_for(prev_acc, self.store.elements(height, at))
        return make_proof(self.id, raw, header, index, self.store.txids(height), at, witness)

    def batch_proof(self, txids: list[bytes], at: int | None = None, method: str = "aggregated") -> BatchProof:
        """One proof that every transaction of ``txids`` is in the chain as of height ``at`` (Protocol 2)."""
        if method not in BATCH_METHODS:
            raise ProofError(f"method {method!r} is not one of {', '.join(BATCH_METHODS)}", field="method")
        if not 0 < len(txids) <= MAX_BATCH:
            raise ProofError(f"{len(txids)} transactions; a batch holds 1 to {MAX_BATCH}", field="txids")
        at = self.tip.height if at is None else at
        if method == "weighted":  # each item with its own witness, checked together by the verifier
            return BatchProof(self.id, at, method, [self.proof(t, at) for t in txids], [])
        found = []
        for t in txids:
            row = self.store.tx(t)
            if row is None:
                raise ProofError(f"no transaction {t.hex()} on {self.id}", field="txids", reason="not_found")
            if row[0] > at:
                raise ProofError(f"transaction is in block {row[0]}, after height {at}", field="at",
                                 reason="not_anchored")
            found.append(row)
        if at > self.tip.height:
            raise ProofError(f"height {at} is beyond the tip {self.tip.height}", field="at", reason="not_found")
        heights = sorted({h for h, _, _ in found})
        low = heights[0]
        members = set(heights)
        later = [e for h, e in zip(range(low + 1, at + 1), self.store.elements(low, at)) if h not in members]
        aggregate = make_aggregate(self.store.accumulator_at(low - 1), later, [self._row(h)[4] for h in heights],
                                   self.store.accumulator_at(at))
        items = [TxProof(self.id, raw, self._row(h)[1], i, merkle_path(self.store.txids(h), i), at, b"")
                 for h, i, raw in found]
        return BatchProof(self.id, at, method, items, aggregate)

    def records(self, rtype: str, *, device: str | None = None, limit: int = 1000,
                newest: bool = True) -> list[tuple[bytes, Record]]:
        """Committed Type-I records of message type ``rtype`` (optionally of one device): (tx id, record)."""
        rows = self.store.find(device=device, rtype=rtype, limit=limit, newest=newest)
        return [(txid, decode_tx(self.store.tx(txid)[2]).body) for txid, _, _ in rows]

    def anchor_body(self, prev_height: int) -> Anchor | None:
        """Type-II body covering the blocks after ``prev_height`` (at most MAX_ANCHOR_BLOCKS of them)."""
        upto = min(self.tip.height, prev_height + MAX_ANCHOR_BLOCKS)
        if upto <= prev_height:
            return None
        headers = self.store.headers(prev_height, upto)
        return Anchor(self.id, prev_height, [decode_header(h).content() for h in headers], headers[-1])

    def head_header(self) -> bytes:
        return self._row(self.tip.height)[1]

    def _row(self, height: int) -> tuple:
        row = self.store.block_row(height)
        if row is None:
            raise StoreError(f"{self.store.path}: block {height} is missing", field="store", reason="corrupt")
        return row


def verify_blocks(blocks, *, registry: KeyRegistry | None = None, store: Store | None = None) -> int:
    """Validate a sequence of blocks from genesis; with ``store``, also its derived columns. Returns the count."""
    tip, state, ids, n = Tip.genesis(), State(), set(), 0
    derived = store.derived() if store is not None else None
    for raw in blocks:
        try:
            block, state = validate_block(raw, tip, state, registry, seen=ids.__contains__)
        except InvalidBlock as exc:
            raise InvalidBlock(f"block {tip.height + 1}: {exc.detail}", field=exc.field, reason=exc.reason) from None
        if derived is not None:
            _check_derived(block, next(derived, None))
        ids.update(t.id for t in block.txs)
        tip = block.tip
        n += 1
    if derived is not None:
        extra = next(derived, None)
        if extra is not None:
            raise InvalidBlock(f"block {extra[0]}: stored rows after the last block", field="store", reason="corrupt")
        if store.tip().height != tip.height:
            raise InvalidBlock(f"store tip {store.tip().height} but blocks end at {tip.height}", field="store",
                               reason="corrupt")
    return n


def _check_derived(block: Verified, stored) -> None:
    """Compare a validated block with its stored derived columns (one item of ``Store.derived``)."""
    h = block.header.height

    def corrupt(what: str, column: str):
        return InvalidBlock(f"block {h}: stored {what} differ", field=column, reason="corrupt")

    if stored is None or stored[0] != h or stored[1] is None:
        raise corrupt("rows", "blocks")
    _, (hash_, acc, element), txs, refs, anchors = stored
    if hash_ != block.hash or acc != block.header.acc or element != block.element:
        raise corrupt("hash, accumulator or element", "blocks")
    indexes = [t.kind.index(t) for t in block.txs]
    if txs != [(h, i, t.id, t.kind.name, ix.rtype, ix.signer, ix.device, ix.model)
               for i, (t, ix) in enumerate(zip(block.txs, indexes))]:
        raise corrupt("transaction ids or index columns", "txs")
    if refs != sorted((c, i) for i, ix in enumerate(indexes) for c in ix.refs):
        raise corrupt("blob references", "refs")
    if anchors != sorted(ix.anchor for ix in indexes if ix.anchor):
        raise corrupt("anchors", "anchors")
