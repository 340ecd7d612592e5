"""Typed ledger errors: each names the field at fault and carries a short reason for metrics."""

from __future__ import annotations


class LedgerError(ValueError):
    """Base of every ledger failure. ``reason`` is a stable label (metrics, logs, remote errors)."""

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        if reason is not None:
            self.reason = reason


class InvalidTx(LedgerError):
    reason = "invalid_tx"


class InvalidBlock(LedgerError):
    reason = "invalid_block"


class ProofError(LedgerError):
    reason = "bad_proof"


class StoreError(LedgerError):
    reason = "store"


class BlobError(LedgerError):
    reason = "blob"


class BlobNotFound(BlobError):
    reason = "not_found"


class BlobCorrupt(BlobError):
    reason = "corrupt"


class BlobTooLarge(BlobError):
    reason = "too_large"


class AuditError(LedgerError):
    reason = "audit"
