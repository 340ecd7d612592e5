"""`edgefl bench ledger`: block validation, mining, durable append throughput, cross-chain verification.

Rows (published anchors: desktop / Raspberry Pi 3B+ figures of the two-layer
design; transaction rates of a Fabric-based sub-chain on 8 vCPUs):

* ``validate_block_1MB``       a 1 MB block of 32-byte-payload records, validated by a node that admitted its
                               transactions before (a committee peer: decode and signatures cached by tx id);
                               ``…_cold``: nothing cached, every transaction decoded and every signature verified;
                               also 512 KB, 2 MB and 4 MB blocks, and 1 MB of 32 KiB records cold
* ``mine_block``               build and seal a 1 MB block from the mempool: Merkle root, accumulator element
                               (hash-to-prime) and step, header, seal signature, encoding
* ``commit_block_1MB``         its durable SQLite commit (WAL fsynced)
* ``append_tps_<size>``        signed records submitted (decoded, signature verified, checked against the
                               chain state) and committed durably in 1 MB blocks; rate from first submit to
                               last commit, mean submit-to-commit latency in the note
* ``verify_txs_<method>_t<t>``  t transactions of t blocks checked against one trusted accumulator value
                               by one batch proof (``aggregated``: Protocol 2, one witness and a Wesolowski
                               proof; ``weighted``: t witnesses, the small-exponent test), ms per verified
                               transaction, beside ``verify_txs_one_by_one_t<t>`` (t separate proofs) and their
                               ratio; hash-to-prime cache cleared before each check (a verifier seeing the blocks
                               for the first time)
* ``cross_chain_verify``       Protocol 1 end to end over a real Mosquitto: a verifier holding sub-chain A
                               checks a record of sub-chain B (two request/response round trips, four
                               membership proofs checked); ``…_cpu``: the verifier's checks alone

Ratios are measured / anchor (below 1 is faster for latencies; above 1 is
faster for rates).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from edgefl.bench.harness import Report, Row, Samples, measure, throughput_row
from edgefl.crypto import SigningKey, StaticKeyRegistry
from edgefl.ledger import Chain, ChainSpec, Committee, Note, SingleSealer, decode_tx, record_tx, validate_block
from edgefl.runtime import Metrics

ANCHORS = {"validate_ms": 358.0, "mine_ms": 27.0,
           "tps": {"32B": 193.33, "8KiB": 173.04, "16KiB": 131.98, "32KiB": 65.69}}
GOALS = {"validate": "<= 20 ms", "mine": "<= 2 ms", "32B": ">= 5000 tx/s", "32KiB": ">= 500 tx/s"}
SIZES = {"32B": 32, "8KiB": 8 << 10, "16KiB": 16 << 10, "32KiB": 32 << 10}
BLOCKS = {"512KB": 512 << 10, "1MB": 1 << 20, "2MB": 2 << 20, "4MB": 4 << 20}


class Bench:
    """One sub-chain, one device and its signed records."""

    def __init__(self, workdir: Path, max_block: int = 4 << 20):
        self.workdir = workdir
        self.fog, self.dev = SigningKey(), SigningKey()
        self.registry = StaticKeyRegistry({"fog-a": self.fog.public_key, "dev-1": self.dev.public_key})
        self.sealer = SingleSealer("fog-a", self.fog)
        self.spec = ChainSpec(chain="fog-a", role="sub", sealer="single",
                              committee=Committee.of([("fog-a", self.fog.public_key)]), max_block=max_block,
                              ts=time.time_ns() // 1_000_000, parent="main",
                              parent_committee=Committee.of([("fog-a", self.fog.public_key)]))
        self._n = 0

    def chain(self, name: str, max_block: int | None = None) -> Chain:
        spec = self.spec if max_block is None else ChainSpec(**{**self.spec.__dict__, "max_block": max_block})
        return Chain.create(self.workdir / f"{name}.db", spec, self.sealer, registry=self.registry,
                            metrics=Metrics())

    def records(self, n: int, size: int) -> list[bytes]:
        out = []
        for _ in range(n):
            self._n += 1
            payload = self._n.to_bytes(8, "big") + os.urandom(max(0, size - 8))
            out.append(record_tx(Note("bench", payload[:size] if size >= 8 else payload[:8]), "dev-1", self.dev,
                                 device="dev-1"))
        return out

    def fill_block(self, chain: Chain, block_bytes: int, size: int) -> list[bytes]:
        """Records of ``size`` bytes submitted until they fill one block of ``block_bytes``."""
        per = len(self.records(1, size)[0]) + 5
        txs = self.records(max(1, (block_bytes - 4096) // per), size)
        for raw in txs:
            chain.submit(raw)
        return txs


def _validate_rows(report: Report, b: Bench, quick: bool) -> None:
    iters = 5 if quick else 30
    for label, limit in BLOCKS.items():
        if quick and label not in ("1MB",):
            continue
        chain = b.chain(f"validate-{label}", max_block=limit)
        b.fill_block(chain, limit, 32)
        tip, state = chain.tip, chain.state.copy()
        block = chain.mine(b.sealer)
        infos = [decode_tx(t.raw) for t in block.txs]
        for info in infos:
            info.kind.admit(info, state.spec, b.registry)
        admitted = {info.id: info for info in infos}
        warm = measure(lambda: validate_block(block.raw, tip, state, b.registry, admitted=admitted),
                       iterations=iters, warmup=2)
        note = f"{len(block.txs)} records of 32 B, {len(block.raw) / 1e6:.2f} MB; transactions admitted before"
        report.add(warm.row(f"validate_block_{label}", anchor=ANCHORS["validate_ms"] if label == "1MB" else None,
                            goal=GOALS["validate"] if label == "1MB" else None, note=note))
        if label == "1MB":
            r = report.rows[-1]
            r.ratio = r.median / r.anchor
            cold = measure(lambda: validate_block(block.raw, tip, state, b.registry),
                           iterations=max(3, iters // 6), warmup=1)
            report.add(cold.row("validate_block_1MB_cold", anchor=ANCHORS["validate_ms"],
                                ratio=statistics.median(cold.wall) * 1e3 / ANCHORS["validate_ms"],
                                note=f"{len(block.txs)} records: every one decoded, every signature verified"))
            b.fill_block(chain, limit, 32)
            mine = measure(lambda: chain.build(b.sealer, ts_ms=time.time_ns() // 1_000_000 + next(_counter)),
                           iterations=iters, warmup=2)
            report.add(mine.row("mine_block", anchor=ANCHORS["mine_ms"],
                                ratio=statistics.median(mine.wall) * 1e3 / ANCHORS["mine_ms"], goal=GOALS["mine"],
                                note=f"build + seal a {len(block.raw) / 1e6:.2f} MB block of {len(block.txs)} "
                                     "admitted records (no storage)"))
            commit = Samples()
            for _ in range(max(3, iters // 3)):
                b.fill_block(chain, limit, 32)
                c0, t0 = time.process_time(), time.perf_counter()
                chain.mine(b.sealer)
                commit.add(time.perf_counter() - t0, time.process_time() - c0)
            report.add(commit.row("commit_block_1MB", note="mine + durable SQLite commit (WAL, synchronous=FULL)"))
        chain.close()
    chain = b.chain("validate-32KiB", max_block=1 << 20)
    b.fill_block(chain, 1 << 20, 32 << 10)
    tip, state = chain.tip, chain.state.copy()
    block = chain.mine(b.sealer)
    cold = measure(lambda: validate_block(block.raw, tip, state, b.registry), iterations=iters, warmup=2)
    report.add(cold.row("validate_block_1MB_32KiB_cold", note=f"{len(block.txs)} records of 32 KiB, "
                                                               "every one decoded and its signature verified"))
    chain.close()


_counter = iter(range(1, 1 << 62))


def _append_run(b: Bench, txs: list[bytes], name: str) -> tuple[float, float, float]:
    """(tx/s, CPU s per tx, mean latency s) for submitting ``txs`` and committing them in full blocks."""
    chain = b.chain(name, max_block=1 << 20)
    submitted: list[float] = []
    latencies: list[float] = []
    c0, t0 = time.process_time(), time.perf_counter()
    for raw in txs:
        chain.submit(raw)
        submitted.append(time.perf_counter())
        if chain.full_blocks:
            _commit(chain, b, submitted, latencies)
    while chain.pending:
        _commit(chain, b, submitted, latencies)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    chain.close()
    return len(txs) / wall, cpu / len(txs), statistics.fmean(latencies)


def _commit(chain: Chain, b: Bench, submitted: list[float], latencies: list[float]) -> None:
    block = chain.mine(b.sealer)
    done = time.perf_counter()
    latencies += [done - t for t in submitted[:len(block.txs)]]
    del submitted[:len(block.txs)]


def _append_rows(report: Report, b: Bench, quick: bool) -> None:
    counts = {"32B": 12000, "8KiB": 1500, "16KiB": 900, "32KiB": 600}
    runs = 2 if quick else 3
    for label, size in SIZES.items():
        n = counts[label] // (6 if quick else 1)
        results = [_append_run(b, b.records(n, size), f"append-{label}-{i}") for i in range(runs)]
        rates = [r for r, _, _ in results]
        latency = statistics.median(lat for _, _, lat in results)
        rate = statistics.median(rates)
        report.add(throughput_row(f"append_tps_{label}", rates, [c for _, c, _ in results],
                                  anchor=ANCHORS["tps"][label], ratio=rate / ANCHORS["tps"][label],
                                  goal=GOALS.get(label),
                                  note=f"{n} records per run, mean latency {latency * 1e3:.0f} ms to durable commit"))


def _batch_rows(report: Report, b: Bench, quick: bool) -> None:
    from edgefl.bench.harness import interleave, ratio_row
    from edgefl.crypto import accumulator
    from edgefl.crypto.accumulator import primes
    from edgefl.ledger.proofs import verify_batch_proof, verify_proof

    chain = b.chain("batch")
    for _ in range(64):
        for raw in b.records(2, 32):
            chain.submit(raw)
        chain.mine(b.sealer)
    at = chain.tip.height
    acc = accumulator.from_bytes(chain.store.block_row(at)[3])
    for t in (8,) if quick else (8, 32):
        txids = [chain.store.txids(h)[0] for h in range(at - 2 * t + 1, at + 1, 2)]  # t distinct blocks
        singles = [chain.proof(x, at) for x in txids]
        batches = {m: chain.batch_proof(txids, at, m) for m in ("aggregated", "weighted")}

        def cold(fn):
            def go():
                primes._cache.clear()
                fn()
            return go

        fns = {"one_by_one": cold(lambda: [verify_proof(p, acc, at=at) for p in singles]),
               **{m: cold(lambda p=p: verify_batch_proof(p, acc, at=at)) for m, p in batches.items()}}
        samples = interleave(fns, rounds=6 if quick else 20)
        rows = {}
        for name, s_ in samples.items():
            s_.wall = [w / t for w in s_.wall]
            s_.cpu = [c / t for c in s_.cpu]
            rows[name] = report.add(s_.row(f"verify_txs_{name}_t{t}", note=f"ms per verified transaction, {t} "
                                                                             f"transactions of {t} blocks"))
        for m in batches:
            report.add(ratio_row(f"verify_txs_ratio_{m}_t{t}", rows[m], rows["one_by_one"],
                                 note=f"{m} batch proof / {t} separate proofs, per verified transaction"))
    chain.close()


async def _cross_chain_rows(report: Report, workdir: Path, quick: bool, port: int | None) -> None:
    from edgefl.ledger.cluster import LocalCluster
    from edgefl.ledger.crosschain import Verdict
    from edgefl.ledger.protocol import ProofQuery, Submit
    from edgefl.transport.mosquitto import BrokerError, LocalMosquitto

    with contextlib.ExitStack() as stack:
        if port is None:
            try:
                port = stack.enter_context(LocalMosquitto(workdir / "broker")).port
            except BrokerError as exc:
                report.add(Row("cross_chain_verify", "ms", float("nan"), float("nan"), note=f"skipped: {exc}"))
                return
        async with LocalCluster(workdir / "cluster", port, interlock_interval_s=0.1) as cluster:
            dev = cluster.sessions["dev-1"]
            raw = record_tx(Note("bench", b"x" * 32), "dev-1", cluster.keys["dev-1"], device="dev-1")
            receipt = (await dev.request("fog-b", Submit(raw))).message
            cc = cluster.verifier("fog-a", timeout=10)
            try:
                async with asyncio.timeout(30):  # until fog-b's anchor has reached fog-a through the main chain
                    while not (await cc.verify_tx("fog-b", receipt.txid)).ok:
                        await asyncio.sleep(0.1)
                for node in cluster.ledgers.values():  # freeze the chains: measure verification, not block traffic
                    node.interlock_interval_s = 3600
                samples = Samples()
                for _ in range(10 if quick else 60):
                    c0, t0 = time.process_time(), time.perf_counter()
                    v = await cc.verify_tx("fog-b", receipt.txid)
                    samples.add(time.perf_counter() - t0, time.process_time() - c0)
                    assert v.ok, v.reason
                report.add(samples.row("cross_chain_verify", note="Protocol 1 over Mosquitto: 2 round trips, "
                                                                  "4 membership proofs; CPU of all 4 nodes"))
                trusted = await cc.anchor_of("fog-b", Verdict())
                proof = (await dev.request("fog-b", ProofQuery(receipt.txid, trusted.height))).message
            finally:
                cc.local.close()
    from edgefl.ledger.proofs import verify_proof

    cpu = measure(lambda: verify_proof(proof, trusted.acc, chain="fog-b", at=trusted.height), iterations=200)
    report.add(cpu.row("cross_chain_verify_cpu", note="one membership proof checked (Merkle path + witness); "
                                                      "Protocol 1 checks three and one quorum"))


async def run(*, quick: bool = False, port: int | None = None) -> Report:
    report = Report("edgefl bench ledger: validation, mining, durable appends, cross-chain verification")
    with tempfile.TemporaryDirectory(prefix="edgefl-bench-ledger-") as tmp:
        b = Bench(Path(tmp))
        _validate_rows(report, b, quick)
        _append_rows(report, b, quick)
        _batch_rows(report, b, quick)
        await _cross_chain_rows(report, Path(tmp), quick, port)
    return report


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="use the Mosquitto already on 127.0.0.1:PORT for cross_chain_verify")
