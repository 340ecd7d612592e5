"""Behaviour evidence: what a committee member did, recorded as a Type-I record.

A consensus protocol speaks in *statements*: small @messages its members sign
(a PBFT pre-prepare or prepare, an FFG vote).  A statement names the slot it
claims (``slot()``: e.g. view and height) and its signer; an honest member
signs at most one statement per slot, so two validly signed statements that
``conflict`` are a proof of equivocation that anyone holding the committee's
keys can check, without trusting whoever reports it.

``Behaviour`` carries such proofs: ``proposed`` and ``voted`` one signed
statement, ``equivocated`` two conflicting ones, ``silent`` none (the record's
own signer, a committee member, attests it; the incentive layer weighs it
accordingly).  ``check_behaviour`` verifies a record against the committee.

Statement bytes in a proof: canonical CBOR ``[type, version, map]``.  A protocol
whose conflicts are not "same slot, different content" (FFG surround votes)
overrides ``conflicts``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, ClassVar

from edgefl import codec
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import SigningKey, tagged_hash
from edgefl.ledger import Committee, LedgerError

KINDS = ("proposed", "voted", "equivocated", "silent")
MAX_STATEMENT = 8 << 10
STATEMENT_LIMITS = codec.Limits(max_size=MAX_STATEMENT, max_depth=4, max_items=64)
STATEMENT_TAG = b"edgefl/consensus/statement/v1"


class InvalidEvidence(LedgerError):
    reason = "bad_evidence"


class Statement(Message):
    """Base of signed consensus statements; subclasses are @messages with ``signer`` and ``sig`` fields."""

    TAG: ClassVar[bytes] = STATEMENT_TAG
    signer: str
    sig: bytes

    def body(self) -> dict[str, Any]:
        wire = self.to_wire()
        wire.pop("sig", None)
        return wire

    def digest(self) -> bytes:
        """What ``sig`` signs: the statement's type, version and every field but ``sig``."""
        return tagged_hash(self.TAG, codec.encode([self.TYPE, self.VERSION, self.body()]))

    def slot(self) -> tuple | None:
        """The position this statement claims (None: it claims none, it can never conflict)."""
        return None

    def conflicts(self, other: "Statement") -> bool:
        slot = self.slot()
        return (type(other) is type(self) and other.signer == self.signer and slot is not None
                and other.slot() == slot and other.body() != self.body())

    def signed(self, key: SigningKey):
        """This statement signed with ``key`` (by ``self.signer``)."""
        return dataclasses.replace(self, sig=key.sign(self.digest()))

    def verify(self, committee: Committee, field: str = "statement") -> None:
        key = committee.key_of(self.signer)
        if key is None:
            raise InvalidEvidence(f"{self.signer!r} is not a committee member", field=f"{field}.signer",
                                  reason="not_member")
        if not key.verify(self.sig, self.digest()):
            raise InvalidEvidence(f"signature of {self.signer!r} does not verify", field=f"{field}.sig",
                                  reason="bad_signature")


def encode_statement(st: Statement) -> bytes:
    return codec.encode([st.TYPE, st.VERSION, codec.message_to_wire(st)])


def decode_statement(raw: bytes, field: str = "statement") -> Statement:
    try:
        value = codec.decode(raw, STATEMENT_LIMITS, canonical=True)
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
                and isinstance(value[1], int)):
            raise codec.SchemaError("expected [type, version, map]", field=field)
        cls = codec.lookup(value[0], value[1])
        if not issubclass(cls, Statement):
            raise codec.SchemaError(f"{value[0]!r} is not a consensus statement", field=field)
        return cls.from_wire(value[2], field)
    except codec.CodecError as exc:
        raise InvalidEvidence(str(exc), field=field, reason=exc.reason) from None


@message("consensus.behaviour", max_size=32 << 10)
class Behaviour(Message):
    """Type-I: ``member`` of ``chain``'s committee did ``kind`` at (view, height, epoch); ``proof`` shows it."""

    chain: Annotated[str, MaxLen(64)]
    member: Annotated[str, MaxLen(128)]
    kind: Annotated[str, MaxLen(16)]
    view: Annotated[int, Range(0)]
    height: Annotated[int, Range(-1)]
    epoch: Annotated[int, Range(0)]
    proof: Annotated[list[Annotated[bytes, MaxLen(MAX_STATEMENT)]], MaxLen(2)]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise codec.SchemaError(f"{self.kind!r} is not one of {', '.join(KINDS)}", field="consensus.behaviour.kind")


def equivocation(a: Statement, b: Statement, *, chain: str, view: int = 0, height: int = -1,
                 epoch: int = 0) -> Behaviour:
    """The record proving that ``a.signer`` signed both ``a`` and ``b``."""
    first, second = sorted((encode_statement(a), encode_statement(b)))  # one canonical record per pair
    return Behaviour(chain, a.signer, "equivocated", view, height, epoch, [first, second])


def check_behaviour(b: Behaviour, committee: Committee) -> list[Statement]:
    """Raise ``InvalidEvidence`` unless ``b``'s proof shows what it claims; returns the decoded statements."""
    if committee.key_of(b.member) is None:
        raise InvalidEvidence(f"{b.member!r} is not a committee member", field="behaviour.member",
                              reason="not_member")
    want = {"proposed": 1, "voted": 1, "equivocated": 2, "silent": 0}[b.kind]
    if len(b.proof) != want:
        raise InvalidEvidence(f"{b.kind} takes {want} signed statements, got {len(b.proof)}",
                              field="behaviour.proof", reason="bad_evidence")
    sts = [decode_statement(raw, f"behaviour.proof[{i}]") for i, raw in enumerate(b.proof)]
    for i, st in enumerate(sts):
        if st.signer != b.member:
            raise InvalidEvidence(f"signed by {st.signer!r}, not {b.member!r}", field=f"behaviour.proof[{i}].signer",
                                  reason="wrong_signer")
        st.verify(committee, f"behaviour.proof[{i}]")
    if b.kind == "equivocated" and not sts[0].conflicts(sts[1]):
        raise InvalidEvidence("the two statements do not conflict", field="behaviour.proof",
                              reason="no_conflict")
    return sts
