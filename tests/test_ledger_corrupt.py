"""A tampered or corrupt ledger database: every way in (open, verify, proof, batch proof, anchors, records)
fails with the ledger's typed errors, never TypeError, UnicodeDecodeError, IndexError, raw sqlite or
accumulator errors."""

import sqlite3

import pytest

from edgefl.ledger.chain import Chain
from edgefl.ledger.errors import LedgerError
from tests.ledger_helpers import fill, new_chain, registry, sub_spec

COLUMNS = {
    "blocks": ["height", "hash", "header", "seal", "acc", "element", "ts", "size"],
    "txs": ["seq", "id", "height", "idx", "kind", "rtype", "signer", "device", "model", "data"],
    "refs": ["cid", "seq"],
}
VALUES = [None, 7, -1, 1 << 62, 2.5, "text", b"", b"\x00", b"\xff" * 40, "x'80'"]


def _corrupt(path, table, column, value):
    db = sqlite3.connect(path, isolation_level=None)
    for t in ("blocks_append_only_u", "txs_append_only_u"):
        db.execute(f"DROP TRIGGER IF EXISTS {t}")
    new = "CAST(x'80ff' AS TEXT)" if value == "x'80'" else "?"  # text that is not UTF-8
    try:
        db.execute(f"UPDATE {table} SET {column} = {new} WHERE rowid = (SELECT MAX(rowid) FROM {table})",
                   () if value == "x'80'" else (value,))
    except sqlite3.IntegrityError:
        pass  # NOT NULL, UNIQUE, an INTEGER PRIMARY KEY: a database cannot hold it
    db.close()


def _everything(path, txids):
    with Chain.open(path, registry=registry()) as chain:
        chain.verify()
        for t in txids[-2:]:
            chain.proof(t)
        chain.batch_proof(txids[-3:])
        chain.anchor_body(-1)
        chain.records("note")
        chain.head_header()


@pytest.mark.parametrize("table, column", [(t, c) for t, cs in COLUMNS.items() for c in cs])
def test_a_corrupt_column_fails_with_a_ledger_error(tmp_path, table, column):
    chain = new_chain(tmp_path, sub_spec())
    txids = fill(chain, 3, 2)
    path = chain.store.path
    chain.close()
    escaped = []
    for i, value in enumerate(VALUES):
        copy = tmp_path / f"copy-{i}.db"
        copy.write_bytes(path.read_bytes())
        _corrupt(copy, table, column, value)
        try:
            _everything(copy, txids)
        except LedgerError:
            pass
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            escaped.append(f"{value!r}: {type(exc).__name__}: {exc}")
    assert not escaped, "\n".join(escaped)


def test_a_database_file_of_garbage_or_truncated_fails_with_a_ledger_error(tmp_path):
    chain = new_chain(tmp_path, sub_spec())
    txids = fill(chain, 3, 2)
    path = chain.store.path
    chain.close()
    data = path.read_bytes()
    for name, junk in [("garbage", b"\x00" * 4096), ("truncated", data[: len(data) // 2]),
                       ("flipped", data[:2000] + bytes(b ^ 0x55 for b in data[2000:2400]) + data[2400:])]:
        copy = tmp_path / f"{name}.db"
        copy.write_bytes(junk)
        try:
            _everything(copy, txids)
        except LedgerError:
            pass
