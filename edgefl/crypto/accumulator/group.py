"""The group the accumulator lives in: Z_N* / {±1} for an RSA modulus N of unknown factorisation.

Default modulus: the RSA-2048 challenge number.  RSA Laboratories generated
it in 1991 and destroyed the factors; they have never been published, so no
party holds a trapdoor and there is no trusted setup.  A site that prefers
a modulus of its own generates one jointly (``distributed.py``).

Elements are the classes {y, N − y}; the canonical representative is
min(y, N − y), so −w is the same element as w and a sign flip is not a
forgery.  Canonical elements are exactly the integers 2 ≤ y ≤ (N − 1)/2
(1 is the identity, which would "prove" anything), and ``to_bytes`` gives
each one a single fixed-length encoding, so a value hashed into a block has
exactly one byte form.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz

from edgefl.errors import EdgeflError

# RSA-2048 from the RSA Factoring Challenge (617 decimal digits).
RSA2048_N = int(
    "25195908475657893494027183240048398571429282126204032027777137836043662020707595556264018525880784"
    "40691829064124951508218929855914917618450280848912007284499268739280728777673597141834727026189637"
    "50149718246911650776133798590957000973304597488084284017974291006424586918171951187461215151726546"
    "32282216869987549182422433637259085141865462043576798423387184774447920739934236584823824281198163"
    "81501067481045166037730605620161967625613384414360383390441495263443219011465754445417842402092461"
    "65157233507787077498171257724679629263863563732899121548314381678998850404453640235273819513786365"
    "64391212010397122822120720357"
)
# SHA-256 of the decimal string above, to check the constant was not altered.
RSA2048_SHA256 = "b3c2468add10e2a0c4a251d9d2bac4ba04d4b3527156ceead43a1305e03f1fc0"

ELEMENT_BYTES = 256
GENERATOR_LABEL = b"edgefl/accumulator/generator/v1"
MAX_EXPONENT_BITS = 1 << 28  # 32 MiB: far above any chain's product of representatives; bounds a hostile input


class AccumulatorError(EdgeflError, ValueError):
    """Base of every accumulator input error."""

    reason = "accumulator"


class InvalidElement(AccumulatorError):
    """A value is not a canonical element of Z_N*/{±1} (0, 1, N, negative, too large, non-canonical)."""


class InvalidExponent(AccumulatorError):
    """An exponent or representative is out of range."""


class EncodingError(AccumulatorError):
    """Bytes that cannot be an encoded element (wrong type or length)."""


class InvalidInput(AccumulatorError):
    """Data, an index or a list argument of the wrong type, size or range."""


def derive_generator(modulus: int, label: bytes = GENERATOR_LABEL) -> int:
    """g = canonical(h² mod N) for h = SHAKE-256(label ‖ N) taken as an integer mod N.

    Nobody chooses g, so nobody can know a relation between g and other
    elements; squaring makes g a quadratic residue (Jacobi symbol +1).
    """
    size = (modulus.bit_length() + 7) // 8
    h = int.from_bytes(hashlib.shake_256(label + modulus.to_bytes(size, "big")).digest(size + 16), "big")
    y = pow(h % modulus, 2, modulus)
    return min(y, modulus - y)


@dataclass(frozen=True)
class Group:
    """Public parameters: modulus N (factors unknown) and generator g."""

    modulus: int
    generator: int = 0  # 0: derive from the modulus
    name: str = ""
    element_bytes: int = field(init=False)

    def __post_init__(self):
        n = self.modulus
        if type(n) is not int or n < 15 or n % 2 == 0:
            raise AccumulatorError(f"modulus must be an odd integer > 15, got {n!r:.40}")
        object.__setattr__(self, "element_bytes", (n.bit_length() + 7) // 8)
        object.__setattr__(self, "_n", mpz(n))
        object.__setattr__(self, "_half", (n - 1) // 2)
        if not self.generator:
            object.__setattr__(self, "generator", derive_generator(n))
        self.element(self.generator, "generator")

    @property
    def n(self) -> mpz:
        return self._n

    def canonical(self, y) -> int:
        """The class representative min(y mod N, N − y mod N)."""
        y = int(y) % self.modulus
        return y if y <= self._half else self.modulus - y

    def is_element(self, y) -> bool:
        return type(y) is int and 2 <= y <= self._half

    def element(self, y, what: str = "value") -> int:
        """``y`` if it is a canonical element, else InvalidElement naming ``what``."""
        if type(y) is not int:
            if isinstance(y, bool) or not isinstance(y, (int, type(mpz(0)))):
                raise InvalidElement(f"{what}: expected an integer, got {type(y).__name__}")
            y = int(y)
        if y < 0:
            raise InvalidElement(f"{what}: negative")
        if y <= 1:
            raise InvalidElement(f"{what}: {y} is not a group element (0 or the identity)")
        if y >= self.modulus:
            raise InvalidElement(f"{what}: not below the modulus")
        if y > self._half:
            raise InvalidElement(f"{what}: not canonical (use min(y, N - y))")
        return y

    def to_bytes(self, y) -> bytes:
        return self.element(y).to_bytes(self.element_bytes, "big")

    def from_bytes(self, data) -> int:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise EncodingError(f"expected bytes, got {type(data).__name__}")
        if len(data) != self.element_bytes:
            raise EncodingError(f"expected {self.element_bytes} bytes, got {len(data)}")
        return self.element(int.from_bytes(data, "big"), "encoded element")

    def pow(self, base, exponent) -> int:
        """canonical(base^exponent) for a non-negative exponent."""
        y = gmpy2.powmod(base, exponent, self._n)
        return int(y if y <= self._half else self._n - y)

    def to_params(self) -> dict:
        """The public parameters as a JSON-ready map (decimal strings)."""
        return {"name": self.name, "bits": self.modulus.bit_length(), "modulus": str(self.modulus),
                "generator": str(self.generator),
                "modulus_sha256": hashlib.sha256(str(self.modulus).encode()).hexdigest()}

    @classmethod
    def from_params(cls, params: dict) -> "Group":
        """Inverse of ``to_params``; AccumulatorError naming the bad field."""
        try:
            modulus, generator = int(params["modulus"]), int(params.get("generator") or 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise AccumulatorError(f"accumulator parameters: modulus/generator missing or not integers ({exc})") \
                from None
        digest = params.get("modulus_sha256")
        if digest and digest != hashlib.sha256(str(modulus).encode()).hexdigest():
            raise AccumulatorError("accumulator parameters: modulus_sha256 does not match the modulus")
        return cls(modulus, generator, str(params.get("name", "")))

    def __repr__(self) -> str:
        return f"Group({self.name or f'{self.modulus.bit_length()}-bit'})"


def check_exponent(x, what: str = "exponent", *, max_bits: int = MAX_EXPONENT_BITS) -> int:
    """A positive exponent > 1 no longer than ``max_bits``, as an int."""
    if type(x) is not int:
        if isinstance(x, bool) or not isinstance(x, (int, type(mpz(0)))):
            raise InvalidExponent(f"{what}: expected an integer, got {type(x).__name__}")
        x = int(x)
    if x < 2:
        raise InvalidExponent(f"{what}: {x} is not an exponent > 1")
    if x.bit_length() > max_bits:
        raise InvalidExponent(f"{what}: {x.bit_length()} bits exceeds {max_bits}")
    return x


RSA2048 = Group(RSA2048_N, name="rsa-2048")
GENERATOR = RSA2048.generator
