"""Ledger messages on the wire (MQTT request/response through ``Session``).

    Submit(tx)                  → Receipt(txid, height, block)   after the block is durable
    SubmitAll(txs)              → Receipts(receipts)               several at once (a device's records of
                                                                   one release: one exchange, not one each)
    ProofQuery(txid, at)        → TxProof                          membership against the value at ``at``
    BatchProofQuery(txids, at, method) → BatchProof                several transactions at once (Protocol 2)
    AnchorQuery(chain, at)      → AnchorProof                      main chain: last Type-II of ``chain`` up to
                                                                   main height ``at``, and the main genesis,
                                                                   each with its proof against that height
    HeadQuery(chain)            → Head                             tip; on the main chain also the last
                                                                   height anchored for ``chain`` and a
                                                                   fresh Type-III for the tip
    Find(device, model, type)   → Found                            indexed lookups
    BlobGet(cid)                → BlobData                         (edgefl.ledger.blobs)

Failures come back as the transport's ``Error(code, detail)`` with the ledger
error's reason as the code.
"""

from __future__ import annotations

from typing import Annotated

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.ledger.proofs import MAX_BATCH, TxProof
from edgefl.ledger.tx import MAX_TX

Id = Annotated[bytes, MaxLen(32)]
ChainId = Annotated[str, MaxLen(64)]


@message("ledger.submit", max_size=MAX_TX + 1024)
class Submit(Message):
    tx: Annotated[bytes, MaxLen(MAX_TX)]


@message("ledger.receipt")
class Receipt(Message):
    chain: ChainId
    txid: Id
    height: Annotated[int, Range(0)]
    block: Id


MAX_SUBMIT_ALL = 8


@message("ledger.submit-all", max_size=2 * MAX_TX + 1024)
class SubmitAll(Message):
    txs: Annotated[list[Annotated[bytes, MaxLen(MAX_TX)]], MaxLen(MAX_SUBMIT_ALL)]


@message("ledger.receipts")
class Receipts(Message):
    receipts: Annotated[list[Receipt], MaxLen(MAX_SUBMIT_ALL)]


@message("ledger.proof-query")
class ProofQuery(Message):
    txid: Id
    at: Annotated[int, Range(0)] | None = None


@message("ledger.batch-proof-query")
class BatchProofQuery(Message):
    txids: Annotated[list[Id], MaxLen(MAX_BATCH)]
    at: Annotated[int, Range(0)] | None = None
    method: Annotated[str, MaxLen(16)] = "aggregated"


@message("ledger.anchor-query")
class AnchorQuery(Message):
    chain: ChainId
    at: Annotated[int, Range(0)] | None = None


@message("ledger.anchor-proof", max_size=2 * MAX_TX + (64 << 10))
class AnchorProof(Message):
    anchor: TxProof
    spec: TxProof


@message("ledger.head-query")
class HeadQuery(Message):
    chain: ChainId | None = None


@message("ledger.head", max_size=16 << 10)
class Head(Message):
    chain: ChainId
    height: Annotated[int, Range(0)]
    header: Annotated[bytes, MaxLen(2048)]
    anchored: Annotated[int, Range(-1)] = -1
    beacon: Annotated[bytes, MaxLen(8192)] | None = None


@message("ledger.find")
class Find(Message):
    device: Annotated[str, MaxLen(128)] | None = None
    model: Id | None = None
    type: Annotated[str, MaxLen(64)] | None = None
    kind: Annotated[str, MaxLen(32)] | None = None
    limit: Annotated[int, Range(1, 10000)] = 1000


@message("ledger.found", max_size=1 << 20)
class Found(Message):
    txids: Annotated[list[Id], MaxLen(10000)]
    heights: Annotated[list[int], MaxLen(10000)]


@message("ledger.beacon-tx", max_size=16 << 10)
class BeaconTx(Message):
    """A Type-III transaction broadcast by the main chain's node on its ``beacon`` topic."""

    tx: Annotated[bytes, MaxLen(8192)]
