"""Batch verification of membership claims, three ways behind one interface; aggregated proofs.

A claim says w^x = X: element x (a representative) is in accumulator X with
witness w.  Every verifier has the same two calls::

    proof = verifier.prove(witnesses, statements)   # statements: [(x, X), ...]
    verifier.verify(statements, proof) -> bool       # never raises on bad values

* ``independent`` — t separate checks; the baseline the others are measured by.
* ``unweighted`` — the design's Protocol 3, kept to reproduce its figure:
  accept iff ∏ w_j^{x_j} = ∏ X_j, the left side by one squaring chain with
  the 2^k products of each group of k ≤ 8 bases precomputed.  UNSOUND: from
  valid (w1, x1, X1), (w2, x2, X2) and any z, w1·z^{x2} and w2·z^{−x1} pass
  together while each fails alone.
* ``weighted`` (default) — the small-exponent test: 128-bit weights r_j by
  Fiat–Shamir (SHA-256 of every input), accept iff
  ∏ w_j^{x_j r_j} · ∏ X^{−Σ r_j} = ±1, one Straus multi-exponentiation with
  the claims on one accumulator X folded into a single base.  A bad batch
  passes with probability about 2^-127 per hash evaluation an attacker spends.
  Weights are odd, so an element of order 2 cannot cancel out either.
* ``aggregated`` — one proof per accumulator however many elements: the
  witnesses merged by Shamir's trick into W with W^{∏x} = X, plus a
  Wesolowski proof of exponentiation (ℓ = a 128-bit prime hashed from
  (W, ∏x, X), Q = W^{⌊∏x/ℓ⌋}; check Q^ℓ · W^{∏x mod ℓ} = X), so the verifier
  does two 128-bit exponentiations instead of t.

Multi-exponentiations come from ``edgefl._ext.accumulator`` (Cython over GMP)
or its pure-Python twin.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import gmpy2

from edgefl import native
from edgefl.crypto.accumulator.group import RSA2048, Group, InvalidExponent, InvalidInput, check_exponent
from edgefl.crypto.accumulator.membership import MAX_ELEMENT_BITS, product, verify_membership
from edgefl.crypto.accumulator.primes import challenge_prime

_impl = native.load("accumulator")
multi_exp = _impl.multi_exp

WEIGHT_BITS = 128
CHALLENGE_BITS = 128
_WEIGHTS_TAG = b"edgefl/accumulator/batch-weights/v1"
_POE_TAG = b"edgefl/accumulator/poe/v1"
_X_BYTES = MAX_ELEMENT_BITS // 8

Statement = tuple[int, int]  # (element x, accumulator X)


_NO_WITNESSES: Any = object()


def _checked(group: Group, statements: Sequence[Statement], witnesses: Any = _NO_WITNESSES):
    """Statements (and witnesses) validated: canonical elements, representatives in range; else ValueError."""
    if isinstance(statements, (str, bytes)) or not hasattr(statements, "__len__"):
        raise InvalidInput("statements: expected a sequence of (element, accumulator) pairs")
    out = []
    for j, st in enumerate(statements):
        if not (isinstance(st, (tuple, list)) and len(st) == 2):
            raise InvalidInput(f"statements[{j}]: expected (element, accumulator)")
        out.append((check_exponent(st[0], f"statements[{j}].element", max_bits=MAX_ELEMENT_BITS),
                    group.element(st[1], f"statements[{j}].accumulator")))
    if witnesses is _NO_WITNESSES:
        return out
    if isinstance(witnesses, (str, bytes)) or not hasattr(witnesses, "__len__") or len(witnesses) != len(out):
        raise InvalidInput(f"witnesses: expected {len(out)} witnesses")
    return out, [group.element(w, f"witnesses[{j}]") for j, w in enumerate(witnesses)]


def _is_one(y: int, group: Group) -> bool:
    return y == 1 or y == group.modulus - 1


class BatchVerifier(ABC):
    """One strategy: what the prover sends for t claims, and how the verifier checks it.

    ``impl`` is the multi-exponentiation module (compiled or twin; default: what
    ``edgefl.native`` chose), so both can be measured side by side.
    """

    name: ClassVar[str]
    sound: ClassVar[bool] = True

    def __init__(self, impl: ModuleType | None = None):
        self.impl = impl or _impl

    @abstractmethod
    def prove(self, witnesses: Sequence[int], statements: Sequence[Statement], *, group: Group = RSA2048) -> Any:
        """What the prover sends for these statements, given a witness for each."""

    @abstractmethod
    def verify(self, statements: Sequence[Statement], proof: Any, *, group: Group = RSA2048) -> bool:
        """Whether the proof shows every statement; False (never an exception) for malformed input."""


class _WitnessList(BatchVerifier):
    """Strategies whose proof is just the t witnesses."""

    def prove(self, witnesses, statements, *, group=RSA2048):
        _checked(group, statements, witnesses)
        return tuple(int(w) for w in witnesses)

    def verify(self, statements, proof, *, group=RSA2048):
        try:
            statements, witnesses = _checked(group, statements, proof)
        except (ValueError, TypeError):
            return False
        if not statements:
            return True
        try:
            return self._check(statements, witnesses, group)
        except ValueError:  # a base that is not invertible: nothing valid looks like that
            return False

    @abstractmethod
    def _check(self, statements: list[Statement], witnesses: list[int], group: Group) -> bool:
        """The check proper, on validated input."""


class Independent(_WitnessList):
    name = "independent"

    def _check(self, statements, witnesses, group):
        return all(verify_membership(w, x, v, group=group) for w, (x, v) in zip(witnesses, statements))


class Unweighted(_WitnessList):
    """The design's Protocol 3 (unsound; reproduces the published figure)."""

    name = "unweighted"
    sound = False

    def _check(self, statements, witnesses, group):
        left = self.impl.multi_exp_joint(witnesses, [x for x, _ in statements], group.modulus)
        right = 1
        n = group.n
        for _, v in statements:
            right = right * gmpy2.mpz(v) % n
        return left == right or left == group.modulus - right


def weights(statements: Sequence[Statement], witnesses: Sequence[int], group: Group) -> list[int]:
    """Fiat–Shamir weights: SHA-256 over the modulus and every (w, x, X), then one odd 128-bit r_j per claim."""
    h = hashlib.sha256(_WEIGHTS_TAG)
    h.update(group.modulus.to_bytes(group.element_bytes, "big"))
    h.update(len(statements).to_bytes(4, "big"))
    for w, (x, v) in zip(witnesses, statements):
        h.update(group.to_bytes(w))
        h.update(x.to_bytes(_X_BYTES, "big"))
        h.update(group.to_bytes(v))
    seed = h.digest()
    return [int.from_bytes(hashlib.sha256(seed + j.to_bytes(4, "big")).digest()[:WEIGHT_BITS // 8], "big") | 1
            for j in range(len(statements))]


class SmallExponent(_WitnessList):
    """The sound default: Fiat–Shamir small-exponent test as one multi-exponentiation."""

    name = "weighted"

    def _check(self, statements, witnesses, group):
        rs = weights(statements, witnesses, group)
        folded: dict[int, int] = {}  # accumulator -> sum of its claims' weights
        for r, (_, v) in zip(rs, statements):
            folded[v] = folded.get(v, 0) + r
        bases = list(witnesses) + list(folded)
        exps = [x * r for r, (x, _) in zip(rs, statements)] + [-s for s in folded.values()]
        return _is_one(self.impl.multi_exp(bases, exps, group.modulus), group)


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class AggregateProof:
    """Membership of several elements in one accumulator: W^{∏x} = X, with a PoE (Q) for that equation."""

    witness: int
    quotient: int


def shamir_combine(w1: int, x1: int, w2: int, x2: int, *, group: Group = RSA2048) -> int:
    """Shamir's trick: from w1^{x1} = X and w2^{x2} = X with gcd(x1, x2) = 1, w with w^{x1·x2} = X.

    With a·x1 + b·x2 = 1: (w1^b · w2^a)^{x1·x2} = X^{b·x2} · X^{a·x1} = X.
    """
    g, a, b = gmpy2.gcdext(x1, x2)
    if g != 1:
        raise InvalidExponent("elements to combine share a factor (the same element twice?)")
    return group.canonical(multi_exp([w1, w2], [int(b), int(a)], group.modulus))


def aggregate_witnesses(witnesses: Sequence[int], xs: Sequence[int], *, group: Group = RSA2048) -> int:
    """One witness for all of ``xs`` (pairwise Shamir's trick up a balanced tree)."""
    level = [(group.element(w, f"witnesses[{i}]"), check_exponent(x, f"xs[{i}]"))
             for i, (w, x) in enumerate(zip(witnesses, xs, strict=True))]
    if not level:
        raise InvalidInput("nothing to aggregate")
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            (w1, x1), (w2, x2) = level[i], level[i + 1]
            nxt.append((shamir_combine(w1, x1, w2, x2, group=group), x1 * x2))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0][0]


def poe_challenge(base: int, exponent: int, result: int, group: Group) -> int:
    """ℓ: a 128-bit prime hashed from (u, x, w) of the claim u^x = w."""
    size = (exponent.bit_length() + 7) // 8
    data = b"".join([_POE_TAG, group.modulus.to_bytes(group.element_bytes, "big"), group.to_bytes(base),
                     size.to_bytes(8, "big"), exponent.to_bytes(size, "big"), group.to_bytes(result)])
    return challenge_prime(data, CHALLENGE_BITS)


def poe_prove(base: int, exponent: int, result: int, *, group: Group = RSA2048) -> int:
    """Wesolowski: Q = u^{⌊x/ℓ⌋}."""
    ell = poe_challenge(base, exponent, result, group)
    return group.pow(base, exponent // ell)


def poe_verify(base: int, exponent: int, result: int, quotient: int, *, group: Group = RSA2048,
               impl: ModuleType | None = None) -> bool:
    """Q^ℓ · u^{x mod ℓ} = w (in Z_N*/{±1}) with ℓ recomputed from the claim."""
    ell = poe_challenge(base, exponent, result, group)
    y = (impl or _impl).multi_exp([quotient, base], [ell, exponent % ell], group.modulus)
    return group.canonical(y) == result


def prove_aggregate(witnesses: Sequence[int], xs: Sequence[int], v: int, *, group: Group = RSA2048) -> AggregateProof:
    w = aggregate_witnesses(witnesses, xs, group=group)
    return AggregateProof(w, poe_prove(w, int(product(xs)), group.element(v, "v"), group=group))


def prove_aggregate_from_set(elements: Sequence[int], indices: Sequence[int], *,
                             group: Group = RSA2048) -> AggregateProof:
    """The same proof when the prover holds the whole set: W = g^{∏ of the elements not proved}."""
    chosen = set(indices)
    if not chosen <= set(range(len(elements))):
        raise InvalidInput("indices out of range")
    rest = product([x for i, x in enumerate(elements) if i not in chosen])
    w = group.pow(group.generator, rest) if rest != 1 else group.generator
    picked = [elements[i] for i in sorted(chosen)]
    v = group.pow(w, product(picked))
    return AggregateProof(w, poe_prove(w, int(product(picked)), v, group=group))


def verify_aggregate(proof: AggregateProof, xs: Sequence[int], v: int, *, group: Group = RSA2048,
                     impl: ModuleType | None = None) -> bool:
    """Whether ``proof`` shows every element of ``xs`` (distinct) is in accumulator ``v``."""
    try:
        v = group.element(v)
        xs = [check_exponent(x, max_bits=MAX_ELEMENT_BITS) for x in xs]
    except (ValueError, TypeError):
        return False
    return len(set(xs)) == len(xs) and _verify_aggregate(proof, xs, v, group, impl)


def _verify_aggregate(proof: Any, xs: list[int], v: int, group: Group, impl: ModuleType | None) -> bool:
    """verify_aggregate on checked, distinct elements and accumulator."""
    if not xs or not isinstance(proof, AggregateProof):
        return False
    try:
        w = group.element(proof.witness)
        q = group.element(proof.quotient)
    except (ValueError, TypeError):
        return False
    return poe_verify(w, int(product(xs)), v, q, group=group, impl=impl)


class Aggregated(BatchVerifier):
    """One AggregateProof per distinct accumulator among the statements, in order of first appearance."""

    name = "aggregated"

    @staticmethod
    def _by_value(statements) -> dict[int, list[int]]:
        """Distinct elements per accumulator, both in order of first appearance."""
        groups: dict[int, dict[int, None]] = {}
        for x, v in statements:
            groups.setdefault(v, {})[x] = None
        return {v: list(members) for v, members in groups.items()}

    def prove(self, witnesses, statements, *, group=RSA2048):
        statements, witnesses = _checked(group, statements, witnesses)
        by_value: dict[int, dict[int, int]] = {}
        for w, (x, v) in zip(witnesses, statements):
            by_value.setdefault(v, {}).setdefault(x, w)
        return tuple(prove_aggregate(list(m.values()), list(m), v, group=group) for v, m in by_value.items())

    def verify(self, statements, proof, *, group=RSA2048):
        try:
            statements = _checked(group, statements)
            groups = self._by_value(statements)
            proofs = tuple(proof)
        except (ValueError, TypeError):
            return False
        if len(proofs) != len(groups):
            return False
        return all(_verify_aggregate(p, xs, v, group, self.impl) for p, (v, xs) in zip(proofs, groups.items()))


VERIFIERS: dict[str, BatchVerifier] = {v.name: v for v in (Independent(), Unweighted(), SmallExponent(), Aggregated())}
DEFAULT = "weighted"


def batch_verify(statements: Sequence[Statement], proof: Any, *, method: str = DEFAULT,
                 group: Group = RSA2048) -> bool:
    """Check t membership claims with the named strategy (see ``VERIFIERS``)."""
    verifier = VERIFIERS.get(method)
    if verifier is None:
        raise InvalidInput(f"method: {method!r} is not one of {sorted(VERIFIERS)}")
    return verifier.verify(statements, proof, group=group)
