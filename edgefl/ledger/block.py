"""Block wire format and the digests derived from it.

    block   = canonical CBOR {"header": bstr, "seal": {"sealer", "sigs"}, "txs": [bstr, ...]}
    header  = canonical CBOR {chain, height, prev, ts, root, n, acc, proposer[, view, nonce, vrf]}
    hash    = tagged_hash("edgefl/ledger/block/v1", header)       what the seal signs; next block's prev
    content = tagged_hash("edgefl/ledger/content/v1", header without acc)
    element = accumulator.representative(content, height)         the prime this block adds
    acc     = accumulator.update(acc of the previous block, element)

``root`` is the RFC 6962 Merkle root of the transaction ids.  The header and
the transactions travel as byte strings so every hash and signature is over
exact bytes; the accumulator element covers everything but the accumulator
value itself (which it determines), and binds the height, so an element can
stand for one block at one position only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from edgefl import codec
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import accumulator, tagged_hash
from edgefl.ledger.committee import Sig
from edgefl.ledger.errors import InvalidBlock, relabel

BLOCK_TAG = b"edgefl/ledger/block/v1"
CONTENT_TAG = b"edgefl/ledger/content/v1"
ZERO_HASH = bytes(32)
HEADER_LIMITS = codec.Limits(max_size=2048, max_depth=2, max_items=32)
MAX_BLOCK_LIMIT = 64 << 20
MIN_TX_BYTES = 16  # no encoded transaction is smaller; bounds the item count of a block


@message("ledger.header", max_size=2048)
class Header(Message):
    chain: Annotated[str, MaxLen(64)]
    height: Annotated[int, Range(0)]
    prev: Annotated[bytes, MaxLen(32)]
    ts: Annotated[int, Range(0)]
    root: Annotated[bytes, MaxLen(32)]
    n: Annotated[int, Range(0)]
    acc: Annotated[bytes, MaxLen(accumulator.ELEMENT_BYTES)]
    proposer: Annotated[str, MaxLen(128)]
    # the proposer's claim under the chain's proposal rule (edgefl.consensus.proposal); absent fields are
    # not encoded, so headers of chains without one keep their bytes
    view: Annotated[int, Range(1, 1 << 62)] | None = None  # pbft: the view; credit: the round after prev
    nonce: Annotated[int, Range(0, (1 << 64) - 1)] | None = None  # pow
    vrf: Annotated[bytes, MaxLen(81)] | None = None  # credit: the VRF proof of eligibility

    def content(self) -> bytes:
        wire = self.to_wire()
        del wire["acc"]
        return tagged_hash(CONTENT_TAG, codec.encode(wire))

    def element(self) -> int:
        return accumulator.representative(self.content(), self.height)


@message("ledger.seal", max_size=16 << 10)
class Seal(Message):
    sealer: Annotated[str, MaxLen(32)]
    sigs: Annotated[list[Sig], MaxLen(64)]


@message("ledger.block", max_size=MAX_BLOCK_LIMIT)
class Block(Message):
    header: Annotated[bytes, MaxLen(2048)]
    seal: Seal
    txs: list[bytes]


def block_hash(header_bytes: bytes) -> bytes:
    return tagged_hash(BLOCK_TAG, header_bytes)


def encode_header(h: Header) -> bytes:
    return codec.encode(codec.message_to_wire(h))


def decode_header(data: bytes, field: str = "header") -> Header:
    try:
        return Header.from_wire(codec.decode(data, HEADER_LIMITS, canonical=True), field)
    except codec.CodecError as exc:
        raise relabel(exc, InvalidBlock, field) from None


def block_limits(max_block: int) -> codec.Limits:
    return codec.Limits(max_size=max_block, max_depth=6, max_items=max_block // MIN_TX_BYTES + 256)


def decode_block(data: bytes, max_block: int) -> Block:
    if len(data) > max_block:
        raise InvalidBlock(f"{len(data)} bytes exceeds the block limit of {max_block}", field="block",
                           reason="too_large")
    try:
        return Block.from_wire(codec.decode(data, block_limits(max_block), canonical=True), "block")
    except codec.CodecError as exc:
        raise relabel(exc, InvalidBlock, "block") from None


def frame_tx(raw: bytes) -> bytes:
    """A transaction as it sits in a block's ``txs`` array: a CBOR byte string."""
    return codec.head(2, len(raw)) + raw


_TXS_KEY, _SEAL_KEY, _HEADER_KEY = codec.encode("txs"), codec.encode("seal"), codec.encode("header")


def encode_block(header: bytes, seal: Seal, n: int, framed: bytes) -> bytes:
    """The canonical block map from ``n`` framed transactions (``frame_tx``, concatenated).

    Spliced rather than encoded as a whole: the transactions were framed as
    they were admitted.  Keys in canonical order (shorter first); every
    decode checks the result is canonical.
    """
    return b"".join((codec.head(5, 3), _TXS_KEY, codec.head(4, n), framed, _SEAL_KEY, codec.encode(seal.to_wire()),
                     _HEADER_KEY, codec.head(2, len(header)), header))


@dataclass(frozen=True, slots=True)
class Tip:
    """Where a chain stands: what the next block must build on."""

    height: int
    hash: bytes
    acc: int
    ts: int

    @classmethod
    def genesis(cls) -> "Tip":
        return cls(-1, ZERO_HASH, accumulator.GENERATOR, 0)
