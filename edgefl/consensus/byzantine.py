"""Byzantine committee members over the real network, for tests and benchmarks (never configured in a deployment).

A ``ByzantineProducer`` runs the honest shell and corrupts what leaves it:

* ``silent``      publishes nothing (a crashed or partitioned member)
* ``bad_sig``     every statement's signature (and every certificate's) broken
* ``replay``      publishes each message, and now and then one of its earlier ones again (stale views and heights,
                  in fresh envelopes: the protocol, not the envelope's replay window, must shrug them off)
* ``equivocate``  as leader proposes two different blocks for one height, each to half of the members (and both
                  to one, who can prove it)
"""

from __future__ import annotations

import dataclasses
import random

from edgefl.consensus.pbft import PrePrepare, Propose, Send
from edgefl.consensus.proposal import claimer
from edgefl.consensus.shell import PbftProducer
from edgefl.consensus.simnet import corrupt

BEHAVIOURS = ("silent", "bad_sig", "replay", "equivocate")


class ByzantineProducer(PbftProducer):
    def __init__(self, node, key, behaviour: str, *, seed: int = 0, **kw):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r} (known: {', '.join(BEHAVIOURS)})")
        super().__init__(node, key, **kw)
        self.behaviour = behaviour
        self.rng = random.Random(seed)
        self.sent: list[Send] = []

    async def _publish(self, a: Send) -> None:
        if self.behaviour == "silent":
            return
        if self.behaviour == "bad_sig":
            a = Send(a.to, corrupt(a.msg))
        await super()._publish(a)
        if self.behaviour == "replay":
            if self.sent and self.rng.random() < 0.5:
                await super()._publish(self.rng.choice(self.sent))
            self.sent = (self.sent + [a])[-256:]

    async def _propose(self, block) -> None:
        if self.behaviour != "equivocate":
            return await super()._propose(block)
        r, chain = self.replica, self.node.chain
        claim = claimer(chain.current, chain.tip, self.me, self.key, view=r.view)
        other = await self.node.call(lambda: chain.propose(self.me, ts_ms=block.header.ts + 1, claim=claim))
        peers = [m for m in r.ids if m != self.me]
        for i, b in enumerate((block, other)):
            pre = PrePrepare(chain.id, r.view, block.header.height, b.hash, self.me)
            pre = dataclasses.replace(pre, sig=self.key.sign(pre.digest()))  # no vote log: that is the point
            for m in peers[i::2] + ([peers[1 - i]] if len(peers) > 1 else []):
                await super()._publish(Send(m, Propose(pre, b.raw)))
        r.next_height += 1  # it never proposes at that height again
