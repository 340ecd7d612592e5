"""On-device training (``Task.train_at = "device"``): each device trains, clips and signs its own update.

Classic federated learning as in the FBFL design, kept replayable.  Each round a device

1. releases its features privately and sends them to its fog exactly as in fog mode (``PrivacySpend``,
   ``DataCollected``, ``FeatureBatch``);
2. trains the round's global model on that release — the mean of its releases so far when the task
   averages them (``training_input``) — with the task's deterministic trainer, through a ``Tracker``
   signed by itself: every step a ``TrainingStep`` on its fog's chain (``edgefl.fl.round.train_device``);
3. sends ``clip_update(M_T, origin, Task.clip_norm)``, its step from the round's model clipped to the
   task's norm, named in a ``DeviceUpdate`` record it signs.  The fog checks the update
   (``check_update``: shapes, finite, within the norm), records the device's record on its chain and
   aggregates the updates with the task's aggregator.

Why the device trains on its release and not on its clean features: the update is then a function of
an ε-DP release, so it is ε-DP by post-processing, at no cost beyond the ε the release was charged —
trained on clean features it would carry no guarantee at all — and the fog holds every step's data (its
copy of the release, whose provenance it checked), so every step replays.  The raw data never leave the
device in either mode.

``audit_update`` is what anyone holding the fog's chain and blobs checks of a device's update (the
device's intermediate states are fetched from the device): the steps are the device's, complete and
chained from the round's model; each step's data is the device's recorded release, row for row; the
update is the clip of the last step's output; and sampled steps replay bit for bit.  A device that
sends anything but the clip of its recorded training, or records a step T did not compute, fails it.

An update attack (``edgefl.fl.attacks``) acts on the trained model before the clip, so the clip bounds
it like any update; ``needs_peers`` attacks see models the device trains on shards of its own data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgefl import codec
from edgefl.fl.aggregate import clip_to_norm
from edgefl.fl.attacks import Attack, rng_for
from edgefl.fl.protocol import DeviceUpdate, ProtocolError, Task, decode_batch, run_id
from edgefl.fl.round import release_mean, steps_per_round
from edgefl.ledger import LedgerError, TrainingStep, audit_step, cid_of
from edgefl.ledger.audit import batch_bytes
from edgefl.ml import DenseModel, FeatureBatch, TrainConfig, TrainState, blas, init_state
from edgefl.ml.trainer import Trainer, batch_indices

PEERS = 4  # models an attacker needing honest updates trains on shards of its own data
NORM_SLACK = 1e-6  # the clip is computed in float64 and rounded to float32


def platform_id() -> str:
    """This machine's ``blas.fingerprint()`` as one string: a recorded step replays bit for bit where it is the same."""
    return " ".join(f"{k}={v}" for k, v in sorted(blas.fingerprint().items()))


def training_input(releases: Sequence[FeatureBatch], average: bool) -> tuple[np.ndarray, np.ndarray]:
    """What a device trains on: the last release's items (the mean of every release of each, with ``average``)."""
    last = releases[-1]
    x = release_mean(releases) if average else np.asarray(last.features, np.float32)
    return np.ascontiguousarray(x, np.float32), np.asarray(last.labels, np.int64)


def step_norm(model: DenseModel, origin: DenseModel) -> float:
    return math.sqrt(math.fsum(float(np.add.reduce((np.asarray(p, np.float64) - np.asarray(o, np.float64)).ravel()
                                                   ** 2)) for p, o in zip(model.params, origin.params)))


def clip_update(model: DenseModel, origin: DenseModel, max_norm: float) -> DenseModel:
    """``model`` with its step from ``origin`` clipped to ``max_norm`` (0: unclipped); deterministic, so the
    fog and an auditor recompute the device's update bit for bit."""
    if max_norm <= 0:
        return model
    return model.with_params(clip_to_norm(model.params, origin.params, max_norm))


def peer_views(origin: DenseModel, x: np.ndarray, y: np.ndarray, config: TrainConfig, epochs: int,
               k: int = PEERS, seed: int = 0) -> list[list[np.ndarray]]:
    """What one attacking device can estimate the honest updates by: ``origin`` trained on k disjoint shards of
    its own data (Fang et al.'s partial knowledge), untracked."""
    order = rng_for("peers", seed, len(y)).permutation(len(y))
    shards = [s for s in np.array_split(order, min(k, len(y))) if len(s)]
    return [Trainer(config).fit(origin, x[np.sort(s)], y[np.sort(s)], epochs=epochs).model.params for s in shards]


def device_update(state: bytes, origin: bytes, clip: float, *, attack: Attack | None = None,
                  peers: Sequence[Sequence[np.ndarray]] = (), seed: int = 0) -> bytes:
    """The update a device sends: the clip of its trained model (of the attack's model, when attacking)."""
    base, model = DenseModel.from_bytes(origin), TrainState.from_bytes(state).model
    if attack is not None and attack.kind == "update":
        own = model.params
        model = model.with_params(attack.update(own, list(peers) or [own], origin=base.params, seed=seed))
    return clip_update(model, base, clip).to_bytes()


def check_update(record: DeviceUpdate, data: bytes, origin: DenseModel) -> DenseModel:
    """The fog's check of an offered update's blob (ProtocolError with the reason it is refused)."""
    try:
        model = DenseModel.from_bytes(data)
    except (codec.CodecError, ValueError) as exc:
        raise ProtocolError("bad_update", f"the update is not a dense model: {exc}") from None
    if model.layers != origin.layers:
        raise ProtocolError("shape", f"layers {model.layers}, the round's model has {origin.layers}")
    if not all(np.isfinite(p).all() for p in model.params):
        raise ProtocolError("not_finite", "the update's parameters contain NaN or infinity")
    if record.clip > 0 and (norm := step_norm(model, origin)) > record.clip * (1 + NORM_SLACK):
        raise ProtocolError("unclipped", f"the update's step has norm {norm:.6g}, the task clips at {record.clip:g}")
    return model


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True)
class Finding:
    what: str
    ok: bool
    detail: str


@dataclass
class UpdateAudit:
    device: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.findings) and all(f.ok for f in self.findings)

    def failed(self) -> str:
        return "; ".join(f"{f.what}: {f.detail}" for f in self.findings if not f.ok)


def device_steps(chain, device: str, rid: str) -> dict[int, TrainingStep]:
    """The training steps of ``rid`` on ``chain`` that ``device`` signed itself (the first record of each step)."""
    out: dict[int, TrainingStep] = {}
    for _, rec in reversed(chain.records(TrainingStep.TYPE, device=device, limit=10000)):
        step = rec.unwrap()
        if step.task == rid and rec.signer == device:
            out.setdefault(step.step, step)
    return out


class _Blobs:
    """audit_step's source: the step data recomputed from the fog's releases, the rest from ``blob``."""

    def __init__(self, known: dict[bytes, bytes], blob: Callable[[bytes], Awaitable[bytes]]):
        self.known, self._blob = known, blob

    async def blob(self, cid: bytes) -> bytes:
        return self.known[cid] if cid in self.known else await self._blob(cid)


async def audit_update(record: DeviceUpdate, steps: Mapping[int, TrainingStep],
                       blob: Callable[[bytes], Awaitable[bytes]], *, task: Task, samples: int | None = 1,
                       seed: int | None = None) -> UpdateAudit:
    """Audit a device's recorded update against its recorded steps (``device_steps``).

    ``blob(cid)`` returns digest-checked bytes (the fog's store, else the
    device's); ``samples`` steps are replayed (all when None), drawn by ``seed``
    — only where the device trained on this platform (``DeviceUpdate.platform``):
    elsewhere the same step may differ in its last bits, so the replay is
    reported as left to an auditor on that platform, not as a failure.
    """
    out = UpdateAudit(record.device)

    def note(what: str, ok: bool, detail: str) -> bool:
        out.findings.append(Finding(what, ok, detail))
        return ok

    try:
        releases = [decode_batch(await blob(c)) for c in record.releases]
        origin_bytes = await blob(record.origin)
        origin = DenseModel.from_bytes(origin_bytes)
    except (LedgerError, ValueError) as exc:
        note("inputs", False, f"the releases or the round's model are unavailable or corrupt: {exc}")
        return out
    x, y = training_input(releases, task.average_releases)
    total = steps_per_round(len(y), task.batch_size, task.epochs)
    if not note("steps", sorted(steps) == list(range(1, total + 1)) and record.steps == total
                and record.examples == len(y),
                f"{len(steps)} steps signed by {record.device} recorded, the update says {record.steps}, "
                f"{len(y)} items in {task.epochs} epochs of batch {task.batch_size} make {total}"):
        return out
    config = task.config.to_bytes()
    rid = run_id(record.task, record.round)
    terms = [i for i, s in steps.items() if (s.task, s.trainer, s.config, s.origin, s.device)
             != (rid, task.trainer, cid_of(config), record.origin, record.device)]
    note("terms", not terms, "every step trains the round's model with the task's trainer and configuration"
         if not terms else f"steps {terms[:5]} name another task, trainer, configuration or origin")
    start = cid_of(init_state(origin, task.config).to_bytes())
    links = [i for i in range(2, total + 1) if steps[i].model_in != steps[i - 1].model_out]
    note("chain", steps[1].model_in == start and not links,
         "step 1 starts from the round's model, each later step from the one before" if not links and
         steps[1].model_in == start else f"broken at steps {([1] if steps[1].model_in != start else []) + links}")
    known, rows = {}, []
    for i in range(1, total + 1):
        d = batch_bytes(x[idx := batch_indices(len(y), task.batch_size, task.config.seed, i - 1)], y[idx])
        known[cid_of(d)] = d
        if cid_of(d) != steps[i].data:
            rows.append(i)
    note("data", not rows, f"every step's batch is rows of the device's {len(releases)} recorded release(s)"
         if not rows else f"steps {rows[:5]} trained on data that is not the recorded release")
    try:
        state = TrainState.from_bytes(await blob(record.state))
        update = clip_update(state.model, origin, record.clip).to_bytes()
        same = steps[total].model_out == record.state and cid_of(update) == record.model and \
            record.clip == task.clip_norm
        note("update", same, f"the update is the last step's output clipped to {record.clip:g}" if same else
             "the update is not the task's clip of the last recorded step's output")
    except (LedgerError, ValueError) as exc:
        note("update", False, f"the last state is unavailable or corrupt: {exc}")
    chosen = list(range(1, total + 1)) if samples is None or samples >= total else sorted(
        random.Random(seed).sample(range(1, total + 1), samples))
    if chosen and record.platform != platform_id():
        note("replay", True, f"not replayed here: trained on {record.platform or 'an unnamed platform'}, this "
                             f"auditor runs {platform_id()}; replay steps {chosen} on the device's platform")
        return out
    source = _Blobs(known, blob)
    for i in chosen:
        result = await audit_step(source, steps[i], steps.get(i - 1))
        note(f"step {i}", result.ok, result.detail)
    return out
