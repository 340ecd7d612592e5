"""A seeded, simulated network for the PBFT core: delays, drops, reordering, replays, byzantine members.

Everything runs in simulated time from one ``random.Random(seed)``, so a
schedule that breaks an invariant is replayed exactly from its seed.  Every
message is encoded to canonical CBOR and decoded again on delivery, as over
MQTT (the envelope around it is the session's business and not simulated).

Blocks are a toy chain, canonical CBOR ``[height, prev, [requests...]]``;
"validation" checks the link and refuses blocks holding a ``b"bad"`` request.
Byzantine behaviours (``Sim(byzantine={id: kind})``):

* ``silent``      sends nothing (a crash, from ``crash_at`` on when given)
* ``equivocate``  as leader proposes two different blocks per height to random
                  subsets of the members
* ``bad_sig``     every signature it sends is corrupted
* ``replay``      re-sends old messages (its own and others') at random later times
* ``eager``       votes commit for whatever it is proposed, without a prepare certificate,
                  and prepares random hashes
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from dataclasses import dataclass, field

from edgefl import codec
from edgefl.consensus import pbft
from edgefl.consensus.pbft import (
    App,
    Blocks,
    Commit,
    Evidence,
    PrePrepare,
    Propose,
    Replica,
    Send,
    Serve,
    Validate,
    Vote,
)
from edgefl.consensus.votelog import VoteLog
from edgefl.crypto import SigningKey
from edgefl.ledger import Committee
from edgefl.runtime import Metrics

LIMITS = codec.Limits(max_size=64 << 20, max_depth=16, max_items=1 << 16)


def corrupt(msg):
    """``msg`` with its statement's signature (or the pre-prepare's inside a proposal) broken."""
    if isinstance(getattr(msg, "sig", None), bytes) and msg.sig:
        return dataclasses.replace(msg, sig=bytes(b ^ 1 for b in msg.sig))
    if isinstance(msg, Propose):
        return dataclasses.replace(msg, pre=corrupt(msg.pre))
    if isinstance(msg, pbft.Cert):
        return dataclasses.replace(msg, sigs=[dataclasses.replace(s, sig=bytes(b ^ 1 for b in s.sig))
                                              for s in msg.sigs])
    return msg


class ToyApp(App):
    def block_hash(self, raw: bytes) -> bytes:
        return hashlib.sha256(b"toy/" + raw).digest()

    def prev_hash(self, raw: bytes) -> bytes:
        return codec.decode(raw)[1]


def toy_block(height: int, prev: bytes, requests: list[bytes]) -> bytes:
    return codec.encode([height, prev, list(requests)])


@dataclass
class Node:
    id: str
    replica: Replica
    behaviour: str | None = None
    crash_at: float | None = None
    committed: list[tuple[bytes, list]] = field(default_factory=list)  # (hash, seal) per height from 0
    blocks: list[bytes] = field(default_factory=list)
    evidence: list = field(default_factory=list)
    proposed: set = field(default_factory=set)  # requests this node has put in a block it proposed
    proposed_in: int = 0  # ... in this view: a later view drops what did not commit, so it proposes them again

    @property
    def honest(self) -> bool:
        return self.behaviour is None


class Sim:
    def __init__(self, n: int = 4, *, seed: int = 0, byzantine: dict[str, str] | None = None,
                 crash_at: dict[str, float] | None = None, delay=(0.001, 0.010), drop: float = 0.0,
                 duplicate: float = 0.0, view_timeout: float = 0.2, window: int = 4, checkpoint_every: int = 4,
                 batch: int = 4, tick: float = 0.01, votelogs: dict[str, VoteLog] | None = None):
        self.rng = random.Random(seed)
        self.ids = [f"r{i:02}" for i in range(n)]
        keys = {i: SigningKey(hashlib.sha256(f"sim/{seed}/{i}".encode()).digest()) for i in self.ids}
        self.keys = keys
        self.committee = Committee.bft([(i, k.public_key) for i, k in keys.items()])
        self.app = ToyApp()
        self.genesis = self.app.block_hash(toy_block(0, bytes(32), []))
        self.metrics = Metrics()
        self.votelogs = votelogs or {}
        self.params = dict(window=window, checkpoint_every=checkpoint_every, view_timeout=view_timeout,
                           metrics=self.metrics)
        self.nodes = {i: Node(i, self._replica(i, 0, self.genesis, []), (byzantine or {}).get(i),
                              (crash_at or {}).get(i))
                      for i in self.ids}
        for node in self.nodes.values():
            node.committed.append((self.genesis, []))
            node.blocks.append(toy_block(0, bytes(32), []))
        self.delay, self.drop, self.duplicate, self.batch, self.tick = delay, drop, duplicate, batch, tick
        self.now = 0.0
        self.queue: list = []
        self.seq = 0
        self.pending: dict[bytes, float] = {}  # requests submitted, not yet committed by every honest node
        self.history: list[tuple[str, bytes]] = []  # what byzantine replayers can re-send
        self.delivered = 0
        self.commit_times: list[float] = []
        for i in self.ids:
            self._at(self.rng.random() * tick, ("tick", i))

    def _replica(self, i: str, height: int, tip: bytes, sigs: list) -> Replica:
        return Replica(i, self.keys[i], self.committee, "sim", self.app, height=height, tip_hash=tip, tip_sigs=sigs,
                       votelog=self.votelogs.get(i), now=getattr(self, "now", 0.0), **self.params)

    def restart(self, i: str, votelog: VoteLog) -> None:
        """``i`` lost everything but its chain and its vote log (a kill -9): a new replica from those."""
        node = self.nodes[i]
        self.votelogs[i] = votelog
        hash_, sigs = node.committed[-1]
        node.replica = self._replica(i, len(node.committed) - 1, hash_, sigs)
        node.proposed = set()

    # ------------------------------------------------------------------ scheduling

    def _at(self, t: float, event) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, event))

    def call(self, at: float, fn) -> None:
        self._at(at, ("call", fn))

    def submit(self, request: bytes, at: float | None = None) -> None:
        self._at(self.now if at is None else at, ("request", request))

    def run(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            t, _, event = heapq.heappop(self.queue)
            self.now = t
            kind = event[0]
            if kind == "call":
                event[1]()
            if kind == "request":
                self.pending.setdefault(event[1], t)
            elif kind == "tick":
                self._tick(event[1])
                self._at(t + self.tick, event)
            elif kind == "msg":
                _, src, dst, wire = event
                self._deliver(src, dst, wire)
        self.now = until

    def _alive(self, node: Node) -> bool:
        if node.behaviour == "silent" and node.crash_at is None:
            return False
        return node.crash_at is None or self.now < node.crash_at

    def _tick(self, i: str) -> None:
        node = self.nodes[i]
        if not self._alive(node):
            return
        r = node.replica
        r.timeout(self.now)
        done = {req for raw in node.blocks for req in codec.decode(raw)[2]}
        waiting = [q for q in self.pending if q not in done]
        if waiting:
            r.pending(self.now)
        if r.view != node.proposed_in:
            node.proposed, node.proposed_in = set(), r.view
        while r.can_propose():
            todo = [q for q in waiting if q not in node.proposed][:self.batch]
            if not todo:
                break
            height, prev = r.tip_for_proposal
            if node.behaviour == "equivocate":
                self._equivocate(node, height, prev, todo)
                break
            node.proposed.update(todo)
            r.propose(toy_block(height, prev, todo))
        self._drain(node)

    # ------------------------------------------------------------------ delivery

    def _send(self, src: str, dst: str, msg) -> None:
        wire = codec.encode([msg.TYPE, msg.VERSION, codec.message_to_wire(msg)])
        self.history.append((dst, wire))
        if self.rng.random() < self.drop:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            self._at(self.now + self.rng.uniform(*self.delay), ("msg", src, dst, wire))

    def _deliver(self, src: str, dst: str, wire: bytes) -> None:
        node = self.nodes[dst]
        if not self._alive(node):
            return
        t, v, body = codec.decode(wire, LIMITS)
        msg = codec.lookup(t, v).from_wire(body)
        self.delivered += 1
        if node.behaviour == "eager":
            self._eager(node, msg)
        node.replica.receive(src, msg)
        self._drain(node)
        if node.behaviour == "replay" and self.history and self.rng.random() < 0.3:
            target, old = self.rng.choice(self.history)
            self._at(self.now + self.rng.uniform(*self.delay) * 5, ("msg", dst, target, old))

    def _drain(self, node: Node) -> None:
        for action in node.replica.take():
            if isinstance(action, Send):
                if not self._alive(node) or node.behaviour == "silent":
                    continue
                msg = self._corrupt(action.msg) if node.behaviour == "bad_sig" else action.msg
                for dst in ([action.to] if action.to else [i for i in self.ids if i != node.id]):
                    self._send(node.id, dst, msg)
            elif isinstance(action, Validate):
                block = codec.decode(action.block)
                ok = block[0] == action.height and block[1] == action.prev and b"bad" not in block[2]
                node.replica.validated(action.view, action.height, action.hash, ok)
            elif isinstance(action, Commit):
                assert action.height == len(node.committed), (node.id, action.height, len(node.committed))
                node.committed.append((action.hash, action.sigs))
                node.blocks.append(action.block)
                self.commit_times.append(self.now)
            elif isinstance(action, Serve):
                start = action.height
                blocks = node.blocks[start:start + 16]
                seals = [s for _, s in node.committed[start:start + 16]]
                node.replica.out.append(Send(action.to, Blocks(start, blocks, seals)))
            elif isinstance(action, Evidence):
                node.evidence.append(action.record)
        if node.replica.out:
            self._drain(node)

    # ------------------------------------------------------------------ byzantine behaviours

    def _corrupt(self, msg):
        return corrupt(msg)

    def _equivocate(self, node: Node, height: int, prev: bytes, todo: list[bytes]) -> None:
        r = node.replica
        for variant in (todo, todo[::-1] + [b"x%d" % height]):
            raw = toy_block(height, prev, variant)
            pre = PrePrepare("sim", r.view, height, self.app.block_hash(raw), node.id)
            pre = dataclasses.replace(pre, sig=node.replica.key.sign(pre.digest()))
            for dst in self.ids:
                if dst != node.id and self.rng.random() < 0.6:
                    self._send(node.id, dst, Propose(pre, raw))
        r.next_height += 1  # it never goes back to a height it proposed at
        r.last_proposed = self.app.block_hash(toy_block(height, prev, todo))

    def _eager(self, node: Node, msg) -> None:
        if isinstance(msg, Propose):
            leader = msg.pre.signer
            for phase, h in (("commit", msg.pre.hash), ("prepare", self.rng.randbytes(32))):
                v = Vote("sim", phase, msg.pre.view, msg.pre.height, h, node.id)
                v = dataclasses.replace(v, sig=node.replica.key.sign(v.digest()))
                self._send(node.id, leader, v)

    # ------------------------------------------------------------------ invariants

    def honest(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.honest and n.crash_at is None]

    def check_safety(self) -> int:
        """No two honest replicas committed different blocks at one height; every seal a valid quorum."""
        nodes = [n for n in self.nodes.values() if n.honest]
        top = max(len(n.committed) for n in nodes)
        for h in range(1, top):
            hashes = {n.committed[h][0] for n in nodes if len(n.committed) > h}
            assert len(hashes) == 1, f"fork at height {h}: {hashes}"
            for n in nodes:
                if len(n.committed) > h:
                    self.committee.verify_quorum(n.committed[h][0], n.committed[h][1], field="seal")
        return top - 1


__all__ = ["Sim", "ToyApp", "toy_block", "pbft"]
