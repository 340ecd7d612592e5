"""kill -9 during writes: no acknowledged block is lost, the chain always verifies, blobs are whole.

A writer process appends blocks (each with a fresh blob and records pointing
at it) and reports a block's height and hash only after ``mine`` returned,
i.e. after its SQLite transaction committed.  It is killed with SIGKILL at a
random moment, 60 times in a row on the same files; after every kill the store
must hold every reported block unchanged and validate from where the last
check stopped, and every blob must match its content id.  Writers are forked
from the test process (imports done once), so an iteration costs tens of
milliseconds.
"""

import os
import random
import select
import signal
import time

from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.block import Tip
from edgefl.ledger.chain import Chain, verify_blocks
from edgefl.ledger.records import DataCollected
from edgefl.ledger.store import Store
from edgefl.ledger.tx import State, record_tx
from edgefl.ledger.validation import validate_block
from tests.ledger_helpers import KEYS, new_chain, registry, sealer_for, sub_spec

ITERATIONS = 60


def _writer(path, blob_dir, out_fd: int, seed: int) -> None:
    rng = random.Random(seed)
    chain = Chain.open(path, registry=registry())
    blobs = BlobStore(blob_dir)
    sealer = sealer_for("fog-a")
    n = 0
    while True:
        for _ in range(rng.choice([1, 5, 50, 300])):  # blocks of ~0.4 to ~120 KB
            if rng.random() < 0.1:
                data = os.urandom(rng.choice([16, 1024, 16 << 10]))
                cid = blobs.put(data)  # durable before any record names it
            else:  # a record of data kept elsewhere
                data, cid = b"", os.urandom(32)
            msg = DataCollected("dev-1", cid, len(data), 1, KEYS["dev-1"].sign(cid))
            chain.submit(record_tx(msg, "dev-1", KEYS["dev-1"], refs=[cid] if data else [], device="dev-1",
                                   ts_ms=time.time_ns() // 1_000_000 + n))
            n += 1
        block = chain.mine(sealer)
        os.write(out_fd, f"{block.header.height} {block.hash.hex()}\n".encode())  # the acknowledgement


def _run_and_kill(path, blob_dir, seed: int, rng: random.Random) -> list[tuple[int, str]]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: never returns into pytest
        code = 0
        try:
            os.close(r)
            _writer(path, blob_dir, w, seed)
        except BaseException:
            import traceback
            traceback.print_exc()  # shows in the failure report
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    if rng.random() < 0.75:  # mostly after the writer got going; otherwise anywhere, even while it opens the store
        select.select([r], [], [], 20)
    time.sleep(rng.uniform(0.0, 0.12))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the writer died on its own instead of being killed"
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    lines = data.decode().splitlines()
    if lines and not data.endswith(b"\n"):
        lines.pop()  # killed mid-write of the acknowledgement line itself: not acknowledged
    return [(int(h), x) for h, x in (line.split() for line in lines)]


def test_kill_minus_nine_never_loses_an_acknowledged_block(tmp_path):
    path, blob_dir = tmp_path / "fog-a.db", tmp_path / "blobs"
    new_chain(tmp_path, sub_spec()).close()
    rng = random.Random(5)
    acked: dict[int, str] = {}
    tip, state, ids, checked = Tip.genesis(), State(), set(), -1
    for i in range(ITERATIONS):
        for height, h in _run_and_kill(path, blob_dir, seed=i, rng=rng):
            assert acked.setdefault(height, h) == h, f"height {height} acknowledged twice with different blocks"
        with Store(path) as store:  # opening recovers: an unfinished transaction rolls back
            top = store.tip().height
            assert top >= max(acked, default=0), f"iteration {i}: acknowledged block {max(acked)} lost"
            for height, h in acked.items():
                assert store.block_row(height)[0].hex() == h, f"iteration {i}: block {height} changed"
            for raw in store.blocks(checked + 1):  # validate what is new since the last check
                block, state = validate_block(raw, tip, state, registry(), seen=ids.__contains__)
                ids.update(t.id for t in block.txs)
                tip = block.tip
            checked = tip.height
            referenced = store.referenced()
        blobs = BlobStore(blob_dir)  # sweeps half-written temporary files
        assert not any(blobs.tmp.iterdir())
        stored = set(blobs)
        assert referenced <= stored, "a committed record points at a missing blob"
        for cid in stored:
            blobs.get(cid)  # raises if a blob's bytes do not match its id
    assert len(acked) >= ITERATIONS // 2, "too few blocks were acknowledged for the test to mean much"
    with Chain.open(path, registry=registry()) as chain:
        assert chain.verify() == chain.tip.height + 1
        assert verify_blocks(chain.store.blocks(), registry=registry()) == chain.tip.height + 1
