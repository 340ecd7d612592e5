"""`edgefl bench consensus`: PBFT committees of replica processes over a real Mosquitto, beside the published figures.

Every replica is its own process (``python -m edgefl.bench.consensus replica …``) with its own MQTT session
(TCP_NODELAY), SQLite chain, vote log and ledger worker thread, exactly as a deployed member; the broker is the
Debian Mosquitto on loopback.  Replicas report what they did (commit, validation, finality, CPU, messages) as
JSON lines on their stdout, stamped with the system-wide monotonic clock, so the coordinator reads latencies
across processes without adding a message to the broker.  Clients submit to the primary (the leader of the
current view), as PBFT clients do, and to every member after a crash.

Rows (median and p99 over samples; ``cpu_median`` is the CPU of all replica processes, summed, per operation;
every latency row also carries ``cpu_block_ms`` and ``cpu_replica_block_ms``, CPU per committed block summed over
the replicas and per replica, ``msgs_per_block`` (protocol messages the replicas received from each other) and
``deliveries_per_block`` (every MQTT delivery, own broadcasts echoed back, client requests and chunks included)):

* ``commit_tx_n{4,16}``          one transaction submitted to the primary until its block is durable at every
                                 replica (the sub-chain committee: a fog and its devices)
* ``block_proposal_n{4,16}``     the primary starts building that block from its mempool until every replica has
                                 validated it with the chain's own rules (and sent its prepare vote)
* ``chain_finality_n{4,16}``     the main chain (FFG, every member weight 1): submitted until the block is final
                                 (its child justified by two thirds of the weight) at every replica; the votes are
                                 records the committee commits in the next blocks
* ``view_change_n{4,16}``        the primary is killed (SIGKILL); a transaction submitted to every live member at
                                 that moment until it is durable at all of them: timeout, view change, new view,
                                 commit (view timeout 1 s)
* ``verify_vote``                one PBFT vote as a replica receives it: envelope opened (signature, replay window,
                                 schema) and the vote's own signature checked against the committee
* ``verify_sortition_vote``      the same vote carrying a sortition claim: plus the claim's VRF proof and exact
                                 binomial draw (weight 50 of 1000, tau 20)
* ``throughput_MBph_block_{512K,1M,2M,4M}``  MB (10^6 bytes) of committed blocks per hour at n = 4 with blocks of
                                 that size, four clients keeping the mempool full of 32 KiB records; tx/s beside
* ``committee_tx_{32B,8KiB,16KiB,32KiB}`` and ``committee_tx_tps_…``  10 client processes × 100 records each through
                                 the n = 4 committee (each client keeps ``--client-window`` in flight): per-record
                                 submit-to-receipt latency (median, p99, ``mean``, ``max``) and tx/s

Anchors and goals are in ``edgefl.bench.published`` (Microchain testbed, Fabric sub-chain, a Rust HotStuff).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgefl.bench import published
from edgefl.bench.harness import Report, Row, Samples, measure, percentile, ratio_row

log = logging.getLogger("edgefl.bench")

VIEW_TIMEOUT = 1.0
FFG_POLL = 0.005  # how often a main-chain replica looks for blocks that need its FFG vote
SITE = "bench"
COORDINATOR = "bench-client"  # the coordinator's own session, a client of the committee
SIZES = {"32B": 32, "8KiB": 8 << 10, "16KiB": 16 << 10, "32KiB": 32 << 10}
BLOCKS = {"512K": 512 << 10, "1M": 1 << 20, "2M": 2 << 20, "4M": 4 << 20}
THROUGHPUT_RECORD = 32 << 10
PROTOCOL = ("linear PBFT: votes to the leader, the leader broadcasts each quorum certificate "
            "(pre-prepare, prepare, commit); one height in flight")


def goal(name: str) -> str | None:
    return published.goal_for("consensus", name)


# =========================================================================== replica and client processes


class _Out:
    """JSON lines on stdout, from the loop and the ledger worker thread alike."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, event: str, **kw) -> None:
        line = json.dumps({"e": event, **kw}, separators=(",", ":"))
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def _load(workdir: Path) -> tuple[dict, dict]:
    from edgefl.crypto.keys import SigningKey

    cfg = json.loads((workdir / "committee.json").read_text())
    keys = {i: SigningKey(bytes.fromhex(s)) for i, s in json.loads((workdir / "keys.json").read_text()).items()}
    return cfg, keys


def _session(cfg: dict, keys: dict, me: str, metrics):
    from edgefl.crypto.envelope import Signer, StaticKeyRegistry, Verifier
    from edgefl.runtime.config import MqttSection
    from edgefl.transport.session import Session

    registry = StaticKeyRegistry({i: k.public_key for i, k in keys.items()})
    role = "cloud" if me.startswith("cloud") else "fog" if me.startswith("fog") else "device"
    return registry, Session(site=cfg["site"], role=role, signer=Signer(me, keys[me]), metrics=metrics,
                             client_id=f"{cfg['site']}.{me}",  # the broker keeps sessions: one per committee
                             mqtt=MqttSection(port=cfg["port"], reconnect_min_s=0.05, reconnect_max_s=0.5,
                                              request_timeout_s=60.0),
                             verifier=Verifier(registry, metrics=metrics, name=me))


async def _replica(workdir: Path, me: str) -> None:
    from edgefl.consensus.shell import PbftProducer
    from edgefl.ledger.blobs import BlobStore
    from edgefl.ledger.chain import Chain
    from edgefl.ledger.sealer import QuorumSealer, SingleSealer
    from edgefl.ledger.service import LedgerNode
    from edgefl.runtime.metrics import Metrics

    cfg, keys = _load(workdir)
    out = _Out()
    home = workdir / me
    metrics = Metrics()
    registry, session = _session(cfg, keys, me, metrics)
    chain = Chain.open(home / "chain.db", registry=registry, metrics=metrics)
    if cfg["kind"] == "pbft":  # one chain, every member a replica
        node = LedgerNode(chain, session, BlobStore(home / "blobs"), QuorumSealer(me, [(me, keys[me])]),
                          keys={me: keys[me]}, main_node="cloud-1", interlock_interval_s=3600.0, metrics=metrics,
                          producer=lambda n: PbftProducer(n, keys[me], votelog=home / "votes",
                                                          view_timeout=cfg["view_timeout"]))
    else:  # FFG: the cloud's main chain, the fogs (each on its own sub-chain) vote on its calls
        node = LedgerNode(chain, session, BlobStore(home / "blobs"), SingleSealer(me, keys[me]),
                          keys={me: keys[me]}, main_node="cloud-1",
                          block_interval_s=cfg["block_interval"] if me == "cloud-1" else 1.0,
                          interlock_interval_s=3600.0, metrics=metrics)
    producer = node.producer
    deliveries = [0]

    # instrumentation: each wraps the real call and reports when it happened
    dispatch = session._dispatch

    async def counted(m):
        deliveries[0] += 1
        await dispatch(m)

    session._dispatch = counted
    committed = node.committed

    def on_commit(block):
        committed(block)
        out("commit", h=block.header.height, t=time.monotonic(), n=len(block.txs), size=len(block.raw),
            view=replica.view if replica else 0)

    node.committed = on_commit
    replica = getattr(producer, "replica", None)
    if replica is not None:
        validated = replica.validated

        def on_validated(view, height, h, ok):
            if ok:
                out("valid", h=height, t=time.monotonic())
            validated(view, height, h, ok)

        replica.validated = on_validated
    propose = chain.propose

    def on_propose(*a, **kw):
        t = time.monotonic()
        block = propose(*a, **kw)
        if block is not None:
            out("build", h=block.header.height, t=t)
        return block

    chain.propose = on_propose
    if node.finality is not None:
        update, final = node.finality.update, [0]

        def on_update():
            outcome = update()
            if node.finality.finalized_height > final[0]:
                final[0] = node.finality.finalized_height
                out("final", h=final[0], t=time.monotonic())
            return outcome

        node.finality.update = on_update

    def stats() -> None:
        out("stats", cpu=time.process_time(), rx=getattr(producer, "messages_in", 0), mq=deliveries[0],
            h=chain.tip.height, view=replica.view if replica else 0, timeouts=metrics.get("pbft_view_timeout"),
            rejected=metrics.total("pbft_rejected") + metrics.total("envelope_rejected"))

    async def control() -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line == "stats":
                stats()
            elif line in ("quit", ""):
                return

    async with session:
        await session.wait_connected(30)
        run = asyncio.create_task(node.run())
        await asyncio.sleep(0.3)  # subscriptions in place
        out("ready", h=chain.tip.height, view=replica.view if replica else 0)
        try:
            await control()
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    node.close()


async def _client(workdir: Path, me: str, to: str, size: int, count: int, window: int) -> None:
    """Submit ``count`` records of ``size`` bytes to ``to`` keeping ``window`` in flight; report every latency."""
    from edgefl.ledger.protocol import Submit
    from edgefl.ledger.records import Note
    from edgefl.ledger.tx import record_tx
    from edgefl.runtime.metrics import Metrics

    cfg, keys = _load(workdir)
    out = _Out()
    _, session = _session(cfg, keys, me, Metrics())
    seed = os.urandom(8)
    txs = [record_tx(Note("bench", seed + i.to_bytes(4, "big") + os.urandom(max(0, size - 12))), me, keys[me])
           for i in range(count)]
    latencies: list[float] = []
    async with session:
        await session.wait_connected(30)
        out("ready")
        loop = asyncio.get_running_loop()
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
            return
        c0, start = time.process_time(), time.monotonic()
        queue = list(reversed(txs))

        async def lane() -> None:
            while queue:
                raw = queue.pop()
                t0 = time.monotonic()
                await session.request(to, Submit(raw))
                latencies.append(time.monotonic() - t0)

        await asyncio.gather(*(lane() for _ in range(window)))
        out("done", start=start, end=time.monotonic(), lat=latencies, cpu=time.process_time() - c0)


def main(argv: list[str] | None = None) -> None:
    from edgefl.runtime.loop import run

    p = argparse.ArgumentParser(prog="python -m edgefl.bench.consensus")
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("replica")
    r.add_argument("workdir", type=Path)
    r.add_argument("me")
    c = sub.add_parser("client")
    c.add_argument("workdir", type=Path)
    c.add_argument("me")
    c.add_argument("--to", required=True)
    c.add_argument("--size", type=int, default=32)
    c.add_argument("--count", type=int, default=100)
    c.add_argument("--window", type=int, default=1)
    args = p.parse_args(argv)
    if args.what == "replica":
        profile = os.environ.get("EDGEFL_BENCH_PROFILE")  # a folder: each replica's main-thread profile there
        if profile:
            import cProfile

            prof = cProfile.Profile(time.thread_time)  # CPU time of the loop's thread
            prof.runctx("run(_replica(args.workdir, args.me))", globals(), locals())
            prof.dump_stats(str(Path(profile) / f"{args.me}.prof"))
        else:
            run(_replica(args.workdir, args.me))
    else:
        run(_client(args.workdir, args.me, args.to, args.size, args.count, args.window))


# =========================================================================== the coordinator


@dataclass
class _Member:
    id: str
    proc: asyncio.subprocess.Process | None = None
    alive: bool = False
    commits: dict[int, dict] = field(default_factory=dict)
    valid: dict[int, float] = field(default_factory=dict)
    build: dict[int, float] = field(default_factory=dict)
    final: list[tuple[int, float]] = field(default_factory=list)
    stats: asyncio.Future | None = None
    view: int = 0

    @property
    def height(self) -> int:
        return max(self.commits, default=0)

    @property
    def finalized(self) -> int:
        return self.final[-1][0] if self.final else 0

    def final_at(self, height: int) -> float | None:
        return next((t for h, t in self.final if h >= height), None)


class Committee:
    """n member processes and their clients.

    ``kind`` pbft: one chain (a sub-chain: a fog and its devices) kept by PBFT, every member a replica.
    ``kind`` ffg: the final committee, the cloud and n−1 fogs: the cloud's main chain (sealed every
    ``block_interval`` s, as today's main chain) made final by the members' FFG votes; each fog keeps its own
    sub-chain and votes on the cloud's calls, as in ``ledger/service.py``.
    """

    def __init__(self, workdir: Path, port: int, n: int, *, kind: str = "pbft", max_block: int = 1 << 20,
                 clients: int = 1, view_timeout: float = VIEW_TIMEOUT, block_interval: float = 0.01):
        from edgefl.consensus.proposal import ProposalSpec
        from edgefl.crypto.keys import SigningKey
        from edgefl.ledger.chain import Chain
        from edgefl.ledger.committee import Committee as Members
        from edgefl.ledger.sealer import QuorumSealer, SingleSealer
        from edgefl.ledger.tx import ChainSpec

        self.workdir, self.port, self.n, self.kind, self.block_interval = workdir, port, n, kind, block_interval
        if kind == "ffg":
            self.ids = ["cloud-1"] + [f"fog-{i:02}" for i in range(1, n)]
        else:
            self.ids = ["fog-a"] + [f"dev-{i:02}" for i in range(1, n)]
        self.clients = [f"client-{i:02}" for i in range(clients)]  # client processes (committee_tx, throughput)
        keys = {i: SigningKey() for i in self.ids + self.clients + [COORDINATOR]}
        self.keys = keys
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "keys.json").write_text(json.dumps({i: k.secret.hex() for i, k in keys.items()}))
        # a site of its own: committees one after the other on one broker share no topic (nor retained status)
        self.site = f"{SITE}-{workdir.name}-{os.urandom(3).hex()}"
        (workdir / "committee.json").write_text(json.dumps({"port": port, "ids": self.ids, "kind": kind,
                                                            "site": self.site,
                                                            "view_timeout": view_timeout,
                                                            "block_interval": block_interval}))
        ts = time.time_ns() // 1_000_000
        for i in self.ids:
            (workdir / i).mkdir()

        def one(i: str) -> Members:
            return Members.of([(i, keys[i].public_key)])

        if kind == "ffg":
            final = Members.of([(i, keys[i].public_key) for i in self.ids])
            self.order = final.ids
            main = ChainSpec(chain="main", role="main", sealer="single", committee=final, max_block=max_block, ts=ts,
                             subchains={f: one(f) for f in self.ids[1:]}, finality={i: 1 for i in self.ids})
            Chain.create(workdir / "cloud-1" / "chain.db", main, SingleSealer("cloud-1", keys["cloud-1"])).close()
            for f in self.ids[1:]:
                sub = ChainSpec(chain=f, role="sub", sealer="single", committee=one(f), max_block=max_block, ts=ts,
                                parent="main", parent_committee=one("cloud-1"))
                Chain.create(workdir / f / "chain.db", sub, SingleSealer(f, keys[f])).close()
        else:
            members = Members.bft([(i, keys[i].public_key) for i in self.ids])
            self.order = members.ids  # the leader of view v is order[v % n]
            spec = ChainSpec(chain="fog-a", role="sub", sealer="quorum", committee=members, max_block=max_block,
                             ts=ts, parent="main", proposal=ProposalSpec("pbft"),
                             parent_committee=Members.of([("cloud-1", SigningKey().public_key)]))
            genesis = workdir / "genesis.db"
            Chain.create(genesis, spec, QuorumSealer(self.ids[0], [(i, keys[i]) for i in self.ids])).close()
            for i in self.ids:
                shutil.copy(genesis, workdir / i / "chain.db")
        self.members = {i: _Member(i) for i in self.ids}
        self.changed = asyncio.Condition()
        self._readers: list[asyncio.Task] = []

    # ------------------------------------------------------------------ processes

    async def _spawn(self, *args: str, log_name: str) -> asyncio.subprocess.Process:
        log = open(self.workdir / f"{log_name}.log", "ab")
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgefl.bench.consensus", *args, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, limit=64 << 20)
        finally:
            log.close()

    async def start(self, ids: list[str] | None = None, timeout: float = 60.0) -> None:
        ids = ids or self.ids
        for i in ids:
            m = self.members[i]
            m.proc = await self._spawn("replica", str(self.workdir), i, log_name=i)
            m.alive = False
            self._readers.append(asyncio.create_task(self._read(m, m.proc)))
        await self.until(lambda: all(self.members[i].alive for i in ids), timeout)

    async def _read(self, m: _Member, proc) -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            ev = json.loads(line)
            kind = ev["e"]
            if kind == "commit":
                m.commits[ev["h"]] = ev
                m.view = ev["view"]  # the view that committed its last block (stats may show one it is changing to)
            elif kind == "valid":
                m.valid.setdefault(ev["h"], ev["t"])
            elif kind == "build":
                m.build[ev["h"]] = ev["t"]
            elif kind == "final":
                m.final.append((ev["h"], ev["t"]))
            elif kind == "stats":
                if m.stats is not None and not m.stats.done():
                    m.stats.set_result(ev)
            elif kind == "ready":
                m.alive = True
                m.view = ev["view"]
            async with self.changed:
                self.changed.notify_all()
        m.alive = False
        async with self.changed:
            self.changed.notify_all()

    async def until(self, predicate, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(predicate)

    async def kill(self, i: str) -> float:
        """SIGKILL member ``i``; returns when (monotonic) it was killed."""
        m = self.members[i]
        m.proc.kill()
        t = time.monotonic()
        await m.proc.wait()
        m.alive = False
        return t

    async def close(self) -> None:
        for m in self.members.values():
            if m.proc is not None and m.proc.returncode is None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    m.proc.stdin.write(b"quit\n")
                    await m.proc.stdin.drain()
        for m in self.members.values():
            if m.proc is not None and m.proc.returncode is None:
                try:
                    await asyncio.wait_for(m.proc.wait(), 10)
                except TimeoutError:
                    m.proc.kill()
                    await m.proc.wait()
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def __aenter__(self) -> "Committee":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ observations

    @property
    def live(self) -> list[_Member]:
        return [m for m in self.members.values() if m.alive]

    @property
    def view(self) -> int:
        """The view of the latest committed block."""
        latest = max(self.live, key=lambda m: (m.height, m.view))
        return latest.view

    @property
    def leader(self) -> str:
        return self.order[self.view % self.n]

    async def stats(self) -> dict[str, dict]:
        """CPU seconds, messages and height of every live replica."""
        loop = asyncio.get_running_loop()
        live = self.live
        for m in live:
            m.stats = loop.create_future()
            m.proc.stdin.write(b"stats\n")
            await m.proc.stdin.drain()
        async with asyncio.timeout(30):
            return {m.id: await m.stats for m in live}

    @property
    def replicas(self) -> list[_Member]:
        """The live members holding the measured chain (ffg: the cloud's main chain)."""
        return [m for m in self.live if self.kind == "pbft" or m.id == "cloud-1"]

    async def quiet(self, settle: float = 0.05, timeout: float = 30.0) -> None:
        """Until no replica has committed anything for ``settle`` seconds (every one at the same height)."""
        async with asyncio.timeout(timeout):
            while True:
                last = max((c["t"] for m in self.replicas for c in m.commits.values()), default=0.0)
                if time.monotonic() - last >= settle and len({m.height for m in self.replicas}) == 1:
                    return
                await asyncio.sleep(settle / 2)


@dataclass
class Cost:
    """CPU and messages of the replicas between two ``Committee.stats`` snapshots."""

    cpu: float = 0.0  # seconds, summed over the replicas
    rx: int = 0  # protocol messages received from peers
    mq: int = 0  # MQTT deliveries
    blocks: int = 0  # blocks committed (at the replica that committed most)
    replicas: int = 0
    timeouts: int = 0  # view timeouts, summed over the replicas
    rejected: int = 0  # messages dropped by a replica (stale, bad, duplicate) or its envelope check

    @staticmethod
    def between(a: dict[str, dict], b: dict[str, dict]) -> "Cost":
        both = [i for i in b if i in a]
        def total(key: str) -> int:
            return sum(b[i][key] - a[i][key] for i in both)

        return Cost(total("cpu"), total("rx"), total("mq"), max((b[i]["h"] - a[i]["h"] for i in both), default=0),
                    len(both), total("timeouts"), total("rejected"))

    def add(self, other: "Cost") -> None:
        self.cpu += other.cpu
        self.rx += other.rx
        self.mq += other.mq
        self.blocks += other.blocks
        self.replicas = max(self.replicas, other.replicas)
        self.timeouts += other.timeouts
        self.rejected += other.rejected

    def fields(self) -> dict[str, float]:
        per = max(1, self.blocks)
        return {"cpu_block_ms": round(self.cpu / per * 1e3, 3),
                "cpu_replica_block_ms": round(self.cpu / per / max(1, self.replicas) * 1e3, 3),
                "msgs_per_block": round(self.rx / per, 1), "deliveries_per_block": round(self.mq / per, 1),
                "blocks": self.blocks, "view_timeouts": self.timeouts, "rejected": self.rejected}


def _row(name: str, s: Samples, cost: Cost, note: str, **extra) -> Row:
    row = s.row(name, goal=goal(name), note=note)
    anchor = published.anchor_for("consensus", name)
    if anchor is not None:
        row.anchor = anchor.value * 1e3 if anchor.unit == "s" else anchor.value
        row.ratio = row.median / row.anchor
    row.extra = {**cost.fields(), "replicas": cost.replicas, **extra}
    return row


# =========================================================================== the measurements


class Client:
    """The coordinator's own MQTT session, submitting as a client of the committee."""

    def __init__(self, c: Committee, me: str):
        from edgefl.crypto.envelope import Signer, StaticKeyRegistry, Verifier
        from edgefl.runtime.config import MqttSection
        from edgefl.runtime.metrics import Metrics
        from edgefl.transport.session import Session

        self.c, self.me, self.key = c, me, c.keys[me]
        registry = StaticKeyRegistry({i: k.public_key for i, k in c.keys.items()})
        metrics = Metrics()
        self.session = Session(site=c.site, role="device", signer=Signer(me, self.key), metrics=metrics,
                               client_id=f"{c.site}.{me}",
                               mqtt=MqttSection(port=c.port, reconnect_min_s=0.05, request_timeout_s=60.0),
                               verifier=Verifier(registry, metrics=metrics, name=me))
        self._n = 0

    def record(self, size: int = 32) -> bytes:
        from edgefl.ledger.records import Note
        from edgefl.ledger.tx import record_tx

        self._n += 1
        return record_tx(Note("bench", self._n.to_bytes(8, "big") + os.urandom(max(0, size - 8))), self.me, self.key)

    async def submit(self, raw: bytes, to: str):
        from edgefl.ledger.protocol import Submit

        return (await self.session.request(to, Submit(raw))).message

    async def __aenter__(self) -> "Client":
        await self.session.__aenter__()
        await self.session.wait_connected(30)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.__aexit__(*exc)


async def _commit_rows(report: Report, c: Committee, client: Client, samples: int, suffix: str = "") -> None:
    n = c.n
    commit, proposal, consensus, cost = Samples(), Samples(), Samples(), Cost()
    for i in range(samples + 3):
        await c.quiet(0.02)
        before = await c.stats()
        raw = client.record()
        t0 = time.monotonic()
        receipt = await client.submit(raw, c.leader)
        h = receipt.height
        await c.until(lambda: all(h in m.commits for m in c.live))
        await c.quiet(0.02)  # late votes and checkpoints belong to the block's cost
        after = await c.stats()
        if i < 3:
            continue  # warm-up
        step = Cost.between(before, after)
        cost.add(step)
        done = max(m.commits[h]["t"] for m in c.live)
        commit.add(done - t0, step.cpu)
        built = c.members[c.leader].build.get(h)
        if built is not None and all(h in m.valid for m in c.live):
            proposal.add(max(m.valid[h] for m in c.live) - built, step.cpu)
            consensus.add(done - built, step.cpu)
    where = "on the disk" if suffix else ""
    report.add(_row(f"commit_tx_n{n}{suffix}", commit, cost,
                    f"submit to the primary → durable at all {n} replicas {where}".rstrip()))
    if not suffix:
        report.add(_row(f"block_proposal_n{n}", proposal, cost, f"primary builds the block → validated by all {n}"))
        report.add(_row(f"consensus_n{n}", consensus, cost, f"primary builds the block → durable at all {n}"))


async def _view_change_rows(report: Report, c: Committee, client: Client, samples: int) -> None:
    n = c.n
    s, cost = Samples(), Cost()
    f = (n - 1) // 3
    killed: list[str] = []
    for _ in range(samples):
        await c.quiet(0.05)
        if len(killed) == f:  # bring the crashed back (state transfer) before crashing another
            await c.start(killed)
            await c.until(lambda: len({m.height for m in c.live}) == 1, 60)
            killed.clear()
            await c.quiet(0.2)
        before = await c.stats()
        victim = c.leader
        view = c.view
        t0 = await c.kill(victim)
        killed.append(victim)
        raw = client.record()
        live = [m.id for m in c.live]
        receipts = await asyncio.gather(*(client.submit(raw, i) for i in live))
        h = receipts[0].height
        await c.until(lambda: all(h in c.members[i].commits for i in live), 60)
        await c.quiet(0.05)
        after = await c.stats()
        if c.members[live[0]].commits[h]["view"] <= view:
            log.warning("view_change: %s was not the primary (the block committed in view %d)", victim, view)
            continue
        step = Cost.between(before, after)
        cost.add(step)
        s.add(max(c.members[i].commits[h]["t"] for i in live) - t0, step.cpu)
    report.add(_row(f"view_change_n{n}", s, cost, f"primary SIGKILLed → next block durable at the {n - 1} others "
                                                   f"(view timeout {VIEW_TIMEOUT:g} s)"))


async def _finality_rows(report: Report, c: Committee, client: Client, samples: int) -> None:
    n, cloud = c.n, c.members["cloud-1"]
    s, cost, blocks = Samples(), Cost(), []
    for i in range(samples + 2):
        await c.quiet(0.05)
        before = await c.stats()
        t0 = time.monotonic()
        h = (await client.submit(client.record(), "cloud-1")).height
        await c.until(lambda: cloud.finalized >= h, 60)
        await c.quiet(0.05)  # the votes of the last vote blocks
        after = await c.stats()
        if i < 2:
            continue
        step = Cost.between(before, after)
        step.blocks = after["cloud-1"]["h"] - before["cloud-1"]["h"]  # main-chain blocks (the fogs' stay put)
        cost.add(step)
        blocks.append(step.blocks)
        s.add(cloud.final_at(h) - t0, step.cpu)
    report.add(_row(f"chain_finality_n{n}", s, cost,
                    f"submit → final at the cloud (FFG: its child justified by ≥ 2/3 of {n} members' votes); "
                    f"main chain sealed every {c.block_interval * 1e3:g} ms; "
                    f"{statistics.median(blocks):.0f} main blocks per finality", blocks_per_op=statistics.median(blocks)))


async def _clients(c: Committee, to: str, size: int, count: int, window: int) -> list[dict]:
    """Run every client of ``c`` at once; their reports."""
    procs = [await c._spawn("client", str(c.workdir), i, "--to", to, "--size", str(size), "--count", str(count),
                            "--window", str(window), log_name=i) for i in c.clients]
    try:
        async with asyncio.timeout(120):
            for p in procs:
                line = json.loads(await p.stdout.readline())
                assert line["e"] == "ready", line
            for p in procs:
                p.stdin.write(b"go\n")
            for p in procs:
                await p.stdin.drain()
            results = [json.loads(await p.stdout.readline()) for p in procs]
            for p in procs:
                p.stdin.close()
                await p.wait()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    return results


async def _committee_tx_rows(report: Report, c: Committee, runs: int, count: int, window: int,
                             labels: list[str]) -> None:
    for label in labels:
        size = SIZES[label]
        lat: list[float] = []
        rates, cpus, cost = [], [], Cost()
        for _ in range(runs):
            await c.quiet(0.05)
            before = await c.stats()
            results = await _clients(c, c.leader, size, count, window)
            await c.quiet(0.05)
            after = await c.stats()
            step = Cost.between(before, after)
            cost.add(step)
            total = sum(len(r["lat"]) for r in results)
            wall = max(r["end"] for r in results) - min(r["start"] for r in results)
            rates.append(total / wall)
            cpus.append(step.cpu / total)
            lat += [x for r in results for x in r["lat"]]
        s = Samples(lat, [0.0] * len(lat))
        name = f"committee_tx_{label}"
        note = (f"{len(c.clients)} client processes × {count} records of {label}, {window} in flight each, to the "
                f"primary; submit → receipt (durable)")
        row = _row(name, s, cost, note, mean=statistics.fmean(lat) * 1e3, max=max(lat) * 1e3,
                   cpu_tx_ms=round(statistics.median(cpus) * 1e3, 3))
        row.cpu_median = None  # transactions overlap: the CPU per transaction is cpu_tx_ms (and the tx/s row's)
        report.add(row)
        tps = f"committee_tx_tps_{label}"
        anchor = published.anchor_for("consensus", tps)
        rate = statistics.median(rates)
        report.add(Row(tps, "ops/s", rate, percentile(rates, 1), statistics.median(cpus) * 1e3,
                       anchor=anchor.value if anchor else None, ratio=rate / anchor.value if anchor else None,
                       goal=goal(tps), note=f"{len(c.clients) * count} records per run, {runs} run(s)"))


async def _throughput_row(report: Report, workdir: Path, port: int, label: str, block: int, runs: int) -> None:
    per_block = max(1, block // (THROUGHPUT_RECORD + 200))
    clients = 4
    window = max(2, -(-3 * per_block // clients))  # three blocks' worth in flight: the mempool never runs dry
    count = max(window, -(-8 * per_block // clients))  # about eight blocks per run
    async with Committee(workdir, port, 4, max_block=block, clients=clients, view_timeout=5.0) as c:
        rates, tx_rates, cpu_block, cost = [], [], [], Cost()
        for _ in range(runs):
            await c.quiet(0.05)
            base = {m.id: m.height for m in c.live}
            before = await c.stats()
            await _clients(c, c.leader, THROUGHPUT_RECORD, count, window)
            await c.quiet(0.05)
            after = await c.stats()
            step = Cost.between(before, after)
            cost.add(step)
            # at the replica that is last to commit: bytes of the blocks after the first, over their span
            slowest = min(c.live, key=lambda m: m.height)
            heights = sorted(h for h in slowest.commits if h > base[slowest.id])
            first, rest = heights[0], heights[1:]
            span = slowest.commits[heights[-1]]["t"] - slowest.commits[first]["t"]
            rates.append(sum(slowest.commits[h]["size"] for h in rest) / span * 3600 / 1e6)
            tx_rates.append(sum(slowest.commits[h]["n"] for h in rest) / span)
            cpu_block.append(step.cpu / max(1, step.blocks))
    name = f"throughput_MBph_block_{label}"
    anchor = published.anchor_for("consensus", name)
    rate = statistics.median(rates)
    row = Row(name, "MB/h", rate, percentile(rates, 1), statistics.median(cpu_block) * 1e3,
              anchor=anchor.value if anchor else None, ratio=rate / anchor.value if anchor else None,
              goal=goal(name), note=f"n = 4, {block >> 10} KiB blocks of 32 KiB records, {clients} clients; "
                                    f"{statistics.median(tx_rates):.0f} tx/s")
    row.extra = {**cost.fields(), "tx_per_s": round(statistics.median(tx_rates), 1)}
    report.add(row)


def _verify_rows(report: Report, quick: bool) -> None:
    from edgefl.consensus import sortition
    from edgefl.consensus.pbft import Vote
    from edgefl.consensus.sortition import SortitionClaim
    from edgefl.crypto.envelope import Signer, StaticKeyRegistry, Verifier
    from edgefl.crypto.keys import SigningKey
    from edgefl.ledger.committee import Committee as Members
    from edgefl.runtime.metrics import Metrics

    keys = {i: SigningKey() for i in ("fog-a", "dev-01", "dev-02", "dev-03")}
    members = Members.bft([(i, k.public_key) for i, k in keys.items()])
    verifier = Verifier(StaticKeyRegistry({i: k.public_key for i, k in keys.items()}), metrics=Metrics(),
                        window=1 << 20)
    signer = Signer("dev-01", keys["dev-01"])
    h = os.urandom(32)
    seed, weight, total, tau = os.urandom(32), 50, 1000, 20
    secret = keys["dev-01"].secret
    claim = None
    for view in range(1000):  # a draw that selects dev-01 (a member that may vote)
        sel = sortition.draw(secret, seed, f"committee/{view}", weight, total, tau, "dev-01")
        if sel.selected:
            claim = SortitionClaim(epoch=view, member="dev-01", role=f"committee/{view}", proof=sel.proof)
            break
    pk = keys["dev-01"].public_key.raw
    iterations = 300 if quick else 3000
    # fresh envelopes (each passes the replay window once), sealed beforehand: verification alone is timed
    votes = iter([signer.seal(Vote("fog-a", "prepare", 0, i, h, "dev-01").signed(keys["dev-01"]), to="fog-a")
                  for i in range(2 * iterations + 20)])
    claims = iter([signer.seal(claim, to="fog-a") for _ in range(iterations + 10)])

    def check_vote(wire: bytes) -> Vote:
        v = verifier.open(wire, expect_sender="dev-01", expect_to="fog-a").message
        key = members.key_of(v.signer)
        if key is None or not key.verify(v.sig, v.digest()):
            raise AssertionError("the vote does not verify")
        return v

    def verify_vote():
        check_vote(next(votes))

    def verify_sortition_vote():
        check_vote(next(votes))
        c = verifier.open(next(claims), expect_sender="dev-01", expect_to="fog-a").message
        if sortition.verify(pk, c.proof, seed, c.role, weight, total, tau, c.member) is None:
            raise AssertionError("the claim does not verify")

    for name, fn, note in (("verify_vote", verify_vote, "envelope opened + the vote's signature (one PBFT vote)"),
                           ("verify_sortition_vote", verify_sortition_vote,
                            "the vote + its sortition claim: envelope, VRF proof, binomial draw")):
        s = measure(fn, iterations=iterations // (1 if name == "verify_vote" else 3), warmup=5)
        row = s.row(name, goal=goal(name), note=note)
        anchor = published.anchor_for("consensus", name)
        if anchor is not None:
            row.anchor, row.ratio = anchor.value, row.median / anchor.value
        report.add(row)


def _storage(storage: str) -> str | None:
    """Where the replicas keep their chains and vote logs: tmpfs (/dev/shm), the disk (the temp folder), a path."""
    if storage == "tmpfs":
        return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return None if storage == "disk" else storage


def _durable_rows(report: Report, tmp_dirs: dict[str, str | None], quick: bool) -> None:
    """What one durable write costs where the replicas keep their files (the vote log's: temp file, fsync,
    rename, fsync of the folder); a block puts three on its critical path (leader's and replicas' vote log, the
    SQLite commit)."""
    from edgefl.runtime.files import write_atomic

    for label, where in tmp_dirs.items():
        with tempfile.TemporaryDirectory(prefix="edgefl-bench-fsync-", dir=where) as d:
            path = Path(d) / "votes"
            s = measure(lambda: write_atomic(path, os.urandom(256)), iterations=20 if quick else 200, warmup=3)
            report.add(s.row(f"durable_write_{label}", note=f"write_atomic of 256 B in {where or tempfile.gettempdir()}"
                                                             " (the vote log's write)"))


async def run(*, quick: bool = False, port: int | None = None, sizes: str | None = None,
              only: str | None = None, client_window: int = 4, workdir: str | None = None,
              storage: str = "tmpfs", samples: int | None = None, ns: tuple[int, ...] = (4, 16),
              steady_timeout: float = 5.0, **_) -> Report:
    """Every row; ``only``: a comma-separated subset of the row groups (verify, commit, disk, finality,
    view_change, committee_tx, throughput); ``samples``: commit samples instead of the defaults; ``ns``: the
    committee sizes; ``steady_timeout``: the view timeout of the committees that measure without crashes (the
    view-change rows keep the default 1 s)."""
    from edgefl.transport.mosquitto import LocalMosquitto

    groups = set((only or "verify,commit,disk,finality,view_change,committee_tx,throughput").split(","))
    where = _storage(storage)
    report = Report(f"edgefl bench consensus: {PROTOCOL}, replicas as processes over Mosquitto, "
                    f"files in {where or tempfile.gettempdir()}")
    if "verify" in groups:
        _verify_rows(report, quick)
        _durable_rows(report, {"here": where, **({"disk": None} if where is not None else {})}, quick)
    async def guarded(rows: list[str], make) -> None:
        """One group of rows; a group that fails (a committee that stalls on an overloaded machine) leaves rows
        that say so, and the others still run."""
        try:
            await make()
        except Exception as exc:  # noqa: BLE001 - reported in the rows, the run goes on
            log.error("bench consensus: %s failed: %s: %s", ", ".join(rows), type(exc).__name__, exc)
            have = {r.name for r in report.rows}
            for name in rows:
                if name not in have:
                    report.add(Row(name, "ms", float("nan"), float("nan"),
                                   note=f"failed: {type(exc).__name__}: {str(exc)[:120]}"))

    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="edgefl-bench-consensus-", dir=where)))
        if port is None:
            port = stack.enter_context(LocalMosquitto(work / "broker", max_packet_size=1 << 20)).port
        for n in ns:
            async def steady(n=n) -> None:  # no crash here: a long view timeout keeps a slow block's leader
                async with Committee(work / f"sub{n}", port, n, clients=10 if n == 4 else 0,
                                     view_timeout=steady_timeout) as c, Client(c, COORDINATOR) as client:
                    if "commit" in groups:
                        await _commit_rows(report, c, client, samples or ((10 if n == 4 else 5) if quick else
                                                                          (100 if n == 4 else 40)))
                    if n == 4 and "committee_tx" in groups:
                        await _committee_tx_rows(report, c, 1, 10 if quick else 100, client_window,
                                                 ["32B"] if quick else list(SIZES))

            async def crash(n=n) -> None:
                async with Committee(work / f"vc{n}", port, n) as c, Client(c, COORDINATOR) as client:
                    await _view_change_rows(report, c, client, 1 if quick else 3)

            async def disk() -> None:
                with tempfile.TemporaryDirectory(prefix="edgefl-bench-consensus-disk-") as d:
                    async with Committee(Path(d) / "sub4", port, 4, view_timeout=steady_timeout) as c, \
                            Client(c, COORDINATOR) as client:
                        await _commit_rows(report, c, client, 30, suffix="_disk")
                here = next(r for r in report.rows if r.name == "commit_tx_n4")
                report.add(ratio_row("commit_tx_n4_disk_ratio", report.rows[-1], here,
                                     note="replicas' files on the disk / on tmpfs (one disk shared by all 4)"))

            async def finality(n=n) -> None:
                async with Committee(work / f"final{n}", port, n, kind="ffg") as c, Client(c, COORDINATOR) as client:
                    await _finality_rows(report, c, client, 2 if quick else (30 if n == 4 else 10))

            if groups & {"commit", "committee_tx"}:
                names = [f"{r}_n{n}" for r in ("commit_tx", "block_proposal", "consensus")] if "commit" in groups else []
                if n == 4 and "committee_tx" in groups:
                    names += [f"committee_tx{t}_{k}" for k in SIZES for t in ("", "_tps")]
                await guarded(names, steady)
            if quick and n > 4:  # quick: of the large committee only the commit rows (its startups cost most)
                continue
            if "view_change" in groups:
                await guarded([f"view_change_n{n}"], crash)
            if n == 4 and "disk" in groups and "commit" in groups and where is not None and not quick:
                await guarded(["commit_tx_n4_disk"], disk)
            if "finality" in groups:
                await guarded([f"chain_finality_n{n}"], finality)
        if "throughput" in groups:
            chosen = [s for s in (sizes or ",".join(BLOCKS)).split(",") if s]
            if quick and sizes is None:
                chosen = ["512K"]
            for label in chosen:
                await guarded([f"throughput_MBph_block_{label}"], lambda label=label: _throughput_row(
                    report, work / f"tp{label}", port, label, BLOCKS[label], 1 if quick else 2))
    return report


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="use the Mosquitto already listening on 127.0.0.1:PORT")
    p.add_argument("--only", help="comma-separated row groups: verify, commit, disk, finality, view_change, "
                                  "committee_tx, throughput (default: all)")
    p.add_argument("--sizes", help="block sizes for the throughput rows (default 512K,1M,2M,4M; quick: 512K)")
    p.add_argument("--ns", type=lambda t: tuple(int(v) for v in t.split(",")), default=(4, 16),
                   help="committee sizes (default 4,16)")
    p.add_argument("--samples", type=int, help="commit samples per committee size (default 100 / 40; quick 10 / 5)")
    p.add_argument("--steady-timeout", type=float, default=5.0,
                   help="view timeout of the committees measured without crashes (default 5 s: a slow block on a "
                        "loaded machine does not depose its leader); the view-change rows use 1 s")
    p.add_argument("--workdir", help="keep the replicas' chains and logs in this (new) folder")
    p.add_argument("--storage", default="tmpfs",
                   help="where the replicas keep chains and vote logs: tmpfs (/dev/shm, default: every fsync "
                        "issued, none waits on a disk that all replicas here share), disk (the temp folder), or a path")
    p.add_argument("--client-window", type=int, default=4,
                   help="records each committee_tx client keeps in flight (default 4)")


if __name__ == "__main__":
    main()
