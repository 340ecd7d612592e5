"""The nodes' part in on-device training (``Task.train_at = "device"``, ``edgefl.fl.ondevice``).

``LocalTraining`` is the device's: once its fog acknowledged the round's batch, train the round's model
on it (every step recorded on the fog's chain, signed by the device), clip the update, sign a
``DeviceUpdate`` and offer it until the fog acknowledges it; the round state survives a restart (the
steps recorded, the offer's exact transaction).

``UpdateDesk`` is the fog's: check an offered update (``on_offer``: the device's own signed record for
the open round, trained on batches it sent here, its last step recorded, the model fetched from the
device and within the task's norm), record it, hand the updates to the aggregation, and after the
round audit each one (``edgefl.fl.ondevice.audit_update``, ``fl.audit_steps`` random steps replayed),
recording a failure as an ``fl.offence`` (``failed_audit``).
"""

from __future__ import annotations

import asyncio
import logging

from edgefl import codec
from edgefl.fl import Contribution, Offence, ProtocolError, Task, train_device
from edgefl.fl.ondevice import (
    audit_update,
    check_update,
    device_steps,
    device_update,
    peer_views,
    platform_id,
    training_input,
)
from edgefl.fl.protocol import DeviceUpdate, UpdateAck, UpdateOffer, decode_batch, run_id
from edgefl.fl.round import steps_per_round
from edgefl.ledger import LedgerError, Submit, Tracker, TrainingStep, decode_tx, record_tx
from edgefl.ledger.blobs import fetch
from edgefl.ml import DenseModel
from edgefl.runtime import METRICS, retry
from edgefl.transport import Error, RemoteError, RequestTimeout

log = logging.getLogger("edgefl.ondevice")
TRANSIENT = ("unknown_task", "internal", "not_found")  # the fog is not ready, or has not the model yet


class LocalTraining:
    """A device's on-device rounds (``node`` is its ``DeviceNode``)."""

    def __init__(self, node):
        self.node = node

    async def take_part(self, task: Task, round: int, entry: dict) -> None:
        """Train, record and offer this round's update (once); returns when acknowledged, refused or too late."""
        n = self.node
        async def offer() -> None:
            try:
                if "offer" not in entry:
                    made = await self._train(task, round, n.view.model.model, entry)
                    if made is None:  # nothing released this round: nothing to train
                        entry["offered"] = True
                        n.state.save(n.sent)
                        return
                    entry["offer"] = made
                    n.state.save(n.sent)
                ack = (await n.session.request(n.fog, UpdateOffer(entry["offer"]))).message
                if not isinstance(ack, UpdateAck) or (ack.task, ack.round) != (task.task, round):
                    raise RemoteError("unexpected", f"{type(ack).__name__} in answer to an update")
                METRICS.inc("fl_update_delivered")
            except RemoteError as exc:
                if exc.reason in TRANSIENT:
                    raise
                METRICS.inc("fl_update_refused", reason=exc.reason)  # not acceptable: give up the round
                log.warning("%s: round %d: %s refused the update: %s", n.id, round, n.fog, exc)
            entry["offered"] = True
            n.state.save(n.sent)

        def later(exc: BaseException, delay: float) -> None:
            if isinstance(exc, RemoteError):
                log.info("%s: %s is not ready for round %d's update (%s); retrying", n.id, n.fog, round, exc)
            else:
                log.info("%s: round %d's update: %s; retrying", n.id, round, exc)

        await retry(offer, retry_on=(RemoteError, RequestTimeout, ConnectionError, TimeoutError, LedgerError),
                    keep_going=lambda: not entry.get("offered") and n.view.is_open(task, round), on_retry=later)

    async def _train(self, task: Task, round: int, model: bytes, entry: dict) -> bytes | None:
        """The offer's transaction: the round's model trained on this device's releases, every step recorded."""
        n = self.node
        origin = await fetch(n.session, n.fog, model, n.blobs)  # the round's model, from the fog
        releases = [entry["batch"]]
        if task.average_releases:  # the earlier releases the fog acknowledged and this device still holds
            rounds = n.sent["rounds"]
            releases[:0] = [e["batch"] for r in range(round) if (e := rounds.get(str(r), {})).get("acked")
                            and "batch" in e and n.blobs.has(e["batch"])]
        x, y = training_input([decode_batch(n.blobs.get(c)) for c in releases], task.average_releases)
        if not len(y):
            return None
        key = n.session.signer.key
        tracker = Tracker(n.blobs, task=run_id(task.task, round), device=n.id, trainer_name=task.trainer,
                          config=task.config.to_bytes(), signer=n.id, key=key)
        steps = entry.setdefault("steps", {})  # step -> its output's id, once the fog's chain holds it

        async def submit(tx: bytes) -> None:
            await n.session.request(n.fog, Submit(tx))
            step = decode_tx(tx).body.unwrap()
            steps[str(step.step)] = step.model_out
            n.state.save(n.sent)

        state, total = await train_device(tracker, origin, x, y, task.config, task.epochs,
                                          {int(i): c for i, c in steps.items()}, submit)
        attack = n.attack if n.attack.kind == "update" else None
        peers = ()
        if attack is not None and attack.needs_peers:
            peers = await asyncio.to_thread(peer_views, DenseModel.from_bytes(origin), x, y, task.config,
                                            task.epochs, seed=round)
        update = await asyncio.to_thread(device_update, state, origin, task.clip_norm, attack=attack, peers=peers,
                                         seed=round)
        cid, state_cid = n.blobs.put(update), n.blobs.put(state)
        rec = DeviceUpdate(task=task.task, round=round, device=n.id, origin=model, releases=releases,
                           examples=len(y), steps=total, state=state_cid, model=cid, clip=task.clip_norm,
                           platform=platform_id())
        log.info("%s: round %d trained here: %d steps recorded on %s, update %s…", n.id, round, total, n.fog,
                 cid.hex()[:16])
        return record_tx(rec, n.id, key, refs=[cid, state_cid], device=n.id, model=cid)


class UpdateDesk:
    """A fog's side of on-device training (``fog`` is its ``FogNode``)."""

    def __init__(self, fog):
        self.fog = fog
        self._audits: set[asyncio.Task] = set()
        fog.session.serve(UpdateOffer, self.on_offer)

    def updates(self, round: int) -> dict[str, dict]:
        """device -> {"model", "examples", "tx"} of the updates recorded for ``round``."""
        return self.fog.doc.setdefault("updates", {}).setdefault(str(round), {})

    def contributions(self, updates: dict[str, dict]) -> list[Contribution]:
        blobs = self.fog.blobs
        return [Contribution(d, u["model"], u["examples"], DenseModel.from_bytes(blobs.get(u["model"])).params)
                for d, u in sorted(updates.items())]

    async def on_offer(self, env) -> UpdateAck | Error:
        fog, device = self.fog, env.sender
        try:
            u, tx = self._decode(device, env.message.tx)
            known = self.updates(u.round).get(device)
            if known is not None:
                METRICS.inc("fl_device_update_duplicate")
                return UpdateAck(u.task, u.round, known["model"], duplicate=True)
            await self._check(device, u)
            try:  # from the device, digest-checked
                data = await fetch(fog.session, device, u.model)
            except (RemoteError, RequestTimeout, LedgerError) as exc:
                raise ProtocolError("internal", f"cannot fetch the update from {device}: {exc}") from None
            check_update(u, data, DenseModel.from_bytes(fog.blobs.get(u.origin)))
            await asyncio.to_thread(fog.blobs.put, data)
            fog._check_open(u.round)  # again: the round may have closed meanwhile
            receipt = await fog.ledger.submit(tx)
            self.updates(u.round).setdefault(device, {"model": u.model, "examples": u.examples, "tx": receipt.txid})
            fog.state.save(fog.doc)
        except ProtocolError as exc:
            METRICS.inc("fl_device_update_rejected", reason=exc.reason)
            log.warning("%s: rejected the update of %s: %s", fog.id, device, exc)
            return Error(exc.reason, exc.detail)
        METRICS.inc("fl_device_update_accepted")
        log.info("%s: update of %s for round %d recorded (%d steps, %d examples)", fog.id, device, u.round,
                 u.steps, u.examples)
        fog.wake.set()
        return UpdateAck(u.task, u.round, u.model)

    def _decode(self, device: str, tx: bytes) -> tuple[DeviceUpdate, bytes]:
        task = self.fog.view.task
        if task is None:
            raise ProtocolError("unknown_task", f"{self.fog.id} has no task yet")
        try:
            rec = decode_tx(tx).body
            u = rec.unwrap()
        except (codec.CodecError, LedgerError, ValueError) as exc:
            raise ProtocolError("bad_update", f"not a record: {exc}") from None
        if not isinstance(u, DeviceUpdate) or rec.signer != device or u.device != device:
            raise ProtocolError("bad_update", f"not a DeviceUpdate {device} signed for itself")
        if u.task != task.task or task.train_at != "device":
            raise ProtocolError("unknown_task", f"an update for {u.task!r}; the task is {task.task!r}, trained "
                                                f"at the {task.train_at}")
        return u, tx

    async def _check(self, device: str, u: DeviceUpdate) -> None:
        """The offer fits the open round and names what this fog holds (cheap: the audit replays later)."""
        fog, task, model = self.fog, self.fog.view.task, self.fog.view.model
        fog._check_open(u.round)
        if fog.cfg.fl.devices and device not in fog.cfg.fl.devices:
            raise ProtocolError("unknown_device", f"{device} is not one of this fog's devices")
        if model is None or (model.round, model.model) != (u.round, u.origin) or not fog.blobs.has(u.origin):
            raise ProtocolError("late", f"round {u.round} from {u.origin.hex()[:16]}… is not the open round")
        if u.releases[-1] != fog._batches(u.round).get(device):
            raise ProtocolError("unknown_release", f"the update is not trained on {device}'s batch of round "
                                                   f"{u.round} here")
        earlier = {fog._batches(r).get(device) for r in range(u.round)}
        if (not task.average_releases and len(u.releases) > 1) or not set(u.releases[:-1]) <= earlier:
            raise ProtocolError("unknown_release", "the update names releases this fog does not hold from it")
        items = len(decode_batch(fog.blobs.get(u.releases[-1])).ids)
        steps = steps_per_round(items, task.batch_size, task.epochs)
        if (u.examples, u.steps, u.clip) != (items, steps, task.clip_norm):
            raise ProtocolError("bad_update", f"{u.examples} examples in {u.steps} steps clipped at {u.clip:g}; "
                                              f"the batch's {items} items make {steps} steps, the task clips at "
                                              f"{task.clip_norm:g}")
        if not await fog.ledger.call(self._last_step, device, u):
            raise ProtocolError("unrecorded_training", f"{device} recorded no step {u.steps} ending in the state "
                                                       f"{u.state.hex()[:16]}…")

    def _last_step(self, device: str, u: DeviceUpdate) -> bool:
        store = self.fog.ledger.chain.store
        for txid, _, _ in store.find(model=u.state, rtype=TrainingStep.TYPE, device=device, limit=8):
            rec = decode_tx(store.tx(txid)[2]).body
            step = rec.unwrap()
            if rec.signer == device and (step.task, step.step) == (run_id(u.task, u.round), u.steps):
                return True
        return False

    # ------------------------------------------------------------------ the audit, after the round

    def audit(self, task: Task, round: int, updates: dict[str, dict]) -> None:
        """Audit the round's updates in the background (the round does not wait for it)."""
        t = asyncio.get_running_loop().create_task(self._audit_all(task, round, dict(updates)))
        self._audits.add(t)
        t.add_done_callback(self._audits.discard)

    async def wait(self) -> None:
        """Until the audits started so far are done (tests, the demo)."""
        while self._audits:
            await asyncio.gather(*list(self._audits), return_exceptions=True)

    async def _audit_all(self, task: Task, round: int, updates: dict[str, dict]) -> None:
        for device, u in sorted(updates.items()):
            try:
                await self._audit_one(task, round, device, u["tx"])
            except Exception:  # an audit that cannot run must not take the fog down
                log.exception("%s: the audit of %s's round-%d update failed to run", self.fog.id, device, round)

    async def _audit_one(self, task: Task, round: int, device: str, txid: bytes) -> None:
        fog = self.fog

        def read():
            return decode_tx(fog.ledger.chain.store.tx(txid)[2]).body.unwrap(), \
                device_steps(fog.ledger.chain, device, run_id(task.task, round))

        record, steps = await fog.ledger.call(read)

        async def blob(cid: bytes) -> bytes:  # this fog's, else the device's (kept here: a later audit finds it)
            return fog.blobs.get(cid) if fog.blobs.has(cid) else await fetch(fog.session, device, cid, fog.blobs)

        report = await audit_update(record, steps, blob, task=task, samples=fog.cfg.fl.audit_steps)
        METRICS.inc("fl_update_audit", result="ok" if report.ok else "failed")
        if report.ok:
            log.info("%s: %s's round-%d update audited: ok", fog.id, device, round)
            return
        log.warning("%s: %s's round-%d update fails its audit: %s", fog.id, device, round, report.failed())
        offence = Offence(device, "failed_audit", task.task, round, txid, report.failed()[:256])
        await fog.ledger.submit(record_tx(offence, fog.id, fog.session.signer.key, device=device))
