"""Blocks, transactions, sealing, validation, proofs and anchors: one chain at a time, real SQLite and crypto."""

import dataclasses
import sqlite3

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.crypto import accumulator
from edgefl.ledger.block import Tip, decode_header
from edgefl.ledger.chain import Chain, verify_blocks
from edgefl.ledger.committee import Sig
from edgefl.ledger.errors import InvalidBlock, InvalidTx, LedgerError, ProofError
from edgefl.ledger.proofs import verify_proof
from edgefl.ledger.records import DataCollected, Note
from edgefl.ledger.sealer import QuorumSealer, SingleSealer
from edgefl.ledger.tx import Tx, anchor_tx, beacon_tx, decode_tx, record_tx, signing_digest
from edgefl.ledger.validation import build_block, validate_block
from edgefl.runtime.metrics import Metrics
from tests.ledger_helpers import KEYS, T0, fill, main_spec, new_chain, note, registry, sealer_for, sub_spec


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small sub-chain and its exported blocks, shared by the byte-flip properties."""
    path = tmp_path_factory.mktemp("sample")
    c = new_chain(path, sub_spec())
    ids = fill(c, blocks=3, per_block=4)
    blocks = list(c.store.blocks())
    yield c, ids, blocks
    c.close()


def test_chain_grows_verifies_and_proves(tmp_path):
    c = new_chain(tmp_path, sub_spec())
    ids = fill(c, blocks=5, per_block=7)
    assert c.tip.height == 5
    assert c.verify() == 6
    for txid in (ids[0], ids[17], ids[-1]):
        for at in (None, 5):
            proof = c.proof(txid, at)
            info, header = verify_proof(proof, c.tip.acc)
            assert info.id == txid
    # a proof against an older accumulator value than the tx's block is refused, not faked
    with pytest.raises(ProofError) as err:
        c.proof(ids[-1], at=2)
    assert err.value.reason == "not_anchored"
    # against the accumulator value at height 3, tx of block 2 is a member, of the tip's value it is not
    acc3 = accumulator.from_bytes(c.store.block_row(3)[3])
    p = c.proof(ids[8], at=3)
    verify_proof(p, acc3)
    with pytest.raises(ProofError):
        verify_proof(p, c.tip.acc)


def test_reopen_restores_tip_state_and_indexes(tmp_path):
    c = new_chain(tmp_path, sub_spec())
    ids = fill(c, blocks=2, per_block=3)
    c.submit(record_tx(DataCollected("dev-2", b"\x01" * 32, 10, 1, b"s" * 64), "dev-2", KEYS["dev-2"],
                       refs=[b"\x01" * 32], device="dev-2", model=b"\x02" * 32, ts_ms=T0))
    c.mine(sealer_for("fog-a"), ts_ms=T0 + 10_000)
    tip = c.tip
    c.close()
    c = Chain.open(tmp_path / "fog-a.db", registry=registry())
    assert c.tip == tip and c.spec == sub_spec()
    assert [r[0] for r in c.store.find(device="dev-1")] == ids
    assert len(c.store.find(device="dev-2")) == 1 and len(c.store.find(model=b"\x02" * 32)) == 1
    assert len(c.store.find(rtype=DataCollected.TYPE)) == 1
    assert c.store.referenced() == {b"\x01" * 32}
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        c.store.db.execute("UPDATE blocks SET ts = 0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        c.store.db.execute("DELETE FROM txs")


def test_blocks_respect_the_size_limit(tmp_path):
    c = new_chain(tmp_path, sub_spec(max_block=16 << 10))
    for i in range(40):
        c.submit(note(i, size=1500))
    sizes = []
    while c.pending:
        sizes.append(len(c.mine(sealer_for("fog-a")).raw))
    assert all(s <= 16 << 10 for s in sizes) and len(sizes) >= 4
    with pytest.raises(InvalidTx) as err:
        c.submit(note(99, size=14 << 10))  # cannot fit any block
    assert err.value.reason == "too_large"
    # a peer's block over the limit is rejected before anything else
    other = new_chain(tmp_path / "o", sub_spec(max_block=64 << 10))
    for i in range(20):
        other.submit(note(i, size=1500))
    big = other.mine(sealer_for("fog-a"))
    assert len(big.raw) > 16 << 10
    with pytest.raises(InvalidBlock) as err:
        validate_block(big.raw, c.tip, c.state, registry())
    assert err.value.reason in ("too_large", "bad_link")


def _flip(data: bytes, pos: int, mask: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_altered_byte_in_any_block_fails_verification(sample, data):
    _, _, blocks = sample
    which = data.draw(st.integers(0, len(blocks) - 1))
    pos = data.draw(st.integers(0, len(blocks[which]) - 1))
    mask = data.draw(st.integers(1, 255))
    altered = list(blocks)
    altered[which] = _flip(blocks[which], pos, mask)
    with pytest.raises(LedgerError):
        verify_blocks(altered, registry=registry())


def test_unaltered_export_verifies(sample):
    _, _, blocks = sample
    assert verify_blocks(blocks, registry=registry()) == len(blocks)


@settings(max_examples=40, deadline=None)
@given(column=st.sampled_from(["header", "seal", "data", "acc", "element", "hash", "id"]), pos=st.integers(0, 10 ** 6),
       mask=st.integers(1, 255), height=st.integers(1, 2))
def test_any_altered_stored_byte_fails_chain_verify(tmp_path_factory, column, pos, mask, height):
    path = tmp_path_factory.mktemp("db")
    c = new_chain(path, sub_spec())
    fill(c, blocks=2, per_block=3)
    table = "txs" if column in ("data", "id") else "blocks"
    db = c.store.db
    db.execute("DROP TRIGGER blocks_append_only_u")
    db.execute("DROP TRIGGER txs_append_only_u")
    key, value = db.execute(f"SELECT rowid, {column} FROM {table} WHERE height = ? LIMIT 1", (height,)).fetchone()
    db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (_flip(value, pos % len(value), mask), key))
    with pytest.raises(LedgerError):
        c.verify()
    c.close()


def test_rejected_transactions_are_typed_named_and_counted(tmp_path):
    m = Metrics()
    c = new_chain(tmp_path, sub_spec(), metrics=m)
    good = note(1)
    c.submit(good)
    cases = {
        "duplicate": good,
        "bad_signature": _resign(good, KEYS["dev-2"]),
        "unknown_sender": record_tx(Note("t", b"x"), "stranger", KEYS["dev-2"]),
        "unknown_kind": codec.encode_message(Tx("teleport", b"\xa0", [])),
        "not_canonical": cbor2.dumps(dict(reversed(list(codec.decode(good).items())))),
        "truncated": good[:-3],
        "schema": beacon_tx(b"\x00", [("cloud-1", KEYS["cloud-1"])]).replace(b"beacon", b"anchor"),
    }
    for reason, raw in cases.items():
        with pytest.raises(InvalidTx) as err:
            c.submit(raw)
        assert err.value.field, reason
        assert err.value.reason == reason, (reason, err.value)
    assert m.total("ledger_tx_rejected") == len(cases)
    assert m.get("ledger_tx_rejected", reason="bad_signature") == 1
    # a record whose message does not match its registered type names the field
    body = codec.decode(decode_tx(record_tx(Note("t", b"x"), "dev-1", KEYS["dev-1"])).body_bytes)
    body["msg"]["data"] = "not bytes"
    with pytest.raises(InvalidTx) as err:
        c.submit(_signed("record", codec.encode(body), "dev-1"))
    assert err.value.field == "record.ledger.note.data" and err.value.reason == "schema"
    assert m.total("ledger_tx_rejected") == len(cases) + 1


def _signed(kind: str, body: bytes, signer: str) -> bytes:
    """A transaction over arbitrary body bytes, correctly signed (to reach the checks past the signature)."""
    sig = KEYS[signer].sign(signing_digest(kind, body))
    return codec.encode_message(Tx(kind, body, [Sig(signer, sig)]))


def _resign(raw: bytes, key) -> bytes:
    info = decode_tx(raw)
    sig = key.sign(info.digest)
    return codec.encode_message(Tx(info.kind.name, info.body_bytes, [Sig(info.sigs[0].signer, sig)]))


def test_peer_blocks_validate_with_and_without_the_admission_cache(tmp_path):
    a = new_chain(tmp_path / "a", sub_spec())
    b = new_chain(tmp_path / "b", sub_spec())
    txs = [note(i) for i in range(30)]
    for raw in txs[:20]:
        b.submit(raw)  # b has seen these, not the last 10
    for raw in txs:
        a.submit(raw)
    block = a.mine(sealer_for("fog-a"), ts_ms=T0 + 5)
    appended = b.append(block.raw)
    assert appended.hash == block.hash and b.tip == a.tip
    assert b.pending == 0  # the block's transactions left b's mempool
    assert b.verify() == 2
    with pytest.raises(InvalidBlock) as err:
        b.append(block.raw)  # not the next block any more
    assert err.value.reason == "bad_link"


def test_seal_must_come_from_the_committee(tmp_path):
    c = new_chain(tmp_path, sub_spec())
    c.submit(note(1))
    rogue = SingleSealer("fog-b", KEYS["fog-b"])
    block = build_block(c.tip, "fog-a", list(c._pool.values()), rogue, T0 + 1)
    with pytest.raises(InvalidBlock) as err:
        validate_block(block.raw, c.tip, c.state, registry())
    assert err.value.reason == "bad_seal" and err.value.field == "header.proposer"
    impostor = SingleSealer("fog-a", KEYS["fog-b"])  # right name, wrong key
    block = build_block(c.tip, "fog-a", list(c._pool.values()), impostor, T0 + 1)
    with pytest.raises(InvalidBlock, match="does not verify"):
        validate_block(block.raw, c.tip, c.state, registry())


def test_quorum_sealer_needs_threshold_signatures(tmp_path):
    spec = sub_spec(sealer="quorum", members=["fog-a", "peer-1", "peer-2"], threshold=2)
    two = QuorumSealer("fog-a", [("fog-a", KEYS["fog-a"]), ("peer-2", KEYS["peer-2"])])
    c = Chain.create(tmp_path / "q.db", spec, two, registry=registry())
    c.submit(note(1))
    c.mine(two, ts_ms=T0 + 1)
    assert c.verify() == 2
    c.submit(note(2))
    one = QuorumSealer("fog-a", [("fog-a", KEYS["fog-a"])])
    block = build_block(c.tip, "fog-a", list(c._pool.values()), one, T0 + 2)
    with pytest.raises(InvalidBlock) as err:
        validate_block(block.raw, c.tip, c.state, registry())
    assert err.value.reason == "bad_quorum"


# --------------------------------------------------------------------------- interlock


def _anchor(sub: Chain, prev: int, signers=None) -> bytes:
    body = sub.anchor_body(prev)
    return anchor_tx(body.chain, body.prev_height, body.digests, body.header,
                     signers or [(sub.id, KEYS[sub.id])])


def test_anchors_must_extend_the_anchored_history(tmp_path):
    main = new_chain(tmp_path, main_spec())
    sub = new_chain(tmp_path, sub_spec("fog-a"))
    fill(sub, blocks=3, per_block=2)
    main.submit(_anchor(sub, -1))
    main.mine(sealer_for("main"), ts_ms=T0 + 1)
    assert main.state.anchors["fog-a"] == (3, sub.store.block_row(3)[3])
    fill(sub, blocks=2, per_block=2, start=100)
    with pytest.raises(InvalidTx) as err:
        main.submit(_anchor(sub, 0))  # skips nothing, overlaps what is anchored
    assert err.value.reason == "anchor_gap"
    main.submit(_anchor(sub, 3))
    main.mine(sealer_for("main"), ts_ms=T0 + 2)
    assert main.state.anchors["fog-a"][0] == 5 and main.verify() == 3

    # fog-a rewrites block 2 (it holds every key of its chain) and rebuilds on top: its new chain is
    # internally valid, but its next anchor cannot extend the accumulator the main chain anchored.
    forged = new_chain(tmp_path / "forged", sub_spec("fog-a"))
    for h in range(1, 6):
        for t in sub.store.txids(h):
            raw = sub.store.tx(t)[2]
            forged.submit(note(999) if (h, sub.store.tx(t)[1]) == (2, 0) else raw)
        forged.mine(sealer_for("fog-a"), ts_ms=T0 + 1000 * h)
    fill(forged, blocks=1, per_block=1, start=500)
    assert forged.verify() == 7
    with pytest.raises(InvalidTx) as err:
        main.submit(_anchor(forged, 5))
    assert err.value.reason == "anchor_history"
    # nor can it re-anchor its whole forged history from scratch
    with pytest.raises(InvalidTx) as err:
        main.submit(_anchor(forged, -1))
    assert err.value.reason == "anchor_gap"


def test_anchor_signatures_and_placement(tmp_path):
    main_q = main_spec()
    main_q = dataclasses.replace(main_q, subchains={"fog-a": main_q.subchains["fog-a"], "fog-c": _committee3()})
    main = new_chain(tmp_path, main_q)
    sub = new_chain(tmp_path, sub_spec("fog-c", members=["fog-c", "peer-1", "peer-2"], threshold=2))
    fill(sub, blocks=1, per_block=1)
    for signers, reason in ([[("fog-c", KEYS["fog-c"])], "bad_quorum"],
                            [[("fog-c", KEYS["fog-c"]), ("dev-1", KEYS["dev-1"])], "bad_quorum"],
                            [[("fog-c", KEYS["fog-c"]), ("peer-1", KEYS["peer-2"])], "bad_signature"]):
        with pytest.raises(InvalidTx) as err:
            main.submit(_anchor(sub, -1, signers))
        assert err.value.reason == reason
    main.submit(_anchor(sub, -1, [("fog-c", KEYS["fog-c"]), ("peer-2", KEYS["peer-2"])]))
    with pytest.raises(InvalidTx) as err:
        sub.submit(_anchor(sub, -1))  # Type-II belongs on the main chain
    assert err.value.reason == "misplaced"
    stranger = new_chain(tmp_path / "s", sub_spec("fog-b"))
    fill(stranger, 1, 1)
    with pytest.raises(InvalidTx) as err:
        main.submit(_anchor(stranger, -1))
    assert err.value.reason == "unknown_chain"


def _committee3():
    from tests.ledger_helpers import committee
    return committee("fog-c", "peer-1", "peer-2", threshold=2)


def test_beacons_are_quorum_signed_and_move_forward(tmp_path):
    main = new_chain(tmp_path, main_spec())
    sub = new_chain(tmp_path, sub_spec("fog-a"))
    main.submit(record_tx(Note("m", b"1"), "cloud-1", KEYS["cloud-1"], ts_ms=T0))
    main.mine(sealer_for("main"), ts_ms=T0 + 1)
    head1 = main.head_header()
    main.submit(record_tx(Note("m", b"2"), "cloud-1", KEYS["cloud-1"], ts_ms=T0))
    main.mine(sealer_for("main"), ts_ms=T0 + 2)
    head2 = main.head_header()
    with pytest.raises(InvalidTx) as err:
        sub.submit(beacon_tx(head2, [("fog-a", KEYS["fog-a"])]))
    assert err.value.reason == "bad_quorum"
    sub.submit(beacon_tx(head2, [("cloud-1", KEYS["cloud-1"])]))
    with pytest.raises(InvalidTx) as err:
        sub.submit(beacon_tx(head1, [("cloud-1", KEYS["cloud-1"])]))
    assert err.value.reason == "stale"
    sub.mine(sealer_for("fog-a"), ts_ms=T0 + 3)
    assert sub.state.anchors["main"] == (2, decode_header(head2).acc)
    assert sub.store.latest_anchor("main")[0] == 2


def test_genesis_block_is_checked_like_any_other(tmp_path):
    c = new_chain(tmp_path, sub_spec())
    genesis = c.store.block(0)
    assert verify_blocks([genesis], registry=registry()) == 1
    with pytest.raises(InvalidBlock):  # a second genesis block cannot follow
        validate_block(genesis, c.tip, c.state, registry())
    bad = dataclasses.replace(sub_spec(), role="side")
    with pytest.raises(InvalidTx) as err:
        Chain.create(tmp_path / "bad.db", bad, sealer_for("fog-a"))
    assert err.value.field == "genesis.role"
    with pytest.raises(LedgerError, match="exists"):
        Chain.create(tmp_path / "fog-a.db", sub_spec(), sealer_for("fog-a"))


def test_every_byte_of_a_block_is_covered(sample):
    """Exhaustive: flipping the low bit of any single byte of block 1 makes it invalid."""
    c, _, blocks = sample
    tip = Tip(0, c.store.block_row(0)[0], accumulator.from_bytes(c.store.block_row(0)[3]),
              decode_header(c.store.block_row(0)[1]).ts)
    state = c.state.copy()
    state.anchors.clear()
    validate_block(blocks[1], tip, state, registry())  # the unaltered block passes
    for pos in range(len(blocks[1])):
        with pytest.raises(LedgerError):
            validate_block(_flip(blocks[1], pos, 0x01), tip, state, registry())
