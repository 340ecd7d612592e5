"""Signatures on ledger objects and the committees that give them.

A committee is a list of (node id, secp256k1 public key) and a threshold.  A
quorum is a list of signatures sorted by signer id, each signer a member at
most once, every signature valid, at least ``threshold`` of them: sorting and
uniqueness make the signature list itself canonical, so the bytes of a
transaction or a block seal cannot be reshuffled into a second valid form.
"""

from __future__ import annotations

from typing import Annotated, Iterable

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import SigningKey, VerifyingKey
from edgefl.ledger.errors import LedgerError

MAX_MEMBERS = 64
_keys: dict[bytes, VerifyingKey] = {}


def verifying_key(raw: bytes) -> VerifyingKey:
    """Parsed public keys, cached: committees are few and parsing costs more than a lookup."""
    key = _keys.get(raw)
    if key is None:
        key = VerifyingKey(raw)
        if len(_keys) < 4096:
            _keys[raw] = key
    return key


@message("ledger.sig")
class Sig(Message):
    signer: Annotated[str, MaxLen(128)]
    sig: Annotated[bytes, MaxLen(64)]


@message("ledger.member")
class Member(Message):
    id: Annotated[str, MaxLen(128)]
    key: Annotated[bytes, MaxLen(33)]


@message("ledger.committee")
class Committee(Message):
    members: Annotated[list[Member], MaxLen(MAX_MEMBERS)]
    threshold: Annotated[int, Range(1, MAX_MEMBERS)]

    @classmethod
    def of(cls, members: Iterable[tuple[str, VerifyingKey]], threshold: int | None = None) -> "Committee":
        ms = sorted((Member(i, k.raw) for i, k in members), key=lambda m: m.id)
        return cls(ms, threshold if threshold is not None else len(ms) // 2 + 1)

    @classmethod
    def bft(cls, members: Iterable[tuple[str, VerifyingKey]]) -> "Committee":
        """A committee whose quorums tolerate f byzantine members of n = 3f+1 (threshold ``bft_threshold(n)``)."""
        members = list(members)
        return cls.of(members, bft_threshold(len(members)))

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.members]

    @property
    def faults(self) -> int:
        """How many byzantine members it tolerates: two quorums share f+1 members, and n-f members make one."""
        n = len(self.members)
        return max(0, min(2 * self.threshold - n - 1, n - self.threshold))

    def validate(self, field: str) -> None:
        ids = [m.id for m in self.members]
        if not ids or ids != sorted(set(ids)):
            raise LedgerError("members must be non-empty, unique and sorted by id", field=f"{field}.members")
        if self.threshold > len(ids):
            raise LedgerError(f"threshold {self.threshold} exceeds {len(ids)} members", field=f"{field}.threshold")
        for i, m in enumerate(self.members):
            try:
                verifying_key(m.key)
            except ValueError as exc:
                raise LedgerError(str(exc), field=f"{field}.members[{i}].key") from None

    def key_of(self, member: str) -> VerifyingKey | None:
        for m in self.members:
            if m.id == member:
                return verifying_key(m.key)
        return None

    def verify_quorum(self, digest: bytes, sigs: list[Sig], *, field: str,
                      error: type[LedgerError] = LedgerError) -> None:
        """Raise ``error`` unless ``sigs`` is a canonical quorum of this committee over ``digest``."""
        signers = [s.signer for s in sigs]
        if signers != sorted(set(signers)):
            raise error("signatures must be sorted by signer, one per signer", field=field, reason="bad_quorum")
        if len(sigs) < self.threshold:
            raise error(f"{len(sigs)} signatures, quorum is {self.threshold}", field=field, reason="bad_quorum")
        for i, s in enumerate(sigs):
            key = self.key_of(s.signer)
            if key is None:
                raise error(f"{s.signer!r} is not a committee member", field=f"{field}[{i}]", reason="bad_quorum")
            if not key.verify(s.sig, digest):
                raise error(f"signature of {s.signer!r} does not verify", field=f"{field}[{i}]",
                            reason="bad_signature")


def bft_threshold(n: int) -> int:
    """⌈(2n+1)/3⌉: the smallest quorum any two of which share an honest member when ⌊(n-1)/3⌋ are byzantine."""
    return (2 * n + 3) // 3


def sign_all(digest: bytes, signers: Iterable[tuple[str, SigningKey]]) -> list[Sig]:
    return sorted((Sig(node, key.sign(digest)) for node, key in signers), key=lambda s: s.signer)
