"""Cryptographic sortition (Algorand style): who sits on a committee, privately drawn, publicly checkable.

A node of weight w (units of stake or reputation) out of a total W, for an
expected committee size tau, runs the VRF on ``seed || role``.  Each of its w
units is a sub-user selected with probability p = tau / W, so the number of
its selected sub-users j follows Binomial(w, p); j is read off the VRF output
beta: the index of the interval of the binomial CDF that beta / 2^256 falls in,

    j = min { k : beta / 2^256 < sum_{i <= k} C(w, i) p^i (1-p)^(w-i) }.

j > 0 means the node is selected and j is its priority (its votes count j
times); the leader of a committee is the member with the highest priority,
ties broken by the larger beta.  Nobody can predict j before the node reveals
its proof, and anyone can recompute j from the proof, the node's key, its
weight and the public (seed, role, W, tau).

The CDF is evaluated in exact integer arithmetic (p is a fraction a/b, every
term is scaled by b^w), so every implementation draws the same j for the same
beta: floating-point rounding cannot split a committee.  The cost grows with
w * log2(b) bits, so weights are bounded by ``MAX_WEIGHT`` units: count stake
in coarse enough units.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Iterable

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import vrf

MAX_WEIGHT = 10_000
ROLE_MAX = 32

Tau = int | Fraction


def alpha(seed: bytes, role: str) -> bytes:
    """The VRF input of a draw: the epoch seed followed by the role (e.g. "committee", "seed")."""
    return bytes(seed) + role.encode()


def probability(tau: Tau, total: int) -> Fraction:
    if isinstance(tau, float) or not isinstance(tau, (int, Fraction)):
        raise TypeError("tau must be an int or a Fraction: the draw must not depend on float rounding")
    if not isinstance(total, int) or total <= 0:
        raise ValueError(f"total weight must be a positive integer, got {total!r}")
    p = Fraction(tau) / total
    if not 0 < p <= 1:
        raise ValueError(f"tau / W = {p} must be in (0, 1]")
    return p


@functools.lru_cache(maxsize=4096)
def _powers(a: int, b: int, w: int) -> tuple[int, int]:
    return b ** w, (b - a) ** w


def sub_users(beta: bytes, weight: int, total: int, tau: Tau) -> int:
    """j for a node of ``weight`` whose VRF output is ``beta`` (32 bytes); exact, see the module text."""
    if not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be an integer in [0, {MAX_WEIGHT}], got {weight!r}")
    if len(beta) != 32:
        raise ValueError("beta must be 32 bytes")
    p = probability(tau, total)
    if weight > total:
        raise ValueError(f"weight {weight} exceeds the total {total}")
    if weight == 0:
        return 0
    a, b = p.numerator, p.denominator
    if a == b:
        return weight
    scale, term = _powers(a, b, weight)  # term = C(w, k) a^k (b-a)^(w-k), k = 0
    target = int.from_bytes(beta, "big") * scale  # beta / 2^256 < cdf / b^w  <=>  beta * b^w < cdf * 2^256
    cdf = 0
    for k in range(weight):
        cdf += term
        if target < cdf << 256:
            return k
        term = term * (weight - k) * a // ((k + 1) * (b - a))  # exact: the next binomial term
    return weight  # the last interval ends at 1 > beta / 2^256


@dataclass(frozen=True, order=True)
class Selection:
    """A verified draw. Orders by priority, then beta: ``max(selections)`` is the leader."""

    j: int
    beta: bytes
    member: str = ""
    proof: bytes = b""

    @property
    def selected(self) -> bool:
        return self.j > 0


def draw(sk: bytes, seed: bytes, role: str, weight: int, total: int, tau: Tau, member: str = "") -> Selection:
    """This node's draw: prove, then read j off the output (j = 0: not selected; keep the proof private)."""
    proof = vrf.prove(sk, alpha(seed, role))
    beta = vrf.proof_to_hash(proof)
    return Selection(sub_users(beta, weight, total, tau), beta, member, proof)


def verify(pk: bytes, proof: bytes, seed: bytes, role: str, weight: int, total: int, tau: Tau,
           member: str = "") -> Selection | None:
    """Anyone's check of a draw: the Selection (its j may be 0) if the proof is valid, otherwise None."""
    beta = vrf.verify(pk, proof, alpha(seed, role))
    if beta is None:
        return None
    return Selection(sub_users(beta, weight, total, tau), beta, member, bytes(proof))


def leader(selections: Iterable[Selection]) -> Selection | None:
    """The selected member of highest priority, ties broken by the larger beta."""
    return max((s for s in selections if s.selected), default=None)


@message("sortition-claim")
class SortitionClaim(Message):
    """A selected member's claim to its seat: what it publishes (and the ledger records) to act for ``role``.

    The verifier takes the member's key from its certificate and its weight
    from the epoch's weight table, never from the claim.
    """

    epoch: Annotated[int, Range(0)]
    member: Annotated[str, MaxLen(64)]
    role: Annotated[str, MaxLen(ROLE_MAX)]
    proof: Annotated[bytes, MaxLen(vrf.PROOF_SIZE)]
