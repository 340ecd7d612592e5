"""Endorsement policies: which identities must vouch for a record before a chain accepts it (Fabric style).

An endorsement is a signature over the transaction's signing digest (its kind
and body, i.e. everything its id commits to but the signatures themselves) by
an identity the chain's key registry knows.  Endorsements travel in the
transaction's ``sigs`` list beside the record signer's own signature (the
signer counts as one endorser), sorted by signer, one per signer, so the list
stays canonical.

One small class per rule, chosen by name in the chain spec
(``ChainSpec.policies``: record type -> ``PolicySpec``, ``"*"`` for every
other type):

* ``and``       — every listed member endorsed;
* ``or``        — at least one listed member endorsed;
* ``k-of``      — at least ``k`` of the listed members endorsed;
* ``k-of-any``  — at least ``k`` distinct known identities endorsed.

``satisfied`` looks at the set of signers whose signatures verify; the
ledger's ``RecordKind.admit`` verifies them first (an invalid or unknown
endorsement rejects the transaction: a forged signature is never ignored),
so every replica checks the policy at admission and again in block
validation.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Iterable

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.ledger import LedgerError

MAX_POLICY_MEMBERS = 64
ANY_TYPE = "*"


@message("ledger.policy")
class PolicySpec(Message):
    """A policy on the wire (canonical CBOR in the chain spec): its rule's name, members and k."""

    name: Annotated[str, MaxLen(16)]
    members: Annotated[list[Annotated[str, MaxLen(128)]], MaxLen(MAX_POLICY_MEMBERS)] | None = None
    k: Annotated[int, Range(1, MAX_POLICY_MEMBERS)] | None = None


class Policy:
    """One endorsement rule; ``satisfied(signers)`` says whether the verified endorsers meet it."""

    name: ClassVar[str]
    needs_k: ClassVar[bool] = False
    needs_members: ClassVar[bool] = True

    def __init__(self, members: Iterable[str] = (), k: int | None = None):
        self.members = tuple(sorted(set(members)))
        self.k = k

    def satisfied(self, signers: frozenset[str]) -> bool:
        raise NotImplementedError

    @property
    def spec(self) -> PolicySpec:
        return PolicySpec(self.name, list(self.members) if self.needs_members else None,
                          self.k if self.needs_k else None)

    def validate(self, field: str) -> None:
        if self.needs_members and not self.members:
            raise LedgerError(f"policy {self.name!r} lists no members", field=f"{field}.members")
        if self.needs_k:
            bound = len(self.members) if self.needs_members else MAX_POLICY_MEMBERS
            if self.k is None or not 1 <= self.k <= bound:
                raise LedgerError(f"policy {self.name!r} needs 1 <= k <= {bound}, got {self.k}", field=f"{field}.k")

    def __repr__(self) -> str:
        k = f"{self.k}, " if self.needs_k else ""
        return f"{self.name}({k}{', '.join(self.members) if self.needs_members else 'any'})"


POLICIES: dict[str, type[Policy]] = {}


def policy(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


@policy
class AllOf(Policy):
    name = "and"

    def satisfied(self, signers: frozenset[str]) -> bool:
        return signers.issuperset(self.members)


@policy
class AnyOf(Policy):
    name = "or"

    def satisfied(self, signers: frozenset[str]) -> bool:
        return not signers.isdisjoint(self.members)


@policy
class KOf(Policy):
    name = "k-of"
    needs_k = True

    def satisfied(self, signers: frozenset[str]) -> bool:
        return self.k is not None and len(signers.intersection(self.members)) >= self.k


@policy
class KOfAny(Policy):
    name = "k-of-any"
    needs_k = True
    needs_members = False

    def satisfied(self, signers: frozenset[str]) -> bool:
        return self.k is not None and len(signers) >= self.k


def from_spec(spec: PolicySpec, field: str = "policy") -> Policy:
    """The policy a ``PolicySpec`` names, checked (LedgerError naming the field)."""
    cls = POLICIES.get(spec.name)
    if cls is None:
        raise LedgerError(f"unknown endorsement policy {spec.name!r} (known: {', '.join(sorted(POLICIES))})",
                          field=f"{field}.name")
    if not cls.needs_members and spec.members:
        raise LedgerError(f"policy {spec.name!r} takes no member list", field=f"{field}.members")
    if not cls.needs_k and spec.k is not None:
        raise LedgerError(f"policy {spec.name!r} takes no k", field=f"{field}.k")
    if spec.members is not None and list(spec.members) != sorted(set(spec.members)):
        raise LedgerError("members must be unique and sorted", field=f"{field}.members")
    p = cls(spec.members or (), spec.k)
    p.validate(field)
    return p


def for_record(policies: dict[str, PolicySpec] | None, rtype: str) -> Policy | None:
    """The policy a chain sets for records of type ``rtype`` (its own, else the ``"*"`` default), or None."""
    if not policies:
        return None
    spec = policies.get(rtype) or policies.get(ANY_TYPE)
    return from_spec(spec, f"genesis.policies[{rtype!r}]") if spec is not None else None
