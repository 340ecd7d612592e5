"""Two-layer ledger: fog sub-chains and a cloud main chain, interlocked by RSA accumulators.

    block.py       wire format of blocks; hashes, content digests, accumulator elements
    tx.py          transactions and their kinds: genesis, Type-I record, Type-II anchor, Type-III beacon
    committee.py   signatures, committees, quorums
    sealer.py      who closes a block (single | quorum), chosen by the chain spec
    validation.py  validate a block against its chain; build (mine) one
    store.py       SQLite store (WAL, synchronous=FULL), append-only, indexed
    chain.py       one chain on one node: mempool, mining, appends, verification, proofs
    proofs.py      membership proofs against a trusted accumulator value
    blobs.py       content-addressed blob store, fetch over MQTT
    protocol.py    ledger messages on the wire
    service.py     a node's ledger service (serve, anchor, beacon)
    crosschain.py  Protocol 1: verify a transaction of another chain
    audit.py       training tracking (Tracker) and audit (replay T)
    records.py     the ledger's own Type-I record types
    recorder.py    record messages from synchronous code (the ML accountant's privacy recorder)
    cluster.py     a main chain and sub-chains in one process (benchmarks, tests, demos)
    cli.py         `edgefl ledger …`
"""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "chain": ["Chain"],
    "tx": ["ChainSpec", "decode_tx", "record_tx", "txid"],
    "block": ["Header", "Seal", "Tip", "block_hash", "decode_block", "decode_header"],
    "committee": ["Committee", "Sig"],
    "sealer": ["SingleSealer", "QuorumSealer", "make_sealer"],
    "service": ["LedgerNode", "Producer", "SingleProducer"],
    "blobs": ["BlobStore", "cid_of"],
    "crosschain": ["CrossChain", "Verdict"],
    "proofs": ["verify_proof", "verify_batch_proof"],
    "audit": ["Tracker", "RemoteSource", "audit_step"],
    "cluster": ["LocalCluster"],
    "protocol": ["Submit", "SubmitAll", "Receipt", "Receipts", "ProofQuery", "BatchProofQuery", "HeadQuery"],
    "records": ["Note", "TrainingStep", "DataCollected", "CoinUpdate"],
    "errors": ["LedgerError", "InvalidTx", "InvalidBlock", "ProofError", "StoreError", "BlobError", "BlobNotFound",
               "BlobCorrupt", "BlobTooLarge", "AuditError"],
    "validation": ["validate_block", "validate_proposal"],
})
