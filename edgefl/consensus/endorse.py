"""A sub-chain committee's quorum on its Type-II anchors.

The main chain's genesis registers each sub-chain's committee, and a Type-II
counts only with a quorum of its signatures: the fog alone cannot anchor a
history its devices did not commit. The fog builds the anchor body and asks
every other member to endorse it (``AnchorEndorse``); a member signs only the
body it builds itself from its own replica — the same digests and the same
head header — so a quorum of endorsements says that many replicas hold the
anchored blocks.

    AnchorEndorse(anchor)  →  Endorsement(sig)  or  Error("behind" | "mismatch")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from edgefl import codec
from edgefl.codec import Message, message
from edgefl.ledger import LedgerError, Sig
from edgefl.ledger.tx import Anchor, signing_digest
from edgefl.transport import Error, RemoteError, RequestTimeout

log = logging.getLogger("edgefl.endorse")


@message("consensus.anchor-endorse")
class AnchorEndorse(Message):
    anchor: Anchor


@message("consensus.endorsement")
class Endorsement(Message):
    sig: Sig


def digest(body: Anchor) -> bytes:
    return signing_digest("anchor", codec.encode_message(body))


def own_body(chain, asked: Anchor) -> Anchor:
    """The anchor body this replica builds for the same span, or LedgerError (behind, or a different history)."""
    head = asked.prev_height + len(asked.digests)
    if chain.id != asked.chain:
        raise LedgerError(f"this replica keeps {chain.id}, not {asked.chain}", field="anchor.chain", reason="mismatch")
    if chain.tip.height < head:
        raise LedgerError(f"this replica is at height {chain.tip.height}, behind {head}", field="anchor",
                          reason="behind")
    headers = chain.store.headers(asked.prev_height, head) if asked.digests else []
    from edgefl.ledger.block import decode_header

    ours = Anchor(chain.id, asked.prev_height, [decode_header(h).content() for h in headers],
                  headers[-1] if headers else b"")
    if ours != asked:
        raise LedgerError("the anchor does not match this replica's blocks", field="anchor", reason="mismatch")
    return ours


def serve(node) -> None:
    """Answer the fog's endorsement requests for ``node``'s chain (every committee member but the fog)."""
    member, key = node.session.signer.node_id, node.session.signer.key

    async def handle(env):
        if node.stopped:  # the node's session outlives its ledger by a moment on the way down
            return Error("stopped", f"{member}'s replica of {node.chain.id} has stopped")
        if env.sender not in node.chain.spec.committee.ids:
            return Error("forbidden", f"{env.sender} is not a member of {node.chain.id}'s committee")
        try:
            body = await node.call(own_body, node.chain, env.message.anchor)
        except LedgerError as exc:
            node.metrics.inc("anchor_endorse_refused", reason=exc.reason)
            return Error(exc.reason, str(exc)[:500])
        node.metrics.inc("anchor_endorsed")
        return Endorsement(Sig(member, key.sign(digest(body))))

    node.session.serve(AnchorEndorse, handle)


async def collect(node, body: Anchor, *, timeout: float = 10.0) -> list[Sig]:
    """Our signature and enough members' endorsements for the chain's registered quorum (sorted by signer).

    Asks every member at once and returns as soon as the quorum is there; raises LedgerError without one."""
    committee = node.chain.spec.committee
    d = digest(body)
    me, key = node.session.signer.node_id, node.session.signer.key
    sigs = {me: Sig(me, key.sign(d))}
    others = [m for m in committee.ids if m != me]
    need = committee.threshold

    async def ask(member: str) -> Sig | None:
        try:
            env = await node.session.request(member, AnchorEndorse(body), timeout=timeout)
        except (RemoteError, RequestTimeout, ConnectionError) as exc:
            log.debug("%s: %s did not endorse the anchor to %d: %s", node.chain.id, member,
                      body.prev_height + len(body.digests), exc)
            return None
        sig = env.message.sig if isinstance(env.message, Endorsement) else None
        key_of = committee.key_of(member)
        if sig is None or sig.signer != member or key_of is None or not key_of.verify(sig.sig, d):
            node.metrics.inc("anchor_endorsement_rejected")
            return None
        return sig

    pending = {asyncio.create_task(ask(m)) for m in others}
    try:
        while pending and len(sigs) < need:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if (sig := t.result()) is not None:
                    sigs[sig.signer] = sig
    finally:
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    if len(sigs) < need:
        raise LedgerError(f"{len(sigs)} of {len(committee.ids)} members endorsed the anchor, quorum is {need}",
                          field="anchor.sigs", reason="no_quorum")
    return sorted(sigs.values(), key=lambda s: s.signer)
