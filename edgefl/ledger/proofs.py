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

Many transactions at once (``BatchProof``): the same Merkle paths, and the
blocks' memberships checked together, never one exponentiation per block:

* ``aggregated`` (Protocol 2, the default): the prover sends one witness W
  for the set S of blocks, ``acc[m-1] ** ∏{element[j] : m < j ≤ at, j ∉ S}``
  with m the lowest block of S, so that W ** ∏ element[S] = acc, and a
  Wesolowski proof of that exponentiation; the verifier does two 128-bit
  exponentiations whatever |S| is.
* ``weighted``: one witness per block, checked together by the
  small-exponent test (``edgefl.crypto.accumulator.batch``).

The design's Protocol 3 (the unweighted product check) is never used here:
it accepts forged batches.
"""

from __future__ import annotations

from typing import Annotated

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import accumulator, merkle_path, merkle_verify
from edgefl.crypto.accumulator.batch import AggregateProof, batch_verify, poe_prove, verify_aggregate
from edgefl.crypto.accumulator.membership import product
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


BATCH_METHODS = ("aggregated", "weighted")
MAX_BATCH = 64  # transactions per batch proof: bounds the message (64 × a 1 MiB transaction at most)


@message("ledger.batch-proof", max_size=MAX_BATCH * (MAX_TX + (16 << 10)))
class BatchProof(Message):
    """Several transactions of one chain against one accumulator value (see the module docstring)."""

    chain: Annotated[str, MaxLen(64)]
    at: Annotated[int, Range(0)]
    method: Annotated[str, MaxLen(16)]
    items: Annotated[list[TxProof], MaxLen(MAX_BATCH)]  # witness empty for ``aggregated``
    aggregate: Annotated[list[Annotated[bytes, MaxLen(accumulator.ELEMENT_BYTES)]], MaxLen(2)]  # [W, Q]


def make_aggregate(prev_acc: int, later: list[int], members: list[int], acc: int) -> list[bytes]:
    """[W, Q] for blocks with elements ``members`` whose lowest has predecessor value ``prev_acc``.

    ``later``: the elements after that lowest block, up to the trusted value's height, that are not members.
    """
    w = witness_for(prev_acc, later)
    q = poe_prove(w, int(product(members)), acc)
    return [accumulator.to_bytes(w), accumulator.to_bytes(q)]


def verify_batch_proof(proof: BatchProof, acc: int, *, chain: str | None = None, at: int | None = None,
                       what: str = "proof") -> list[tuple[TxInfo, Header]]:
    """Check every transaction of ``proof`` against the trusted ``acc``; returns them with their headers."""
    if proof.method not in BATCH_METHODS:
        raise ProofError(f"method {proof.method!r} is not one of {', '.join(BATCH_METHODS)}",
                         field=f"{what}.method")
    if not proof.items:
        raise ProofError("proves no transaction", field=f"{what}.items")
    if chain is not None and proof.chain != chain:
        raise ProofError(f"proves transactions of {proof.chain!r}, not {chain!r}", field=f"{what}.chain")
    if at is not None and proof.at != at:
        raise ProofError(f"proof is for height {proof.at}, the trusted value is at {at}", field=f"{what}.at")
    opened = [_open(item, chain=proof.chain, at=proof.at, what=f"{what}.items[{i}]")
              for i, item in enumerate(proof.items)]
    if proof.method == "aggregated":
        elements = list(dict.fromkeys(h.element() for _, h in opened))  # distinct blocks, in order
        try:
            agg = AggregateProof(*(accumulator.from_bytes(b) for b in proof.aggregate))
        except (TypeError, ValueError) as exc:
            raise ProofError(f"aggregate witness: {exc}", field=f"{what}.aggregate") from None
        ok = verify_aggregate(agg, elements, acc)
    else:
        try:
            witnesses = [accumulator.from_bytes(item.witness) for item in proof.items]
        except ValueError as exc:
            raise ProofError(str(exc), field=f"{what}.items.witness") from None
        ok = batch_verify([(h.element(), acc) for _, h in opened], witnesses, method="weighted")
    if not ok:
        raise ProofError(f"blocks {sorted({h.height for _, h in opened})} are not all members of the trusted "
                         "accumulator", field=f"{what}.aggregate", reason="not_member")
    return opened


def verify_proof(proof: TxProof, acc: int, *, chain: str | None = None, at: int | None = None,
                 what: str = "proof") -> tuple[TxInfo, Header]:
    """Check ``proof`` against the trusted accumulator value ``acc``; returns the transaction and its header."""
    info, header = _open(proof, chain=chain, at=at, what=what)
    try:
        witness = accumulator.from_bytes(proof.witness)
    except ValueError as exc:
        raise ProofError(str(exc), field=f"{what}.witness") from None
    if not accumulator.verify_membership(witness, header.element(), acc):
        raise ProofError(f"block {header.height} is not a member of the trusted accumulator",
                         field=f"{what}.witness", reason="not_member")
    return info, header


def _open(proof: TxProof, *, chain: str | None, at: int | None, what: str) -> tuple[TxInfo, Header]:
    """Everything of a proof but the membership: chain, height, decoding, the Merkle path to the block's root."""
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
    return info, header
