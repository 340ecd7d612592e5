"""RSA accumulator: one group element that stands for a chain's whole history.

    from edgefl.crypto import accumulator as acc
    x = acc.representative(block_bytes, i)      # 256-bit prime for block i
    v = acc.update(v_prev, x)                   # v_i = v_{i-1}^{x_i}
    w = acc.witness(xs, i)                      # g^{prod of the other x}
    acc.verify_membership(w, x, v)              # w^x == v in Z_N*/{±1}

Default parameters: N = RSA2048_N (the RSA-2048 challenge number, factors
never published), g = GENERATOR (hash-derived, see ``group.derive_generator``),
elements encoded in ELEMENT_BYTES = 256 bytes.  Every function takes
``group=`` for another modulus (``Group(N)``, e.g. one made by the distributed
setup).  Bad input raises a subclass of ``AccumulatorError`` (a ValueError)
naming the argument; ``verify_*`` functions return False instead.

Modules: ``group`` (parameters, canonical elements, encoding), ``primes``
(hash-to-prime), ``membership`` (update, witnesses, RootFactor), ``batch``
(batch verification three ways, aggregated proofs), ``distributed`` (joint
modulus generation).
"""

from edgefl.crypto.accumulator.batch import VERIFIERS, AggregateProof, batch_verify, prove_aggregate, verify_aggregate
from edgefl.crypto.accumulator.group import (
    ELEMENT_BYTES,
    GENERATOR,
    RSA2048,
    RSA2048_N,
    AccumulatorError,
    EncodingError,
    Group,
    InvalidElement,
    InvalidExponent,
    InvalidInput,
)
from edgefl.crypto.accumulator.membership import (
    Accumulator,
    MembershipProof,
    accumulate,
    root_factor,
    root_factor_naive,
    update,
    update_witness,
    verify_block,
    verify_membership,
    witness,
)
from edgefl.crypto.accumulator.primes import hash_to_prime, representative


def to_bytes(v: int) -> bytes:
    """The fixed 256-byte big-endian encoding of a canonical element (InvalidElement otherwise)."""
    return RSA2048.to_bytes(v)


def from_bytes(b: bytes) -> int:
    """Inverse of ``to_bytes``: EncodingError for a wrong length, InvalidElement for out-of-range values."""
    return RSA2048.from_bytes(b)


__all__ = [
    "ELEMENT_BYTES", "GENERATOR", "RSA2048", "RSA2048_N", "VERIFIERS", "Accumulator", "AccumulatorError",
    "AggregateProof", "EncodingError", "Group", "InvalidElement", "InvalidExponent", "InvalidInput",
    "MembershipProof", "accumulate", "batch_verify", "from_bytes", "hash_to_prime", "prove_aggregate",
    "representative", "root_factor", "root_factor_naive", "to_bytes", "update", "update_witness",
    "verify_aggregate", "verify_block", "verify_membership", "witness",
]
