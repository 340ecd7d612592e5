"""`Chain.verify` checks the stored derived columns in one pass: it catches altered rows, reads each table once
(linear in the chain), and a database of the previous schema gains the indexes when it opens."""

import hashlib
import sqlite3

import pytest

from edgefl.ledger.chain import Chain
from edgefl.ledger.errors import InvalidBlock
from edgefl.ledger.records import Note
from edgefl.ledger.store import SCHEMA_VERSION, Store
from edgefl.ledger.tx import anchor_tx, record_tx
from tests.ledger_helpers import KEYS, T0, main_spec, new_chain, registry, sealer_for, sub_spec


def _grow(chain: Chain, blocks: int, per_block: int = 3, refs: int = 2, start: int = 0) -> None:
    i = start
    for _ in range(blocks):
        for _ in range(per_block):
            cids = [hashlib.sha256(f"{i}/{k}".encode()).digest() for k in range(refs)]
            chain.submit(record_tx(Note("t", i.to_bytes(8, "big")), "dev-1", KEYS["dev-1"], refs=cids,
                                   device="dev-1", ts_ms=T0 + i))
            i += 1
        chain.mine(sealer_for(chain.id), ts_ms=T0 + 1000 * (chain.tip.height + 1))


def _anchored_main(tmp_path) -> Chain:
    main = new_chain(tmp_path, main_spec())
    sub = new_chain(tmp_path, sub_spec("fog-a"))
    prev = -1
    for k in range(3):
        _grow(sub, 2, start=100 * k)
        body = sub.anchor_body(prev)
        main.submit(anchor_tx(body.chain, body.prev_height, body.digests, body.header, [("fog-a", KEYS["fog-a"])]))
        main.mine(sealer_for("main"), ts_ms=T0 + k + 1)
        prev = sub.tip.height
    sub.close()
    return main


def _raw(chain: Chain, *sql) -> None:
    db = sqlite3.connect(chain.store.path, isolation_level=None)
    for s in sql:
        db.execute(*s) if isinstance(s, tuple) else db.execute(s)
    db.close()


@pytest.mark.parametrize("alter, field", [
    (("INSERT INTO refs VALUES (?, 2)", (b"\x07" * 32,)), "refs"),  # a reference the record does not make
    ("DELETE FROM refs WHERE rowid = (SELECT MIN(rowid) FROM refs WHERE seq = 3)", "refs"),
    (("INSERT INTO refs VALUES (?, 999)", (b"\x07" * 32,)), "store"),  # a reference of no transaction
    (["DROP TRIGGER txs_append_only_u", "UPDATE txs SET device = 'dev-2' WHERE seq = 4"], "txs"),
    (["DROP TRIGGER txs_append_only_u", "UPDATE txs SET idx = 2 WHERE seq = 3"], "txs"),
    (("INSERT INTO txs(seq, id, height, idx, kind, data) VALUES (99, x'01', 9, 0, 'record', x'')", ()), "store"),
])
def test_altered_derived_rows_are_found(tmp_path, alter, field):
    chain = new_chain(tmp_path, sub_spec())
    _grow(chain, 4)
    assert chain.verify() == 5
    _raw(chain, *(alter if isinstance(alter, list) else [alter]))
    with pytest.raises(InvalidBlock) as err:
        chain.verify()
    assert err.value.field == field and err.value.reason == "corrupt"


@pytest.mark.parametrize("alter", [
    "UPDATE anchors SET block = block + 1 WHERE block = 2",  # moved to another block
    "DELETE FROM anchors WHERE block = 3",
    "UPDATE anchors SET acc = x'00' WHERE block = 1",
])
def test_altered_anchors_are_found(tmp_path, alter):
    main = _anchored_main(tmp_path)
    assert main.verify() == 4
    _raw(main, alter)
    with pytest.raises(InvalidBlock) as err:
        main.verify()
    assert err.value.field in ("anchors", "store") and err.value.reason == "corrupt"


def test_verify_reads_refs_and_anchors_through_their_indexes(tmp_path):
    """What made verify quadratic: a full scan of refs (and anchors) for every block."""
    chain = new_chain(tmp_path, sub_spec())
    _grow(chain, 2)
    db = chain.store.db
    for sql, index in (("SELECT seq, cid FROM refs ORDER BY seq", "refs_seq"),
                       ("SELECT block, chain, height, acc FROM anchors ORDER BY block", "anchors_block"),
                       ("SELECT seq, height, idx, id, kind, rtype, signer, device, model FROM txs ORDER BY seq",
                        None)):
        plan = " ".join(r[-1] for r in db.execute("EXPLAIN QUERY PLAN " + sql))
        assert "TEMP B-TREE" not in plan, plan  # streamed in order, never sorted per call
        assert index is None or index in plan, plan
    source = Store.derived.__code__.co_consts
    assert all("JOIN" not in c for c in source if isinstance(c, str))


def test_verify_work_is_linear_in_the_chain(tmp_path):
    """SQLite's virtual-machine steps per block stay flat as the chain grows 4× (a per-block join would
    grow them 4×); counted, not timed."""
    steps = {}
    for blocks in (25, 100):
        chain = new_chain(tmp_path / str(blocks), sub_spec())
        _grow(chain, blocks)
        count = [0]

        def tick():
            count[0] += 1

        chain.store.db.set_progress_handler(tick, 100)
        chain.verify()
        chain.store.db.set_progress_handler(None, 0)
        steps[blocks] = count[0] / blocks
        chain.close()
    assert steps[100] < 1.3 * steps[25], steps


def test_a_version_1_database_gains_the_indexes_when_opened(tmp_path):
    chain = new_chain(tmp_path, sub_spec())
    _grow(chain, 3)
    path = chain.store.path
    chain.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP INDEX anchors_block")  # as a crash would leave a non-transactional migration half done
    db.execute("PRAGMA user_version=1")
    db.close()
    with Chain.open(path, readonly=True, registry=registry()) as ro:  # reading needs no migration
        assert ro.verify() == 4
    with Chain.open(path, registry=registry()) as rw:
        names = {r[0] for r in rw.store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"refs_seq", "anchors_block"} <= names
        assert rw.store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert rw.verify() == 4
        _grow(rw, 1, start=1000)
        assert rw.verify() == 5


def test_verify_reads_one_snapshot_while_the_node_appends(tmp_path):
    """`edgefl ledger verify` on a running node's chain: a block committed while it reads is not half seen
    (its cursors once read different snapshots and reported 'store tip N but blocks end at M')."""
    writer = new_chain(tmp_path, sub_spec())
    _grow(writer, 3)

    class AppendingRegistry(type(registry())):
        appended = 0

        def key_for(self, *args, **kw):
            if not self.appended:  # the node commits a block while verify is reading
                self.appended = 1
                _grow(writer, 1, start=1000)
            return super().key_for(*args, **kw)

    reg = AppendingRegistry({n: k.public_key for n, k in KEYS.items()})
    with Chain.open(tmp_path / "fog-a.db", readonly=True, registry=reg) as reader:
        assert reader.verify() == 4  # genesis and the 3 blocks there when it began
        assert reg.appended
        assert reader.verify() == 5
    writer.close()
