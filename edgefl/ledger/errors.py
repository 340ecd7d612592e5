"""Typed ledger errors: each names the field at fault and carries a short reason for metrics."""

from __future__ import annotations

from edgefl.errors import EdgeflError


class LedgerError(EdgeflError, ValueError):
    """Base of every ledger failure. ``reason`` is a stable label (metrics, logs, remote errors)."""

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.detail = message
        self.field = field
        if reason is not None:
            self.reason = reason


def relabel(exc: Exception, cls: type[LedgerError], field: str | None = None) -> LedgerError:
    """``exc`` (a codec or ledger error) as a ``cls``, keeping its reason and the field it names."""
    detail = getattr(exc, "detail", None)
    if detail is None:  # a codec error: its text starts with the field (or byte offset) it names
        detail = str(exc)
        where = getattr(exc, "field", None)
        if where and detail.startswith(f"{where}: "):
            detail = detail[len(where) + 2:]
    return cls(detail, field=getattr(exc, "field", None) or field, reason=getattr(exc, "reason", None))


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
