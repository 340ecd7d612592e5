"""Content-addressed blob store: the off-chain half of the ledger (the role IPFS plays).

    cid  = SHA-256 of the bytes (32 bytes; hex on the command line)
    path = <root>/<cid[:2] hex>/<cid hex>

Writes are atomic: a temporary file in ``<root>/tmp`` is written, fsynced,
renamed into place and the directory fsynced, so a crash leaves either the
whole blob under its name or nothing (stale temporary files are swept when the
store opens).  Reads check the digest, so a blob corrupted on disk is an error,
never wrong data.  ``gc`` deletes blobs no record references, once they are
older than a grace period (a blob is written before the record pointing at it
is committed).  Peers fetch blobs over MQTT request/response (``BlobGet`` →
``BlobData``) and the fetcher checks the digest before storing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path
from typing import Annotated, Iterable, Iterator

from edgefl.codec import MaxLen, Message, message
from edgefl.ledger.errors import BlobCorrupt, BlobError, BlobNotFound, BlobTooLarge
from edgefl.runtime import METRICS, write_atomic

CID_BYTES = 32
DEFAULT_MAX_BLOB = 16 << 20


def cid_of(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def parse_cid(text: str) -> bytes:
    try:
        cid = bytes.fromhex(text)
    except ValueError:
        cid = b""
    if len(cid) != CID_BYTES:
        raise BlobError(f"{text!r} is not a content id (64 hex digits)", field="cid", reason="schema")
    return cid


def _writer_alive(name: str) -> bool:
    """Whether the process that is writing temporary file ``name`` (``write_atomic``: .NAME.PID.NS.tmp) runs."""
    parts = name.split(".")
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlobStore:
    def __init__(self, root: str | os.PathLike, *, max_blob: int = DEFAULT_MAX_BLOB):
        self.root = Path(root)
        self.max_blob = max_blob
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # left by a crash mid-write: never visible under a content id
            if not _writer_alive(stale.name):  # not another process's write in progress (a command beside the node)
                stale.unlink(missing_ok=True)

    def path(self, cid: bytes) -> Path:
        if len(cid) != CID_BYTES:
            raise BlobError(f"content ids are {CID_BYTES} bytes, got {len(cid)}", field="cid", reason="schema")
        h = cid.hex()
        return self.root / h[:2] / h

    def put(self, data: bytes) -> bytes:
        """Store ``data`` durably; returns its content id (idempotent)."""
        if len(data) > self.max_blob:
            raise BlobTooLarge(f"{len(data)} bytes exceeds the blob limit of {self.max_blob}", field="blob")
        cid = cid_of(data)
        final = self.path(cid)
        if final.exists():
            return cid
        write_atomic(final, data, tmp_dir=self.tmp)
        METRICS.inc("blob_written")
        METRICS.inc("blob_written_bytes", len(data))
        METRICS.inc("blob_fsync", 2)  # the file and its directory
        return cid

    def get(self, cid: bytes) -> bytes:
        """The blob's bytes, digest checked (raises BlobNotFound, BlobCorrupt)."""
        try:
            data = self.path(cid).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {cid.hex()}", field="cid") from None
        if not hmac.compare_digest(cid_of(data), cid):
            raise BlobCorrupt(f"blob {cid.hex()} does not match its content id", field="cid")
        return data

    def has(self, cid: bytes) -> bool:
        return self.path(cid).exists()

    def __iter__(self) -> Iterator[bytes]:
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.iterdir()):
                    if len(f.name) == 2 * CID_BYTES:
                        yield bytes.fromhex(f.name)

    def gc(self, referenced: Iterable[bytes], *, grace_s: float = 3600.0, now: float | None = None) -> list[bytes]:
        """Delete blobs not in ``referenced`` and older than ``grace_s``; returns their ids."""
        keep = set(referenced)
        cutoff = (time.time() if now is None else now) - grace_s
        removed = []
        for cid in list(self):
            if cid in keep:
                continue
            p = self.path(cid)
            try:
                if p.stat().st_mtime > cutoff:
                    continue
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(cid)
        return removed


# --------------------------------------------------------------------------- fetch over MQTT


@message("ledger.blob-get")
class BlobGet(Message):
    cid: Annotated[bytes, MaxLen(CID_BYTES)]


@message("ledger.blob", max_size=DEFAULT_MAX_BLOB + 4096)
class BlobData(Message):
    cid: Annotated[bytes, MaxLen(CID_BYTES)]
    data: Annotated[bytes, MaxLen(DEFAULT_MAX_BLOB)]


async def fetch(session, peer: str, cid: bytes, store: BlobStore | None = None, *, timeout: float | None = None) -> bytes:
    """Get blob ``cid`` from ``peer`` (checking the digest); keep it in ``store`` if given."""
    if store is not None and store.has(cid):
        return store.get(cid)
    env = await session.request(peer, BlobGet(cid), timeout=timeout)
    data = env.message.data
    if not hmac.compare_digest(cid_of(data), cid):
        raise BlobCorrupt(f"{peer} sent bytes that do not match {cid.hex()}", field="cid")
    if store is not None:
        store.put(data)
    return data


def serve(session, store: BlobStore) -> None:
    """Answer ``BlobGet`` requests from ``store``."""
    from edgefl.transport.messages import Error

    async def handle(env):
        try:
            return BlobData(env.message.cid, store.get(env.message.cid))
        except BlobError as exc:
            return Error(exc.reason, str(exc))

    session.serve(BlobGet, handle)
