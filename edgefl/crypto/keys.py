"""secp256k1 keys (coincurve): ECDSA over 32-byte digests, compact 64-byte signatures.

Key files hold the hex-encoded secret, are created with mode 0600 and replaced
atomically; loading names the file and what is wrong with it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import coincurve
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact


class KeyFileError(ValueError):
    """A key file is missing, unreadable, too open or does not hold a key."""


class VerifyingKey:
    __slots__ = ("_pub", "raw")

    def __init__(self, raw: bytes):
        try:
            self._pub = coincurve.PublicKey(bytes(raw))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a secp256k1 public key: {exc}") from None
        self.raw = self._pub.format(compressed=True)

    def verify(self, signature: bytes, digest: bytes) -> bool:
        """ECDSA check of a compact (r || s, low-s) signature over a 32-byte digest."""
        if len(signature) != 64 or len(digest) != 32:
            return False
        try:
            der = cdata_to_der(deserialize_compact(signature))
            return self._pub.verify(der, digest, hasher=None)
        except (ValueError, TypeError):
            return False

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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the secret with mode 0600, atomically (temp file, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (self.secret.hex() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SigningKey":
        path = Path(path)
        try:
            st = path.stat()
            text = path.read_text().strip()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path}: key file is accessible by others (mode {st.st_mode & 0o777:o}); run chmod 600")
        try:
            secret = bytes.fromhex(text)
            if len(secret) != 32:
                raise ValueError(f"{len(secret)} bytes, expected 32")
            return cls(secret)
        except ValueError as exc:
            raise KeyFileError(f"{path}: not a secp256k1 secret key ({exc})") from None


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
