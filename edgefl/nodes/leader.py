"""The round's aggregation at the cloud level by a drawn fog (``fl.leader = "drawn"``, ``edgefl.fl.leader``).

    cloud ──AggregateRequest(LeaderDraw, the round's model, the fogs' models)──▶ leader fog
          ◀─AggregateResult(its signed Aggregation record)──────────────────────
    cloud: the record names what was asked, its model (fetched from the leader) recomputes from the blobs
           (``check_aggregation``) → committed to the main chain; otherwise an ``fl.offence`` against the
           leader (``failed_audit``) and the cloud aggregates itself; no answer → the cloud aggregates.

``Leaders`` is the cloud's side (it draws and records the leader, asks it, checks it); ``Leading`` the
fog's (it checks the draw names it, fetches the inputs from the cloud, aggregates with the task's
``cloud_aggregator`` and signs the record; a byzantine fog, ``fl.attack``, poisons the result).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Annotated

from edgefl.codec import MaxLen, Message, message
from edgefl.fl import (
    Aggregation,
    AggregationError,
    Contribution,
    Offence,
    ProtocolError,
    Task,
    check_aggregation,
    fold_chain,
    poison_aggregate,
    record_aggregation,
)
from edgefl.fl.leader import LeaderDraw, check_leader, draw_leader, units
from edgefl.fl.protocol import MAX_PARTIES
from edgefl.ledger import LedgerError, cid_of, decode_tx, record_tx
from edgefl.ledger.blobs import fetch
from edgefl.ml import DenseModel
from edgefl.runtime import METRICS
from edgefl.transport import Error, RemoteError, RequestTimeout

log = logging.getLogger("edgefl.leader")
Cid = Annotated[bytes, MaxLen(32)]
Name = Annotated[str, MaxLen(128)]


@message("fl.aggregate-request", max_size=1 << 20)
class AggregateRequest(Message):
    """The cloud asks the drawn leader to aggregate the round's fog models (by content id, from the cloud)."""

    draw: LeaderDraw
    origin: Cid  # the round's model
    senders: Annotated[list[Name], MaxLen(MAX_PARTIES)]
    models: Annotated[list[Cid], MaxLen(MAX_PARTIES)]
    weights: Annotated[list[float], MaxLen(MAX_PARTIES)]
    reference: Cid | None = None  # FLTrust: the cloud's model trained on its root data


@message("fl.aggregate-result", max_size=(1 << 20) + 1024)
class AggregateResult(Message):
    """The leader's signed ``Aggregation`` record (not yet on any chain: the cloud checks, then commits it)."""

    tx: Annotated[bytes, MaxLen(1 << 20)]


def _keys(session):
    registry = session.verifier.registry
    return lambda member: registry.key_for(member, time.time()).raw


class Leading:
    """A fog's part: aggregate the fogs' models when the cloud's recorded draw names this fog."""

    def __init__(self, fog):
        self.fog = fog
        fog.session.serve(AggregateRequest, self.on_request)

    async def on_request(self, env) -> AggregateResult | Error:
        fog, req = self.fog, env.message
        task, d = fog.view.task, req.draw
        try:
            if env.sender != fog.cloud or task is None or (d.task, d.seed) != (task.task, task.leader_seed):
                raise ProtocolError("unknown_task", "not a draw of the cloud's current task")
            if d.leader != fog.id or not check_leader(d, _keys(fog.session)):
                raise ProtocolError("not_leader", f"the draw does not make {fog.id} the leader of round {d.round}")
            get = lambda cid: fetch(fog.session, fog.cloud, cid, fog.blobs)  # noqa: E731 - digest-checked
            base = DenseModel.from_bytes(await get(req.origin))
            contributions = [Contribution(s, c, w, DenseModel.from_bytes(await get(c)).params)
                             for s, c, w in zip(req.senders, req.models, req.weights)]
            reference = None
            if req.reference is not None:
                reference = Contribution(fog.cloud, req.reference, 1.0,
                                         DenseModel.from_bytes(await get(req.reference)).params)
            model, agg = await asyncio.to_thread(record_aggregation, task.cloud_aggregator, base, contributions,
                                                 fog.blobs, task=task.task, round=d.round, reference=reference)
        except (ProtocolError, AggregationError, RemoteError, RequestTimeout, LedgerError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or "internal"
            METRICS.inc("fl_lead_refused", reason=reason)
            log.warning("%s: will not aggregate round %d for %s: %s", fog.id, d.round, env.sender, exc)
            return Error(reason, str(exc))
        if fog.attack.kind == "update":  # a byzantine leader: another model than its record says
            params = poison_aggregate(fog.attack, model.params, [c.params for c in contributions],
                                      origin=base.params, seed=d.round)
            agg = dataclasses.replace(agg, model=fog.blobs.put(model.with_params(params).to_bytes()))
        log.info("%s: aggregated round %d of the fogs (%s), as drawn", fog.id, d.round, agg.aggregator)
        return AggregateResult(record_tx(agg, fog.id, fog.session.signer.key, refs=agg.refs, model=agg.model))


class Leaders:
    """The cloud's part: draw and record each round's leader, have it aggregate, check what it sends."""

    def __init__(self, cloud):
        self.cloud = cloud

    async def aggregate(self, task: Task, round: int, base: DenseModel, contributions: list[Contribution],
                        reference: Contribution | None) -> tuple[DenseModel, Aggregation, bytes]:
        """(the round's model, its Aggregation, the record's transaction): the leader's if it checks out."""
        c = self.cloud
        draw = await self._draw(task, round, contributions)
        if draw is not None:
            try:
                return await self._ask(task, round, base, contributions, reference, draw)
            except (RemoteError, RequestTimeout, ConnectionError) as exc:
                METRICS.inc("fl_leader_failed", reason="no_answer")
                log.warning("%s: round %d: the drawn leader %s did not aggregate (%s); aggregating here", c.id,
                            round, draw.leader, exc)
            except ProtocolError as exc:
                METRICS.inc("fl_leader_failed", reason=exc.reason)
                log.warning("%s: round %d: %s's aggregation refused: %s; aggregating here", c.id, round,
                            draw.leader, exc)
        model, agg = record_aggregation(task.cloud_aggregator, base, contributions, c.blobs, task=task.task,
                                        round=round, reference=reference)
        return model, agg, record_tx(agg, c.id, c.session.signer.key, refs=agg.refs, model=agg.model)

    async def _draw(self, task: Task, round: int, contributions: list[Contribution]) -> LeaderDraw | None:
        """The round's recorded draw (after a restart), or a new one among the fogs whose update came, recorded."""
        c = self.cloud

        def find():
            for _, rec in c.ledger.chain.records(LeaderDraw.TYPE, limit=64):
                d = rec.unwrap()
                if (d.task, d.round) == (task.task, round) and rec.signer == c.id:
                    return d, {}
            standing = fold_chain(c.ledger.chain)
            return None, {f: (u.draw, units(standing.of(f))) for f, u in c._updates(task, round).items()
                          if u.draw is not None and f in {x.sender for x in contributions}}

        draw, claims = await c.ledger.call(find)
        if draw is not None:
            return draw
        draw, bad = draw_leader(task.task, task.leader_seed, round, claims, _keys(c.session))
        if bad:
            log.warning("%s: round %d: the draws of %s do not verify: not candidates", c.id, round, ", ".join(bad))
        if draw is None:
            log.warning("%s: round %d: no fog's draw verifies; aggregating here", c.id, round)
            return None
        receipt = await c.ledger.submit(record_tx(draw, c.id, c.session.signer.key))
        log.info("%s: round %d: %s drawn to aggregate among %s (main block %d)", c.id, round, draw.leader,
                 ", ".join(draw.candidates), receipt.height)
        return draw

    async def _ask(self, task, round, base, contributions, reference, draw) -> tuple[DenseModel, Aggregation, bytes]:
        c = self.cloud
        origin = c.blobs.put(base.to_bytes())
        req = AggregateRequest(draw=draw, origin=origin, senders=[x.sender for x in contributions],
                               models=[x.cid for x in contributions], weights=[float(x.weight) for x in contributions],
                               reference=reference.cid if reference else None)
        timeout = max(30.0, c.cfg.mqtt.request_timeout_s)
        tx = (await c.session.request(draw.leader, req, timeout=timeout)).message.tx
        try:
            rec = decode_tx(tx).body
            agg = rec.unwrap()
        except (LedgerError, ValueError) as exc:
            raise ProtocolError("bad_aggregate", f"not a record: {exc}") from None
        if rec.signer != draw.leader:
            raise ProtocolError("bad_aggregate", f"the record is signed by {rec.signer}, not by {draw.leader}")
        spec = task.cloud_aggregator
        asked = (task.task, round, spec.name, list(spec.options), req.senders, req.models, req.weights, origin,
                 req.reference)
        if not isinstance(agg, Aggregation) or asked != (
                agg.task, agg.round, agg.aggregator, list(agg.options), list(agg.senders), list(agg.models),
                list(agg.weights), agg.origin, agg.reference):
            ok, why = False, "the record is not the aggregation asked for"
        else:
            try:
                await fetch(c.session, draw.leader, agg.model, c.blobs)
                ok = await asyncio.to_thread(check_aggregation, agg, c.blobs.get)
            except (RemoteError, RequestTimeout, LedgerError, ValueError) as exc:
                ok, why = False, str(exc)
            else:
                why = "its model does not recompute from the recorded inputs"
        if not ok:  # the leader's signed word is the evidence
            offence = Offence(draw.leader, "failed_audit", task.task, round, cid_of(tx), why[:256])
            await c.ledger.submit(record_tx(offence, c.id, c.session.signer.key, device=draw.leader))
            raise ProtocolError("failed_audit", why)
        METRICS.inc("fl_leader_aggregated")
        return DenseModel.from_bytes(c.blobs.get(agg.model)), agg, tx
