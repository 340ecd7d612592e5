"""Record messages from synchronous code: how other parts put their records on a chain.

``edgefl.ml.privacy.PrivacyAccountant`` hands every release to a recorder as a
``PrivacySpend`` before any data leaves the device, and charges nothing if the
recorder raises.  A ``Recorder`` is such a callable for any @message: it signs
the message as a Type-I record and returns only once a durable block holds it
(raising, with the chain's reason, if the chain refused it or did not answer).

    acct = PrivacyAccountant(budget, device="dev-1", recorder=Recorder(via_session(session, "fog-1", loop),
                                                                         "dev-1", key))
    await asyncio.to_thread(acct.charge, items, eps, ...)      # the accountant blocks; the loop keeps running
"""

from __future__ import annotations

import asyncio
from typing import Callable

from edgefl.codec import Message
from edgefl.crypto import SigningKey
from edgefl.ledger.protocol import Receipt, Submit
from edgefl.ledger.tx import record_tx
from edgefl.runtime import METRICS

Submitter = Callable[[bytes], Receipt]


class Recorder:
    def __init__(self, submit: Submitter, signer: str, key: SigningKey):
        self.submit = submit
        self.signer = signer
        self.key = key

    def __call__(self, msg: Message) -> Receipt:
        """Sign ``msg`` as a record (indexed by its ``device`` field, if it has one) and wait until it is durable."""
        with METRICS.timed("ledger_record_wait"):  # how long the caller's thread waits for the chain
            return self.submit(record_tx(msg, self.signer, self.key, device=getattr(msg, "device", None)))


def via_session(session, node: str, loop: asyncio.AbstractEventLoop, *, timeout: float = 30.0) -> Submitter:
    """Submit to ``node``'s chain through ``session`` (running on ``loop``), from another thread."""

    def submit(raw: bytes) -> Receipt:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("a Recorder blocks: call it from a worker thread (asyncio.to_thread), not the loop")
        future = asyncio.run_coroutine_threadsafe(session.request(node, Submit(raw), timeout=timeout), loop)
        return future.result(timeout + 5).message

    return submit


def via_chain(chain, sealer) -> Submitter:
    """Submit to a chain held in this process and seal a block at once (single-node set-ups, tests)."""

    def submit(raw: bytes) -> Receipt:
        info = chain.submit(raw)
        block = chain.mine(sealer)
        return Receipt(chain.id, info.id, block.header.height, block.hash)

    return submit
