"""The work of a networked round that the fog and the cloud share: tracked local training, recorded aggregation.

``train_device`` trains one device's copy of the round's model exactly as
``edgefl.fl.simulation`` does (the same seeded mini-batches, the same
deterministic step) but through the ledger's ``Tracker``: each step runs the
recorded trainer T on canonical bytes — the function an auditor replays — and
stores its inputs and output as blobs before the step is recorded.  It starts
after the last step already recorded, so a fog that restarts mid-round neither
repeats nor records a step twice.

``warm_start`` is the fog's first-round linear warm start (a ``WarmStart``
record names its inputs; ``check_warm_start`` recomputes it);
``release_mean`` what a fog trains on when the task averages releases.

``aggregate`` combines models with the aggregator the task names (for fogs
or for the cloud), in a fixed order, and describes the result as an
``Aggregation`` record from which anyone holding the blobs recomputes it
(``check_aggregation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import numpy as np

from edgefl import codec
from edgefl.fl.aggregate import AggregationError, Update
from edgefl.fl.protocol import Aggregation, AggregatorSpec, WarmStart, decode_batch
from edgefl.ledger import BlobStore, LedgerError, Tracker, cid_of
from edgefl.ledger.audit import batch_bytes
from edgefl.ml import DenseModel, FeatureBatch, TrainConfig, TrainState, init_state
from edgefl.ml.trainer import ReleaseMean, batch_indices

log = logging.getLogger("edgefl.fl.round")


def steps_per_round(items: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-items // batch_size)


def resume_point(recorded: Mapping[int, bytes]) -> int:
    """How many steps, 1, 2, … without a gap, are already recorded."""
    done = 0
    while done + 1 in recorded:
        done += 1
    return done


async def train_device(tracker: Tracker, origin: bytes, x: np.ndarray, y: np.ndarray, config: TrainConfig,
                       epochs: int, recorded: Mapping[int, bytes],
                       submit: Callable[[bytes], Awaitable]) -> tuple[bytes, int]:
    """Train (and record, through ``submit``) the steps not yet recorded; returns (final TrainState bytes, steps).

    ``origin`` is the round's global model (canonical DenseModel bytes, M_O);
    ``recorded`` maps the steps already recorded to their output's content id
    (M_i); every receipt has been awaited when this returns.
    """
    x = np.ascontiguousarray(x, np.float32)
    y = np.ascontiguousarray(y, np.int64)
    total = steps_per_round(len(y), config.batch_size, epochs)
    done = min(resume_point(recorded), total)
    if done:
        state = tracker.blobs.get(recorded[done])
    else:
        state = init_state(DenseModel.from_bytes(origin), config).to_bytes()
    async with in_flight() as receipts:
        for i in range(done, total):
            rows = batch_indices(len(y), config.batch_size, config.seed, i)
            # T runs in a worker thread (numpy releases the GIL): the node keeps serving meanwhile
            state, tx = await asyncio.to_thread(tracker.step, i + 1, state, origin, batch_bytes(x[rows], y[rows]))
            receipts.append(asyncio.ensure_future(submit(tx)))
    return state, total


@contextlib.asynccontextmanager
async def in_flight() -> AsyncIterator[list[asyncio.Future]]:
    """Submissions kept in flight together, every one awaited on the way out; on an error they are settled,
    but a stopping ledger's refusals must not mask why the work stopped."""
    receipts: list[asyncio.Future] = []
    try:
        yield receipts
    except BaseException:
        await asyncio.gather(*receipts, return_exceptions=True)
        raise
    await asyncio.gather(*receipts)


def warm_start(origin: bytes, batches: Sequence[FeatureBatch]) -> bytes:
    """``origin`` with a ridge classifier fitted to the batches' features and labels embedded (the fog's round 1).

    Deterministic (float64, BLAS on one thread): what a ``WarmStart`` record
    names is recomputed bit for bit from the same blobs.
    """
    x = np.concatenate([np.asarray(b.features, np.float32) for b in batches])
    y = np.concatenate([np.asarray(b.labels, np.int64) for b in batches])
    return DenseModel.from_bytes(origin).with_warm_start(x, y).to_bytes()


def release_mean(releases: Sequence[FeatureBatch]) -> np.ndarray:
    """The last release's items, each the mean of every release of it in ``releases`` (float32, in its order).

    A fog's training input when the task averages releases: post-processing,
    and deterministic (sums of grid values in float64, one division).
    """
    mean, x = ReleaseMean(), None
    for batch in releases:
        x = mean.add(batch.ids, batch.features)
    return x


def kept_releases(cids: Sequence[bytes | None], blob: Callable[[bytes], bytes]) -> list[FeatureBatch]:
    """The batches of ``cids`` (None: the device sent none that round) still in the blob store, in order.

    One that is gone (collected by ``ledger gc``) or corrupt is left out with
    a warning: the mean then covers the releases still here.
    """
    out = []
    for cid in cids:
        try:
            if cid is not None:
                out.append(decode_batch(blob(cid)))
        except LedgerError as exc:
            log.warning("an earlier release is left out of the mean: %s", exc)
    return out


def check_warm_start(record: WarmStart, blob: Callable[[bytes], bytes]) -> bool:
    """Recompute a recorded warm start from its blobs (``blob(cid) -> bytes``, digest-checked)."""
    batches = [decode_batch(blob(c)) for c in record.batches]
    return cid_of(warm_start(blob(record.origin), batches)) == record.model


@dataclass(frozen=True)
class Contribution:
    sender: str
    cid: bytes  # the blob the parameters came from
    weight: float  # examples behind it
    params: Sequence[np.ndarray]


def record_aggregation(spec: AggregatorSpec, base: DenseModel, contributions: Sequence[Contribution],
                       blobs: BlobStore, *, task: str, round: int,
                       reference: Contribution | None = None) -> tuple[DenseModel, Aggregation]:
    """Combine ``contributions`` (in the order given) from ``base``, the round's model; the result is stored as
    a blob.  ``reference`` is the server's own model for an aggregator that needs one (FLTrust)."""
    origin = blobs.put(base.to_bytes())  # canonical: the same bytes (and id) the round's model came as
    result = spec.build().aggregate([Update(c.params, c.weight, c.sender) for c in contributions],
                                    origin=base.params, reference=reference.params if reference else None)
    model = base.with_params(result.params)
    cid = blobs.put(model.to_bytes())
    return model, Aggregation(task=task, round=round, aggregator=spec.name, senders=[c.sender for c in contributions],
                              models=[c.cid for c in contributions],
                              weights=[float(c.weight) for c in contributions], model=cid, options=list(spec.options),
                              kept=result.kept, shares=result.weights, origin=origin,
                              reference=reference.cid if reference else None)


def params_of(data: bytes) -> list:
    """The parameters in a model blob: a DenseModel (a fog's update) or a TrainState (a device's trained state)."""
    try:
        return TrainState.from_bytes(data).model.params
    except codec.SchemaError:
        return DenseModel.from_bytes(data).params


def check_aggregation(record: Aggregation, blob: Callable[[bytes], bytes]) -> bool:
    """Recompute a recorded aggregation from its blobs (``blob(cid) -> bytes``, digest-checked): the model,
    which inputs it kept and their shares must all come out as recorded, bit for bit."""
    if record.origin is None:
        raise AggregationError("the record names no origin (recorded before aggregations were replayable)")
    spec = AggregatorSpec(record.aggregator, list(record.options))
    base = DenseModel.from_bytes(blob(record.origin))
    updates = [Update(params_of(blob(c)), w, s) for c, w, s in zip(record.models, record.weights, record.senders)]
    reference = params_of(blob(record.reference)) if record.reference is not None else None
    result = spec.build().aggregate(updates, origin=base.params, reference=reference)
    return (cid_of(base.with_params(result.params).to_bytes()) == record.model and result.kept == list(record.kept)
            and result.weights == list(record.shares))
