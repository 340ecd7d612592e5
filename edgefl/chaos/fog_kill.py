"""fog-kill: kill -9 of a fog while its ledger writes, at seeded random points, again and again.

The fog (`edgefl run`, its ledger service and its FL service) takes signed records from a device over its
mTLS broker as fast as eight concurrent submitters send them, seals a block every 50 ms and anchors its
chain on the main chain (the cloud: `edgefl ledger serve`).  A submitter holds a record acknowledged
when its ``Receipt`` arrives (the fog answers once the block is durable); one that got no answer sends
the very same bytes again later, as a device does.  The fog is killed with SIGKILL at a seeded moment
(mostly after it served its first receipt, sometimes while it starts), and after every kill, with the
fog down, its chain file must hold every acknowledged record in the block its receipt named, validate
from where the last check stopped, and agree with every Type-II anchor the main chain holds of it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from edgefl.chaos import checks
from edgefl.chaos.deploy import Deployment
from edgefl.chaos.scenario import Scenario
from edgefl.ledger import LedgerError, Note, Receipt, Submit, Tip, decode_tx, record_tx, validate_block
from edgefl.ledger.service import registry_for
from edgefl.ledger.tx import State
from edgefl.runtime import run
from edgefl.transport import RemoteError, RequestTimeout, Session

SUBMITTERS = 8


class Follower:
    """Validates a chain file block by block as it grows: each look validates only what is new."""

    def __init__(self, registry):
        self.registry = registry
        self.tip, self.state, self.ids = Tip.genesis(), State(), set()

    def follow(self, store) -> int:
        for raw in store.blocks(self.tip.height + 1):
            block, self.state = validate_block(raw, self.tip, self.state, self.registry, seen=self.ids.__contains__)
            self.ids.update(t.id for t in block.txs)
            self.tip = block.tip
        return self.tip.height


class FogKill(Scenario):
    name = "fog-kill"
    summary = ("kill -9 of a fog during ledger writes at seeded random points; every acknowledged block "
               "survives, the chain verifies, the main chain's anchors of it hold")

    def run(self) -> None:
        kills = 4 if self.short else 60
        self._lost: set[bytes] = set()
        with Deployment(self.workdir, {"fog-1": ["dev-1"]}) as dep:
            dep.start_brokers()
            dep.start(dep.cloud, "ledger", "serve")
            run(self._drive(dep, kills))

    async def _drive(self, dep: Deployment, kills: int) -> None:
        cfg = dep.config("dev-1")
        signer = cfg.node.id
        acked: dict[bytes, Receipt] = {}
        unanswered: list[bytes] = []  # sent, no receipt: sent again, byte for byte
        counts = {"sent": 0, "resent": 0, "answered_again": 0}
        follower = Follower(registry_for(dep.config("fog-1")))
        tally = self.result.tally
        lost_at: list[str] = []
        stop = asyncio.Event()
        rng = random.Random(f"{self.seed}/records")  # the submitters' own: the kill points depend on the seed alone

        async def submitter(session: Session) -> None:
            while not stop.is_set():
                resend = bool(unanswered) and rng.random() < 0.5
                if resend:
                    raw = unanswered.pop(0)
                    counts["resent"] += 1
                else:
                    data = os.urandom(rng.choice([16, 256, 4096, 16 << 10]))
                    raw = record_tx(Note("chaos", data), signer, session.signer.key, device=signer,
                                    ts_ms=time.time_ns() // 1_000_000)
                    counts["sent"] += 1
                txid = decode_tx(raw).id
                try:
                    receipt = (await session.request("fog-1", Submit(raw), timeout=2.0)).message
                except (RequestTimeout, RemoteError, ConnectionError):
                    unanswered.append(raw)
                    await asyncio.sleep(0.05)
                    continue
                counts["answered_again"] += resend
                first = acked.setdefault(txid, receipt)
                if (first.height, first.block) != (receipt.height, receipt.block):  # recorded twice
                    tally.duplicates += 1
                    tally.check(f"tx {txid.hex()[:12]} acknowledged once", False,
                                f"in blocks {first.height} and {receipt.height}")

        session = Session.from_config(cfg)
        async with session:
            await session.wait_connected(30)
            workers = [asyncio.create_task(submitter(session)) for _ in range(SUBMITTERS)]
            try:
                for k in range(kills):
                    before = len(acked)
                    dep.start("fog-1")
                    if self.rng.random() < 0.8:  # mostly once it serves; otherwise anywhere, even while it starts
                        await self._until(dep, lambda: len(acked) > before, 60, "the fog's first receipt")
                    await asyncio.sleep(self.rng.uniform(0.0, 1.0))
                    dep.kill("fog-1")
                    self.result.faults += 1
                    bad = self._check(dep, acked, follower)
                    if bad:
                        lost_at.append(f"kill {k + 1}: {bad}")
                    if k % 10 == 9 or k == kills - 1:
                        self.say(f"  {k + 1} kills: {len(acked)} records acknowledged, chain height "
                                 f"{follower.tip.height}, all there" if not lost_at else f"  {lost_at[-1]}")
            finally:
                stop.set()
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        tally.check("every acknowledged record in the block its receipt named, after every kill", not lost_at,
                    "; ".join(lost_at[:3]) or f"{len(acked)} records, {len({r.height for r in acked.values()})} "
                                               f"acknowledged blocks")
        checks.interlock(dep, tally)
        checks.verify_all(dep, tally)
        self.result.figures.update({"acknowledged records": len(acked),
                                    "acknowledged blocks": len({r.height for r in acked.values()}),
                                    "resent": counts["resent"], "answered as the first time": counts["answered_again"],
                                    "chain height": follower.tip.height})

    async def _until(self, dep: Deployment, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            dep.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            await asyncio.sleep(0.02)

    def _check(self, dep: Deployment, acked: dict[bytes, Receipt], follower: Follower) -> str:
        """With the fog down: what of the acknowledged is missing or moved, and whether the chain validates."""
        store = dep.store("fog-1")
        try:
            follower.follow(store)
        except LedgerError as exc:
            self.result.tally.check("the chain validates after a kill", False, str(exc))
            return f"does not validate: {exc}"
        missing = {txid for txid, r in acked.items()
                   if (found := store.tx(txid)) is None or found[0] != r.height
                   or (row := store.block_row(r.height)) is None or row[0] != r.block}
        self._lost |= missing
        self.result.tally.lost = len(self._lost)
        anchors = checks.interlock(dep)
        if not anchors.ok:
            return "; ".join(c.detail for c in anchors.checks if not c.ok)
        return f"{len(missing)} acknowledged records missing" if missing else ""
