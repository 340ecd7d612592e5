"""`edgefl ledger init | show | export | verify | gc` as a user runs them (no broker needed)."""

import json
import subprocess
import sys
import time

from edgefl.crypto.envelope import DirectoryKeyRegistry
from edgefl.crypto.keys import SigningKey, save_public
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.chain import Chain
from edgefl.ledger.records import DataCollected
from edgefl.ledger.sealer import SingleSealer
from edgefl.ledger.tx import record_tx


def test_init_show_export_verify_gc(tmp_path):
    keys = {n: SigningKey() for n in ("fog-a", "cloud-1", "dev-1")}
    for name, key in keys.items():
        save_public(key.public_key, tmp_path / "trust" / f"{name}.pub")
    keys["fog-a"].save(tmp_path / "fog-a" / "keys" / "fog-a.key")
    base = [sys.executable, "-m", "edgefl", "--set", "node.id=fog-a", "--set", "node.role=fog",
            "--set", f"node.data_dir={tmp_path / 'fog-a'}", "--set", f"security.trust_dir={tmp_path / 'trust'}",
            "--set", "ledger.gc_grace_s=0"]

    def edgefl(*args):
        return subprocess.run([*base, "ledger", *args], capture_output=True, text=True, timeout=120)

    out = edgefl("init", "--max-block", "65536")
    assert out.returncode == 0 and "created sub chain 'fog-a'" in out.stdout, out.stderr
    assert edgefl("init").returncode == 1  # exists already

    db = tmp_path / "fog-a" / "ledger" / "fog-a.db"
    blobs = BlobStore(tmp_path / "fog-a" / "blobs")
    kept, orphan = blobs.put(b"readings of day 1"), blobs.put(b"never recorded")
    with Chain.open(db, registry=DirectoryKeyRegistry(tmp_path / "trust")) as c:
        sealer = SingleSealer("fog-a", keys["fog-a"])
        for i in range(3):
            msg = DataCollected("dev-1", kept, 17, 1, keys["dev-1"].sign(kept))
            c.submit(record_tx(msg, "dev-1", keys["dev-1"], refs=[kept], device="dev-1",
                               ts_ms=time.time_ns() // 1_000_000 + i))
            c.mine(sealer)
        txid = c.store.txids(2)[0]

    out = edgefl("show", "--json")
    summary = json.loads(out.stdout)
    assert summary["chain"] == "fog-a" and summary["height"] == 3 and summary["transactions"] == 4
    out = edgefl("show", "--tx", txid.hex())
    assert "type: ledger.data-collected" in out.stdout and "signer: dev-1" in out.stdout
    assert len(json.loads(edgefl("show", "--device", "dev-1", "--json").stdout)["matches"]) == 3
    assert "txs:" in edgefl("show", "--height", "2").stdout

    export = tmp_path / "fog-a.cbor"
    out = edgefl("export", "--out", str(export))
    assert out.returncode == 0 and "exported 4 blocks" in out.stdout
    out = edgefl("verify", "--file", str(export))
    assert out.returncode == 0 and "verified 4 blocks" in out.stdout, out.stderr
    assert edgefl("verify").returncode == 0
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 0x10
    export.write_bytes(bytes(data))
    out = edgefl("verify", "--file", str(export))
    assert out.returncode == 1 and out.stderr.startswith("FAILED: ")

    out = edgefl("gc", "--grace", "0")
    assert out.returncode == 0 and "removed 1 unreferenced blob(s); 1 referenced" in out.stdout
    assert blobs.has(kept) and not blobs.has(orphan)
