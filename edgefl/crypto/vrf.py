"""ECVRF-SECP256K1-SHA256-TAI: a verifiable random function on secp256k1.

The suite (byte 0xFE) is the draft-irtf-cfrg-vrf-05 construction with the
parameters public secp256k1 VRF libraries use; ``tests/vectors`` holds their
published cases, which this module reproduces byte for byte.

* hash to curve, try-and-increment: for ctr = 0..255,
  H = string_to_point(0x02 || SHA256(0xFE || 0x01 || PK || alpha || ctr)), the
  first that decodes;
* Gamma = x*H; nonce k by RFC 6979 (HMAC-SHA256) over x and SHA256(H);
* c = the first 16 bytes of SHA256(0xFE || 0x02 || H || Gamma || k*G || k*H);
* s = k + c*x mod n;  pi = Gamma (33) || c (16) || s (32) = 81 bytes;
* beta = SHA256(0xFE || 0x03 || Gamma).

Points are compressed SEC1 encodings throughout.  Point arithmetic is
libsecp256k1's through coincurve; only the hashing and the nonce are Python.
``verify`` never raises on malformed input: it returns None.
"""

from __future__ import annotations

import hashlib
import hmac

from coincurve import PublicKey

from edgefl.codec import CodecError

SUITE = b"\xfe"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # order of the group
PROOF_SIZE = 81
C_LEN = 16


class VrfProofError(CodecError):
    """A proof that cannot be decoded; ``field`` says which part is wrong."""

    reason = "bad_proof"


def _scalar(x: int) -> bytes:
    return x.to_bytes(32, "big")


def hash_to_curve(pk: bytes, alpha: bytes) -> PublicKey | None:
    """Try-and-increment: None only if all 256 candidates miss the curve (probability 2^-256)."""
    prefix = SUITE + b"\x01" + pk + alpha
    for ctr in range(256):
        digest = hashlib.sha256(prefix + bytes((ctr,))).digest()
        try:
            return PublicKey(b"\x02" + digest)
        except ValueError:  # x is not on the curve (or not below p): next counter
            continue
    return None


def _nonce(x: int, h: bytes) -> int:
    """RFC 6979 section 3.2 with HMAC-SHA256, message = the encoding of H (qlen = hlen = 256)."""
    xb = _scalar(x)
    hb = _scalar(int.from_bytes(hashlib.sha256(h).digest(), "big") % N)
    v, k = b"\x01" * 32, b"\x00" * 32
    k = hmac.digest(k, v + b"\x00" + xb + hb, "sha256")
    v = hmac.digest(k, v, "sha256")
    k = hmac.digest(k, v + b"\x01" + xb + hb, "sha256")
    v = hmac.digest(k, v, "sha256")
    while True:
        v = hmac.digest(k, v, "sha256")
        candidate = int.from_bytes(v, "big")
        if 1 <= candidate < N:
            return candidate
        k = hmac.digest(k, v + b"\x00", "sha256")
        v = hmac.digest(k, v, "sha256")


def _challenge(*points: bytes) -> int:
    return int.from_bytes(hashlib.sha256(SUITE + b"\x02" + b"".join(points)).digest()[:C_LEN], "big")


def public_key(sk: bytes) -> bytes:
    return PublicKey.from_valid_secret(_scalar(_secret(sk))).format()


def _secret(sk: bytes) -> int:
    x = int.from_bytes(sk, "big")
    if not 0 < x < N or len(sk) > 32:
        raise ValueError("VRF secret key must be an integer in [1, n-1] of at most 32 bytes")
    return x


def prove(sk: bytes, alpha: bytes) -> bytes:
    """The 81-byte proof pi for input ``alpha`` under secret key ``sk`` (big-endian, at most 32 bytes)."""
    x = _secret(sk)
    xb = _scalar(x)
    pk = PublicKey.from_valid_secret(xb).format()
    h = hash_to_curve(pk, alpha)
    if h is None:
        raise ValueError("alpha hashes to no curve point")  # 2^-256: never in practice
    hs = h.format()
    gamma = h.multiply(xb).format()
    k = _nonce(x, hs)
    kb = _scalar(k)
    c = _challenge(hs, gamma, PublicKey.from_valid_secret(kb).format(), h.multiply(kb).format())
    s = (k + c * x) % N
    return gamma + c.to_bytes(C_LEN, "big") + _scalar(s)


def decode_proof(pi: bytes) -> tuple[PublicKey, int, int]:
    """(Gamma, c, s); raises VrfProofError naming the bad part."""
    if not isinstance(pi, (bytes, bytearray, memoryview)) or len(pi) != PROOF_SIZE:
        size = len(pi) if isinstance(pi, (bytes, bytearray, memoryview)) else type(pi).__name__
        raise VrfProofError(f"expected {PROOF_SIZE} bytes, got {size}", field="pi")
    pi = bytes(pi)
    try:
        if pi[0] not in (2, 3):
            raise ValueError
        gamma = PublicKey(pi[:33])
    except ValueError:
        raise VrfProofError("not a compressed point on secp256k1", field="pi.gamma") from None
    s = int.from_bytes(pi[33 + C_LEN:], "big")
    if s >= N:
        raise VrfProofError("s is not below the group order", field="pi.s")
    return gamma, int.from_bytes(pi[33:33 + C_LEN], "big"), s


def proof_to_hash(pi: bytes) -> bytes:
    """beta, the VRF output, from a proof (raises VrfProofError for an undecodable proof).

    This does not verify the proof: use ``verify`` for anything received.
    """
    gamma, _c, _s = decode_proof(pi)
    return hashlib.sha256(SUITE + b"\x03" + gamma.format()).digest()


def _minus(a: int, p: PublicKey | None, c: int, q: PublicKey) -> PublicKey:
    """a*P - c*Q (P = None means the generator); ValueError if the result is the point at infinity."""
    neg = (-c) % N
    if p is None:
        if not neg:
            return PublicKey.from_valid_secret(_scalar(a))
        r = q.multiply(_scalar(neg))
        return r.add(_scalar(a)) if a else r  # tweak_add: r + a*G
    parts = [p.multiply(_scalar(a))] if a else []
    if neg:
        parts.append(q.multiply(_scalar(neg)))
    if not parts:
        raise ValueError("point at infinity")
    return PublicKey.combine_keys(parts) if len(parts) > 1 else parts[0]


def verify(pk: bytes, pi: bytes, alpha: bytes) -> bytes | None:
    """beta if ``pi`` proves ``alpha`` under public key ``pk``, otherwise None (never raises for bad input)."""
    try:
        gamma, c, s = decode_proof(pi)
        y = PublicKey(bytes(pk))
        pks = y.format()
        h = hash_to_curve(pks, bytes(alpha))
        if h is None:
            return None
        u = _minus(s, None, c, y)  # s*G - c*Y  = k*G for an honest proof
        v = _minus(s, h, c, gamma)  # s*H - c*Gamma = k*H
        gs = gamma.format()
        if _challenge(h.format(), gs, u.format(), v.format()) != c:
            return None
        return hashlib.sha256(SUITE + b"\x03" + gs).digest()
    except (ValueError, TypeError):  # VrfProofError is a ValueError; so are infinity and bad keys
        return None
