"""secp256k1 keys (coincurve): ECDSA and BIP340 Schnorr over 32-byte digests, 64-byte signatures.

ECDSA (compact r || s, low-s) signs envelopes; BIP340 Schnorr signs the
long-lived records that are referenced by hash (certificates, CRLs): its
signatures are non-malleable by construction and verify against the x-only
form of the same public key.

Key files hold the hex-encoded secret, are created with mode 0600 and replaced
atomically; loading names the file and what is wrong with it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import coincurve
from coincurve._libsecp256k1 import lib as _secp
from coincurve.context import GLOBAL_CONTEXT
from coincurve.ecdsa import der_to_cdata, deserialize_compact, serialize_compact

from edgefl.errors import EdgeflError
from edgefl.runtime import write_atomic


class KeyFileError(EdgeflError, ValueError):
    """A key file is missing, unreadable, too open or does not hold a key."""

    reason = "key_file"


class VerifyingKey:
    __slots__ = ("_pub", "_xonly", "raw")

    def __init__(self, raw: bytes):
        try:
            self._pub = coincurve.PublicKey(bytes(raw))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a secp256k1 public key: {exc}") from None
        self.raw = self._pub.format(compressed=True)
        self._xonly = None

    def verify(self, signature: bytes, digest: bytes) -> bool:
        """ECDSA check of a compact (r || s, low-s) signature over a 32-byte digest."""
        if len(signature) != 64 or len(digest) != 32:
            return False
        try:  # straight to libsecp256k1 (which rejects high-s): no DER round trip, a third faster
            sig = deserialize_compact(bytes(signature))
            return _secp.secp256k1_ecdsa_verify(GLOBAL_CONTEXT.ctx, sig, bytes(digest), self._pub.public_key) == 1
        except (ValueError, TypeError):
            return False

    def verify_schnorr(self, signature: bytes, digest: bytes) -> bool:
        """BIP340 check of a 64-byte signature over a 32-byte digest (against the x-only key)."""
        if len(signature) != 64 or len(digest) != 32:
            return False
        if self._xonly is None:
            self._xonly = coincurve.PublicKeyXOnly(self.raw[1:])
        return self._xonly.verify(bytes(signature), bytes(digest))

    @property
    def point(self) -> coincurve.PublicKey:
        """The coincurve point, for protocols that do arithmetic on keys (ECVRF)."""
        return self._pub

    def hex(self) -> str:
        return self.raw.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyingKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyingKey({self.raw.hex()[:16]}…)"


class SigningKey:
    __slots__ = ("_priv", "public_key")

    def __init__(self, secret: bytes | None = None):
        self._priv = coincurve.PrivateKey(secret) if secret is not None else coincurve.PrivateKey()
        self.public_key = VerifyingKey(self._priv.public_key.format(compressed=True))

    @property
    def secret(self) -> bytes:
        return self._priv.secret

    def sign(self, digest: bytes) -> bytes:
        """Deterministic (RFC 6979) ECDSA over a 32-byte digest, as 64 compact bytes."""
        if len(digest) != 32:
            raise ValueError("ECDSA signs a 32-byte digest")
        return serialize_compact(der_to_cdata(self._priv.sign(digest, hasher=None)))

    def sign_schnorr(self, digest: bytes, aux: bytes | None = None) -> bytes:
        """BIP340 Schnorr over a 32-byte digest; ``aux`` is the 32-byte auxiliary randomness (fresh by default)."""
        if len(digest) != 32:
            raise ValueError("Schnorr signs a 32-byte digest")
        return self._priv.sign_schnorr(bytes(digest), os.urandom(32) if aux is None else aux)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the secret with mode 0600, atomically (temp file, fsync, rename)."""
        return write_private(path, (self.secret.hex() + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SigningKey":
        path = Path(path)
        text = read_private(path).decode(errors="replace").strip()
        try:
            secret = bytes.fromhex(text)
            if len(secret) != 32:
                raise ValueError(f"{len(secret)} bytes, expected 32")
            return cls(secret)
        except ValueError as exc:
            raise KeyFileError(f"{path}: not a secp256k1 secret key ({exc})") from None


def write_private(path: str | os.PathLike, data: bytes) -> Path:
    """Write a secret file with mode 0600, atomically."""
    return write_atomic(path, data, mode=0o600)


def read_private(path: str | os.PathLike) -> bytes:
    """Read a secret file, refusing one that group or others may access."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: key file is accessible by others (mode {st.st_mode & 0o777:o}); run chmod 600")
    return data


def save_public(key: VerifyingKey, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key.hex() + "\n")
    return path


def load_public(path: str | os.PathLike) -> VerifyingKey:
    path = Path(path)
    try:
        return VerifyingKey(bytes.fromhex(path.read_text().strip()))
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read public key ({exc.strerror})") from None
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a secp256k1 public key ({exc})") from None
