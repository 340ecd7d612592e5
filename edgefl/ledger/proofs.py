"""Membership proofs: a transaction is in a chain whose accumulator value you trust.

    proof = (tx bytes, header of its block, Merkle path of its id, witness)

The verifier hashes the transaction, walks the Merkle path to the header's
root, derives the block's accumulator element from the header (it binds the
height and everything but the accumulator value), and checks
``witness ** element == acc`` for the trusted ``acc``.  The seal is not
needed: a trusted accumulator value (a quorum-signed Type-II or Type-III)
already commits to the whole history up to its height.

The prover's witness for the block at height h against the value at height
``at`` is ``acc[h-1] ** (element[h+1] · … · element[at])``.
"""

from __future__ import annotations

from typing import Annotated

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import accumulator
from edgefl.crypto.hashing import merkle_path, merkle_verify
from edgefl.ledger.block import Header, decode_header
from edgefl.ledger.errors import LedgerError, ProofError, relabel
from edgefl.ledger.tx import MAX_TX, TxInfo, decode_tx, txid


@message("ledger.tx-proof", max_size=MAX_TX + (16 << 10))
class TxProof(Message):
    chain: Annotated[str, MaxLen(64)]
    tx: Annotated[bytes, MaxLen(MAX_TX)]
    header: Annotated[bytes, MaxLen(2048)]
    index: Annotated[int, Range(0)]
    path: Annotated[list[Annotated[bytes, MaxLen(32)]], MaxLen(64)]
    at: Annotated[int, Range(0)]
    witness: Annotated[bytes, MaxLen(accumulator.ELEMENT_BYTES)]


def witness_for(prev_acc: int, later_elements: list[int]) -> int:
    """Witness of a block whose predecessor's accumulator is ``prev_acc``, against a later value."""
    return accumulator.update_witness(prev_acc, later_elements)


def make_proof(chain: str, tx: bytes, header: bytes, index: int, block_txids: list[bytes], at: int,
               witness: int) -> TxProof:
    return TxProof(chain, tx, header, index, merkle_path(block_txids, index), at, accumulator.to_bytes(witness))


def verify_proof(proof: TxProof, acc: int, *, chain: str | None = None, at: int | None = None,
                 what: str = "proof") -> tuple[TxInfo, Header]:
    """Check ``proof`` against the trusted accumulator value ``acc``; returns the transaction and its header."""
    if chain is not None and proof.chain != chain:
        raise ProofError(f"proves a transaction of {proof.chain!r}, not {chain!r}", field=f"{what}.chain")
    if at is not None and proof.at != at:
        raise ProofError(f"witness is for height {proof.at}, the trusted value is at {at}", field=f"{what}.at")
    try:
        header = decode_header(proof.header, f"{what}.header")
        info = decode_tx(proof.tx, f"{what}.tx")
    except LedgerError as exc:
        raise relabel(exc, ProofError) from None
    if header.chain != proof.chain:
        raise ProofError(f"header of chain {header.chain!r}", field=f"{what}.header.chain")
    if header.height > proof.at:
        raise ProofError(f"block {header.height} is after height {proof.at}", field=f"{what}.header.height")
    if not merkle_verify(txid(proof.tx), proof.index, header.n, proof.path, header.root):
        raise ProofError("Merkle path does not lead to the block's root", field=f"{what}.path", reason="bad_path")
    try:
        witness = accumulator.from_bytes(proof.witness)
    except ValueError as exc:
        raise ProofError(str(exc), field=f"{what}.witness") from None
    if not accumulator.verify_membership(witness, header.element(), acc):
        raise ProofError(f"block {header.height} is not a member of the trusted accumulator",
                         field=f"{what}.witness", reason="not_member")
    return info, header
