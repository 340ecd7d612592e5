"""Training tracking and audit.

A device's local model is trained in steps, M_{i+1} = T(M_i, M_O, d_{i+1}),
M_O being the aggregated model the round started from.  ``Tracker`` runs T,
keeps M_i, M_O, d_{i+1}, M_{i+1} (and T's configuration) in the blob store and
records each step as a Type-I ``TrainingStep`` carrying their content ids and

    digest = H(M_{i+1} ‖ M_O ‖ d_{i+1} ‖ i+1)      (tagged SHA-256 over the content ids and the step)

An auditor picks random steps i, gets the records of steps i and i−1 with
their integrity checked (a ``Source``: the local chain, or cross-chain through
Protocol 1), fetches the blobs (digest-checked), checks that step i starts
from step i−1's output and that the digest matches, re-runs T and rejects the
model if the result differs in a single bit.

T is pluggable by name (``TRAINERS``): a function of canonical bytes
``(M_i, M_O, d_{i+1}, config) -> M_{i+1}``; it must be deterministic.
``dense`` is the fog's dense-layer trainer from ``edgefl.ml.trainer``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from edgefl import codec
from edgefl.crypto import SigningKey, tagged_hash
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.errors import AuditError, LedgerError
from edgefl.ledger.records import TrainingStep
from edgefl.ledger.tx import record_tx

STEP_TAG = b"edgefl/ledger/train-step/v1"
DATA_LIMITS = codec.Limits(max_size=64 << 20, max_depth=4, max_items=64)


class StepFunction(Protocol):
    def __call__(self, model: bytes, origin: bytes, data: bytes, config: bytes) -> bytes: ...


def dense_step(model: bytes, origin: bytes, data: bytes, config: bytes) -> bytes:
    """The fog's dense trainer: ``data`` is the canonical CBOR map {x: float32 rows, y: int64 labels}."""
    from edgefl.ml.trainer import replay_step

    batch = codec.decode(data, DATA_LIMITS, canonical=True)
    if not (isinstance(batch, dict) and set(batch) == {"x", "y"}):
        raise AuditError("a dense-trainer batch is the map {x, y}", field="data")
    return replay_step(model, origin, batch["x"], batch["y"], config)


TRAINERS: dict[str, StepFunction] = {"dense": dense_step}


def trainer(name: str) -> StepFunction:
    fn = TRAINERS.get(name)
    if fn is None:
        raise AuditError(f"unknown trainer {name!r} (known: {', '.join(sorted(TRAINERS))})", field="trainer")
    return fn


def step_digest(model_out: bytes, origin: bytes, data: bytes, step: int) -> bytes:
    """H(M_{i+1} ‖ M_O ‖ d_{i+1} ‖ i+1) over the content ids of the three blobs."""
    return tagged_hash(STEP_TAG, model_out + origin + data + step.to_bytes(8, "big"))


# --------------------------------------------------------------------------- tracking


class Tracker:
    """Runs T for one device and task, storing every input and output before recording the step."""

    def __init__(self, blobs: BlobStore, *, task: str, device: str, trainer_name: str, config: bytes,
                 signer: str, key: SigningKey):
        self.blobs = blobs
        self.task = task
        self.device = device
        self.trainer_name = trainer_name
        self.fn = trainer(trainer_name)
        self.config = config
        self.config_cid = blobs.put(config)
        self.signer = signer
        self.key = key

    def step(self, step: int, model: bytes, origin: bytes, data: bytes, *,
             result: bytes | None = None) -> tuple[bytes, bytes]:
        """Train step ``step`` (1-based) from ``model``; returns (M_step bytes, the record transaction).

        ``result`` records a given output instead of running T (what a dishonest
        trainer would do; the audit tests use it).
        """
        out = self.fn(model, origin, data, self.config) if result is None else result
        cids = [self.blobs.put(b) for b in (model, origin, data, out)]  # durable before the record exists
        rec = TrainingStep(task=self.task, device=self.device, step=step, trainer=self.trainer_name,
                           config=self.config_cid, model_in=cids[0], origin=cids[1], data=cids[2], model_out=cids[3],
                           digest=step_digest(cids[3], cids[1], cids[2], step))
        tx = record_tx(rec, self.signer, self.key, refs=[self.config_cid, *cids], device=self.device,
                       model=cids[3])
        return out, tx


# --------------------------------------------------------------------------- audit


class Source(Protocol):
    """Where an auditor gets integrity-checked records and digest-checked blobs."""

    async def steps(self, device: str, task: str | None) -> dict[int, bytes]: ...  # step -> tx id
    async def record(self, txid: bytes) -> TrainingStep: ...
    async def blob(self, cid: bytes) -> bytes: ...


@dataclass
class StepResult:
    step: int
    ok: bool
    detail: str


@dataclass
class AuditReport:
    device: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


def _differences(expected: bytes, got: bytes) -> str:
    if len(expected) != len(got):
        return f"{len(got)} bytes instead of the recorded {len(expected)}"
    diff = [i for i in range(len(got)) if got[i] != expected[i]]
    bits = sum(bin(got[i] ^ expected[i]).count("1") for i in diff)
    return f"{bits} bit(s) in {len(diff)} byte(s) differ, first at byte {diff[0]}"


async def audit_step(source: Source, record: TrainingStep, previous: TrainingStep | None) -> StepResult:
    i = record.step
    if previous is not None and previous.model_out != record.model_in:
        return StepResult(i, False, f"starts from a model other than step {i - 1}'s output")
    if step_digest(record.model_out, record.origin, record.data, i) != record.digest:
        return StepResult(i, False, "recorded digest H(M_i ‖ M_O ‖ d_i ‖ i) does not match its content ids")
    try:
        fn = trainer(record.trainer)
        model_in, origin, data, config, recorded = [await source.blob(c) for c in (
            record.model_in, record.origin, record.data, record.config, record.model_out)]
    except LedgerError as exc:
        return StepResult(i, False, f"inputs unavailable or corrupt: {exc}")
    try:
        with np.errstate(all="ignore"):  # a doctored model may hold inf or NaN; replaying it must not warn
            replayed = fn(model_in, origin, data, config)
    except Exception as exc:  # a trainer rejecting recorded inputs is a failed audit, not a crash
        return StepResult(i, False, f"T failed on the recorded inputs: {type(exc).__name__}: {exc}")
    if replayed != recorded:
        return StepResult(i, False, f"re-running T gives a different M_{i}: {_differences(recorded, replayed)}")
    return StepResult(i, True, f"T(M_{i - 1}, M_O, d_{i}) reproduces M_{i} bit for bit ({len(recorded)} bytes)")


async def audit(source: Source, device: str, *, task: str | None = None, samples: int | None = None,
                seed: int | None = None, report: Callable[[str], None] | None = None) -> AuditReport:
    """Audit ``samples`` random recorded steps of ``device`` (all of them if None)."""
    say = report or (lambda line: None)
    steps = await source.steps(device, task)
    out = AuditReport(device)
    if not steps:
        say(f"no training steps recorded for {device}")
        return out
    chosen = sorted(steps) if samples is None or samples >= len(steps) else sorted(
        random.Random(seed).sample(sorted(steps), samples))
    say(f"{len(steps)} steps recorded for {device}; auditing {', '.join(map(str, chosen))}")
    for i in chosen:
        record = await source.record(steps[i])
        previous = await source.record(steps[i - 1]) if i - 1 in steps else None
        result = await audit_step(source, record, previous)
        out.steps.append(result)
        say(f"step {i}: {'ok' if result.ok else 'REJECT'} — {result.detail}")
    return out


class LocalSource:
    """Records from a chain this node holds, blobs from its blob store."""

    def __init__(self, chain, blobs: BlobStore):
        self.chain = chain
        self.blobs = blobs

    async def steps(self, device, task):
        return _index_steps([(txid, self._decode(txid)) for txid, _, _ in
                             self.chain.store.find(device=device, rtype=TrainingStep.TYPE, limit=10000)], task)

    def _decode(self, txid: bytes) -> TrainingStep:
        from edgefl.ledger.tx import decode_tx

        found = self.chain.store.tx(txid)
        if found is None:
            raise AuditError(f"no record {txid.hex()}", field="txid")
        return decode_tx(found[2]).body.unwrap()

    async def record(self, txid):
        return self._decode(txid)

    async def blob(self, cid):
        return self.blobs.get(cid)


def _index_steps(rows, task: str | None) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for txid, rec in rows:
        if task is None or rec.task == task:
            out.setdefault(rec.step, txid)  # the first record of a step counts
    return out


class RemoteSource:
    """Records of chain B verified cross-chain (Protocol 1), blobs fetched from B's node (digest-checked).

    ``holders`` are further nodes asked for a blob B's node does not have: with
    on-device training a device keeps its own training states.
    """

    def __init__(self, crosschain, chain: str, *, blobs: BlobStore | None = None, holders: tuple[str, ...] = ()):
        from edgefl.ledger.crosschain import Verdict

        self.cc = crosschain
        self.chain = chain
        self.blobs = blobs
        self.node = crosschain.server_of(chain)
        self.holders = tuple(holders)
        self._trusted = None
        self._verdict = Verdict()
        self._cache: dict[bytes, TrainingStep] = {}

    async def _anchor(self):
        if self._trusted is None:
            self._trusted = await self.cc.anchor_of(self.chain, self._verdict)
        return self._trusted

    async def steps(self, device, task):
        from edgefl.ledger.protocol import Find

        found = await self.cc._ask(self.node, Find(device=device, type=TrainingStep.TYPE, limit=10000), "find")
        new = [t for t in found.txids if t not in self._cache]
        if new:  # every record proved at once: one batch proof (Protocol 2) per 64 of them
            for txid, info in zip(new, await self.cc.prove_many(await self._anchor(), new, self._verdict)):
                self._keep(txid, info)
        return _index_steps([(txid, self._cache[txid]) for txid in found.txids], task)

    def _keep(self, txid: bytes, info) -> TrainingStep:
        rec = info.body.unwrap()
        if not isinstance(rec, TrainingStep):
            raise AuditError(f"{txid.hex()} is not a training step", field="txid")
        self._cache[txid] = rec
        return rec

    async def record(self, txid):
        rec = self._cache.get(txid)
        if rec is None:
            from edgefl.ledger.crosschain import Verdict

            rec = self._keep(txid, await self.cc.prove(await self._anchor(), txid, Verdict()))
        return rec

    async def blob(self, cid):
        from edgefl.ledger.blobs import fetch
        from edgefl.transport.session import RemoteError

        for node in (self.node, *self.holders):
            try:
                return await fetch(self.cc.session, node, cid, self.blobs)
            except RemoteError as exc:
                missing = exc
        raise AuditError(f"{', '.join((self.node, *self.holders))} have no blob {cid.hex()[:16]}…: {missing}",
                         field="cid", reason="not_found") from None


def batch_bytes(x, y) -> bytes:
    """d_i as the dense trainer's canonical batch map (the same bytes ``edgefl.ml.trainer.batch_digest`` hashes)."""
    return codec.encode({"x": np.ascontiguousarray(x, np.float32), "y": np.ascontiguousarray(y, np.int64)})

