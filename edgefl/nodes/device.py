"""The device: for each open round of the cloud's task, release its data's features privately to its fog.

Per task: fetch the extractor for the profile's backend from the fog, refuse
it unless it hashes to the released value, open the backend.  Per round:
extract, normalise and noise the features and quote their ``PrivacySpend``;
keep the batch and the signed spend record (written ahead), record the spend
on the fog's chain and charge ε to the persisted accountant, record the
batch's ``DataCollected`` (kept first too), then send the batch to the fog
until it is acknowledged.  A restart at any point finishes the kept release
of the open round: the same records resubmitted (the chain answers them as
the first time), ε charged once, the same batch resent; never a second release.
When the task trains on-device, the device then trains the round's model on
its release and offers its signed update (``edgefl.nodes.ondevice``); it
serves its blob store so its fog can fetch the update and an auditor its
training states.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from edgefl import codec
from edgefl.errors import EdgeflError
from edgefl.fl import Task, TaskView
from edgefl.fl.protocol import BatchAck, decode_batch
from edgefl.ledger import BlobStore, DataCollected, LedgerError, Receipts, SubmitAll, decode_tx, record_tx
from edgefl.ledger import blobs as blobstore
from edgefl.ledger.blobs import fetch
from edgefl.ml import BackendUnavailable, FeatureExtractor, ModelError, PrivacyAccountant, Privatiser, mechanism
from edgefl.ml.backends import backend_class, backend_problem
from edgefl.nodes.node import local_data, node_attack
from edgefl.nodes.ondevice import LocalTraining
from edgefl.runtime import METRICS, Config, ConfigError, StateFile, memory, retry
from edgefl.transport import RemoteError, RequestTimeout, Session

log = logging.getLogger("edgefl.device")
_RECORDED = {"spend": "spent", "attest": "collected"}  # a release's record -> its flag once on the fog's chain
# refusals that may pass, so the round is tried again with backoff while it is open: the fog has not seen the
# task yet, failed or stopped; it does not know this device yet (its fl.devices, its certificate or key) and
# may learn it at run time (SIGHUP), or lacks a current CRL of this device's CA
TRANSIENT = ("unknown_task", "internal", "stopped", "unknown_device", "unknown_sender", "stale_crl")


class Refused(EdgeflError):
    """This device will not take part in the task; ``reason`` is counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class DeviceNode:
    def __init__(self, cfg: Config, session: Session):
        self.cfg, self.session = cfg, session
        self.id, self.fog, self.cloud = cfg.node.id, cfg.node.fog, cfg.ledger.main_node
        self.data = local_data(cfg)
        self.attack = node_attack(cfg)  # an update attack acts only when the task trains on-device
        self.blobs = BlobStore(cfg.path(cfg.ledger.blob_dir), max_blob=cfg.ledger.max_blob_bytes)
        blobstore.serve(session, self.blobs)
        self.training = LocalTraining(self)
        self.state = StateFile(cfg.path(cfg.fl.state_file))
        self.sent = self.state.load({"task": "", "rounds": {}})  # round -> {"batch": cid, "acked": bool}
        self.changed = asyncio.Event()
        self.view = TaskView(self.changed.set)  # the cloud's task and global model
        self._extractor: tuple[Task, FeatureExtractor] | None = None
        self._refused: str | None = None  # the task this device refused
        self.ledger = self._replica(cfg, session)

    @staticmethod
    def check(cfg: Config) -> None:
        if not cfg.node.fog:
            raise ConfigError("node.fog", "a device needs the id of the fog it reports to")
        problem = backend_problem(cfg.ml.backend)
        if problem:
            raise ConfigError("ml.backend", f"a device extracts its features with it: {problem}")

    def _replica(self, cfg: Config, session: Session):
        """A member of its fog's sub-chain committee keeps a replica of it (its genesis came with the device's
        provisioning); other devices keep no chain."""
        from edgefl.ledger.service import LedgerNode, db_path

        if not db_path(cfg, self.fog).exists():
            return None
        return LedgerNode.from_config(cfg, session, chain=self.fog, blobs=self.blobs)

    def services(self) -> dict:
        return {"fl-device": self.run, **({"ledger": self.ledger.run} if self.ledger else {})}

    def _close_extractor(self) -> None:
        if self._extractor:
            self._extractor[1].backend.close()

    def close(self) -> None:
        self._close_extractor()
        if self.ledger:
            self.ledger.close()

    async def run(self) -> None:
        self.changed.set()  # after a restart of this service: look at what is already known
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.view.follow(self.session, self.cloud))
            while True:
                await self.changed.wait()
                self.changed.clear()
                current = self.view.open_round()
                if current is None:
                    continue
                task, round = current[0], current[1].round
                entry = self._entry(task, round)
                if task.task == self._refused or (entry.get("acked") and (task.train_at == "fog"
                                                                          or entry.get("offered"))):
                    continue
                try:
                    await self.take_part(task, round)
                except Refused as exc:
                    self._refused = task.task
                    METRICS.inc("fl_task_refused", reason=exc.reason)
                    log.warning("%s: refusing task %s: %s", self.id, task.task, exc)
                self._settle_memory()

    def _settle_memory(self) -> None:
        """After a round, before the wait for the next: hand back what the round freed (a few ms once per round;
        the allocator keeps large freed buffers otherwise), and say so when the agent nears the ceiling its
        service is killed at (``board.memory_max_mb``)."""
        memory.release_freed()
        rss, ceiling = memory.rss_mb(), memory.ceiling_mb(self.cfg.board)
        if rss is not None and rss > 0.75 * ceiling:
            METRICS.inc("memory_high")
            log.warning("%s: %.0f MB resident, over 3/4 of its %d MB ceiling (ml.chunk_rows = %d)", self.id, rss,
                        ceiling, self.cfg.ml.chunk_rows)

    # ------------------------------------------------------------------ one round

    async def take_part(self, task: Task, round: int) -> None:
        """Release (once) and deliver this device's batch for ``round``; returns when acknowledged or too late."""
        fx = await self.extractor(task)
        entry = self._entry(task, round)

        async def deliver() -> bool:
            try:
                return await self._deliver(task, round, fx, entry)
            except RemoteError as exc:
                if exc.reason not in TRANSIENT:  # the batch (or the spend record) is not acceptable: give up the round
                    METRICS.inc("fl_batch_refused", reason=exc.reason)
                    log.warning("%s: round %d refused by %s: %s", self.id, round, self.fog, exc)
                    return False
                METRICS.inc("fl_batch_deferred", reason=exc.reason)
                raise

        def later(exc: BaseException, delay: float) -> None:
            if isinstance(exc, RemoteError):
                log.info("%s: %s is not ready for round %d (%s); retrying in %.1f s", self.id, self.fog, round, exc,
                         delay)
            else:
                log.info("%s: round %d: %s; retrying", self.id, round, exc)

        await retry(deliver, retry_on=(RemoteError, RequestTimeout, ConnectionError, TimeoutError, LedgerError),
                    keep_going=lambda: not entry.get("acked") and self.view.is_open(task, round), on_retry=later)
        if entry.get("acked") and task.train_at == "device":
            await self.training.take_part(task, round, entry)

    async def _deliver(self, task: Task, round: int, fx: FeatureExtractor, entry: dict) -> bool:
        """One attempt at the round's release: drawn and kept (once), its spend recorded, attested, sent, acked."""
        if "batch" not in entry:
            ids = np.arange(len(self.data))
            images, labels = self.attack.data(self.data.images, self.data.labels, seed=round)
            batch, spend = await asyncio.to_thread(fx.draw, ids, images, labels, task=task.task, round=round)
            # Written ahead: the release, its signed spend record and its attestation are kept before any
            # leaves, so a restart finishes this release rather than drawing another (and spending ε twice).
            entry["batch"] = await asyncio.to_thread(self.blobs.put, codec.encode_message(batch))
            if spend is not None:
                entry["spend"] = self.blobs.put(record_tx(spend, self.id, self.session.signer.key,
                                                          device=self.id))
            entry["attest"] = self.blobs.put(self._attest(entry["batch"]))
            self.state.save(self.sent)
        else:
            batch = decode_batch(self.blobs.get(entry["batch"]))
        if "attest" not in entry:  # kept by a version that attested only after the spend
            entry["attest"] = self.blobs.put(self._attest(entry["batch"]))
            self.state.save(self.sent)
        todo = [k for k in ("spend", "attest") if k in entry and not entry.get(_RECORDED[k])]
        if todo:
            # on the fog's chain, in one exchange, before anything is sent: the spend, and the provenance
            # (the fog keeps only what this device attested); a resubmission is answered as the first time
            raws = [self.blobs.get(entry[k]) for k in todo]
            answer = (await self.session.request(self.fog, SubmitAll(raws))).message
            if not isinstance(answer, Receipts) or len(answer.receipts) != len(raws):
                raise RemoteError("unexpected", f"{type(answer).__name__} in answer to the release's records")
            if "spend" in todo:  # charged to this device's accountant once it is on the chain
                spent = decode_tx(raws[0]).body.unwrap()
                await asyncio.to_thread(fx.privatiser.accountant.settle, spent, batch.ids)
                log.info("%s: released %d items for %s round %d at ε=%g (spend recorded on %s)", self.id,
                         len(batch.ids), task.task, round, task.epsilon, self.fog)
            entry.update({_RECORDED[k]: True for k in todo})
            self.state.save(self.sent)
        ack = (await self.session.request(self.fog, batch)).message
        if not isinstance(ack, BatchAck) or (ack.task, ack.round) != (task.task, round):
            raise RemoteError("unexpected", f"{type(ack).__name__} in answer to a batch")
        entry["acked"] = True
        self.state.save(self.sent)
        for kept in ("spend", "attest"):  # on the fog's chain: never sent again
            if kept in entry:
                self.blobs.path(entry[kept]).unlink(missing_ok=True)
        if task.train_at == "fog":  # the fog has it: never sent again (on-device, trained on here)
            self.blobs.path(entry["batch"]).unlink(missing_ok=True)
        METRICS.inc("fl_batch_delivered")
        return True

    def _attest(self, cid: bytes) -> bytes:
        """A ``DataCollected`` record of the batch's exact bytes, for the fog's chain."""
        data, key = self.blobs.get(cid), self.session.signer.key
        attest = DataCollected.of(self.id, cid, len(data), len(decode_batch(data).ids), key)
        return record_tx(attest, self.id, key, refs=[cid], device=self.id, model=cid)

    def _entry(self, task: Task, round: int) -> dict:
        if self.sent["task"] != task.task:
            self.sent = {"task": task.task, "rounds": {}}
        return self.sent["rounds"].setdefault(str(round), {})

    # ------------------------------------------------------------------ the task's extractor

    async def extractor(self, task: Task) -> FeatureExtractor:
        """The verified extractor and privatiser for ``task`` (raises Refused)."""
        if self._extractor and self._extractor[0] == task:
            return self._extractor[1]
        ml = self.cfg.ml
        if task.epsilon > ml.epsilon:
            raise Refused("epsilon", f"ε={task.epsilon:g} per release, this device allows at most {ml.epsilon:g}")
        if task.train_at == "device" and not ml.local_training:
            raise Refused("train_at", "the task trains on-device; this device does not train (ml.local_training)")
        if task.train_at == "fog" and self.attack.kind == "update":
            log.warning("%s: %s attacks a sent model; this task trains at the fog, so it has none", self.id,
                        self.attack.name)
        if task.unit != ml.privacy_unit or task.noise != ml.noise:
            raise Refused("privacy_terms", f"{task.noise} per {task.unit}, this device uses {ml.noise} per "
                                           f"{ml.privacy_unit}")
        kind = backend_class(ml.backend)
        entry = task.extractor_for(kind.format)
        if entry is None:
            raise Refused("format", f"no {kind.format} model released for backend {ml.backend}")
        def later(exc: BaseException, delay: float) -> None:
            log.info("%s: extractor not available from %s yet: %s", self.id, self.fog, exc)

        # from the fog: device traffic stays there; the fetch checks the content id
        model = await retry(lambda: fetch(self.session, self.fog, entry.cid, self.blobs), on_retry=later,
                            retry_on=(RemoteError, RequestTimeout, LedgerError))
        assert model is not None  # no deadline: fetched, or the task is cancelled
        privatiser = Privatiser(mechanism(task.noise, randbytes=ml.noise_source), epsilon=task.epsilon,
                                batch_size=task.batch_size, unit=task.unit, accountant=self._accountant())
        try:
            fx = FeatureExtractor.open(ml.backend, model, entry.release, privatiser, threads=ml.threads,
                                       chunk_rows=ml.chunk_rows)
        except ModelError as exc:  # ModelHashMismatch: not the model the cloud released
            METRICS.inc("fl_model_refused")
            raise Refused("model_hash", str(exc)) from None
        except BackendUnavailable as exc:
            raise Refused("backend", str(exc)) from None
        self._close_extractor()
        self._extractor = (task, fx)
        log.info("%s: task %s: %s model %s… verified, %s opened", self.id, task.task, entry.release.format,
                 entry.release.hash.hex()[:16], ml.backend)
        return fx

    def _accountant(self) -> PrivacyAccountant:
        """The persisted accountant; ``take_part`` records each spend itself, from the kept record."""
        ml = self.cfg.ml
        return PrivacyAccountant(ml.epsilon_budget, device=self.id, unit=ml.privacy_unit,
                                 path=self.cfg.path(ml.privacy_file))
