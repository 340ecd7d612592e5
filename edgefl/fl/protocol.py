"""The federated round over MQTT: the messages and records of a task (see docs/round.md).

    cloud  → all     task  (retained)   Task           what to train, from which extractor, at which ε
    cloud  → all     model (retained)   GlobalModel    the global model after ``round`` rounds; round ``round`` is open
    device → fog     req                FeatureBatch   (edgefl.ml.device) its privatised features for the open round
    fog    → device  resp               BatchAck       the batch is stored durably and counted once
    device → fog     req                UpdateOffer    on-device training: its signed DeviceUpdate record
    fog    → device  resp               UpdateAck      the update is checked and recorded on the fog's chain
    fog    → cloud   req                Submit(tx)     (edgefl.ledger.protocol) the fog's signed FogUpdate record
    any    → parent  req                BlobGet        (edgefl.ledger.blobs) extractors and models by content id

Models never travel inside these messages: they are blobs, named by content id
(SHA-256), fetched from the node one level up (a device from its fog, a fog
from the cloud, the cloud from each fog) and checked against the id before
use.  The same ids are what the ledger records point at, so what was trained
on, aggregated and published is exactly what an auditor fetches.

Records (Type-I): ``Task`` and each extractor's ``ModelRelease`` on the main
chain; ``PrivacySpend`` on the fog's chain, by the device, before its data
leaves it; ``TrainingStep`` for every step and an ``Aggregation`` of its
devices on the fog's chain, before the first round's steps the fog's
``WarmStart`` when the task asks for one; the fog's ``FogUpdate`` and the cloud's
``Aggregation`` of the fogs on the main chain.  With on-device training
(``Task.train_at = "device"``, ``edgefl.fl.ondevice``) the devices sign their
own ``TrainingStep`` records and a ``DeviceUpdate`` each, on their fog's chain.
"""

from __future__ import annotations

import asyncio
from dataclasses import field
from typing import Annotated, Callable

import numpy as np

from edgefl import codec
from edgefl.codec import MaxLen, Message, Range, SchemaError, message
from edgefl.errors import EdgeflError
from edgefl.fl import aggregate as agg
from edgefl.ml import FEATURES, FeatureBatch, ModelRelease, TrainConfig
from edgefl.ml.privacy import MAX_EPSILON, UNITS
from edgefl.ml.trainer import warm_start_fits
from edgefl.transport import topics

Cid = Annotated[bytes, MaxLen(32)]
Name = Annotated[str, MaxLen(128)]
Round = Annotated[int, Range(0, 1 << 20)]
MAX_PARTIES = 1024  # devices per fog, fogs per cloud, in one aggregation
TRAIN_AT = ("fog", "device")  # who trains the dense layers: the fog on the devices' releases, or each device


class ProtocolError(EdgeflError, ValueError):
    """A message that does not fit the task; ``reason`` is the short label counted and sent back."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@message("fl.extractor")
class Extractor(Message):
    """One exported extractor: its release (what a device checks) and its blob's content id (where to get it)."""

    release: ModelRelease
    cid: Cid


@message("fl.aggregator")
class AggregatorSpec(Message):
    """An aggregator by name with its options in canonical text form (``edgefl.fl.aggregate``)."""

    name: Annotated[str, MaxLen(32)] = "fedavg"
    options: Annotated[list[Annotated[str, MaxLen(128)]], MaxLen(32)] = field(default_factory=list)

    def __post_init__(self):
        try:
            built = self.build()
        except ValueError as exc:
            raise SchemaError(str(exc), field="fl.aggregator") from None
        if agg.describe(built) != (self.name, list(self.options)):
            raise SchemaError(f"options {self.options} are not canonical: {agg.describe(built)[1]}",
                              field="fl.aggregator.options")

    def build(self) -> agg.Aggregator:
        return agg.from_spec(self.name, self.options)

    def label(self) -> str:
        """For messages: ``clip(inner="krum", max_norm=5.0)``."""
        return f"{self.name}({', '.join(self.options)})" if self.options else self.name

    @classmethod
    def of(cls, name: str, **options) -> "AggregatorSpec":
        """The spec of ``make(name, **options)``: defaults filled in, canonical."""
        return cls(*agg.describe(agg.make(name, **options)))


@message("fl.task")
class Task(Message):
    """The cloud's task advertisement, recorded on the main chain and published (retained) on its ``task`` topic.

    Devices normalise into [−√(N−1), √(N−1)] with N = ``config.batch_size``,
    the fog's training batch size; every release of an item costs ``epsilon``.
    """

    task: Name
    rounds: Annotated[int, Range(1, 10000)]
    epsilon: Annotated[float, Range(1e-3, MAX_EPSILON)]
    unit: Annotated[str, MaxLen(16)]
    noise: Annotated[str, MaxLen(32)]
    config: TrainConfig
    epochs: Annotated[int, Range(1, 1000)]
    trainer: Annotated[str, MaxLen(32)]
    extractors: Annotated[list[Extractor], MaxLen(4)]
    model: Cid  # M_0: the initial dense model (with its input transform)
    warm_start: bool = False  # round 1: each fog fits a ridge classifier to its batches first (WarmStart)
    average_releases: bool = False  # each fog trains on the mean of every release of an item so far
    aggregator: AggregatorSpec = field(default_factory=AggregatorSpec)  # how each fog combines its devices
    cloud_aggregator: AggregatorSpec = field(default_factory=AggregatorSpec)  # how the cloud combines the fogs
    reward: Annotated[int, Range(0, 1 << 40)] = 0  # coins the owner pays out per round (edgefl.fl.reputation)
    train_at: Annotated[str, MaxLen(8)] = "fog"  # "device": each device trains and sends its update
    clip_norm: Annotated[float, Range(0.0, 1e6)] = 0.0  # on-device: ‖update − round's model‖ at most this (0: none)
    leader_seed: Cid | None = None  # each round's aggregating fog is drawn from this epoch seed (edgefl.fl.leader)

    def __post_init__(self):
        if self.train_at not in TRAIN_AT:
            raise SchemaError(f"{self.train_at!r} is not one of {', '.join(TRAIN_AT)}", field="fl.task.train_at")
        if self.train_at == "device" and self.warm_start:
            raise SchemaError("a warm start is fitted to all of a fog's batches; a device trains on its own",
                              field="fl.task.warm_start")
        if self.unit not in UNITS:
            raise SchemaError(f"{self.unit!r} is not one of {', '.join(UNITS)}", field="fl.task.unit")
        if not self.extractors:
            raise SchemaError("a task names at least one extractor", field="fl.task.extractors")
        if self.config.layers[0] != FEATURES:
            raise SchemaError(f"the dense model takes {self.config.layers[0]} inputs, the extractor gives "
                              f"{FEATURES}", field="fl.task.config.layers")
        if self.warm_start and not warm_start_fits(self.config.layers):
            raise SchemaError(f"a warm start needs every hidden layer at least {2 * self.config.layers[-1]} wide, "
                              f"got {self.config.layers}", field="fl.task.warm_start")
        if self.aggregator.build().needs_reference:
            raise SchemaError(f"{self.aggregator.label()} needs a server's root data; a fog has none",
                              field="fl.task.aggregator")

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def extractor_for(self, fmt: str) -> Extractor | None:
        return next((e for e in self.extractors if e.release.format == fmt), None)

    def check_batch(self, batch: FeatureBatch) -> None:
        """Refuse a device's batch that is not for this task, its model, its privacy terms or its shapes."""
        if batch.task != self.task:
            raise ProtocolError("unknown_task", f"batch for task {batch.task!r}, the task is {self.task!r}")
        if batch.round >= self.rounds:
            raise ProtocolError("bad_round", f"round {batch.round} of a {self.rounds}-round task")
        if all(batch.model != e.release.hash for e in self.extractors):
            raise ProtocolError("unknown_model", f"features from model {batch.model.hex()[:16]}…, not a released one")
        if batch.epsilon != self.epsilon or batch.unit != self.unit:
            raise ProtocolError("privacy_terms", f"released at ε={batch.epsilon:g} per {batch.unit}, "
                                                 f"the task asks ε={self.epsilon:g} per {self.unit}")
        if batch.features.shape[1] != FEATURES:
            raise ProtocolError("shape", f"{batch.features.shape[1]} features per item, expected {FEATURES}")
        if len(batch.labels) and int(batch.labels.max()) >= self.config.layers[-1]:
            raise ProtocolError("labels", f"label {int(batch.labels.max())} outside [0, {self.config.layers[-1]})")
        if len(np.unique(batch.ids)) != len(batch.ids):
            raise ProtocolError("duplicate_items", "an item appears twice")
        if not np.isfinite(batch.features).all():
            raise ProtocolError("not_finite", "features contain NaN or infinity")


@message("fl.model")
class GlobalModel(Message):
    """The global model after ``round`` rounds (``round`` = 0: the initial model): round ``round`` is open
    until the next one is published; ``round == rounds`` is the final model.  ``accuracy`` is the cloud's
    test accuracy on its own held-out data (None for the initial model)."""

    task: Name
    round: Round
    rounds: Annotated[int, Range(1, 10000)]
    model: Cid
    accuracy: Annotated[float, Range(0.0, 1.0)] | None = None

    @property
    def open(self) -> bool:
        return self.round < self.rounds


@message("fl.batch-ack")
class BatchAck(Message):
    """The fog's answer to a FeatureBatch: stored durably (``batch`` is its content id); a resent batch is
    acknowledged again with ``duplicate`` set and counted once."""

    task: Name
    round: Round
    items: Annotated[int, Range(0, 1 << 20)]
    batch: Cid
    duplicate: bool = False


@message("fl.device-update")
class DeviceUpdate(Message):
    """A device's update of a round it trained itself (``Task.train_at = "device"``), signed by the device and
    recorded on its fog's chain: what the fog aggregates, and everything an audit needs to replay it.

    The device trained ``origin`` (the round's global model) on the mean of ``releases`` (its FeatureBatch
    blobs at this fog, oldest first, the last one this round's; one when the task does not average them),
    recording steps 1 … ``steps`` as ``TrainingStep`` records of ``run_id(task, round)``, the last ending
    in ``state``; ``model`` is ``clip_update(state's model, origin, clip)`` (``edgefl.fl.ondevice``).
    """

    task: Name
    round: Round
    device: Name
    origin: Cid
    releases: Annotated[list[Cid], MaxLen(10000)]  # one per round at most
    examples: Annotated[int, Range(1, 1 << 20)]
    steps: Annotated[int, Range(1, 1 << 24)]
    state: Cid  # M_T, the last step's output (a TrainState)
    model: Cid  # the update: a DenseModel
    clip: Annotated[float, Range(0.0, 1e6)] = 0.0
    platform: Annotated[str, MaxLen(256)] = ""  # where it trained: replay is bit for bit on the same platform

    def __post_init__(self):
        if not self.releases:
            raise SchemaError("an update names the releases it was trained on", field="fl.device-update.releases")


@message("fl.update-offer", max_size=(1 << 20) + 1024)
class UpdateOffer(Message):
    """A device's signed ``DeviceUpdate`` transaction, offered to its fog (which fetches the model from it)."""

    tx: Annotated[bytes, MaxLen(1 << 20)]  # a transaction (edgefl.ledger.tx.MAX_TX)


@message("fl.update-ack")
class UpdateAck(Message):
    """The fog's answer to an UpdateOffer: checked and recorded (``duplicate``: it had it already)."""

    task: Name
    round: Round
    model: Cid
    duplicate: bool = False


@message("fl.aggregation")
class Aggregation(Message):
    """``model`` = ``origin`` with the parameters aggregator(options)(models weighted by weights, in this
    order; from ``origin``, with the server's ``reference`` update for FLTrust): replayable from the blobs
    (``edgefl.fl.round.check_aggregation``).

    On a fog's chain the inputs are its devices' trained states (TrainState
    blobs, the last step's output); on the main chain the fogs' models.
    ``kept`` are the indices of the inputs that contribute, ``shares`` every
    input's share of the result (0: rejected), as the aggregator reported them.
    """

    task: Name
    round: Round
    aggregator: Annotated[str, MaxLen(32)]
    senders: Annotated[list[Name], MaxLen(MAX_PARTIES)]
    models: Annotated[list[Cid], MaxLen(MAX_PARTIES)]
    weights: Annotated[list[float], MaxLen(MAX_PARTIES)]
    model: Cid
    options: Annotated[list[Annotated[str, MaxLen(128)]], MaxLen(32)] = field(default_factory=list)
    kept: Annotated[list[Annotated[int, Range(0, MAX_PARTIES - 1)]], MaxLen(MAX_PARTIES)] = field(default_factory=list)
    shares: Annotated[list[Annotated[float, Range(0.0, 1.0)]], MaxLen(MAX_PARTIES)] = field(default_factory=list)
    origin: Cid | None = None  # the model the round started from
    reference: Cid | None = None  # the server's own model trained from the origin (FLTrust)

    def __post_init__(self):
        if not (len(self.senders) == len(self.models) == len(self.weights)):
            raise SchemaError("senders, models and weights differ in length", field="fl.aggregation")
        if self.shares and len(self.shares) != len(self.senders):
            raise SchemaError("one share per input", field="fl.aggregation.shares")
        if any(i >= len(self.senders) for i in self.kept) or list(self.kept) != sorted(set(self.kept)):
            raise SchemaError("kept lists input indices once each, ascending", field="fl.aggregation.kept")

    @property
    def refs(self) -> list[bytes]:
        """The blobs the record points at beyond its inputs (so blob gc keeps what replays it)."""
        return [c for c in (self.model, self.origin, self.reference) if c is not None]


@message("fl.warm-start")
class WarmStart(Message):
    """A fog's linear warm start of round 1 (``edgefl.fl.round.warm_start``), recorded on its chain.

    ``model`` = ``origin`` with a ridge classifier fitted to the features and
    labels of ``batches`` (FeatureBatch blobs, in this order) embedded in it:
    post-processing of the released features, replayable from the blobs.  The
    fog's training steps of the round start from ``model``.
    """

    task: Name
    round: Round
    origin: Cid  # the round's global model
    batches: Annotated[list[Cid], MaxLen(MAX_PARTIES)]
    model: Cid


@message("fl.update")
class FogUpdate(Message):
    """A fog's model for a round, signed by the fog and recorded on the main chain (the fog submits it).

    ``aggregation`` is the id of the fog's ``Aggregation`` record on its own
    chain, so anyone can follow the update down to every training step (Protocol 1).
    ``weights`` and ``shares`` are that aggregation's, per device (what the
    reward and the devices' reputation follow on the main chain);
    ``stragglers`` the fog's devices whose batch had not come by its deadline.
    """

    task: Name
    round: Round
    fog: Name
    model: Cid
    examples: Annotated[int, Range(1, 1 << 40)]
    devices: Annotated[list[Name], MaxLen(MAX_PARTIES)]
    aggregation: Cid
    weights: Annotated[list[float], MaxLen(MAX_PARTIES)] = field(default_factory=list)
    shares: Annotated[list[Annotated[float, Range(0.0, 1.0)]], MaxLen(MAX_PARTIES)] = field(default_factory=list)
    stragglers: Annotated[list[Name], MaxLen(MAX_PARTIES)] = field(default_factory=list)
    draw: Annotated[bytes, MaxLen(81)] | None = None  # the fog's VRF proof for the round's leader draw

    def __post_init__(self):
        if any(len(x) not in (0, len(self.devices)) for x in (self.weights, self.shares)):
            raise SchemaError("one weight and one share per device", field="fl.update.shares")


def run_id(task: str, round: int) -> str:
    """What a fog's TrainingStep records name as their task: one device's steps form one chain per round."""
    return f"{task}/round-{round}"


def decode_batch(data: bytes) -> FeatureBatch:
    """A FeatureBatch from its canonical bytes (as a device keeps it and a fog stores it)."""
    return FeatureBatch.from_wire(codec.decode(data, codec.DEFAULT_LIMITS.scaled(FeatureBatch.MAX_SIZE)))


class TaskView:
    """The cloud's current task and latest global model as a device or fog follows them.

    Both topics are retained, so a node that (re)subscribes learns them at
    once; an older global model than the one held (a stale retained copy) is ignored.
    """

    def __init__(self, on_change: Callable[[], None]):
        self.task: Task | None = None
        self.model: GlobalModel | None = None
        self.on_change = on_change

    async def follow(self, session, cloud: str) -> None:
        # the two kinds it needs, not everything the cloud publishes (its beacons go to fogs' chains only)
        session.expect("task", Task)  # anything else on these topics is refused and counted by the session
        session.expect("model", GlobalModel)
        async with asyncio.TaskGroup() as tg:
            for kind in ("task", "model"):
                tg.create_task(self._follow(session, topics.pattern(node=cloud, kind=kind)))

    async def _follow(self, session, pattern: str) -> None:
        async with session.subscribe(pattern) as sub:
            async for rx in sub:
                msg = rx.message
                if isinstance(msg, Task) and msg != self.task:
                    self.task = msg
                elif isinstance(msg, GlobalModel) and (self.model is None or msg.task != self.model.task
                                                       or msg.round > self.model.round):
                    self.model = msg
                else:
                    continue
                self.on_change()

    def open_round(self) -> tuple[Task, GlobalModel] | None:
        """(task, the global model its open round starts from) while a round of the current task is open."""
        t, m = self.task, self.model
        if t is None or m is None or m.task != t.task or not m.open:
            return None
        return t, m

    def is_open(self, task: Task, round: int) -> bool:
        current = self.open_round()
        return current is not None and current[0] == task and current[1].round == round
