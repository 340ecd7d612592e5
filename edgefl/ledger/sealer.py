"""Sealers: who may close a block, and the certificate that proves it.

One small class per strategy, chosen by the chain spec's ``sealer`` name:

* ``single`` — the block's proposer, a committee member, signs the block hash.
* ``quorum`` — at least ``threshold`` committee members sign it (the shape a
  committee consensus such as PBFT hands over as its commit certificate).

``seal`` runs on the node that builds the block; ``verify`` is a class method
because checking a seal needs only the chain spec, never a secret key.
"""

from __future__ import annotations

from typing import ClassVar, Iterable

from edgefl.crypto import SigningKey
from edgefl.ledger.block import Header, Seal
from edgefl.ledger.committee import sign_all
from edgefl.ledger.errors import InvalidBlock


class Sealer:
    name: ClassVar[str]

    def __init__(self, proposer: str, keys: Iterable[tuple[str, SigningKey]]):
        self.proposer = proposer
        self.keys = list(keys)

    def seal(self, block_hash: bytes) -> Seal:
        return Seal(self.name, sign_all(block_hash, self.keys))

    @classmethod
    def verify(cls, block_hash: bytes, header: Header, seal: Seal, spec) -> None:
        raise NotImplementedError


SEALERS: dict[str, type[Sealer]] = {}


def sealer(cls: type[Sealer]) -> type[Sealer]:
    SEALERS[cls.name] = cls
    return cls


def _check_name(seal: Seal, spec) -> None:
    if seal.sealer != spec.sealer:
        raise InvalidBlock(f"sealed by {seal.sealer!r}, the chain uses {spec.sealer!r}", field="block.seal.sealer",
                           reason="bad_seal")


@sealer
class SingleSealer(Sealer):
    name = "single"

    def __init__(self, proposer: str, key: SigningKey):
        super().__init__(proposer, [(proposer, key)])

    @classmethod
    def verify(cls, block_hash, header, seal, spec):
        _check_name(seal, spec)
        if len(seal.sigs) != 1 or seal.sigs[0].signer != header.proposer:
            raise InvalidBlock("one signature, by the proposer", field="block.seal.sigs", reason="bad_seal")
        key = spec.committee.key_of(header.proposer)
        if key is None:
            raise InvalidBlock(f"proposer {header.proposer!r} is not in the committee", field="header.proposer",
                               reason="bad_seal")
        if not key.verify(seal.sigs[0].sig, block_hash):
            raise InvalidBlock("seal signature does not verify", field="block.seal.sigs[0]", reason="bad_seal")


@sealer
class QuorumSealer(Sealer):
    name = "quorum"

    @classmethod
    def verify(cls, block_hash, header, seal, spec):
        _check_name(seal, spec)
        if spec.committee.key_of(header.proposer) is None:
            raise InvalidBlock(f"proposer {header.proposer!r} is not in the committee", field="header.proposer",
                               reason="bad_seal")
        spec.committee.verify_quorum(block_hash, seal.sigs, field="block.seal.sigs", error=InvalidBlock)


def make_sealer(name: str, proposer: str, keys: dict[str, SigningKey]) -> Sealer:
    """The sealer ``name`` for a node holding ``keys`` (its own, and co-signers' for ``quorum``)."""
    cls = SEALERS.get(name)
    if cls is None:
        raise ValueError(f"unknown sealer {name!r} (known: {', '.join(sorted(SEALERS))})")
    if cls is SingleSealer:
        return SingleSealer(proposer, keys[proposer])
    return cls(proposer, keys.items())
