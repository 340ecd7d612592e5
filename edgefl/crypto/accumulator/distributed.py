"""Distributed generation of an RSA modulus: k ≥ 3 peers make N = p·q and nobody learns p or q.

For a site that wants a modulus of its own instead of RSA-2048.  This is
Boneh–Franklin ("Efficient generation of shared RSA keys") in the
honest-but-curious model: every peer follows the protocol and keeps what it
sees; no coalition of fewer than half the peers learns anything about p or q
beyond N.  Peers that deviate from the protocol are outside this model (a
cheating peer can make the run fail or, by lying about its shares, bias N).

One round, for a batch of candidates at once:

1. Each peer i draws additive shares p_i, q_i (peer 1: ≡ 3 mod 4 plus the two
   top bits of the target size; the others: ≡ 0 mod 4), so p = Σ p_i and
   q = Σ q_i are ≡ 3 mod 4 and N has exactly ``bits`` bits.
2. BGW multiplication over Z_P, P a prime above 2^bits proposed by the first
   peer: peer i picks f_i, g_i of degree ℓ = ⌊(k−1)/2⌋ with f_i(0) = p_i,
   g_i(0) = q_i and h_i of degree 2ℓ with h_i(0) = 0, and sends
   (f_i(j), g_i(j), h_i(j)) privately to peer j (encrypted: ECDH between
   the two peers' secp256k1 keys, SHAKE-256 keystream, unique per session,
   round, stage and direction; integrity from the envelope signature).
3. Peer j broadcasts N_j = (Σ_i f_i(j))(Σ_i g_i(j)) + Σ_i h_i(j) mod P.
   Interpolating the N_j at 0 gives N = (Σ p_i)(Σ q_i).  The h_i make the
   N_j reveal nothing but N.
4. Public trial division of each N by the odd primes below ``sieve``.
5. Boneh–Franklin biprimality test on the survivors: for public bases g
   with Jacobi symbol (g/N) = +1 (hashed from the session and N), peer 1
   broadcasts g^{(N+1−p_1−q_1)/4} and peer i > 1 g^{(p_i+q_i)/4}; N is
   accepted for that base iff the first equals ± the product of the others
   (that is g^{φ(N)/4} = ±1).  One base screens every survivor, then
   ``sigma`` bases (false-accept probability ≤ 2^−sigma) and a final BGW
   product over Z_N of r·(p+q−1), r = Σ r_i random, whose gcd with N must be
   1 (this rules out N = p^a·q^b).
6. The first candidate passing all of it is N; every peer broadcasts it and
   checks that all agree.  Peers then forget their shares.

Messages are ordinary signed envelopes (``@message`` types below); they
travel over MQTT (``MqttChannel`` on a ``Session``) or, in tests and for
a one-machine run, over in-process channels (``LocalNetwork``) that seal and
open the same envelopes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Annotated, Protocol

import coincurve
import gmpy2
from gmpy2 import mpz

from edgefl.codec import MaxLen, Message, message
from edgefl.crypto.accumulator.group import AccumulatorError, Group
from edgefl.crypto.envelope import Rejected, Signer, StaticKeyRegistry, Verifier
from edgefl.crypto.keys import SigningKey, VerifyingKey
from edgefl.runtime import METRICS, Metrics, RateLimited

log = logging.getLogger("edgefl.accumulator.setup")

MAX_PEERS = 64
MAX_BATCH = 4096
MAX_DATA = 8 << 20  # bytes in one share or value vector
_SHARES_TAG = b"edgefl/accumulator/setup/shares/v1"
_BASES_TAG = b"edgefl/accumulator/setup/biprimality/v1"


class SetupError(AccumulatorError):
    """The distributed setup cannot go on: a peer is missing, inconsistent or sent malformed data."""


# --------------------------------------------------------------------------- messages


@message("setup.propose", max_size=16 << 10)
class SetupProposal(Message):
    """From the first peer: the parameters everyone runs with."""

    session: Annotated[bytes, MaxLen(32)]
    peers: Annotated[list[str], MaxLen(MAX_PEERS)]
    bits: int
    prime: Annotated[bytes, MaxLen(1100)]  # P, big-endian
    batch: int
    sieve: int
    sigma: int


@message("setup.shares", max_size=MAX_DATA + 4096)
class ModulusShares(Message):
    """To one peer: encrypted (f_i(j), g_i(j), h_i(j)) for every candidate of a BGW product."""

    session: Annotated[bytes, MaxLen(32)]
    round: int
    stage: Annotated[str, MaxLen(32)]
    data: Annotated[bytes, MaxLen(MAX_DATA)]


@message("setup.values", max_size=MAX_DATA + 4096)
class ModulusValues(Message):
    """To everyone: a vector of public values (N_j of a product, or biprimality-test values)."""

    session: Annotated[bytes, MaxLen(32)]
    round: int
    stage: Annotated[str, MaxLen(32)]
    data: Annotated[bytes, MaxLen(MAX_DATA)]


# --------------------------------------------------------------------------- channels


class Channel(Protocol):
    """How one peer talks to the others: private messages, broadcasts, and their keys."""

    me: str
    key: SigningKey

    def key_for(self, peer: str) -> VerifyingKey: ...

    async def send(self, to: str, msg: Message) -> None: ...

    async def broadcast(self, msg: Message) -> None: ...

    async def next(self) -> tuple[str, Message]:
        """The next verified message for this peer: (sender, message)."""


class Inbox:
    """Messages by (type, round, stage) and sender, so a peer one step ahead is not a problem."""

    def __init__(self, peers: list[str], me: str, metrics: Metrics):
        self.me = me
        self.others = [p for p in peers if p != me]
        self.metrics = metrics
        self._box: dict[tuple, dict[str, Message]] = {}
        self._log = RateLimited(log)

    def put(self, sender: str, msg: Message, session: bytes) -> None:
        if sender not in self.others or getattr(msg, "session", None) != session:
            self.metrics.inc("setup_rejected", reason="foreign")
            self._log.warning("foreign", "%s: ignoring %s from %s (not a peer of this session)", self.me, msg.TYPE,
                              sender)
            return
        key = (msg.TYPE, getattr(msg, "round", 0), getattr(msg, "stage", ""))
        self._box.setdefault(key, {}).setdefault(sender, msg)

    def take(self, key: tuple, senders: list[str]) -> dict[str, Message] | None:
        got = self._box.get(key, {})
        if all(s in got for s in senders):
            self._box.pop(key, None)
            return {s: got[s] for s in senders}
        return None

    def missing(self, key: tuple, senders: list[str]) -> list[str]:
        return [s for s in senders if s not in self._box.get(key, {})]


class LocalNetwork:
    """In-process channels between k peers: the same sealed, signed envelopes, delivered by queues."""

    def __init__(self, peers: list[str], *, metrics: Metrics = METRICS):
        self.peers = list(peers)
        self.keys = {p: SigningKey() for p in peers}
        registry = StaticKeyRegistry({p: k.public_key for p, k in self.keys.items()})
        self.queues: dict[str, asyncio.Queue] = {p: asyncio.Queue() for p in peers}
        self.signers = {p: Signer(p, self.keys[p]) for p in peers}
        self.verifiers = {p: Verifier(registry, metrics=metrics, name=p) for p in peers}
        self.wire: dict[str, list[bytes]] = {p: [] for p in peers}  # every envelope each peer received

    def channel(self, peer: str) -> "LocalChannel":
        return LocalChannel(self, peer)


class LocalChannel:
    def __init__(self, net: LocalNetwork, me: str):
        self.net, self.me, self.key = net, me, net.keys[me]

    def key_for(self, peer: str) -> VerifyingKey:
        return self.net.keys[peer].public_key

    async def send(self, to: str, msg: Message) -> None:
        await self.net.queues[to].put(self.net.signers[self.me].seal(msg, to=to))

    async def broadcast(self, msg: Message) -> None:
        wire = self.net.signers[self.me].seal(msg)
        for peer in self.net.peers:
            if peer != self.me:
                await self.net.queues[peer].put(wire)

    async def next(self) -> tuple[str, Message]:
        while True:
            wire = await self.net.queues[self.me].get()
            self.net.wire[self.me].append(wire)
            try:
                env = self.net.verifiers[self.me].open(wire)
            except Rejected:
                continue  # logged and counted by the verifier
            if env.to in (None, self.me):
                return env.sender, env.message


class MqttChannel:
    """A peer's channel over its MQTT ``Session``: ``…/{me}/setup/{peer}`` privately, ``…/{me}/setup`` to all."""

    KIND = "setup"

    def __init__(self, session):
        self.session = session
        self.me = session.node_id
        self.key = session.signer.key

    def key_for(self, peer: str) -> VerifyingKey:
        return self.session.verifier.registry.key_for(peer, time.time())

    async def __aenter__(self) -> "MqttChannel":
        from edgefl.transport import topics

        self._subs = [self.session.subscribe(topics.pattern(role="+", kind=self.KIND, target=self.me)),
                      self.session.subscribe(topics.pattern(role="+", kind=self.KIND))]
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks = []
        for sub in self._subs:
            await sub.__aenter__()
            self._tasks.append(asyncio.create_task(self._pump(sub)))
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subs:
            await sub.__aexit__(None, None, None)

    async def _pump(self, sub) -> None:
        async for rx in sub:
            if rx.envelope.sender != self.me:  # the broadcast pattern matches this node's own topic too
                await self._queue.put((rx.envelope.sender, rx.message))

    async def send(self, to: str, msg: Message) -> None:
        await self.session.publish(self.KIND, msg, to=to)

    async def broadcast(self, msg: Message) -> None:
        await self.session.publish(self.KIND, msg)

    async def next(self) -> tuple[str, Message]:
        return await self._queue.get()


# --------------------------------------------------------------------------- helpers


def _pack(values, width: int) -> bytes:
    return b"".join(int(v).to_bytes(width, "big") for v in values)


def _unpack(data: bytes, width: int, count: int, what: str) -> list[mpz]:
    if len(data) != width * count:
        raise SetupError(f"{what}: {len(data)} bytes, expected {count} values of {width} bytes")
    return [mpz(int.from_bytes(data[i:i + width], "big")) for i in range(0, len(data), width)]


class _Random:
    """Uniform values from os.urandom, drawn in bulk (per-value system calls would dominate a round)."""

    def __init__(self, nbytes: int):
        self._buf = memoryview(os.urandom(nbytes))
        self._pos = 0

    def _take(self, n: int) -> int:
        if self._pos + n > len(self._buf):
            self._buf, self._pos = memoryview(os.urandom(max(n, 1 << 16))), 0
        out = int.from_bytes(self._buf[self._pos:self._pos + n], "little")
        self._pos += n
        return out

    def bits(self, k: int) -> mpz:
        return mpz(self._take((k + 7) // 8) >> (-k % 8))

    def below(self, m: mpz) -> mpz:
        return mpz(self._take((m.bit_length() + 64 + 7) // 8)) % m  # bias below 2^-64


def _keystream(my_key: SigningKey, their_key: VerifyingKey, context: bytes, n: int) -> bytes:
    secret = coincurve.PrivateKey(my_key.secret).ecdh(their_key.raw)
    return hashlib.shake_256(_SHARES_TAG + secret + context).digest(n)


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _lagrange_at_zero(k: int, modulus: mpz) -> list[mpz]:
    """λ_j with f(0) = Σ λ_j f(j) for points 1..k (degree < k)."""
    out = []
    for j in range(1, k + 1):
        num, den = mpz(1), mpz(1)
        for m in range(1, k + 1):
            if m != j:
                num = num * m % modulus
                den = den * (m - j) % modulus
        out.append(num * gmpy2.invert(den, modulus) % modulus)
    return out


_sieves: dict[int, list[mpz]] = {}


def _no_small_factor(n: mpz, bound: int) -> bool:
    """Trial division by the odd primes below ``bound``, as gcds with primorials of growing size.

    Most candidates have a factor below 128, found by a gcd with a 170-bit
    number; only survivors pay for the long primorial.
    """
    tiers = _sieves.get(bound)
    if tiers is None:
        tiers = _sieves[bound] = [gmpy2.primorial(b) // 2 for b in sorted({min(bound, 128), min(bound, 1024), bound})]
    return all(gmpy2.gcd(n, t) == 1 for t in tiers)


# --------------------------------------------------------------------------- the protocol


def default_batch(bits: int) -> int:
    """About 1 % of the candidates expected before p and q are both prime, within [16, 1024]."""
    expected = (0.3466 * bits / 2) ** 2  # (ln 2^(bits/2) / 2)^2: odd p and q, each prime with chance 2/ln p
    return int(max(16, min(1024, expected / 100)))


@dataclass
class Stats:
    rounds: int = 0
    candidates: int = 0
    sieved: int = 0  # survived trial division
    screened: int = 0  # survived the first biprimality base
    seconds: float = 0.0


@dataclass
class SetupResult:
    modulus: int
    peers: list[str]
    stats: Stats = field(default_factory=Stats)

    @property
    def group(self) -> Group:
        return Group(self.modulus, name=f"joint-{self.modulus.bit_length()}")


class Peer:
    """One participant.  ``run()`` returns the modulus every peer agreed on.

    ``keep_shares`` keeps this peer's shares of the accepted p and q (only
    tests use it, to check the result); by default they are dropped.
    ``view`` records everything the peer saw, decrypted: its own shares and
    the values it received (tests check that p and q appear nowhere in it).
    """

    def __init__(self, channel: Channel, peers: list[str], *, bits: int = 2048, batch: int = 0, sieve: int = 1 << 16,
                 sigma: int = 40, timeout_s: float = 300.0, keep_shares: bool = False, metrics: Metrics = METRICS,
                 record: bool = False):
        peers = list(peers)
        if len(set(peers)) != len(peers) or not 3 <= len(peers) <= MAX_PEERS:
            raise SetupError(f"need 3..{MAX_PEERS} distinct peers, got {len(peers)}")
        if channel.me not in peers:
            raise SetupError(f"{channel.me!r} is not one of the peers")
        if bits % 2 or not 64 <= bits <= 8192:
            raise SetupError(f"bits must be even and in [64, 8192], got {bits}")
        self.ch = channel
        self.me = channel.me
        self.peers = sorted(peers)
        self.index = self.peers.index(self.me)  # evaluation point: index + 1
        self.k = len(self.peers)
        self.degree = (self.k - 1) // 2
        self.bits = bits
        self.batch = batch or default_batch(bits)
        self.sieve_bound = sieve
        self.sigma = sigma
        self.timeout_s = timeout_s
        self.keep_shares = keep_shares
        self.metrics = metrics
        self.view: list | None = [] if record else None
        self.shares: tuple[int, int] | None = None
        self.session = b""
        self.stats = Stats()
        self._inbox = Inbox(self.peers, self.me, metrics)
        self._rand = _Random(1 << 16)

    # ------------------------------------------------------------------ messaging

    def _saw(self, what: str, values) -> None:
        if self.view is not None:
            self.view.append((what, [int(v) for v in values]))

    async def _gather(self, kind: type[Message], round_: int, stage: str, senders: list[str]) -> dict[str, Message]:
        key = (kind.TYPE, round_, stage)
        try:
            async with asyncio.timeout(self.timeout_s):
                while (got := self._inbox.take(key, senders)) is None:
                    sender, msg = await self.ch.next()
                    self._inbox.put(sender, msg, self.session)
        except TimeoutError:
            raise SetupError(f"{self.me}: no {kind.TYPE} ({stage}, round {round_}) from "
                             f"{', '.join(self._inbox.missing(key, senders))} within {self.timeout_s:.0f} s") from None
        return got

    def _context(self, round_: int, stage: str, sender: str, receiver: str) -> bytes:
        return b"|".join([self.session, str(round_).encode(), stage.encode(), sender.encode(), receiver.encode()])

    # ------------------------------------------------------------------ BGW product

    async def _product(self, round_: int, stage: str, pairs: list[tuple[mpz, mpz]], modulus: mpz) -> list[mpz]:
        """(Σ_i a_i)(Σ_i b_i) mod ``modulus`` for each candidate, from every peer's additive (a_i, b_i)."""
        width = (modulus.bit_length() + 7) // 8
        count = len(pairs)
        points = range(1, self.k + 1)
        rows: list[list[mpz]] = [[] for _ in points]  # rows[j-1]: what goes to peer j
        for a, b in pairs:
            f = [a % modulus] + [self._rand.below(modulus) for _ in range(self.degree)]
            g = [b % modulus] + [self._rand.below(modulus) for _ in range(self.degree)]
            h = [mpz(0)] + [self._rand.below(modulus) for _ in range(2 * self.degree)]
            for x in points:
                for poly in (f, g, h):
                    acc = mpz(0)
                    for c in reversed(poly):
                        acc = (acc * x + c) % modulus
                    rows[x - 1].append(acc)
        mine = rows[self.index]
        for j, peer in enumerate(self.peers):
            if peer != self.me:
                data = _pack(rows[j], width)
                stream = _keystream(self.ch.key, self.ch.key_for(peer), self._context(round_, stage, self.me, peer),
                                    len(data))
                await self.ch.send(peer, ModulusShares(self.session, round_, stage, _xor(data, stream)))
        others = [p for p in self.peers if p != self.me]
        got = await self._gather(ModulusShares, round_, stage, others)
        received = {self.me: mine}
        for peer, msg in got.items():
            stream = _keystream(self.ch.key, self.ch.key_for(peer), self._context(round_, stage, peer, self.me),
                                len(msg.data))
            received[peer] = _unpack(_xor(msg.data, stream), width, 3 * count, f"{peer} {stage} shares")
            self._saw(f"shares from {peer}", received[peer])
        self._saw("my shares out", [v for row in rows for v in row])
        mine_out = []
        for c in range(count):
            fs = sum(received[p][3 * c] for p in self.peers)
            gs = sum(received[p][3 * c + 1] for p in self.peers)
            hs = sum(received[p][3 * c + 2] for p in self.peers)
            mine_out.append((fs * gs + hs) % modulus)
        await self.ch.broadcast(ModulusValues(self.session, round_, stage, _pack(mine_out, width)))
        got = await self._gather(ModulusValues, round_, stage, others)
        values = {self.me: mine_out}
        for peer, msg in got.items():
            values[peer] = _unpack(msg.data, width, count, f"{peer} {stage} products")
            self._saw(f"products from {peer}", values[peer])
        lam = _lagrange_at_zero(self.k, modulus)
        return [sum(lam[j] * values[p][c] for j, p in enumerate(self.peers)) % modulus for c in range(count)]

    # ------------------------------------------------------------------ biprimality

    def _bases(self, n: mpz, count: int) -> list[mpz] | None:
        """``count`` public bases with Jacobi symbol +1, hashed from the session and N (None: N has a small factor)."""
        width = (n.bit_length() + 7) // 8
        out, s = [], 0
        while len(out) < count:
            seed = _BASES_TAG + self.session + int(n).to_bytes(width, "big") + s.to_bytes(4, "big")
            g = mpz(int.from_bytes(hashlib.shake_256(seed).digest(width + 16), "big")) % n
            s += 1
            j = gmpy2.jacobi(g, n)
            if j == 0:
                return None
            if j == 1:
                out.append(g)
        return out

    def _exponent(self, n: mpz, p_i: mpz, q_i: mpz) -> mpz:
        return (n + 1 - p_i - q_i) // 4 if self.index == 0 else (p_i + q_i) // 4

    async def _biprime(self, round_: int, stage: str, cands: list[tuple[mpz, mpz, mpz]], per: int) -> list[bool]:
        """Boneh–Franklin test with ``per`` bases for each (N, p_i, q_i); one broadcast for all of them."""
        bases = [self._bases(n, per) for n, _, _ in cands]
        width = max((n.bit_length() + 7) // 8 for n, _, _ in cands)
        mine = []
        for (n, p_i, q_i), gs in zip(cands, bases):
            e = self._exponent(n, p_i, q_i)
            mine += [gmpy2.powmod(g, e, n) for g in gs] if gs else [mpz(0)] * per
        await self.ch.broadcast(ModulusValues(self.session, round_, stage, _pack(mine, width)))
        others = [p for p in self.peers if p != self.me]
        got = await self._gather(ModulusValues, round_, stage, others)
        values = {self.me: mine}
        for peer, msg in got.items():
            values[peer] = _unpack(msg.data, width, len(mine), f"{peer} {stage} values")
            self._saw(f"biprimality values from {peer}", values[peer])
        out = []
        for c, ((n, _, _), gs) in enumerate(zip(cands, bases)):
            ok = gs is not None
            for b in range(per if ok else 0):
                at = c * per + b
                first = values[self.peers[0]][at]
                rest = mpz(1)
                for p in self.peers[1:]:
                    rest = rest * values[p][at] % n
                if first != rest and first != n - rest:
                    ok = False
                    break
            out.append(ok)
        return out

    async def _coprime_check(self, round_: int, n: mpz, p_i: mpz, q_i: mpz) -> bool:
        """gcd(N, r·(p+q−1)) = 1 with r = Σ r_i, by a BGW product over Z_N (reveals only r·(p+q−1) mod N)."""
        b = p_i + q_i - (1 if self.index == 0 else 0)
        (z,) = await self._product(round_, "coprime", [(self._rand.below(n), b)], n)
        return gmpy2.gcd(z, n) == 1

    # ------------------------------------------------------------------ driver

    def _candidates(self) -> list[tuple[mpz, mpz]]:
        half = self.bits // 2
        spread = half - 2 - math.ceil(math.log2(self.k)) - 2  # 4·Σ r_i < 2^(half-2)
        out = []
        for _ in range(self.batch):
            p, q = 4 * self._rand.bits(spread), 4 * self._rand.bits(spread)
            if self.index == 0:  # top bits 11 so p·q has exactly ``bits`` bits; p ≡ q ≡ 3 mod 4
                p += 3 * (mpz(1) << (half - 2)) + 3
                q += 3 * (mpz(1) << (half - 2)) + 3
            out.append((p, q))
        return out

    async def _agree_on_parameters(self) -> mpz:
        first = self.peers[0]
        if self.me == first:
            self.session = os.urandom(16)
            prime = gmpy2.next_prime(self._rand.bits(self.bits + 8) | (mpz(1) << (self.bits + 7)))
            proposal = SetupProposal(self.session, self.peers, self.bits, int(prime).to_bytes((self.bits + 15) // 8,
                                     "big"), self.batch, self.sieve_bound, self.sigma)
            await self.ch.broadcast(proposal)
            return prime
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    sender, msg = await self.ch.next()
                    if isinstance(msg, SetupProposal) and sender == first:
                        break
                    self._early.append((sender, msg))
        except TimeoutError:
            raise SetupError(f"{self.me}: no proposal from {first} within {self.timeout_s:.0f} s") from None
        if sorted(msg.peers) != self.peers or msg.bits != self.bits:
            raise SetupError(f"{first} proposed peers {msg.peers} / {msg.bits} bits; this peer expected "
                             f"{self.peers} / {self.bits}")
        prime = mpz(int.from_bytes(msg.prime, "big"))
        if prime.bit_length() <= self.bits or not gmpy2.is_bpsw_prp(prime):
            raise SetupError(f"{first} proposed a P that is not a prime above 2^{self.bits}")
        if not (1 <= msg.batch <= MAX_BATCH and 3 <= msg.sieve <= 1 << 24 and 1 <= msg.sigma <= 256):
            raise SetupError(f"{first} proposed out-of-range parameters")
        self.session, self.batch, self.sieve_bound, self.sigma = msg.session, msg.batch, msg.sieve, msg.sigma
        return prime

    async def run(self) -> SetupResult:
        t0 = time.perf_counter()
        self._early: list = []
        prime = await self._agree_on_parameters()
        for sender, msg in self._early:
            self._inbox.put(sender, msg, self.session)
        round_ = 0
        while True:
            round_ += 1
            self.stats.rounds = round_
            shares = self._candidates()
            ns = await self._product(round_, "n", shares, prime)
            self.stats.candidates += len(ns)
            alive = [c for c, n in enumerate(ns)
                     if n.bit_length() == self.bits and _no_small_factor(n, self.sieve_bound)]
            self.stats.sieved += len(alive)
            if not alive:
                continue
            screen = await self._biprime(round_, "screen", [(ns[c], *shares[c]) for c in alive], 1)
            alive = [c for c, ok in zip(alive, screen) if ok]
            self.stats.screened += len(alive)
            for c in alive:
                stage = f"full-{c}"
                (full,) = await self._biprime(round_, stage, [(ns[c], *shares[c])], self.sigma)
                if full and await self._coprime_check(round_, ns[c], *shares[c]):
                    return await self._finish(round_, ns[c], shares[c], t0)

    async def _finish(self, round_: int, n: mpz, share: tuple[mpz, mpz], t0: float) -> SetupResult:
        width = (n.bit_length() + 7) // 8
        await self.ch.broadcast(ModulusValues(self.session, round_, "accept", _pack([n], width)))
        got = await self._gather(ModulusValues, round_, "accept", [p for p in self.peers if p != self.me])
        for peer, msg in got.items():
            if msg.data != _pack([n], width):
                raise SetupError(f"{peer} accepted a different modulus")
        self.shares = (int(share[0]), int(share[1])) if self.keep_shares else None
        self.stats.seconds = time.perf_counter() - t0
        log.info("%s: %d-bit modulus after %d candidates in %d rounds (%.1f s)", self.me, n.bit_length(),
                 self.stats.candidates, self.stats.rounds, self.stats.seconds)
        return SetupResult(int(n), self.peers, self.stats)


# --------------------------------------------------------------------------- entry points


async def generate_local(k: int = 3, bits: int = 2048, *, names: list[str] | None = None, record: bool = False,
                         keep_shares: bool = False, **options) -> SetupResult:
    """All k peers in this process over in-process channels; returns the first peer's result.

    The peers and the network are attached to the result as ``.peer_objects``
    and ``.network`` for inspection.
    """
    names = names or [f"peer-{i + 1}" for i in range(k)]
    net = LocalNetwork(names)
    peers = [Peer(net.channel(n), names, bits=bits, record=record, keep_shares=keep_shares, **options) for n in names]
    results = await asyncio.gather(*(p.run() for p in peers))
    if len({r.modulus for r in results}) != 1:
        raise SetupError("peers disagree on the modulus")
    result = results[0]
    result.peer_objects = peers  # type: ignore[attr-defined]
    result.network = net  # type: ignore[attr-defined]
    return result


async def run_over_mqtt(session, peers: list[str], **options) -> SetupResult:
    """This node's part of the setup, over its connected ``Session``."""
    async with MqttChannel(session) as ch:
        return await Peer(ch, peers, **options).run()


def encode_result(result: SetupResult) -> dict:
    return {"modulus": str(result.modulus), "bits": result.modulus.bit_length(), "peers": result.peers,
            "generator": str(result.group.generator), "rounds": result.stats.rounds,
            "candidates": result.stats.candidates, "seconds": round(result.stats.seconds, 3)}


__all__ = ["Channel", "LocalNetwork", "ModulusShares", "ModulusValues", "MqttChannel", "Peer", "SetupError",
           "SetupProposal", "SetupResult", "encode_result", "generate_local", "run_over_mqtt"]
