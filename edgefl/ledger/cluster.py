"""A main chain and its sub-chains served in one process through one broker (benchmarks, tests, demos).

Every node has its own key, MQTT session and SQLite file, exactly as in
separate processes; only the event loop is shared.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edgefl.crypto import Signer, SigningKey, StaticKeyRegistry, Verifier
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.chain import Chain
from edgefl.ledger.committee import Committee
from edgefl.ledger.crosschain import CrossChain
from edgefl.ledger.sealer import SingleSealer
from edgefl.ledger.service import LedgerNode
from edgefl.ledger.tx import ChainSpec
from edgefl.runtime import Metrics, MqttSection
from edgefl.transport import Session

MAIN_NODE = "cloud-1"


class LocalCluster:
    def __init__(self, workdir: str | Path, port: int, *, subchains=("fog-a", "fog-b"), clients=("dev-1", "auditor"),
                 block_interval_s: float = 0.05, interlock_interval_s: float = 0.15, max_block: int = 1 << 20,
                 keys: dict[str, SigningKey] | None = None, finality: dict[str, int] | None = None):
        """``finality``: FFG weights of the main chain's final committee (the cloud and the fogs it names)."""
        self.workdir = Path(workdir)
        self.port = port
        self.keys = {n: (keys or {}).get(n) or SigningKey() for n in (MAIN_NODE, *subchains, *clients)}
        self.registry = StaticKeyRegistry({n: k.public_key for n, k in self.keys.items()})
        self.metrics = {n: Metrics() for n in self.keys}
        self.sessions: dict[str, Session] = {}
        self.ledgers: dict[str, LedgerNode] = {}
        ts = time.time_ns() // 1_000_000

        def committee(node: str) -> Committee:
            return Committee.of([(node, self.keys[node].public_key)])

        final = Committee.of([(n, self.keys[n].public_key) for n in finality]) if finality else committee(MAIN_NODE)
        specs = {MAIN_NODE: ChainSpec(chain="main", role="main", sealer="single", committee=final,
                                      max_block=max_block, ts=ts, subchains={s: committee(s) for s in subchains},
                                      finality=dict(finality) if finality else None)}
        for s in subchains:
            specs[s] = ChainSpec(chain=s, role="sub", sealer="single", committee=committee(s), max_block=max_block,
                                 ts=ts, parent="main", parent_committee=committee(MAIN_NODE))
        for node, spec in specs.items():
            sealer = SingleSealer(node, self.keys[node])
            chain = Chain.create(self.db(spec.chain), spec, sealer, registry=self.registry,
                                 metrics=self.metrics[node])
            session = self.session(node, "cloud" if node == MAIN_NODE else "fog")
            self.ledgers[node] = LedgerNode(chain, session, BlobStore(self.workdir / node / "blobs"), sealer,
                                            keys={node: self.keys[node]}, main_node=MAIN_NODE,
                                            block_interval_s=block_interval_s,
                                            interlock_interval_s=interlock_interval_s, metrics=self.metrics[node])
        for c in clients:
            self.session(c, "device")
        self._tasks: list[asyncio.Task] = []

    def db(self, chain: str) -> Path:
        return self.workdir / "ledger" / f"{chain}.db"

    def session(self, node: str, role: str) -> Session:
        m = self.metrics[node]
        s = Session(site="local", role=role, signer=Signer(node, self.keys[node]),
                    verifier=Verifier(self.registry, metrics=m, name=node),
                    mqtt=MqttSection(port=self.port, reconnect_min_s=0.05, reconnect_max_s=0.5), metrics=m)
        self.sessions[node] = s
        return s

    async def __aenter__(self) -> "LocalCluster":
        for s in self.sessions.values():
            await s.__aenter__()
        await asyncio.gather(*(s.wait_connected(10) for s in self.sessions.values()))
        self._tasks = [asyncio.create_task(n.run(), name=f"ledger-{name}") for name, n in self.ledgers.items()]
        return self

    async def __aexit__(self, *exc) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self.sessions.values():
            await s.__aexit__(None, None, None)
        for n in self.ledgers.values():
            n.close()

    def verifier(self, via: str, client: str = "auditor", **kw) -> CrossChain:
        """A Protocol-1 verifier holding (a read-only view of) chain ``via``; close ``.local`` when done."""
        local = Chain.open(self.db(via), readonly=True, registry=self.registry)
        return CrossChain(self.sessions[client], local, main_node=MAIN_NODE,
                          server_of=lambda c: MAIN_NODE if c == "main" else c, registry=self.registry, **kw)
