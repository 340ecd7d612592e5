"""SQLite store: one database file per chain per node, append-only.

* WAL journal with ``synchronous=FULL``: a block's transaction is durable
  (WAL fsynced) when COMMIT returns, and only then is the block acknowledged.
  A crash at any point leaves the last committed block as the tip; an
  unfinished transaction is rolled back on the next open.
* Each block is one SQLite transaction: header, seal and every transaction
  row, plus derived index rows (device, model, record type, blob references,
  anchors).  Triggers refuse UPDATE and DELETE on blocks and transactions.
* Stored bytes are exactly the block's bytes (header, seal, transactions), so
  ``Chain.verify`` re-validates the chain from them; derived columns (hash,
  accumulator, element, tx id) speed lookups and are checked by verify too.
* Every value read back is checked against its column's type (``_typed``):
  a tampered or corrupt file fails with ``StoreError`` (reason ``corrupt``),
  never with a TypeError or an accumulator error from deeper down.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from edgefl import codec
from edgefl.consensus import epoch as epochs
from edgefl.crypto import accumulator
from edgefl.ledger.block import Seal, Tip, decode_header, encode_block, frame_tx
from edgefl.ledger.errors import StoreError
from edgefl.ledger.tx import Index, State, decode_tx

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks(
    height  INTEGER PRIMARY KEY,
    hash    BLOB NOT NULL UNIQUE,
    header  BLOB NOT NULL,
    seal    BLOB NOT NULL,
    acc     BLOB NOT NULL,
    element BLOB NOT NULL,
    ts      INTEGER NOT NULL,
    size    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS txs(
    seq     INTEGER PRIMARY KEY,
    id      BLOB NOT NULL UNIQUE,
    height  INTEGER NOT NULL,
    idx     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    rtype   TEXT,
    signer  TEXT,
    device  TEXT,
    model   BLOB,
    data    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS txs_height ON txs(height);
CREATE INDEX IF NOT EXISTS txs_device ON txs(device) WHERE device IS NOT NULL;
CREATE INDEX IF NOT EXISTS txs_model ON txs(model) WHERE model IS NOT NULL;
CREATE INDEX IF NOT EXISTS txs_rtype ON txs(rtype) WHERE rtype IS NOT NULL;
CREATE TABLE IF NOT EXISTS refs(cid BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS refs_cid ON refs(cid);
CREATE INDEX IF NOT EXISTS refs_seq ON refs(seq);
CREATE TABLE IF NOT EXISTS anchors(
    chain   TEXT NOT NULL,
    height  INTEGER NOT NULL,
    acc     BLOB NOT NULL,
    seq     INTEGER NOT NULL,
    block   INTEGER NOT NULL,
    PRIMARY KEY (chain, height)
);
CREATE INDEX IF NOT EXISTS anchors_block ON anchors(block);
CREATE TRIGGER IF NOT EXISTS blocks_append_only_u BEFORE UPDATE ON blocks
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS blocks_append_only_d BEFORE DELETE ON blocks
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS txs_append_only_u BEFORE UPDATE ON txs
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS txs_append_only_d BEFORE DELETE ON txs
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""

# version -> statements that bring a database of that version to the next; each runs in one transaction with
# its version bump, so a crash mid-migration leaves the old version, migrated again on the next open
MIGRATIONS = {
    1: ["CREATE INDEX IF NOT EXISTS refs_seq ON refs(seq)",  # verify read refs by block: a scan per block
        "CREATE INDEX IF NOT EXISTS anchors_block ON anchors(block)"],
}


class Store:
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"{self.path}: no such ledger", reason="not_found")
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                          check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")  # WAL fsynced at every COMMIT: durable on ack
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, *MIGRATIONS, SCHEMA_VERSION):
                    raise StoreError(f"{self.path}: schema version {version}, this edgefl reads {SCHEMA_VERSION}")
                if version:
                    self._migrate(version)
                self.db.executescript(SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def _migrate(self, version: int) -> None:
        while version < SCHEMA_VERSION:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql in MIGRATIONS[version]:
                    self.db.execute(sql)
                self.db.execute(f"PRAGMA user_version={version + 1}")  # transactional: commits with the DDL
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            version += 1

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def commit(self, verified, indexes: list[Index]) -> None:
        """Append one validated block in one durable transaction (returns after COMMIT)."""
        h = verified.header
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                top = db.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
                if (top if top is not None else -1) != h.height - 1:
                    raise StoreError(f"block {h.height} does not follow the stored tip {top}", reason="conflict")
                seq0 = db.execute("SELECT COALESCE(MAX(seq), 0) FROM txs").fetchone()[0] + 1
                db.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?,?)",
                           (h.height, verified.hash, verified.header_bytes, codec.encode(verified.seal.to_wire()),
                            h.acc, _int_bytes(verified.element), h.ts, len(verified.raw)))
                db.executemany("INSERT INTO txs VALUES (?,?,?,?,?,?,?,?,?,?)", [
                    (seq0 + i, t.id, h.height, i, t.kind.name, ix.rtype, ix.signer, ix.device, ix.model, t.raw)
                    for i, (t, ix) in enumerate(zip(verified.txs, indexes))])
                refs = [(cid, seq0 + i) for i, ix in enumerate(indexes) for cid in ix.refs]
                if refs:
                    db.executemany("INSERT INTO refs VALUES (?,?)", refs)
                anchors = [(*ix.anchor, seq0 + i, h.height) for i, ix in enumerate(indexes) if ix.anchor]
                if anchors:
                    db.executemany("INSERT INTO anchors VALUES (?,?,?,?,?)", anchors)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot append block {h.height}: {exc}") from None

    # ------------------------------------------------------------------ reads

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one state of the file, whatever a writer commits meanwhile (one read
        transaction: without it each statement, and each cursor, sees the file as it was when it began)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def _one(self, types: str, sql: str, *args):
        try:
            row = self.db.execute(sql, args).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}", reason="corrupt") from None
        return None if row is None else self._typed(types, row)

    def _all(self, types: str, sql: str, *args) -> list:
        try:
            rows = self.db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}", reason="corrupt") from None
        return [self._typed(types, r) for r in rows]

    def _typed(self, types: str, row: tuple) -> tuple:
        """``row`` if each value has its column's type: i int, b bytes, s str; upper case may also be NULL."""
        for value, t in zip(row, types, strict=True):
            want = _TYPES[t.lower()]
            if type(value) is not want and not (value is None and t.isupper()):
                raise StoreError(f"{self.path}: a stored {want.__name__} column holds {type(value).__name__}",
                                 field="store", reason="corrupt")
        return row

    def _acc(self, raw: bytes) -> int:
        try:
            return accumulator.from_bytes(raw)
        except accumulator.AccumulatorError as exc:
            raise StoreError(f"{self.path}: a stored accumulator is not an element ({exc})", field="store",
                             reason="corrupt") from None

    def tip(self) -> Tip:
        row = self._one("ibbi", "SELECT height, hash, acc, ts FROM blocks ORDER BY height DESC LIMIT 1")
        if row is None:
            return Tip.genesis()
        return Tip(row[0], row[1], self._acc(row[2]), row[3])

    def accumulator_at(self, height: int) -> int:
        """The accumulator after block ``height``; the generator before genesis (``height`` -1)."""
        if height < 0:
            return accumulator.GENERATOR
        row = self.block_row(height)
        if row is None:
            raise StoreError(f"{self.path}: block {height} is missing", reason="corrupt")
        return self._acc(row[3])

    def state(self) -> State:
        """The chain's spec and, per other chain, its last anchored (height, accumulator)."""
        row = self._one("b", "SELECT data FROM txs WHERE height = 0 AND idx = 0")
        if row is None:
            return State()
        anchors = {c: (h, acc) for c, h, acc in self._all(
            "sib", "SELECT chain, height, acc FROM anchors a WHERE height = "
            "(SELECT MAX(height) FROM anchors b WHERE b.chain = a.chain)")}
        state = State(decode_tx(row[0]).body, anchors)
        if state.spec.epochs is not None:  # the committee the last epoch block named (epoch 0's before one)
            epochs.open_chain(state)
            last = self._one("b", "SELECT data FROM txs WHERE kind = 'epoch' ORDER BY seq DESC LIMIT 1")
            if last is not None:
                epochs.enter(decode_tx(last[0]).body, state.spec, state)
        return state

    def block_row(self, height: int) -> tuple | None:
        """(hash, header bytes, seal bytes, acc bytes, element int) of a stored block."""
        row = self._one("bbbbb", "SELECT hash, header, seal, acc, element FROM blocks WHERE height = ?", height)
        return None if row is None else (*row[:4], int.from_bytes(row[4], "big"))

    def block(self, height: int) -> bytes | None:
        """The block's exact wire bytes, reassembled from its stored parts."""
        row = self._one("bb", "SELECT header, seal FROM blocks WHERE height = ?", height)
        if row is None:
            return None
        txs = [r[0] for r in self._all("b", "SELECT data FROM txs WHERE height = ? ORDER BY idx", height)]
        try:
            seal = Seal.from_wire(codec.decode(row[1]))
        except codec.CodecError as exc:
            raise StoreError(f"{self.path}: block {height}: stored seal is unreadable ({exc})", field="seal",
                             reason="corrupt") from None
        return encode_block(row[0], seal, len(txs), b"".join(map(frame_tx, txs)))

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        top = self.tip().height if end is None else end
        for height in range(start, top + 1):
            raw = self.block(height)
            if raw is None:
                raise StoreError(f"{self.path}: block {height} is missing", reason="corrupt")
            yield raw

    def txids(self, height: int) -> list[bytes]:
        return [r[0] for r in self._all("b", "SELECT id FROM txs WHERE height = ? ORDER BY idx", height)]

    def tx(self, txid: bytes) -> tuple[int, int, bytes] | None:
        """(height, index in block, raw bytes) of a transaction."""
        return self._one("iib", "SELECT height, idx, data FROM txs WHERE id = ?", txid)

    def has_tx(self, txid: bytes) -> bool:
        return self._one("i", "SELECT 1 FROM txs WHERE id = ?", txid) is not None

    def find(self, *, device: str | None = None, model: bytes | None = None, rtype: str | None = None,
             kind: str | None = None, limit: int = 1000, newest: bool = False) -> list[tuple[bytes, int, int]]:
        """(tx id, height, index) of transactions matching every given key, oldest (or ``newest``) first."""
        where, args = [], []
        for column, value in (("device", device), ("model", model), ("rtype", rtype), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT id, height, idx FROM txs" + (" WHERE " + " AND ".join(where) if where else "")
        return self._all("bii", sql + f" ORDER BY seq {'DESC' if newest else 'ASC'} LIMIT ?", *args, limit)

    def elements(self, after: int, upto: int) -> list[int]:
        """Accumulator elements of blocks after+1 .. upto."""
        rows = self._all("b", "SELECT element FROM blocks WHERE height > ? AND height <= ? ORDER BY height", after, upto)
        return [int.from_bytes(r[0], "big") for r in rows]

    def headers(self, after: int, upto: int) -> list[bytes]:
        return [r[0] for r in self._all("b", "SELECT header FROM blocks WHERE height > ? AND height <= ? "
                                        "ORDER BY height", after, upto)]

    def latest_anchor(self, chain: str, upto_block: int | None = None) -> tuple[int, bytes, bytes, int] | None:
        """The last (height, acc, tx id, block) anchored for ``chain`` in blocks up to ``upto_block``."""
        row = self._one("ibbi", "SELECT a.height, a.acc, t.id, a.block FROM anchors a JOIN txs t ON t.seq = a.seq "
                        "WHERE a.chain = ? AND a.block <= ? ORDER BY a.height DESC LIMIT 1",
                        chain, (1 << 62) if upto_block is None else upto_block)
        return row

    def derived(self) -> Iterator[tuple[int, tuple | None, list[tuple], list[tuple], list[tuple]]]:
        """Every block's derived columns in one pass, in height order.

        Yields (height, (hash, acc, element) or None, [(height, idx, id, kind,
        rtype, signer, device, model)] in seq order, sorted [(cid, idx)] of
        its refs, sorted [(chain, height, acc)] of its anchors).  Four cursors
        walked side by side read each table once, so checking them is linear
        in the chain (a query per block joining refs to txs scanned refs each
        time).  Rows that belong to no block (a gap in the heights, a ref of
        no transaction, rows past the last block) come out where they cannot
        match what the blocks say, so ``verify`` sees them.
        """
        db = self.db
        try:
            typed = self._typed
            blocks = (typed("ibbb", r) for r in db.execute("SELECT height, hash, acc, element FROM blocks "
                                                            "ORDER BY height"))
            txs = _Peek(typed("iiibsSSSB", r) for r in db.execute(
                "SELECT seq, height, idx, id, kind, rtype, signer, device, model FROM txs ORDER BY seq"))
            refs = _Peek(typed("ib", r) for r in db.execute("SELECT seq, cid FROM refs ORDER BY seq"))
            anchors = _Peek(typed("isib", r) for r in db.execute("SELECT block, chain, height, acc FROM anchors "
                                                                  "ORDER BY block"))
            height = -1
            for height, hash_, acc, element in blocks:
                rows = txs.take_while(lambda r: r[1] <= height)
                idx = {r[0]: r[2] if r[1] == height else -1 for r in rows}
                top = rows[-1][0] if rows else -1
                block_refs = [(cid, idx.get(seq, -1)) for seq, cid in refs.take_while(lambda r: r[0] <= top)]
                block_anchors = [(c, h, a) if b == height else (c, -1, a)
                                 for b, c, h, a in anchors.take_while(lambda r: r[0] <= height)]
                yield (height, (hash_, acc, int.from_bytes(element, "big")), [r[1:] for r in rows],
                       sorted(block_refs), sorted(block_anchors))
            rest = [txs.take_while(lambda r: True), refs.take_while(lambda r: True),
                    anchors.take_while(lambda r: True)]
            if any(rest):
                yield height + 1, None, [r[1:] for r in rest[0]], [(r[1], -1) for r in rest[1]], rest[2]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}", reason="corrupt") from None

    def referenced(self) -> set[bytes]:
        return {r[0] for r in self._all("b", "SELECT DISTINCT cid FROM refs")}

    def header_at(self, height: int):
        row = self._one("b", "SELECT header FROM blocks WHERE height = ?", height)
        return None if row is None else decode_header(row[0])


class _Peek:
    """Rows of a cursor with one row of look-ahead."""

    def __init__(self, rows):
        self._rows = iter(rows)
        self._next = next(self._rows, None)

    def take_while(self, pred) -> list:
        out = []
        while self._next is not None and pred(self._next):
            out.append(self._next)
            self._next = next(self._rows, None)
        return out


_TYPES = {"i": int, "b": bytes, "s": str}


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")
