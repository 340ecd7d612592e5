"""The cloud: the main chain, the task, and the global model round by round.

Once: export the extractor (ONNX and TFLite from one set of weights), build
the initial dense model and record the ``ModelRelease``s and the ``Task`` on
the main chain.  Each round: wait for the ``FogUpdate`` records of every
fog whose sub-chain the main chain registers (or ``fl.round_timeout_s``),
fetch their models from the fogs (digest-checked), aggregate them with the
task's ``cloud_aggregator`` (``ml.cloud_aggregator``; FLTrust's reference is
the round's model trained on this node's held-out data) — or, with
``fl.leader = "drawn"``, have the fog drawn by VRF from the epoch seed do it
and check its result (``edgefl.nodes.leader``) —, record the
``Aggregation`` and publish the next global model.  The chain is the cloud's
whole round state: a restart finds the task, the updates and the
aggregations there and carries on from them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import numpy as np

from edgefl.codec import SchemaError
from edgefl.fl import (
    Aggregation,
    AggregationError,
    AggregatorSpec,
    Contribution,
    FogUpdate,
    GlobalModel,
    Task,
    parse_options,
    payout,
    record_aggregation,
)
from edgefl.fl.leader import LeaderDraw, epoch_seed
from edgefl.fl.protocol import Extractor
from edgefl.fl.reputation import payout_reason
from edgefl.ledger import CoinUpdate, LedgerError, LedgerNode, record_tx
from edgefl.ledger.blobs import fetch
from edgefl.ledger.service import server_of
from edgefl.ml import FEATURES, FORMATS, ExtractorWeights, ModelRelease, Privatiser, mechanism, normalise, open_backend
from edgefl.ml import trainer as T
from edgefl.ml.backends import backend_class, backend_problem
from edgefl.ml.export import export, export_problem
from edgefl.nodes.leader import Leaders
from edgefl.nodes.node import local_data
from edgefl.runtime import METRICS, Config, ConfigError
from edgefl.transport import RemoteError, RequestTimeout, Session

log = logging.getLogger("edgefl.cloud")
CLASSES = 10


def aggregator_specs(cfg: Config) -> tuple[AggregatorSpec, AggregatorSpec]:
    """The fogs' and the cloud's aggregators the tasks of this cloud name (ml.aggregator, ml.cloud_aggregator)."""
    out = []
    for key in ("aggregator", "cloud_aggregator"):
        try:
            spec = AggregatorSpec.of(getattr(cfg.ml, key), **parse_options(getattr(cfg.ml, f"{key}_options")))
        except (AggregationError, SchemaError) as exc:
            raise ConfigError(f"ml.{key}_options", str(exc)) from None
        out.append(spec)
    if out[0].build().needs_reference:
        raise ConfigError("ml.aggregator", f"{out[0].label()} needs a server's root data, which a fog does not have")
    return out[0], out[1]


def train_config(cfg: Config) -> T.TrainConfig:
    """The training terms of the tasks this cloud advertises."""
    return T.TrainConfig(layers=[FEATURES, *cfg.fl.hidden, CLASSES], optimizer=cfg.ml.optimizer, lr=cfg.ml.lr,
                         batch_size=cfg.ml.batch_size, seed=cfg.fl.seed, prox_mu=cfg.ml.prox_mu)


class CloudNode:
    def __init__(self, cfg: Config, session: Session):
        self.cfg, self.session = cfg, session
        self.id = cfg.node.id
        self.ledger = LedgerNode.from_config(cfg, session)
        spec = self.ledger.chain.spec
        if spec.role != "main":
            raise ConfigError("ledger.chain", f"a cloud keeps the main chain; {spec.chain!r} is a sub-chain")
        self.fogs = sorted(server_of(cfg, chain) for chain in spec.subchains or {})
        self.blobs = self.ledger.blobs
        # held-out data: the first half fits the initial model's input transform, the second half tests
        data = local_data(cfg)
        self.reference, self.test = data.split(len(data) // 2)
        self.accuracy: dict[int, float] = {}  # round -> test accuracy of the global model after it
        self.leaders = Leaders(self)  # fl.leader = "drawn": each round's aggregating fog
        self._test_features: np.ndarray | None = None

    @staticmethod
    def check(cfg: Config) -> None:
        fmt = backend_class(cfg.ml.backend).format  # the cloud exports this extractor and runs it on its data
        problem = export_problem(fmt) or backend_problem(cfg.ml.backend)
        if problem:
            raise ConfigError("ml.backend", f"the cloud cannot release its {fmt} extractor: {problem}")
        aggregator_specs(cfg)
        config = train_config(cfg)
        if cfg.fl.warm_start and not T.warm_start_fits(config.layers):
            raise ConfigError("fl.warm_start", f"a warm start needs every hidden layer at least {2 * CLASSES} wide "
                                               f"(fl.hidden = {cfg.fl.hidden}); widen them or set it to false")
        state = len(T.init_state(T.init_model(config.layers), config).to_bytes())
        if state > cfg.ledger.max_blob_bytes:  # every recorded step stores one as a blob
            raise ConfigError("fl.hidden", f"a {'-'.join(map(str, config.layers))} model's training state takes "
                                           f"{state / 2**20:.1f} MiB with {config.optimizer}, more than a blob may "
                                           f"hold (ledger.max_blob_bytes = {cfg.ledger.max_blob_bytes / 2**20:.1f} MiB)")

    def services(self) -> dict:
        return {"ledger": self.ledger.run, "fl-cloud": self.run}

    def close(self) -> None:
        self.ledger.close()

    async def run(self) -> None:
        task = await self._task()
        try:  # the fogs the main chain registers must be enough for the f the task's aggregator survives
            task.cloud_aggregator.build().check(len(self.fogs))
        except AggregationError as exc:
            raise ConfigError("ml.cloud_aggregator", f"{exc} (the fogs the main chain registers)") from None
        done = await self.ledger.call(self._aggregations, task)
        model = T.DenseModel.from_bytes(self.blobs.get(done[-1].model if done else task.model))
        for agg in done:  # a crash between an aggregation and its payout: pay now (once)
            await self._pay(task, agg)
        await self.session.publish("task", task, retain=True)
        await self._publish(task, len(done), model, done[-1].model if done else task.model)
        for round in range(len(done), task.rounds):
            contributions = await self._collect(task, round, model)
            reference = await self._reference(task, model) if task.cloud_aggregator.build().needs_reference else None
            if task.leader_seed is not None:  # a fog drawn by VRF aggregates, checked here (edgefl.nodes.leader)
                model, agg, tx = await self.leaders.aggregate(task, round, model, contributions, reference)
            else:
                model, agg = record_aggregation(task.cloud_aggregator, model, contributions, self.blobs,
                                                task=task.task, round=round, reference=reference)
                tx = record_tx(agg, self.id, self.session.signer.key, refs=agg.refs, model=agg.model)
            receipt = await self.ledger.submit(tx)
            log.info("%s: round %d aggregated from %s in main block %d", self.id, round, ", ".join(agg.senders),
                     receipt.height)
            await self._pay(task, agg)
            await self._publish(task, round + 1, model, agg.model)
        log.info("%s: task %s finished after %d rounds", self.id, task.task, task.rounds)

    # ------------------------------------------------------------------ the task

    async def _task(self) -> Task:
        """The task ``fl.task`` as recorded on the main chain, or a new one, recorded now."""
        def find():
            for _, rec in self.ledger.chain.records(Task.TYPE, limit=100):
                task = rec.unwrap()
                if task.task == self.cfg.fl.task and rec.signer == self.id:
                    return task
            return None

        task = await self.ledger.call(find)
        if task is not None:
            log.info("%s: resuming task %s", self.id, task.task)
            return task
        fl, ml = self.cfg.fl, self.cfg.ml
        fogs, cloud = aggregator_specs(self.cfg)
        weights = ExtractorWeights.load(fl.weights) if fl.weights else ExtractorWeights.random(seed=fl.seed)
        extractors = []
        for fmt in FORMATS:
            try:
                model = export(weights, fmt)
            except ImportError as exc:  # an exporter's library is missing here: release the other format
                log.warning("%s: cannot export %s: %s", self.id, fmt, exc)
                continue
            extractors.append(Extractor(ModelRelease.of(model, weights, fmt), self.blobs.put(model)))
        config = train_config(self.cfg)
        # The input transform (centre, scale) is fitted to this node's own data, privatised as devices do:
        # post-processing of public data, free of any device's privacy.
        noisy = Privatiser(mechanism(ml.noise), epsilon=ml.epsilon, batch_size=ml.batch_size,
                           unit=ml.privacy_unit).release(np.arange(len(self.reference)),
                                                         self._features(extractors, self.reference.images)).values
        m0 = T.init_model(config.layers, seed=fl.seed).with_input_transform(noisy)
        task = Task(task=fl.task, rounds=fl.rounds, epsilon=ml.epsilon, unit=ml.privacy_unit, noise=ml.noise,
                    config=config, epochs=ml.local_epochs, trainer="dense", extractors=extractors,
                    model=self.blobs.put(m0.to_bytes()), warm_start=fl.warm_start and fl.train_at == "fog",
                    average_releases=fl.average_releases, aggregator=fogs, cloud_aggregator=cloud, reward=fl.reward,
                    train_at=fl.train_at, clip_norm=fl.clip_norm,
                    leader_seed=await self.ledger.call(epoch_seed, self.ledger.chain) if fl.leader == "drawn" else None)
        key = self.session.signer.key
        txs = [record_tx(e.release, self.id, key, refs=[e.cid], model=e.cid) for e in extractors]
        txs.append(record_tx(task, self.id, key, refs=[*(e.cid for e in extractors), task.model], model=task.model))
        receipts = await asyncio.gather(*(self.ledger.submit(tx) for tx in txs))
        log.info("%s: task %s recorded (main block %d): %d rounds at ε=%g per %s, %s", self.id, task.task,
                 receipts[-1].height, task.rounds, task.epsilon, task.unit, config.layers)
        return task

    def _features(self, extractors: list[Extractor], images: np.ndarray) -> np.ndarray:
        kind = backend_class(self.cfg.ml.backend)
        entry = next(e for e in extractors if e.release.format == kind.format)
        with open_backend(self.cfg.ml.backend, self.blobs.get(entry.cid), threads=self.cfg.ml.threads) as b:
            return np.concatenate([b.run(images[i:i + 256]) for i in range(0, len(images), 256)])

    def _aggregations(self, task: Task) -> list[Aggregation]:
        """The recorded aggregations of ``task``, round 0, 1, …, by this node or the round's drawn leader
        (worker thread)."""
        leaders = {d.round: d.leader for _, r in self.ledger.chain.records(LeaderDraw.TYPE, limit=10000)
                   if r.signer == self.id and (d := r.unwrap()).task == task.task}
        found = {}
        for _, rec in self.ledger.chain.records(Aggregation.TYPE, limit=10000, newest=False):
            agg = rec.unwrap()
            if agg.task == task.task and rec.signer in (self.id, leaders.get(agg.round)):
                found.setdefault(agg.round, agg)
        return [found[r] for r in range(len(found)) if r in found]

    # ------------------------------------------------------------------ rounds

    async def _publish(self, task: Task, round: int, model: T.DenseModel, cid: bytes) -> None:
        if self._test_features is None:
            self._test_features = normalise(self._features(task.extractors, self.test.images),
                                            task.batch_size).astype(np.float32)
        self.accuracy[round] = acc = T.accuracy(model, self._test_features, self.test.labels)
        await self.session.publish("model", GlobalModel(task=task.task, round=round, rounds=task.rounds, model=cid,
                                                        accuracy=acc), retain=True)
        log.info("%s: global model after round %d published: test accuracy %.1f %%", self.id, round, 100 * acc)

    async def _reference(self, task: Task, model: T.DenseModel) -> Contribution:
        """FLTrust's server update: the round's model trained on this node's held-out (root) data, stored as a blob."""
        x = normalise(self._features(task.extractors, self.reference.images), task.batch_size).astype(np.float32)
        trained = await asyncio.to_thread(lambda: T.Trainer(task.config).fit(model, x, self.reference.labels,
                                                                             epochs=task.epochs).model)
        return Contribution(self.id, self.blobs.put(trained.to_bytes()), len(x), trained.params)

    async def _pay(self, task: Task, agg: Aggregation) -> None:
        """Record the round's reward payout on the main chain (``edgefl.fl.reputation.payout``), once."""
        reason = payout_reason(task.task, agg.round)

        def plan():
            for _, rec in self.ledger.chain.records(CoinUpdate.TYPE, limit=256):
                if rec.signer == self.id and rec.unwrap().reason == reason:
                    return []  # paid before a restart
            return payout(task, agg, self._updates(task, agg.round))

        coins = await self.ledger.call(plan)
        key = self.session.signer.key
        await asyncio.gather(*(self.ledger.submit(record_tx(c, self.id, key, device=c.account)) for c in coins))
        if coins:
            log.info("%s: round %d: %d coins paid to %d devices", self.id, agg.round, sum(c.delta for c in coins),
                     len(coins))

    async def _collect(self, task: Task, round: int, base: T.DenseModel) -> list[Contribution]:
        """The fogs' models for ``round``: every registered fog's, or at the deadline a quorum's.

        A model that cannot be fetched yet (the fog or the link to it is away) is asked for again until the
        deadline; only one that arrived and is unusable, or one still missing then, is left out.
        """
        deadline = time.monotonic() + self.cfg.fl.round_timeout_s
        quorum = max(1, math.ceil(self.cfg.fl.quorum * len(self.fogs)))
        got: dict[str, Contribution | None] = {}  # fog -> its model (None: refused)
        while True:
            updates = await self.ledger.call(self._updates, task, round)
            for fog in sorted(set(updates) - set(got)):
                try:
                    got[fog] = await self._model(fog, updates[fog], base)
                except (RequestTimeout, ConnectionError) as exc:
                    log.info("%s: %s's model for round %d not fetched yet: %s", self.id, fog, round, exc)
            late = time.monotonic() >= deadline
            if got and (set(self.fogs) <= set(got) or (late and len(got) >= quorum)):
                if set(self.fogs) - set(got):
                    log.warning("%s: round %d goes on without %s", self.id, round,
                                ", ".join(sorted(set(self.fogs) - set(got))))
                contributions = [c for fog in sorted(got) if (c := got[fog])]
                if contributions:
                    return contributions
            await asyncio.sleep(self.ledger.block_interval_s)

    def _updates(self, task: Task, round: int) -> dict[str, FogUpdate]:
        """The first recorded update of each registered fog for ``round`` (worker thread)."""
        found = {}
        for _, rec in reversed(self.ledger.chain.records(FogUpdate.TYPE, limit=16 * len(self.fogs) + 64)):
            u = rec.unwrap()
            if (u.task, u.round) == (task.task, round) and u.fog == rec.signer and u.fog in self.fogs:
                found.setdefault(u.fog, u)
        return found

    async def _model(self, fog: str, update: FogUpdate, base: T.DenseModel) -> Contribution | None:
        try:
            model = T.DenseModel.from_bytes(await fetch(self.session, fog, update.model, self.blobs))
            if model.layers != base.layers:
                raise T.TrainError(f"layers {model.layers}, the task's are {base.layers}")
            if not all(np.isfinite(p).all() for p in model.params):
                raise T.TrainError("parameters contain NaN or infinity")
        except (RemoteError, LedgerError, ValueError) as exc:  # codec and trainer errors too
            METRICS.inc("fl_update_rejected", reason=type(exc).__name__)
            log.warning("%s: cannot use %s's update for round %d: %s", self.id, fog, update.round, exc)
            return None
        return Contribution(fog, update.model, update.examples, model.params)
