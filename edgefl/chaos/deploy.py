"""A site from `edgefl site init`, deployed for a scenario as its hosts would run it.

Each node's data directory is copied out of the site to its "host" folder, as its bundle would be;
each fog's and the cloud's Mosquitto runs from the configuration `site init` renders (mTLS, the ACL,
the fog's bridge to the cloud), with that folder as its data directory; each node is an
``edgefl --profile SITE/nodes/ID/edgefl.toml run`` process.  On one machine the brokers listen on free
loopback ports; with a ``Network`` each broker host is a namespace, every broker on 8883 at its
namespace's address, and a device runs on its fog's host.  ``close()`` kills every process it started.
"""

from __future__ import annotations

import ctypes
import getpass
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import edgefl
from edgefl.chaos.netns import Network
from edgefl.errors import EdgeflError
from edgefl.ledger import Chain, decode_tx
from edgefl.ledger.service import db_path, registry_for
from edgefl.ledger.store import Store
from edgefl.provision import SiteDirectory
from edgefl.provision.site import TLS_PORT
from edgefl.transport import BrokerError
from edgefl.transport.mosquitto import free_port, mosquitto_binary

# quick blocks and interlock, quick reconnects (as tests/site_helpers.py and edgefl.nodes.site)
FAST = ["ledger.block_interval_s=0.05", "ledger.anchor_interval_s=0.3", "ledger.beacon_interval_s=0.3",
        "mqtt.reconnect_min_s=0.05", "mqtt.reconnect_max_s=1.0"]
# a small task: a 3920-20-10 model, 64 items a device in batches of 32, one local epoch (2 steps a round)
SMALL_TASK = ["fl.hidden=[20]", "fl.items=64", "ml.batch_size=32", "ml.local_epochs=1", "ml.optimizer=adam",
              "ml.lr=0.01", "ml.epsilon=10", "ml.epsilon_budget=1000", "log.json=false"]


def die_with_parent() -> None:
    """In a child before exec: SIGKILL when the scenario's process dies, however it dies (Linux prctl), so a
    run killed outright leaves no node, broker or probe behind in its own session."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class NodeDied(EdgeflError, RuntimeError):
    """A node or broker of the deployment exited on its own."""

    reason = "node_died"


class Proc:
    """A process in its own process group (so a kill reaches whatever it started), output to ``log``."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]):
        self.name, self.argv, self.log = name, argv, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True, preexec_fn=die_with_parent)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        self.kill(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    """Poll ``predicate`` until it returns something true; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


class Deployment:
    def __init__(self, workdir: str | os.PathLike, fogs: dict[str, list[str]], *, cloud: str = "cloud-1",
                 network: Network | None = None, settings: list[str] = (), per_node: dict[str, list[str]] | None = None,
                 committee: int | None = None, byzantine: dict[str, str] | None = None):
        """``fogs``: each fog's devices; ``settings`` for every node, ``per_node`` for one (``--set`` values);
        ``committee``: the sub-chain committees' size (`site init --committee`); ``byzantine``: node -> the
        behaviour of its committee replicas (edgefl.chaos.byzantine_member)."""
        if mosquitto_binary() is None:
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.workdir = Path(workdir)
        self.network = network
        self.settings, self.per_node = list(settings), dict(per_node or {})
        self.sd = SiteDirectory(self.workdir / "site")
        hosts = network.addresses if network else {n: "127.0.0.1" for n in [cloud, *fogs]}
        self.sd.init(fogs={f: hosts[f] for f in fogs}, devices=[f"{f}={','.join(d)}" for f, d in fogs.items() if d],
                     cloud=cloud, cloud_host=hosts[cloud], committee=committee)
        self.byzantine = dict(byzantine or {})
        self.site = self.sd.load()
        self.cloud, self.fogs = cloud, {f: list(d) for f, d in fogs.items()}
        self.ports = {n: TLS_PORT if network else free_port() for n in [cloud, *fogs]}
        self.procs: dict[str, Proc] = {}
        self.brokers: dict[str, Proc] = {}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(edgefl.__file__).resolve().parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
        for node in self.site.nodes():
            self._install(node)
        self._stores: dict[str, Store] = {}

    # ------------------------------------------------------------------ layout

    def host(self, node: str) -> Path:
        """The node's data directory on its host."""
        return self.workdir / "hosts" / node

    def machine(self, node: str) -> str:
        """The broker host a node runs on: its own, or (a device) its fog's."""
        return self.site.fog_of(node) or node

    def _install(self, node: str) -> None:
        data = self.host(node)
        shutil.copytree(self.sd.data_dir(node), data)
        if self.site.role(node) != "device":
            files = self.sd.broker_files(self.site, node, data_dir=str(data), run_user=getpass.getuser(),
                                         bind="0.0.0.0" if self.network else "127.0.0.1", port=self.ports[node],
                                         cloud_port=self.ports[self.cloud])
            for name, text in files.items():
                (data / "broker" / name).write_text(text)

    def overrides(self, node: str) -> list[str]:
        return [f"node.data_dir={self.host(node)}", f"mqtt.port={self.ports[self.machine(node)]}", *FAST,
                *self.settings, *self.per_node.get(node, ())]

    def config(self, node: str):
        return self.sd.config(self.site, node, data_dir=self.host(node), overrides=self.overrides(node))

    def prefix(self, node: str) -> list[str]:
        return self.network.prefix(self.machine(node)) if self.network else []

    def command(self, node: str, *args: str) -> list[str]:
        sets = [a for s in self.overrides(node) for a in ("--set", s)]
        entry = (["edgefl.chaos.byzantine_member", self.byzantine[node]] if node in self.byzantine
                 else ["edgefl"])
        return [*self.prefix(node), sys.executable, "-m", *entry, "--profile",
                str(self.sd.node_dir(node) / "edgefl.toml"), *sets, *(args or ("run",))]

    # ------------------------------------------------------------------ processes

    def start_brokers(self, timeout: float = 20.0) -> None:
        """The cloud's broker, then each fog's; returns once every fog's bridge is connected to the cloud."""
        for node in [self.cloud, *self.fogs]:
            self.start_broker(node, timeout)
        for fog in self.fogs:
            self.wait(lambda: self.bridged(fog), timeout, f"{fog}'s bridge to the cloud's broker")

    def _ss(self, node: str, *args: str) -> str:
        """``ss`` (iproute2) on ``node``'s host: its sockets, with no connection of our own."""
        return subprocess.run([*self.prefix(node), "ss", "-Htn", *args], capture_output=True, text=True,
                              timeout=10).stdout

    def listening(self, node: str) -> bool:
        return bool(self._ss(node, "-l", f"sport = :{self.ports[node]}").strip())

    def bridged(self, fog: str) -> bool:
        """``fog``'s broker holds an established connection to the cloud broker's port."""
        pid = self.brokers[fog].popen.pid
        out = self._ss(fog, "-p", "state", "established", f"dport = :{self.ports[self.cloud]}")
        return f"pid={pid}," in out

    def start_broker(self, node: str, timeout: float = 20.0) -> Proc:
        conf = self.host(node) / "broker" / "mosquitto.conf"
        log = self.host(node) / "broker" / "mosquitto.log"
        proc = self.brokers[node] = Proc(f"{node}-broker", [*self.prefix(node), mosquitto_binary(), "-c", str(conf)],
                                         log, self.env)

        def running() -> bool:
            if not proc.alive:
                raise BrokerError(f"{node}'s mosquitto exited with {proc.popen.returncode}: {proc.tail()}")
            return self.listening(node)

        wait_for(running, timeout, f"{node}'s mosquitto")
        return proc

    def restart_broker(self, node: str, outage: float) -> None:
        """SIGTERM to ``node``'s Mosquitto (it saves its persistent sessions and queued messages), ``outage``
        seconds without it, then the same configuration again."""
        self.brokers[node].stop()
        time.sleep(outage)
        self.start_broker(node)

    def start(self, node: str, *args: str) -> Proc:
        """``edgefl run`` (or ``args``) as ``node``, output appended to hosts/NODE.log."""
        proc = self.procs[node] = Proc(node, self.command(node, *args), self.workdir / "hosts" / f"{node}.log",
                                       self.env)
        return proc

    def kill(self, node: str) -> None:
        """kill -9 of ``node``'s process (it stays down until ``start`` again)."""
        proc = self.procs[node]
        proc.kill()
        proc.popen.wait()

    def check_alive(self) -> None:
        """Raise if a node or broker this deployment runs has exited (other than by ``kill``)."""
        for name, proc in [*self.procs.items(), *((f"{n}'s broker", b) for n, b in self.brokers.items())]:
            if proc.popen.poll() is not None and proc.popen.returncode != -signal.SIGKILL:
                raise NodeDied(f"{name} exited with {proc.popen.returncode}:\n{proc.tail()}")

    def wait(self, predicate, timeout: float, what: str, every: float = 0.05):
        """``wait_for`` that also fails as soon as a node dies."""
        def probe():
            self.check_alive()
            return predicate()
        return wait_for(probe, timeout, what, every)

    def cli(self, node: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """An `edgefl` command on ``node``'s host with its profile (e.g. ``ledger verify-tx``)."""
        return subprocess.run(self.command(node, *args), capture_output=True, text=True, timeout=timeout,
                              env=self.env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        procs = [*self.procs.values(), *self.brokers.values()]
        for p in procs:
            p.kill()
        for p in procs:
            p.popen.wait()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the chains, as files

    def chain_path(self, node: str) -> Path:
        return db_path(self.config(node))

    def store(self, node: str) -> Store:
        """A read-only view of ``node``'s chain that sees every commit (polled while the node writes)."""
        if node not in self._stores:
            self._stores[node] = Store(self.chain_path(node), readonly=True)
        return self._stores[node]

    def records(self, node: str, rtype: str, device: str | None = None) -> list[tuple[bytes, object]]:
        """(tx id, record) of ``rtype`` on ``node``'s chain, oldest first."""
        store = self.store(node)
        return [(txid, decode_tx(store.tx(txid)[2]).body)
                for txid, _, _ in store.find(rtype=rtype, device=device, limit=1 << 30, newest=False)]

    def open_chain(self, node: str) -> Chain:
        cfg = self.config(node)
        return Chain.open(db_path(cfg), readonly=True, registry=registry_for(cfg))
