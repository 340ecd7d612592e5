"""Update, witnesses (ProofGen), membership checks (ProofVerf) and RootFactor.

A chain's accumulator after n blocks is v_n = g^{x_1 ⋯ x_n}: v_i = v_{i−1}^{x_i},
v_0 = g.  The witness of block i is w_i = g^{∏_{k≠i} x_k}, and membership
holds iff w_i^{x_i} = v_n (in Z_N*/{±1}).

All values are canonical (see ``group.py``); the arithmetic is gmpy2's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from edgefl.crypto.accumulator.group import RSA2048, Group, InvalidInput, check_exponent
from edgefl.crypto.accumulator.primes import PRIME_BITS, representative

MAX_ELEMENT_BITS = PRIME_BITS  # a member's exponent is one representative


def _elements(xs: Sequence[int], what: str = "xs") -> list[int]:
    if isinstance(xs, (str, bytes)) or not hasattr(xs, "__len__"):
        raise InvalidInput(f"{what}: expected a sequence of representatives")
    return [check_exponent(x, f"{what}[{i}]", max_bits=MAX_ELEMENT_BITS) for i, x in enumerate(xs)]


def product(xs: Sequence[int]) -> mpz:
    """∏ xs by a balanced product tree (quasi-linear instead of quadratic)."""
    level = [mpz(x) for x in xs] or [mpz(1)]
    while len(level) > 1:
        level = [level[i] * level[i + 1] if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def update(v: int, x: int, *, group: Group = RSA2048) -> int:
    """v^x: the accumulator after adding the element with representative (or product of representatives) x."""
    return group.pow(group.element(v, "v"), check_exponent(x, "x"))


def accumulate(xs: Sequence[int], *, group: Group = RSA2048) -> int:
    """g^{∏ xs}: the accumulator of a whole set in one exponentiation."""
    xs = _elements(xs)
    return group.pow(group.generator, product(xs)) if xs else group.generator


def witness(xs: Sequence[int], i: int, *, group: Group = RSA2048) -> int:
    """g^{∏_{k≠i} x_k}: the membership witness of element ``i`` (ProofGen)."""
    xs = _elements(xs)
    if type(i) is not int or not 0 <= i < len(xs):
        raise InvalidInput(f"i: {i!r:.40} is not an index into {len(xs)} elements")
    return group.pow(group.generator, product(xs[:i] + xs[i + 1:]))


def verify_membership(witness: int, x: int, v: int, *, group: Group = RSA2048) -> bool:
    """Whether witness^x = v in Z_N*/{±1}; False (never an exception) for malformed values.

    ``x`` must be recomputed by the verifier (``representative``), never taken
    from the prover: ``verify_block`` does both steps.
    """
    try:
        w = group.element(witness)
        v = group.element(v)
        x = check_exponent(x, max_bits=MAX_ELEMENT_BITS)
    except (ValueError, TypeError):
        return False
    return group.pow(w, x) == v


def verify_block(data: bytes, index: int, witness: int, v: int, *, group: Group = RSA2048) -> bool:
    """ProofVerf: accept iff witness^{representative(data, index)} = v."""
    try:
        x = representative(data, index)
    except (ValueError, TypeError):
        return False
    return verify_membership(witness, x, v, group=group)


def update_witness(w: int, new_xs: Sequence[int], *, group: Group = RSA2048) -> int:
    """A witness kept valid after the elements ``new_xs`` were appended: w^{∏ new_xs}."""
    w = group.element(w, "w")
    new = _elements(new_xs, "new_xs")
    return group.pow(w, product(new)) if new else w


def root_factor(xs: Sequence[int], *, group: Group = RSA2048, base: int | None = None) -> list[int]:
    """Every witness g^{∏_{k≠i} x_k} at once in O(n log n) exponentiations (recursive halving).

    Split the elements in halves L and R: the witnesses of L are those of
    base^{∏R} over L alone, and symmetrically; each level of the recursion
    raises to exponents totalling n representatives.
    """
    xs = _elements(xs)
    if base is None:
        base = group.generator
    base = mpz(group.element(base, "base"))
    n = group.n
    out: list[mpz] = []

    def halve(b: mpz, lo: int, hi: int) -> None:
        if hi - lo == 1:
            out.append(b)
            return
        mid = (lo + hi) // 2
        halve(gmpy2.powmod(b, product(xs[mid:hi]), n), lo, mid)
        halve(gmpy2.powmod(b, product(xs[lo:mid]), n), mid, hi)

    if xs:
        halve(base, 0, len(xs))
    return [group.canonical(w) for w in out]


def root_factor_naive(xs: Sequence[int], *, group: Group = RSA2048) -> list[int]:
    """The O(n²) way: each witness as its own exponentiation (the baseline RootFactor is measured against)."""
    xs = _elements(xs)
    total = product(xs)
    return [group.pow(group.generator, total // x) for x in xs]


@dataclass(frozen=True)
class MembershipProof:
    """(ρ1, ρ2) of the design: the element's representative and its witness."""

    element: int
    witness: int


class Accumulator:
    """A chain's accumulator: every block's representative and value v_i, witnesses on demand.

    ``add(data)`` appends block i = len(self) with x_i = representative(data, i)
    and v_i = v_{i−1}^{x_i}; ``values[i]`` is v_i (``values[0]`` = g).
    """

    def __init__(self, *, group: Group = RSA2048):
        self.group = group
        self.elements: list[int] = []
        self.values: list[int] = [group.generator]

    def __len__(self) -> int:
        return len(self.elements)

    @property
    def value(self) -> int:
        return self.values[-1]

    def add(self, data: bytes) -> tuple[int, int]:
        """Append a block; returns (x_i, v_i)."""
        x = representative(data, len(self.elements))
        v = update(self.value, x, group=self.group)
        self.elements.append(x)
        self.values.append(v)
        return x, v

    def prove(self, i: int) -> MembershipProof:
        return MembershipProof(self.elements[i], witness(self.elements, i, group=self.group))

    def witnesses(self) -> list[int]:
        return root_factor(self.elements, group=self.group)
