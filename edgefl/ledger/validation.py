"""Validate a block against the chain it extends, and build (mine) one.

Validation order is cheapest-first and stops at the first fault: size and
canonical form, header linkage, the seal (a forged block costs one signature
check), then every transaction (decoded and its signatures checked unless this
node admitted it before; chain rules in order against a copy of the state),
the Merkle root and finally the accumulator step.  Every failure is an ``InvalidBlock`` naming the field.

Both halves split for a committee consensus: ``propose_block`` builds the
unsealed block (its seal carries no signatures), ``validate_proposal`` checks
everything but the seal, so a replica can vote on it; ``finish_block`` attaches
the certificate the committee gathered and ``check_seal`` verifies it.
``build_block`` and ``validate_block`` are the two halves run back to back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

from edgefl.consensus.proposal import check_header
from edgefl.crypto import KeyRegistry, accumulator, merkle_root
from edgefl.ledger.block import (
    MAX_BLOCK_LIMIT,
    Header,
    Seal,
    Tip,
    block_hash,
    decode_block,
    decode_header,
    encode_block,
    encode_header,
    frame_tx,
)
from edgefl.ledger.errors import InvalidBlock, InvalidTx
from edgefl.ledger.sealer import SEALERS, Sealer
from edgefl.ledger.tx import State, TxInfo, decode_tx, txid


@dataclass(frozen=True, slots=True)
class Verified:
    """A block that passed validation (or was just built), with everything derived from it."""

    raw: bytes
    header: Header
    header_bytes: bytes
    hash: bytes
    seal: Seal
    txs: list[TxInfo]
    element: int
    acc: int

    @property
    def tip(self) -> Tip:
        return Tip(self.header.height, self.hash, self.acc, self.header.ts)

    def framed(self) -> bytes:
        return b"".join(frame_tx(t.raw) for t in self.txs)


def _fail(message: str, field: str, reason: str = "invalid_block"):
    raise InvalidBlock(message, field=field, reason=reason)


def validate_block(raw: bytes, tip: Tip, state: State, registry: KeyRegistry | None = None, *,
                   seen: Callable[[bytes], bool] | None = None,
                   admitted: Mapping[bytes, TxInfo] | None = None) -> tuple[Verified, State]:
    """Check ``raw`` as the block after ``tip``, seal included; returns it and the state after it.

    ``seen(txid)`` says whether a transaction is already on the chain;
    ``admitted`` maps ids of transactions this node admitted before (decoded,
    signatures and spec rules checked) to their decoded form.
    """
    return _validate(raw, tip, state, registry, seen, admitted, sealed=True)


def validate_proposal(raw: bytes, tip: Tip, state: State, registry: KeyRegistry | None = None, *,
                      seen: Callable[[bytes], bool] | None = None,
                      admitted: Mapping[bytes, TxInfo] | None = None) -> tuple[Verified, State]:
    """``validate_block`` without the seal: what a replica checks before it votes for a proposed block."""
    return _validate(raw, tip, state, registry, seen, admitted, sealed=False)


def check_seal(block: Verified, spec) -> None:
    """Raise ``InvalidBlock`` unless ``block``'s seal is a valid certificate of ``spec``'s sealer."""
    sealer = SEALERS.get(block.seal.sealer)
    if sealer is None:
        _fail(f"unknown sealer {block.seal.sealer!r}", "block.seal.sealer", "bad_seal")
    sealer.verify(block.hash, block.header, block.seal, spec)


def _validate(raw, tip, state, registry, seen, admitted, *, sealed: bool) -> tuple[Verified, State]:
    spec = state.effective  # with epochs: the genesis spec with the committee of the block's epoch
    block = decode_block(raw, spec.max_block if spec else MAX_BLOCK_LIMIT)
    header = decode_header(block.header, "block.header")
    if header.height != tip.height + 1:
        _fail(f"height {header.height}, expected {tip.height + 1}", "header.height", "bad_link")
    if header.prev != tip.hash:
        _fail("does not point at the previous block's hash", "header.prev", "bad_link")
    if header.ts < tip.ts:
        _fail(f"timestamp {header.ts} before the previous block's {tip.ts}", "header.ts", "bad_link")
    if header.n != len(block.txs):
        _fail(f"says {header.n} transactions, block holds {len(block.txs)}", "header.n")
    if len(header.root) != 32 or len(header.acc) != accumulator.ELEMENT_BYTES:
        _fail("root is 32 bytes and acc 256", "header.root" if len(header.root) != 32 else "header.acc")
    new = state.copy()
    if spec is None:  # block 0 carries the spec its own seal is checked against
        if len(block.txs) != 1:
            _fail("block 0 holds exactly the genesis spec", "block.txs")
        genesis = _tx(block.txs[0], 0, new, registry)
        if genesis.kind.name != "genesis":
            _fail("block 0 holds exactly the genesis spec", "block.txs[0].kind")
        spec = new.spec
        infos = [genesis]
    if header.chain != spec.chain:
        _fail(f"chain {header.chain!r}, expected {spec.chain!r}", "header.chain", "wrong_chain")
    if len(raw) > spec.max_block:
        _fail(f"{len(raw)} bytes exceeds the block limit of {spec.max_block}", "block", "too_large")
    h = block_hash(block.header)
    if sealed:  # before the transactions: a forged block costs one signature check
        check_seal(Verified(raw, header, block.header, h, block.seal, [], 0, 0), spec)
    elif spec.committee.key_of(header.proposer) is None:
        _fail(f"proposer {header.proposer!r} is not in the committee", "header.proposer", "bad_seal")
    check_header(spec, header, tip)  # the proposer's claim under the chain's proposal rule
    if header.height:
        ids: set[bytes] = set()
        infos = []
        for i, raw_tx in enumerate(block.txs):
            info = _tx(raw_tx, i, new, registry, admitted, seen, ids)
            ids.add(info.id)
            infos.append(info)
        # a chain with epochs: each epoch's last block holds exactly the committee change, and no other holds one
        boundary = spec.epochs is not None and header.height % spec.epochs.blocks == 0
        if boundary != (len(infos) == 1 and infos[0].kind.name == "epoch") and (
                boundary or any(t.kind.name == "epoch" for t in infos)):
            _fail(f"block {header.height} {'must hold exactly' if boundary else 'holds'} an epoch change",
                  "block.txs", "bad_epoch")
    if merkle_root([t.id for t in infos]) != header.root:
        _fail("Merkle root of the transactions differs", "header.root", "bad_root")
    element = header.element()
    acc = accumulator.update(tip.acc, element)
    if accumulator.to_bytes(acc) != header.acc:
        _fail("accumulator is not the previous one raised to this block's element", "header.acc", "bad_accumulator")
    return Verified(raw, header, block.header, h, block.seal, infos, element, acc), new


def _tx(raw: bytes, i: int, state: State, registry, admitted=None, seen=None, ids=()) -> TxInfo:
    where = f"block.txs[{i}]"
    try:
        info = admitted.get(txid(raw)) if admitted else None
        if info is None:
            info = decode_tx(raw, where)
            info.kind.admit(info, state.spec, registry)
        if info.id in ids or (seen is not None and seen(info.id)):
            raise InvalidTx("already on the chain", field=where, reason="duplicate")
        info.kind.check(info, state)
        info.kind.apply(info, state)
        return info
    except InvalidTx as exc:
        field = exc.field if exc.field and exc.field.startswith(where) else f"{where} ({exc.field or 'tx'})"
        raise InvalidBlock(exc.detail, field=field, reason=exc.reason) from None


def propose_block(tip: Tip, chain: str, txs: list[TxInfo], proposer: str, ts_ms: int, *, sealer: str = "quorum",
                  root: bytes | None = None, framed: bytes | None = None,
                  claim: Callable[[Header], Header] | None = None) -> Verified:
    """The unsealed block after ``tip`` holding ``txs`` (already validated in this order).

    Its seal names ``sealer`` and holds no signatures yet.  ``root`` and
    ``framed``: the Merkle root of the transaction ids and the framed
    transactions, when the caller kept them up to date as they came.
    ``claim``: the proposal rule's header fields (``consensus.proposal``).
    """
    header = Header(chain=chain, height=tip.height + 1, prev=tip.hash, ts=max(ts_ms, tip.ts),
                    root=merkle_root([t.id for t in txs]) if root is None else root, n=len(txs), acc=b"",
                    proposer=proposer)
    if claim is not None:  # the proposal rule's proof (view, VRF proof, mined nonce): before the accumulator
        header = claim(header)
    element = header.element()
    acc = accumulator.update(tip.acc, element)
    header = dataclasses.replace(header, acc=accumulator.to_bytes(acc))
    header_bytes = encode_header(header)
    seal = Seal(sealer, [])
    framed = b"".join(frame_tx(t.raw) for t in txs) if framed is None else framed
    raw = encode_block(header_bytes, seal, len(txs), framed)
    return Verified(raw, header, header_bytes, block_hash(header_bytes), seal, list(txs), element, acc)


def finish_block(block: Verified, seal: Seal, *, framed: bytes | None = None) -> Verified:
    """``block`` with ``seal`` attached (not checked here: ``check_seal`` does that)."""
    raw = encode_block(block.header_bytes, seal, len(block.txs), block.framed() if framed is None else framed)
    return dataclasses.replace(block, raw=raw, seal=seal)


def build_block(tip: Tip, chain: str, txs: list[TxInfo], sealer: Sealer, ts_ms: int, *,
                root: bytes | None = None, framed: bytes | None = None) -> Verified:
    """Mine: the block after ``tip`` holding ``txs`` (already validated in this order), sealed by ``sealer``."""
    framed = b"".join(frame_tx(t.raw) for t in txs) if framed is None else framed
    block = propose_block(tip, chain, txs, sealer.proposer, ts_ms, sealer=sealer.name, root=root, framed=framed)
    return finish_block(block, sealer.seal(block.hash), framed=framed)
