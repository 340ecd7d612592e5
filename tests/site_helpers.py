"""A site from `edgefl site init`, deployed on this machine: each node's data directory copied out of the
site as it would be copied onto its host, its broker on a free loopback port, its profile as written."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgefl.provision.site import SiteDirectory
from edgefl.transport.mosquitto import LocalMosquitto, free_port

FAST = ["ledger.block_interval_s=0.05", "ledger.anchor_interval_s=0.3", "ledger.beacon_interval_s=0.3",
        "mqtt.reconnect_min_s=0.05", "mqtt.reconnect_max_s=1.0"]


class Deployed:
    def __init__(self, site_dir: str | os.PathLike, hosts: str | os.PathLike, settings: list[str] = ()):
        self.sd = SiteDirectory(site_dir)
        self.site = self.sd.load()
        self.hosts = Path(hosts)
        self.settings = list(settings)
        self.ports = {n: free_port() for n in [self.site.cloud, *self.site.fogs]}
        for node in self.site.nodes():
            self.install(node)

    def install(self, node: str) -> Path:
        """Copy the node's data directory to its "host" (as its bundle would); the brokers' files rendered there."""
        data = self.hosts / node
        if not data.exists():
            shutil.copytree(self.sd.data_dir(node), data)
        if self.site.role(node) != "device":
            files = self.sd.broker_files(self.site, node, data_dir=str(data), run_user=getpass.getuser(),
                                         bind="127.0.0.1", port=self.ports[node],
                                         cloud_port=self.ports[self.site.cloud])
            files["mosquitto.conf"] = files["mosquitto.conf"].replace(f"address {self.site.cloud_host}:",
                                                                      "address 127.0.0.1:")
            for name, text in files.items():
                (data / "broker" / name).write_text(text)
        return data

    def broker_port(self, node: str) -> int:
        return self.ports[self.site.fog_of(node) or node]

    def overrides(self, node: str) -> list[str]:
        return [f"node.data_dir={self.hosts / node}", "mqtt.host=127.0.0.1", f"mqtt.port={self.broker_port(node)}",
                *FAST, *self.settings]

    def config(self, node: str, *extra: str):
        return self.sd.config(self.site, node, data_dir=self.hosts / node, overrides=[*self.overrides(node), *extra])

    def profile(self, node: str) -> Path:
        """The node's profile as `site init` wrote it (its data directory is given with --set)."""
        return self.sd.node_dir(node) / "edgefl.toml"

    @contextlib.contextmanager
    def brokers(self):
        with contextlib.ExitStack() as stack:
            for node in [self.site.cloud, *self.site.fogs]:  # the cloud's first: the fogs bridge to it
                conf = self.hosts / node / "broker" / "mosquitto.conf"
                stack.enter_context(LocalMosquitto(self.hosts / node / "broker", port=self.ports[node], conf=conf))
            yield

    def command(self, node: str, *args: str) -> list[str]:
        sets = [a for s in self.overrides(node) for a in ("--set", s)]
        return [sys.executable, "-m", "edgefl", "--profile", str(self.profile(node)), *sets, *args]

    def spawn(self, node: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.hosts / f"{node}.log", "ab")
        return subprocess.Popen(self.command(node, *(args or ("run",))), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})})
