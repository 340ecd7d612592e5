"""Three processes (a cloud and two fogs) over a real Mosquitto, driven through the `edgefl ledger` CLI.

fog-b records a device's reading and training steps; fog-a's verifier checks
the reading across chains (Protocol 1) and audits the training; then fog-b
rewrites its own history (it holds every key of its chain, so its rewritten
chain still passes local verification) and the main chain's Type-II exposes
it: the rewritten record fails cross-chain verification, the original is gone,
and the main chain refuses fog-b's next anchor.
"""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from edgefl.crypto.envelope import DirectoryKeyRegistry
from edgefl.crypto.keys import SigningKey, save_public
from edgefl.ledger.audit import Tracker
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.chain import Chain
from edgefl.ledger.protocol import Submit
from edgefl.ledger.records import Note
from edgefl.ledger.sealer import SingleSealer
from edgefl.ledger.tx import record_tx, txid
from edgefl.ml.trainer import init_model, init_state
from edgefl.runtime.config import load_config
from edgefl.runtime.loop import run
from edgefl.transport.session import Session
from tests.test_ledger_audit import CONFIG, LAYERS, batches, flip_weight

pytestmark = [pytest.mark.broker, pytest.mark.slow]
NODES = {"cloud-1": "cloud", "fog-a": "fog", "fog-b": "fog"}


class Site:
    def __init__(self, tmp, port):
        self.tmp, self.port = tmp, port
        self.keys = {}
        for node, home in [*((n, n) for n in NODES), ("dev-1", "dev-1"), ("verifier-a", "fog-a")]:
            key = SigningKey()
            key.save(tmp / home / "keys" / f"{node}.key")
            save_public(key.public_key, tmp / "trust" / f"{node}.pub")
            self.keys[node] = key
        self.procs: dict[str, subprocess.Popen] = {}

    def args(self, node, home=None, role=None):
        home = home or node
        sets = {"node.id": node, "node.role": role or NODES.get(node, "device"), "node.site": "t",
                "node.data_dir": self.tmp / home, "security.trust_dir": self.tmp / "trust", "mqtt.port": self.port,
                "ledger.main_node": "cloud-1", "ledger.block_interval_s": 0.1, "ledger.anchor_interval_s": 0.3,
                "ledger.beacon_interval_s": 0.3, "mqtt.reconnect_min_s": 0.05}
        return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]

    def edgefl(self, node, *cmd, home=None, timeout=120):
        return subprocess.run([sys.executable, "-m", "edgefl", *self.args(node, home), "ledger", *cmd],
                              capture_output=True, text=True, timeout=timeout)

    def start(self, node):
        proc = subprocess.Popen([sys.executable, "-m", "edgefl", *self.args(node), "ledger", "serve"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs[node] = proc
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("serving"), (line, proc.poll())

    def stop(self, node) -> str:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return err

    def verify_tx(self, chain, tx: bytes, *, want=(0, 1), deadline=40.0):
        """`ledger verify-tx` as verifier-a on fog-a's host, retried while the verdict is PENDING."""
        end = time.monotonic() + deadline
        while True:
            out = self.edgefl("verifier-a", "verify-tx", "--chain", chain, "--tx", tx.hex(), "--via", "fog-a",
                              home="fog-a")
            if out.returncode != 2 or time.monotonic() > end:
                assert out.returncode in want, out.stdout + out.stderr
                return out
            time.sleep(0.3)


def submit(site, node_cfg_args, target, raws):
    cfg = load_config(overrides=[a for a in node_cfg_args if a != "--set"])

    async def go():
        async with Session.from_config(cfg) as s:
            await s.wait_connected(10)
            return [(await s.request(target, Submit(raw), timeout=20)).message for raw in raws]

    return run(go())


def rewrite_history(path, forged: dict[bytes, bytes], key, registry):
    """What an attacker holding fog-b's key can do: rebuild the chain with some records replaced."""
    with Chain.open(path, registry=registry) as old:
        spec = old.spec
        blocks = [(old.store.header_at(h).ts, [old.store.tx(t)[2] for t in old.store.txids(h)])
                  for h in range(1, old.tip.height + 1)]
    new_path = path.with_name("forged.db")
    sealer = SingleSealer("fog-b", key)
    with Chain.create(new_path, spec, sealer, registry=registry) as new:
        for ts, txs in blocks:
            for raw in txs:
                new.submit(forged.get(txid(raw), raw))
            new.mine(sealer, ts_ms=ts)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(new_path, path)


def test_three_processes_verify_audit_and_expose_a_rewritten_sub_chain(broker, tmp_path):
    site = Site(tmp_path, broker.port)
    try:
        out = site.edgefl("cloud-1", "init", "--subchain", "fog-a", "--subchain", "fog-b")
        assert out.returncode == 0 and "created main chain 'main'" in out.stdout, out.stderr
        for fog in ("fog-a", "fog-b"):
            out = site.edgefl(fog, "init")
            assert out.returncode == 0 and f"created sub chain '{fog}'" in out.stdout, out.stderr
        for node in NODES:
            site.start(node)

        # a device's reading and four training steps (the third doctored by one bit) go on fog-b's chain
        reading = record_tx(Note("reading", b"21.5 C"), "dev-1", site.keys["dev-1"], device="dev-1")
        tracker = Tracker(BlobStore(tmp_path / "fog-b" / "blobs"), task="mnist", device="dev-1",
                          trainer_name="dense", config=CONFIG.to_bytes(), signer="fog-b", key=site.keys["fog-b"])
        model = init_model(LAYERS, seed=4)
        origin, state, steps = model.to_bytes(), init_state(model, CONFIG).to_bytes(), []
        for i, data in enumerate(batches(4, seed=9), start=1):
            out_state = tracker.fn(state, origin, data, tracker.config)
            state, tx = tracker.step(i, state, origin, data,
                                     result=flip_weight(out_state, 0, 17, 0) if i == 3 else out_state)
            steps.append(tx)
        receipts = submit(site, site.args("dev-1"), "fog-b", [reading, *steps])
        assert all(r.chain == "fog-b" for r in receipts)
        tx_q = receipts[0].txid

        out = site.verify_tx("fog-b", tx_q, want=(0,))
        for step in ("1. main accumulator from fog-a's latest Type-III", "2. asked cloud-1 for fog-b's latest Type-II",
                     "3. verified: the Type-II is in main's accumulator", "4. fog-b's accumulator at height",
                     "5. asked fog-b for the proof", "6. verified: the transaction is in block",
                     "signed by 'dev-1' (signature verified)", "verdict: ACCEPT"):
            assert step in out.stdout, out.stdout

        out = site.edgefl("verifier-a", "audit", "--chain", "fog-b", "--device", "dev-1", "--via", "fog-a",
                          home="fog-a")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "step 1: ok" in out.stdout and "step 2: ok" in out.stdout and "step 4: ok" in out.stdout
        assert "step 3: REJECT — re-running T gives a different M_3: 1 bit(s) in 1 byte(s) differ" in out.stdout
        assert "verdict: REJECT" in out.stdout

        # fog-b rewrites the reading in its (already anchored) history and re-seals everything after it
        site.stop("fog-b")
        forged = record_tx(Note("reading", b"35.0 C"), "fog-b", site.keys["fog-b"], device="dev-1")
        rewrite_history(tmp_path / "fog-b" / "ledger" / "fog-b.db", {tx_q: forged}, site.keys["fog-b"],
                        DirectoryKeyRegistry(tmp_path / "trust"))
        out = site.edgefl("fog-b", "verify")
        assert out.returncode == 0 and "verified" in out.stdout, out.stderr  # locally, nothing shows
        site.start("fog-b")

        out = site.verify_tx("fog-b", txid(forged), want=(1,))
        assert "6. " not in out.stdout and "verdict: REJECT — step 6" in out.stdout
        assert "not a member of the trusted accumulator" in out.stdout
        out = site.verify_tx("fog-b", tx_q, want=(1,))
        assert "verdict: REJECT — step 5" in out.stdout and "not_found" in out.stdout

        # fog-b's next anchor would carry the rewritten history: the main chain refuses it
        submit(site, site.args("dev-1"), "fog-b",
               [record_tx(Note("reading", b"22.0 C"), "dev-1", site.keys["dev-1"], device="dev-1")])
        time.sleep(1.5)
        err = site.stop("fog-b")
        assert "refused our Type-II (anchor_history)" in err, err[-2000:]
    finally:
        for node in list(site.procs):
            site.stop(node)
