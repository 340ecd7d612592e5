"""A whole deployment in one process: a cloud, its fogs and their devices (the demo and the tests).

Every node gets what `edgefl keygen`, `edgefl ledger init` and a profile give
it on its own machine: a key, a data directory, a trust directory holding the
others' public keys, its chain (cloud, fogs) and a configuration; then it runs
exactly what `edgefl run` runs (``edgefl.nodes.node.running``).  Only the event
loop is shared.  Nodes can be stopped and started again (restarts in tests).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path

from edgefl.consensus import committees
from edgefl.crypto import SigningKey, save_public
from edgefl.ledger import Chain
from edgefl.ledger.service import db_path
from edgefl.nodes.node import running
from edgefl.runtime import Config, load_config
from edgefl.transport import Session

# quick blocks and interlock for a site on one machine
FAST = ["ledger.block_interval_s=0.05", "ledger.anchor_interval_s=0.3", "ledger.beacon_interval_s=0.3",
        "mqtt.reconnect_min_s=0.05", "mqtt.reconnect_max_s=1.0"]


class LocalSite:
    def __init__(self, workdir: str | Path, port: int, fogs: dict[str, list[str]], *, cloud: str = "cloud-1",
                 clients: tuple[str, ...] = (), settings: list[str] = (), per_node: dict[str, list[str]] | None = None):
        """``fogs`` maps each fog to its devices; ``clients`` are extra identities (e.g. an auditor) with a key
        and a configuration but no services; ``settings`` apply to every node, ``per_node`` to one."""
        self.workdir = Path(workdir)
        self.cloud = cloud
        self.clients = clients
        self._session_ids = itertools.count(1)
        self.roles = {cloud: "cloud", **{f: "fog" for f in fogs}, **{d: "device" for ds in fogs.values() for d in ds},
                      **{c: "device" for c in clients}}
        self.cfgs: dict[str, Config] = {}
        self.overrides: dict[str, list[str]] = {}  # what rebuilds a node's configuration in another process
        trust = self.workdir / "trust"
        for node, role in self.roles.items():
            fog = next((f for f, ds in fogs.items() if node in ds), None)
            sets = [f"node.id={node}", f"node.role={role}", f"node.site={fog or (node if role == 'fog' else 'cloud')}",
                    f"node.data_dir={self.workdir / node}", f"security.trust_dir={trust}", f"mqtt.port={port}",
                    f"ledger.main_node={cloud}", *FAST, *settings, *(per_node or {}).get(node, ())]
            if fog:
                sets.append(f"node.fog={fog}")
            if role == "fog":
                sets.append("fl.devices=[" + ",".join(f'"{d}"' for d in fogs[node]) + "]")
            self.overrides[node] = sets
            self.cfgs[node] = cfg = load_config(overrides=sets, env={})
            key_file = cfg.path(cfg.security.key_file)
            if not key_file.exists():
                SigningKey().save(key_file)
                save_public(SigningKey.load(key_file).public_key, trust / f"{node}.pub")
        self._create_chains(fogs)
        self.nodes: dict[str, object] = {}
        self._running: dict[str, contextlib.AsyncExitStack] = {}

    def key(self, node: str) -> SigningKey:
        return SigningKey.load(self.cfgs[node].path(self.cfgs[node].security.key_file))

    def _create_chains(self, fogs: dict[str, list[str]]) -> None:
        """What `edgefl ledger init` does on each machine (edgefl.consensus.committees.site_geneses), once."""
        specs = committees.site_geneses(self.cloud, fogs, self.cfgs.__getitem__, lambda n: self.key(n).public_key,
                                        time.time_ns() // 1_000_000)
        for holder, spec in specs.items():
            if not db_path(self.cfgs[holder]).exists():
                committees.write_genesis(spec, holder, self.cfgs.__getitem__, self.key)

    def spec(self, chain: str):
        """The genesis spec of ``chain`` (a fog's id, or the cloud's for the main chain), read from its holder."""
        cfg = self.cfgs[chain]
        with contextlib.closing(Chain.open(db_path(cfg))) as c:
            return c.spec

    def session(self, node: str) -> Session:
        """An MQTT session under ``node``'s identity, for a client such as an auditor or an injected peer.

        Beside a running ``node`` it takes a client id of its own: the broker keeps one connection per client
        id, so sharing the node's would have the two take the connection from each other in turn.
        """
        client_id = f"{node}-client-{next(self._session_ids)}" if node in self.nodes else None
        return Session.from_config(self.cfgs[node], client_id=client_id)

    async def start(self, node: str):
        stack = contextlib.AsyncExitStack()
        self.nodes[node], _ = await stack.enter_async_context(running(self.cfgs[node], handle_signals=False))
        self._running[node] = stack
        return self.nodes[node]

    async def stop(self, node: str) -> None:
        stack = self._running.pop(node)
        self.nodes.pop(node, None)
        await stack.aclose()

    async def __aenter__(self) -> "LocalSite":
        for node in self.roles:
            if node not in self.clients:
                await self.start(node)
        return self

    async def __aexit__(self, *exc) -> None:
        for node in reversed(list(self._running)):
            await self.stop(node)
