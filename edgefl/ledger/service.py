"""A node's ledger service: one chain, served over MQTT, interlocked with the other layer.

* Accepts transactions (``Submit``) and answers with a ``Receipt`` once the
  block holding them is durable; seals a block every ``block_interval_s`` (or
  as soon as the mempool fills one).
* Serves proofs, heads, indexed lookups and blobs (``edgefl.ledger.protocol``).
* Fog (sub-chain): every ``anchor_interval_s`` asks the main chain's node for
  its head (which carries a fresh Type-III beacon and the height last anchored
  for this sub-chain), records the beacon, and submits a Type-II anchor for
  the blocks since.  Beacons broadcast by the main chain's node are recorded
  as they arrive, too.
* Cloud (main chain): broadcasts a Type-III beacon on its ``beacon`` topic
  every ``beacon_interval_s`` when the main chain has grown.

The chain is touched only from one worker thread (SQLite commits fsync; the
event loop keeps serving meanwhile).

Blocks are made by a ``Producer``, one small class per strategy: today's
``SingleProducer`` (this node seals alone) or a committee consensus (PBFT for
sub-chains, ``edgefl.consensus``).  A producer reports every durable block
through ``LedgerNode.committed``, which answers the waiting submitters; when
the node stops, every submitter still waiting gets a ``stopped`` error rather
than waiting forever for a receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, ClassVar

from edgefl import codec
from edgefl.consensus import ChainFinality, FfgCall, HonestVoter, committees, endorse
from edgefl.consensus.finality import Caller as FfgCaller
from edgefl.consensus.finality import enabled as finality_enabled
from edgefl.crypto import DirectoryKeyRegistry, KeyRegistry, PkiRegistry, SigningKey, StaticKeyRegistry
from edgefl.ledger import blobs as blobstore
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.block import decode_header
from edgefl.ledger.chain import Chain
from edgefl.ledger.errors import InvalidTx, LedgerError, ProofError
from edgefl.ledger.protocol import (
    AnchorProof,
    AnchorQuery,
    BatchProofQuery,
    BeaconTx,
    Find,
    Found,
    Head,
    HeadQuery,
    ProofQuery,
    Receipt,
    Receipts,
    Submit,
    SubmitAll,
)
from edgefl.ledger.sealer import Sealer, make_sealer
from edgefl.ledger.tx import Tx, beacon_tx, decode_tx, make_tx, record_tx
from edgefl.runtime import METRICS, Config, Metrics, write_atomic
from edgefl.transport import Error, RemoteError, RequestTimeout, Session, topics
from edgefl.transport.session import key_registry

log = logging.getLogger("edgefl.ledger")


# --------------------------------------------------------------------------- configuration


def chain_id(cfg: Config) -> str:
    return cfg.ledger.chain or (cfg.ledger.main if cfg.node.role == "cloud" else cfg.node.id)


def db_path(cfg: Config, chain: str | None = None) -> Path:
    return cfg.path(cfg.ledger.db.replace("{chain}", chain or chain_id(cfg)))


def server_of(cfg: Config, chain: str) -> str:
    """The node id serving ``chain``: from ``ledger.servers``, the main node, or the chain id itself."""
    for item in cfg.ledger.servers:
        name, _, node = item.partition("=")
        if name == chain and node:
            return node
    return cfg.ledger.main_node if chain == cfg.ledger.main else chain


def registry_for(cfg: Config, shared: KeyRegistry | None = None) -> KeyRegistry:
    """Whose record signatures this node accepts: the registry its envelopes are checked against.

    ``security.registry = "pki"``: the site PKI (``shared``, the session's, when given, so a CRL
    learned over MQTT binds the ledger too); otherwise every key in the trust directory, and its own.
    """
    if cfg.security.registry == "pki":
        return shared if isinstance(shared, PkiRegistry) else key_registry(cfg)
    trust = cfg.path(cfg.security.trust_dir)
    registry = DirectoryKeyRegistry(trust) if trust.is_dir() else StaticKeyRegistry()
    key_file = cfg.path(cfg.security.key_file)
    if key_file.exists():
        registry.add(cfg.node.id, SigningKey.load(key_file).public_key)
    return registry


# --------------------------------------------------------------------------- the service


def _error(exc: LedgerError) -> Error:
    return Error(exc.reason, str(exc)[:1000])


class Producer:
    """Turns a ledger node's mempool into durable blocks and reports each through ``node.committed``."""

    name: ClassVar[str]

    def __init__(self, node: "LedgerNode"):
        self.node = node

    async def run(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """The mempool holds a full block: make it now rather than at the next interval."""

    def admitted(self, raw: bytes) -> None:
        """``raw`` entered this node's mempool from a local submitter (a committee shares it with its peers)."""


class SingleProducer(Producer):
    """This node alone seals a block every ``block_interval_s``, or as soon as the mempool fills one."""

    name = "single"

    def __init__(self, node: "LedgerNode", sealer: Sealer, block_interval_s: float = 1.0):
        super().__init__(node)
        self.sealer = sealer
        self.block_interval_s = block_interval_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        node, chain = self.node, self.node.chain
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.block_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            while chain.pending:
                try:
                    block = await node.call(chain.mine, self.sealer)
                except LedgerError as exc:  # e.g. the disk is full: keep the mempool, try again later
                    log.error("%s: cannot commit a block: %s", chain.id, exc)
                    node.metrics.inc("ledger_commit_failed", reason=exc.reason)
                    break
                if block is None:
                    break
                node.committed(block)


class LedgerNode:
    # how a committee member makes blocks (consensus.shell.PbftProducer when None); a chaos scenario's
    # byzantine member runs edgefl with a corrupted one (edgefl.chaos.byzantine_member)
    committee_producer: Callable[..., Producer] | None = None

    def __init__(self, chain: Chain, session: Session, blobs: BlobStore, sealer: Sealer, *,
                 keys: dict[str, SigningKey], main_node: str, block_interval_s: float = 1.0,
                 interlock_interval_s: float = 10.0, metrics: Metrics = METRICS,
                 producer: Callable[["LedgerNode"], Producer] | None = None, server: bool = True):
        """``server``: this node serves the chain (queries, submissions) and interlocks it with the other layer;
        otherwise it is one more replica of a committee (a device keeping its fog's sub-chain)."""
        self.chain = chain
        self.server = server
        self.session = session
        self.blobs = blobs
        self.sealer = sealer
        self.keys = keys  # committee keys held here: sign anchors (fog) or beacons (cloud)
        self.main_node = main_node
        self.block_interval_s = block_interval_s
        self.interlock_interval_s = interlock_interval_s
        self.metrics = metrics
        self.role = chain.spec.role
        self.anchored = -1  # fog: the last of our heights the main chain has anchored
        self._exec = ThreadPoolExecutor(1, thread_name_prefix=f"ledger-{chain.id}")
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self._stopped = False
        self._beacon_cache: tuple[int, bytes] | None = None
        self.finality = ChainFinality(chain) if finality_enabled(chain.spec) else None  # main chain: FFG
        self.producer = (producer(self) if producer is not None
                         else SingleProducer(self, sealer, block_interval_s))

    @classmethod
    def from_config(cls, cfg: Config, session: Session, *, chain: str | None = None, blobs: BlobStore | None = None,
                    metrics: Metrics = METRICS) -> "LedgerNode":
        """The node's own chain, or (``chain``) the chain of a committee it is a member of."""
        name = chain or chain_id(cfg)
        key = SigningKey.load(cfg.path(cfg.security.key_file))
        ledger = Chain.open(db_path(cfg, name), registry=registry_for(cfg, session.verifier.registry),
                            metrics=metrics)
        keys = {cfg.node.id: key}
        if blobs is None:
            blobs = BlobStore(cfg.path(cfg.ledger.blob_dir), max_blob=cfg.ledger.max_blob_bytes)
        sealer = make_sealer(ledger.spec.sealer, cfg.node.id, keys)
        interval = cfg.ledger.beacon_interval_s if ledger.spec.role == "main" else cfg.ledger.anchor_interval_s
        producer = None
        if committees.is_pbft(ledger.spec) and cfg.node.id in ledger.spec.committee.ids:
            from edgefl.consensus.shell import PbftProducer

            make = cls.committee_producer or PbftProducer
            votes = cfg.path(cfg.ledger.votelog.replace("{chain}", name))
            producer = lambda n: make(n, key, votelog=votes, view_timeout=cfg.ledger.view_timeout_s,  # noqa: E731
                                      pace=cfg.ledger.block_interval_s)
        return cls(ledger, session, blobs, sealer, keys=keys, main_node=cfg.ledger.main_node,
                   block_interval_s=cfg.ledger.block_interval_s, interlock_interval_s=interval, metrics=metrics,
                   producer=producer, server=server_of(cfg, name) == cfg.node.id)

    async def call(self, fn, *args):
        """Run ``fn`` on the chain's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    def close(self) -> None:
        self._exec.shutdown(wait=True, cancel_futures=True)  # the running job finishes; queued ones are dropped
        self.chain.close()

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        self._stopped = False
        if self.server:
            self._serve()
        elif self.role == "sub" and len(self.chain.spec.committee.members) > 1:
            endorse.serve(self)  # the fog's Type-II anchors need a quorum of the committee
        try:
            async with asyncio.TaskGroup() as tg:
                # a replica that does not serve the chain only votes, stores and answers state transfer (its producer)
                tg.create_task(self.producer.run(), name="ledger-blocks")
                if self.server and self.role == "main":
                    tg.create_task(self._broadcast_beacons(), name="ledger-beacons")
                    if self.finality is not None:
                        tg.create_task(self._ffg_calls(), name="ledger-ffg")
                elif self.server:
                    tg.create_task(self._anchor_loop(), name="ledger-anchors")
                    tg.create_task(self._listen_beacons(), name="ledger-beacon-listener")
                    tg.create_task(self._ffg_votes(), name="ledger-ffg-votes")
        except Exception:
            log.exception("%s: the ledger node stopped on an error", self.chain.id)
            raise
        finally:
            self._stop()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _stop(self) -> None:
        """No producer runs any more: fail every waiting submitter (and later ones) instead of leaving it hanging."""
        self._stopped = True
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(LedgerError("the ledger node stopped before the block was made",
                                                  field="tx", reason="stopped"))

    def _serve(self) -> None:
        s = self.session
        s.serve(Submit, self._on_submit)
        s.serve(SubmitAll, self._on_submit_all)
        s.serve(ProofQuery, self._guard(lambda m: self.call(self.chain.proof, m.txid, m.at)))
        s.serve(BatchProofQuery, self._guard(lambda m: self.call(self.chain.batch_proof, m.txids, m.at, m.method)))
        s.serve(HeadQuery, self._guard(self._head))
        s.serve(Find, self._guard(self._find))
        if self.role == "main":
            s.serve(AnchorQuery, self._guard(lambda m: self.call(self._anchor_proof, m.chain, m.at)))
        blobstore.serve(s, self.blobs)

    def _guard(self, fn):
        async def handle(env):
            try:
                return await fn(env.message)
            except LedgerError as exc:
                return _error(exc)
        return handle

    # ------------------------------------------------------------------ transactions and blocks

    async def submit(self, raw: bytes) -> Receipt:
        """Admit ``raw`` to the mempool and wait until a durable block holds it."""
        try:
            info = await self.call(self.chain.submit, raw)
            self.producer.admitted(raw)
        except InvalidTx as exc:
            if exc.reason != "duplicate":
                raise
            committed = await self.call(self._receipt_for, decode_tx(raw).id)
            if committed is not None:
                return committed  # a retried submission: answer as the first time
            info = decode_tx(raw)  # still in the mempool: wait for its block
        if self._stopped:
            raise LedgerError("the ledger node has stopped", field="tx", reason="stopped")
        fut = asyncio.get_running_loop().create_future()
        waiting = self._waiters.setdefault(info.id, [])
        waiting.append(fut)
        if self.chain.full_blocks:
            self.producer.wake()
        try:
            return await fut
        finally:  # answered, failed or cancelled: never leave the future behind
            if fut in waiting:
                waiting.remove(fut)
                if not waiting and self._waiters.get(info.id) is waiting:
                    del self._waiters[info.id]

    def committed(self, block) -> None:
        """A producer made ``block`` durable: answer everyone waiting for one of its transactions."""
        for t in block.txs:
            for fut in self._waiters.pop(t.id, ()):
                if not fut.done():
                    fut.set_result(Receipt(self.chain.id, t.id, block.header.height, block.hash))

    async def _on_submit(self, env):
        try:
            return await self.submit(env.message.tx)
        except LedgerError as exc:
            return _error(exc)

    async def _on_submit_all(self, env):
        """Every one durable, or an error (those admitted before it still commit: a resubmission is
        answered as the first time)."""
        try:
            return Receipts(list(await asyncio.gather(*(self.submit(tx) for tx in env.message.txs))))
        except LedgerError as exc:
            return _error(exc)

    def _receipt_for(self, txid: bytes) -> Receipt | None:
        found = self.chain.store.tx(txid)
        if found is None:
            return None
        return Receipt(self.chain.id, txid, found[0], self.chain.store.block_row(found[0])[0])

    # ------------------------------------------------------------------ queries

    async def _head(self, q: HeadQuery) -> Head:
        return await self.call(self._head_sync, q.chain)

    def _head_sync(self, other: str | None) -> Head:
        tip = self.chain.tip
        head = Head(self.chain.id, tip.height, self.chain.head_header())
        if self.role == "main" and other:
            found = self.chain.store.latest_anchor(other)
            return Head(head.chain, head.height, head.header, found[0] if found else -1, self._beacon())
        return head

    def _beacon(self) -> bytes:
        """A Type-III for the main chain's tip, signed by the committee keys held here (cached per height)."""
        height = self.chain.tip.height
        if self._beacon_cache is None or self._beacon_cache[0] != height:
            self._beacon_cache = (height, beacon_tx(self.chain.head_header(), self.keys.items()))
        return self._beacon_cache[1]

    async def _find(self, q: Find) -> Found:
        rows = await self.call(lambda: self.chain.store.find(device=q.device, model=q.model, rtype=q.type,
                                                             kind=q.kind, limit=q.limit))
        return Found([r[0] for r in rows], [r[1] for r in rows])

    def _anchor_proof(self, chain: str, at: int | None) -> AnchorProof:
        at = self.chain.tip.height if at is None else at
        if chain not in (self.chain.spec.subchains or {}):
            raise ProofError(f"{chain!r} is not a sub-chain of {self.chain.id!r}", field="chain",
                             reason="unknown_chain")
        upto = at
        if self.finality is not None:  # a Type-II counts once final: until then Protocol 1 says pending
            self.finality.update()
            upto = min(at, self.finality.finalized_height)
        found = self.chain.store.latest_anchor(chain, upto_block=upto)
        if found is None:
            raise ProofError(f"no Type-II of {chain!r} on the main chain up to height {at} yet", field="chain",
                             reason="not_anchored")
        genesis = self.chain.store.txids(0)[0]
        return AnchorProof(self.chain.proof(found[2], at), self.chain.proof(genesis, at))

    # ------------------------------------------------------------------ interlock

    async def _broadcast_beacons(self) -> None:
        last = -1
        while True:
            await asyncio.sleep(self.interlock_interval_s)
            if self.chain.tip.height > last:
                tx = await self.call(self._beacon)
                await self.session.publish("beacon", BeaconTx(tx))
                last = self._beacon_cache[0]

    async def _listen_beacons(self) -> None:
        async with self.session.subscribe(topics.pattern(node=self.main_node, kind="beacon")) as sub:
            async for rx in sub:
                if isinstance(rx.message, BeaconTx):
                    await self._record_beacon(rx.message.tx)

    async def _record_beacon(self, raw: bytes | None) -> None:
        """Record a Type-III unless it is not newer than the last one (push and pull both deliver them)."""
        if not raw:
            return
        try:
            height = decode_header(decode_tx(raw).body.header).height
        except (LedgerError, AttributeError):
            height = None  # malformed: let the chain reject and count it
        # pending, not committed: a beacon both pushed and pulled must not be submitted twice
        last = self.chain.pending_state.anchors.get(self.chain.spec.parent, (-1, b""))[0]
        if height is not None and height <= last:
            return
        with contextlib.suppress(InvalidTx):  # counted and logged by the chain
            await self.submit(raw)

    # ------------------------------------------------------------------ FFG finality (main chain)

    def _voter(self) -> HonestVoter:
        """This node's FFG voter; what it last signed is kept on disk, so a restart cannot double or surround."""
        member, key = next(iter(self.keys.items()))
        voter = HonestVoter(member, key, self.chain.spec.parent if self.role == "sub" else self.chain.id)
        with contextlib.suppress(FileNotFoundError, ValueError):
            voter.last_source, voter.last_target = map(int, self._vote_file().read_text().split())
        return voter

    def _vote_file(self) -> Path:
        return Path(f"{self.chain.store.path}.ffg-vote")

    def _cast(self, voter: HonestVoter, call: FfgCall) -> bytes | None:
        """Our vote record for ``call``, the voter's state made durable before the vote leaves (None: refused)."""
        v = voter.cast((call.source_epoch, call.source), (call.target_epoch, call.target))
        if v is None:
            return None
        write_atomic(self._vote_file(), f"{voter.last_source} {voter.last_target}\n".encode())
        return record_tx(v, voter.member, voter.key)

    async def _ffg_calls(self) -> None:
        """Main: after blocks that need finality, vote ourselves and ask the final committee to vote (``FfgCaller``)."""
        voter = self._voter()
        await self.call(self.finality.update)  # evidence already on the chain was reported before a restart
        caller = FfgCaller(self.finality, patience=max(0.5, 4 * self.block_interval_s))
        member = voter.member
        while True:
            await asyncio.sleep(self.block_interval_s)
            out = await self.call(self.finality.update)
            for b in out.evidence:  # equivocation proofs for the incentive layer
                asyncio.ensure_future(self._quiet(self.submit(record_tx(b, member, voter.key))))
                self.metrics.inc("ffg_equivocation", member=b.member)
                log.warning("%s: %s equivocated (FFG votes): evidence recorded", self.chain.id, b.member)
            call = await self.call(caller.next, time.monotonic())  # reads the store: on the worker thread
            if call is None:
                continue
            if member in self.chain.spec.finality:
                raw = await self.call(self._cast, voter, call)
                if raw is not None:
                    asyncio.ensure_future(self._quiet(self.submit(raw)))
            await self.session.publish("ffg", call)

    async def _ffg_votes(self) -> None:
        """Sub-chain node (a fog): vote on the main chain's calls with this node's key, through Submit."""
        voter = self._voter()
        async with self.session.subscribe(topics.pattern(node=self.main_node, kind="ffg")) as sub:
            async for rx in sub:
                call = rx.message
                if not isinstance(call, FfgCall) or call.chain != self.chain.spec.parent:
                    continue
                raw = await self.call(self._cast, voter, call)
                if raw is not None:
                    self.metrics.inc("ffg_voted")
                    asyncio.ensure_future(self._quiet(self.session.request(self.main_node, Submit(raw))))

    @staticmethod
    async def _quiet(aw) -> None:
        try:
            await aw
        except (LedgerError, RemoteError, RequestTimeout, ConnectionError) as exc:
            log.info("FFG vote not recorded: %s", exc)

    async def _anchor_loop(self) -> None:
        while True:
            try:
                await self.anchor_once()
            except RemoteError as exc:
                log.warning("%s: the main chain refused our Type-II (%s): %s", self.chain.id, exc.reason, exc)
                self.metrics.inc("ledger_anchor_refused", reason=exc.reason)
            except (RequestTimeout, ConnectionError) as exc:
                log.info("%s: main chain not reachable: %s", self.chain.id, exc)
            except LedgerError as exc:  # e.g. too few committee members endorsed it yet: next interval
                log.info("%s: no Type-II this time: %s", self.chain.id, exc)
                self.metrics.inc("ledger_anchor_failed", reason=exc.reason)
            await asyncio.sleep(self.interlock_interval_s)

    async def anchor_once(self) -> Receipt | None:
        """Record the main chain's latest beacon, then anchor our blocks since the last anchor."""
        head = (await self.session.request(self.main_node, HeadQuery(self.chain.id))).message
        self.anchored = head.anchored
        await self._record_beacon(head.beacon)
        body = await self.call(self.chain.anchor_body, head.anchored)
        if body is None:
            return None
        if len(self.chain.spec.committee.members) > 1:  # a committee's anchor carries a quorum of its members
            sigs = await endorse.collect(self, body, timeout=max(2.0, self.interlock_interval_s))
            tx = codec.encode_message(Tx("anchor", codec.encode_message(body), sigs))
        else:
            tx = make_tx("anchor", body, self.keys.items())
        receipt = (await self.session.request(self.main_node, Submit(tx))).message
        self.anchored = body.prev_height + len(body.digests)
        self.metrics.inc("ledger_anchored")
        log.debug("%s: anchored height %d in main block %d", self.chain.id, self.anchored, receipt.height)
        return receipt
