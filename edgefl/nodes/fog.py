"""The fog: its sub-chain, its devices' batches, their training and the fog's update to the cloud.

Each round: take the devices' signed batches (checked against the task and
against the privacy spend the device recorded here; stored durably before the
acknowledgement, counted once), wait for every device in ``fl.devices`` (or
``fl.round_timeout_s``), in the first round of a task that asks for it
embed a ridge classifier fitted to all the batches in the global model (the
recorded ``WarmStart``), train one copy of that model per device with every
step recorded (on the mean of every release of each item so far, when the
task averages releases), aggregate them (the task's ``aggregator``), record
the aggregation, and submit the signed ``FogUpdate`` record to the main chain.
When the task trains on-device the devices train, and the fog waits for, checks,
records, aggregates and audits their updates instead (``edgefl.nodes.ondevice``).
The ledger service anchors the sub-chain (Type-II) and records the main
chain's beacons (Type-III) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from edgefl import codec
from edgefl.consensus import committees
from edgefl.fl import (
    Aggregation,
    AggregationError,
    Contribution,
    FogUpdate,
    Offence,
    ProtocolError,
    Selection,
    Task,
    TaskView,
    fold_chain,
    poison_aggregate,
    record_aggregation,
    select,
    train_device,
)
from edgefl.fl.leader import prove
from edgefl.fl.protocol import BatchAck, WarmStart, decode_batch, run_id
from edgefl.fl.reputation import OFFENCES, shares_of
from edgefl.fl.round import in_flight, kept_releases, params_of, release_mean, steps_per_round, warm_start
from edgefl.fl.selection import selection_seed, weight
from edgefl.ledger import (
    DataCollected,
    LedgerError,
    LedgerNode,
    Submit,
    Tracker,
    TrainingStep,
    cid_of,
    decode_tx,
    record_tx,
)
from edgefl.ledger.blobs import fetch
from edgefl.ledger.service import db_path
from edgefl.ml import DenseModel, FeatureBatch, TrainState
from edgefl.ml.privacy import PrivacySpend, items_root
from edgefl.nodes.leader import Leading
from edgefl.nodes.node import node_attack
from edgefl.nodes.ondevice import UpdateDesk
from edgefl.runtime import METRICS, Config, ConfigError, StateFile, retry
from edgefl.transport import Error, RemoteError, RequestTimeout, Session

log = logging.getLogger("edgefl.fog")


class FogNode:
    def __init__(self, cfg: Config, session: Session):
        self.cfg, self.session = cfg, session
        self.id, self.cloud = cfg.node.id, cfg.ledger.main_node
        self.ledger = LedgerNode.from_config(cfg, session)
        self.blobs = self.ledger.blobs
        self.main = self._main_replica(cfg, session)
        self.state = StateFile(cfg.path(cfg.fl.state_file))
        self.doc = self.state.load({"task": "", "batches": {}})  # round -> {device: batch cid}
        self.wake = asyncio.Event()  # the task, the global model or a batch arrived
        self.view = TaskView(self.wake.set)
        self.closed: set[int] = set()  # rounds that take no more batches
        self.offences: set[tuple] = set()  # (device, kind, task, round) recorded
        self.attack = node_attack(cfg)
        if self.attack.kind == "data":
            raise ConfigError("fl.attack", f"{self.attack.name} poisons data; a fog can only poison its aggregate")
        session.serve(FeatureBatch, self._on_batch)
        self.desk = UpdateDesk(self)  # on-device training: the devices' updates
        self.leading = Leading(self)  # fl.leader = "drawn": the fogs' aggregation when drawn

    @staticmethod
    def check(cfg: Config) -> None:
        pass

    def _main_replica(self, cfg: Config, session: Session) -> LedgerNode | None:
        """A final committee of four or more (the cloud and the fogs) makes the main chain's blocks by PBFT:
        then every fog keeps a replica of it (its block 0 came with the site), as a member that votes, stores
        and answers state transfer; the cloud serves it."""
        if not db_path(cfg, cfg.ledger.main).exists():
            return None
        main = LedgerNode.from_config(cfg, session, chain=cfg.ledger.main, blobs=self.blobs)
        if committees.is_pbft(main.chain.spec) and self.id in main.chain.spec.committee.ids:
            return main
        main.close()  # a main chain the cloud seals alone: the fogs only vote on its checkpoints
        return None

    def services(self) -> dict:
        return {"ledger": self.ledger.run, **({"ledger-main": self.main.run} if self.main else {}),
                "fl-fog": self.run}

    def close(self) -> None:
        self.ledger.close()
        if self.main:
            self.main.close()

    def reload(self, cfg: Config) -> list[str]:
        """SIGHUP: the devices whose batches a round waits for, as the reloaded profile lists them."""
        if cfg.fl.devices == self.cfg.fl.devices:
            return []
        log.info("%s: devices now %s (were %s)", self.id, ", ".join(cfg.fl.devices), ", ".join(self.cfg.fl.devices))
        self.cfg.fl.devices = list(cfg.fl.devices)
        self.wake.set()
        return ["fl.devices"]

    async def run(self) -> None:
        self.wake.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.view.follow(self.session, self.cloud))
            finished = None
            while True:
                await self.wake.wait()
                self.wake.clear()
                current = self.view.open_round()
                if current is None or (current[0].task, current[1].round) == finished:
                    continue
                task, model = current
                await self._adopt(task)
                if task.train_at == "device":
                    await self._fetch(model.model)  # the devices train from it: they fetch it here
                tx = await self._recorded_update(task, model.round)
                if tx is None:
                    # the round's model first (training starts from it): a fog cut off from the cloud later in
                    # the round still takes its devices' batches, trains and aggregates; only its update waits
                    await self._fetch(model.model)
                    batches = await self._collect(task, model.round)
                    if batches is None:
                        continue  # the cloud moved on
                    tx = await self._train(task, model.round, model.model, batches)
                if tx is None or await self._deliver(task, model.round, tx):
                    finished = (task.task, model.round)

    # ------------------------------------------------------------------ batches from devices

    async def _on_batch(self, env) -> BatchAck | Error:
        batch: FeatureBatch = env.message
        device, task = env.sender, self.view.task
        try:
            if task is None:
                raise ProtocolError("unknown_task", f"{self.id} has no task yet")
            task.check_batch(batch)
            self._keep_state_for(task)
            if self.cfg.fl.devices and device not in self.cfg.fl.devices:
                raise ProtocolError("unknown_device", f"{device} is not one of this fog's devices")
            known = self._batches(batch.round).get(device)
            if known is not None:
                METRICS.inc("fl_batch_duplicate")
                return BatchAck(batch.task, batch.round, len(batch.ids), known, duplicate=True)
            self._check_open(batch.round)
            if len(batch.ids):
                await self.ledger.call(self._check_spend, device, batch)
            data = codec.encode_message(batch)
            await self.ledger.call(self._check_collected, device, data)
            cid = await asyncio.to_thread(self.blobs.put, data)
            self._check_open(batch.round)  # again: the round may have closed while the blob was written
            stored = self._batches(batch.round).setdefault(device, cid)
            if stored != cid:  # another copy of this device's batch got here first
                return BatchAck(batch.task, batch.round, len(batch.ids), stored, duplicate=True)
            self.state.save(self.doc)  # durable before the device hears it was taken
        except ProtocolError as exc:
            METRICS.inc("fl_batch_rejected", reason=exc.reason)
            log.warning("%s: rejected the batch of %s for round %d: %s", self.id, device, batch.round, exc)
            if exc.reason in OFFENCES:
                await self._offence(device, exc.reason, batch, exc.detail)
            return Error(exc.reason, exc.detail)
        METRICS.inc("fl_batch_accepted")
        log.info("%s: batch of %s for round %d: %d items", self.id, device, batch.round, len(batch.ids))
        self.wake.set()
        return BatchAck(batch.task, batch.round, len(batch.ids), cid)

    async def _offence(self, device: str, kind: str, batch: FeatureBatch, detail: str) -> None:
        """Record the offence on this chain, once per device, kind and round (its reputation follows)."""
        key = (device, kind, batch.task, batch.round)
        if key in self.offences:
            return
        self.offences.add(key)
        evidence = cid_of(codec.encode_message(batch))
        tx = record_tx(Offence(device, kind, batch.task, batch.round, evidence, detail[:256]), self.id,
                       self.session.signer.key, device=device)
        try:
            await self.ledger.submit(tx)
        except LedgerError as exc:
            log.warning("%s: could not record the offence of %s: %s", self.id, device, exc)

    def _check_open(self, round: int) -> None:
        model = self.view.model
        if round in self.closed or (model is not None and round < model.round):
            raise ProtocolError("late", f"round {round} takes no more batches")

    def _check_spend(self, device: str, batch: FeatureBatch) -> None:
        """The device recorded this release's privacy spend on this chain before sending it (worker thread)."""
        root = items_root(batch.ids)
        for _, rec in self.ledger.chain.records(PrivacySpend.TYPE, device=device, limit=64):
            s = rec.unwrap()
            if (s.task, s.round, s.items_root, s.epsilon) == (batch.task, batch.round, root, batch.epsilon):
                return
        raise ProtocolError("unrecorded_release", f"no privacy spend of {device} on {self.id} for these items")

    def _check_collected(self, device: str, data: bytes) -> None:
        """The device attested exactly these bytes in a ``DataCollected`` on this chain (worker thread).

        So Protocol 1 proves a stored batch is what the device sent: its record
        names the blob, its signature covers the blob's digest.
        """
        cid = cid_of(data)
        rows = self.ledger.chain.store.find(model=cid, rtype=DataCollected.TYPE, device=device, limit=8)
        if not rows:
            raise ProtocolError("uncollected", f"{device} recorded no DataCollected for batch {cid.hex()[:16]}…")
        key = self.ledger.chain.registry.key_for(device, time.time())
        for txid, _, _ in rows:
            rec = decode_tx(self.ledger.chain.store.tx(txid)[2]).body
            attest = rec.unwrap()
            if rec.signer == attest.device == device and attest.verify(key, data):
                return
        raise ProtocolError("bad_provenance", f"{device}'s DataCollected for batch {cid.hex()[:16]}… does not "
                                              f"verify against its key and the bytes sent")

    def _batches(self, round: int) -> dict[str, bytes]:
        return self.doc["batches"].setdefault(str(round), {})

    def _keep_state_for(self, task: Task) -> None:
        if self.doc["task"] != task.task:  # a new task: the old one's batches are of no further use
            self.doc = {"task": task.task, "batches": {}}
            self.state.save(self.doc)
            self.closed.clear()

    async def _adopt(self, task: Task) -> None:
        """Keep state for ``task``; mirror its extractors, which the devices fetch from here."""
        self._keep_state_for(task)
        for e in task.extractors:
            await self._fetch(e.cid)

    async def _fetch(self, cid: bytes) -> bytes:
        def later(exc: BaseException, delay: float) -> None:
            log.info("%s: blob %s… not available from %s yet: %s", self.id, cid.hex()[:16], self.cloud, exc)

        blob = await retry(lambda: fetch(self.session, self.cloud, cid, self.blobs), on_retry=later,
                           retry_on=(RemoteError, RequestTimeout, LedgerError))
        assert blob is not None  # no deadline: it is fetched or the task is cancelled
        return blob

    async def _collect(self, task: Task, round: int) -> dict[str, bytes] | None:
        """The round's batches once every expected device sent one, or at the deadline once a quorum did.

        Below the quorum at the deadline the round waits on (for the quorum, not
        for everyone); the devices missing when it goes on are its stragglers,
        recorded in the fog's update.
        """
        deadline = time.monotonic() + self.cfg.fl.round_timeout_s
        while self.view.is_open(task, round):
            expected = set(self.cfg.fl.devices)  # each time: a reload may have changed it
            quorum = max(1, math.ceil(self.cfg.fl.quorum * len(expected)))
            have = self._arrived(task, round)
            missing = expected - set(have)
            left = deadline - time.monotonic()
            if (expected and not missing) or (left <= 0 and len(have) >= quorum):
                if missing:
                    METRICS.inc("fl_stragglers", len(missing))
                    log.warning("%s: round %d goes on with %d of %d devices, without %s", self.id, round, len(have),
                                len(expected), ", ".join(sorted(missing)))
                self.closed.add(round)
                return dict(have)
            if left <= 0:
                log.warning("%s: round %d: %d batches by the deadline, the quorum is %d: waiting on", self.id,
                            round, len(have), quorum)
                deadline = time.monotonic() + self.cfg.fl.round_timeout_s
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(left, 0.01)):
                    await self.wake.wait()
        return None

    # ------------------------------------------------------------------ training and the update

    def _arrived(self, task: Task, round: int) -> dict:
        """What a round waits for from each device: its batch, or with on-device training its update."""
        return self.desk.updates(round) if task.train_at == "device" else self._batches(round)

    async def _train(self, task: Task, round: int, model: bytes, batches: dict) -> bytes | None:
        origin = await self._fetch(model)  # M_O, the global model (kept here: the step records point at it)
        if 0 < self.cfg.fl.participants < len(batches):
            batches = await self._select(task, round, model, batches)
        if task.train_at == "device":  # the devices trained: their checked, recorded updates
            contributions, steps = self.desk.contributions(batches), 0
        else:
            with METRICS.timed("fl_train"):
                origin, contributions, steps = await self._train_here(task, round, model, origin, batches)
        if not contributions:
            log.warning("%s: round %d: no device sent any items", self.id, round)
            return None
        try:
            _, agg = record_aggregation(task.aggregator, DenseModel.from_bytes(origin), contributions, self.blobs,
                                        task=task.task, round=round)
        except AggregationError as exc:  # e.g. too few devices came for the f the task's aggregator survives
            METRICS.inc("fl_aggregation_refused")
            log.error("%s: round %d: no update from this fog: %s", self.id, round, exc)
            return None
        ts = time.time_ns() // 1_000_000
        receipt = await self.ledger.submit(record_tx(agg, self.id, self.session.signer.key, refs=agg.refs,
                                                     model=agg.model, ts_ms=ts))
        log.info("%s: round %d: %d steps recorded for %d devices, aggregated (%s) in block %d", self.id, round,
                 steps, len(contributions), agg.aggregator, receipt.height)
        if task.train_at == "device":
            self.desk.audit(task, round, batches)
        return self._update_tx(agg, receipt.txid, ts)

    async def _train_here(self, task: Task, round: int, model: bytes, origin: bytes,
                          batches: dict[str, bytes]) -> tuple[bytes, list[Contribution], int]:
        """One copy of the round's model per device trained here, every step recorded: (origin, contributions,
        steps); the origin is the warm start's model when the task asks for one."""
        if round == 0 and task.warm_start:
            origin = await self._warm_start(task, round, model, batches)
        rid, contributions, steps = run_id(task.task, round), [], 0
        async with in_flight() as receipts:  # every device's steps in flight at once, awaited all together

            async def submit(tx: bytes) -> None:
                receipts.append(asyncio.ensure_future(self.ledger.submit(tx)))

            for device, cid in sorted(batches.items()):
                n, contribution = await self._train_device(task, rid, device, cid, round, origin, submit)
                if contribution is not None:
                    contributions.append(contribution)
                    steps += n
        return origin, contributions, steps

    async def _train_device(self, task: Task, rid: str, device: str, cid: bytes, round: int, origin: bytes,
                            submit) -> tuple[int, Contribution | None]:
        """Train the round's model on one device's batch here, every step submitted through ``submit``."""
        batch = decode_batch(self.blobs.get(cid))
        if not len(batch.ids):
            return 0, None
        x = batch.features
        if task.average_releases and round > 0:
            x = release_mean([*self._earlier_releases(device, round), batch])
        tracker = Tracker(self.blobs, task=rid, device=device, trainer_name=task.trainer,
                          config=task.config.to_bytes(), signer=self.id, key=self.session.signer.key)
        total = steps_per_round(len(batch.ids), task.batch_size, task.epochs)
        recorded = {i: s.model_out for i, s in (await self.ledger.call(self._recorded_steps, device, rid,
                                                                       total)).items()}
        state, n = await train_device(tracker, origin, x, batch.labels, task.config, task.epochs,
                                      recorded, submit)
        return n, Contribution(device, cid_of(state), len(batch.ids), TrainState.from_bytes(state).model.params)

    async def _select(self, task: Task, round: int, model: bytes, batches: dict[str, bytes]) -> dict[str, bytes]:
        """``fl.participants`` of the devices that sent, drawn by reputation on this chain; recorded once."""
        def draw():
            for _, rec in self.ledger.chain.records(Selection.TYPE, limit=64):
                sel = rec.unwrap()
                if (sel.task, sel.round) == (task.task, round) and rec.signer == self.id:
                    return sel, False  # drawn before a restart: the same participants
            standing = fold_chain(self.ledger.chain)
            names = sorted(batches)
            weights = [weight(standing.of(d)) for d in names]
            seed = selection_seed(task.task, round, self.id, model)
            k = self.cfg.fl.participants
            return Selection(task.task, round, seed, names, weights, k, select(names, weights, k, seed=seed)), True

        sel, new = await self.ledger.call(draw)
        if new:
            await self.ledger.submit(record_tx(sel, self.id, self.session.signer.key))
            log.info("%s: round %d: %s drawn of %d devices by reputation", self.id, round, ", ".join(sel.chosen),
                     len(sel.candidates))
        return {d: batches[d] for d in sel.chosen if d in batches}

    def _earlier_releases(self, device: str, round: int) -> list[FeatureBatch]:
        """The device's batches of this task's rounds before ``round`` that this fog kept, oldest first."""
        return kept_releases([self._batches(r).get(device) for r in range(round)], self.blobs.get)

    async def _warm_start(self, task: Task, round: int, model: bytes, batches: dict[str, bytes]) -> bytes:
        """The round's model with a ridge classifier fitted to these batches embedded: recorded once, then reused."""
        def find():
            for _, rec in self.ledger.chain.records(WarmStart.TYPE, limit=64):
                ws = rec.unwrap()
                if (ws.task, ws.round, ws.origin) == (task.task, round, model) and rec.signer == self.id:
                    return ws
            return None

        ws = await self.ledger.call(find)
        if ws is None:  # not yet recorded (a restart after it reuses the record: steps keep one origin)
            cids = [cid for _, cid in sorted(batches.items())]
            loaded = [decode_batch(self.blobs.get(c)) for c in cids]
            if not any(len(b.ids) for b in loaded):
                return self.blobs.get(model)  # nothing to fit: the round trains nobody either
            with METRICS.timed("fl_warm_start"):
                warm = await asyncio.to_thread(warm_start, self.blobs.get(model), loaded)
            ws = WarmStart(task=task.task, round=round, origin=model, batches=cids, model=self.blobs.put(warm))
            receipt = await self.ledger.submit(record_tx(ws, self.id, self.session.signer.key,
                                                         refs=[model, *cids, ws.model], model=ws.model))
            log.info("%s: round %d: warm start on %d batches recorded in block %d", self.id, round, len(cids),
                     receipt.height)
        return self.blobs.get(ws.model)

    def _recorded_steps(self, device: str, rid: str, total: int) -> dict[int, TrainingStep]:
        out = {}
        for _, rec in self.ledger.chain.records(TrainingStep.TYPE, device=device, limit=min(10000, total + 64)):
            step = rec.unwrap()
            if step.task == rid and rec.signer == self.id:
                out[step.step] = step
        return out

    async def _recorded_update(self, task: Task, round: int) -> bytes | None:
        """The update for a round this fog already aggregated (before a restart), rebuilt byte for byte."""
        def find():
            for txid, rec in self.ledger.chain.records(Aggregation.TYPE, limit=64):
                agg = rec.unwrap()
                if (agg.task, agg.round) == (task.task, round) and rec.signer == self.id:
                    return self._update_tx(agg, txid, rec.ts)
            return None

        tx = await self.ledger.call(find)
        if tx is not None:
            self.closed.add(round)
        return tx

    def _update_tx(self, agg: Aggregation, agg_txid: bytes, ts_ms: int) -> bytes:
        """Deterministic (the aggregation's time, RFC 6979 signatures): a resubmission is the same transaction."""
        stragglers = sorted(set(self.cfg.fl.devices) - set(self._arrived(self.view.task, agg.round)))
        model = self._poisoned(agg) if self.attack.kind == "update" else agg.model
        seed = self.view.task.leader_seed  # the fog's claim in the round's leader draw (edgefl.fl.leader)
        update = FogUpdate(task=agg.task, round=agg.round, fog=self.id, model=model,
                           examples=int(sum(agg.weights)), devices=list(agg.senders), aggregation=agg_txid,
                           weights=list(agg.weights), shares=shares_of(agg), stragglers=stragglers,
                           draw=prove(self.session.signer.key.secret, seed, agg.round) if seed else None)
        return record_tx(update, self.id, self.session.signer.key, refs=[model], model=model, ts_ms=ts_ms)

    def _poisoned(self, agg: Aggregation) -> bytes:
        """A byzantine fog (``fl.attack``, experiments only): the model it sends up instead of its recorded
        aggregate — what an audit of its update against its own aggregation record exposes."""
        base = DenseModel.from_bytes(self.blobs.get(agg.model))
        inputs = [params_of(self.blobs.get(c)) for c in agg.models]
        origin = DenseModel.from_bytes(self.blobs.get(agg.origin)).params
        params = poison_aggregate(self.attack, base.params, inputs, origin=origin, seed=agg.round)
        return self.blobs.put(base.with_params(params).to_bytes())

    async def _deliver(self, task: Task, round: int, tx: bytes) -> bool:
        """Submit the update to the main chain until it is recorded (True) or the round is over (False)."""
        async def submit() -> bool:
            receipt = (await self.session.request(self.cloud, Submit(tx))).message
            METRICS.inc("fl_update_recorded")
            log.info("%s: update for round %d recorded in main block %d", self.id, round, receipt.height)
            return True

        def later(exc: BaseException, delay: float) -> None:
            if isinstance(exc, RemoteError):
                METRICS.inc("fl_update_refused", reason=exc.reason)
                log.warning("%s: the main chain refused the update for round %d: %s", self.id, round, exc)
            else:
                log.info("%s: main chain not reachable: %s", self.id, exc)

        done = await retry(submit, retry_on=(RemoteError, RequestTimeout, ConnectionError), on_retry=later,
                           keep_going=lambda: self.view.is_open(task, round))
        return bool(done)
