"""`edgefl site init`: a whole site's material in one directory, every node's data directory ready to copy.

::

    SITE/site.toml          what the site is: the cloud, each fog's host and devices (re-runs add to it)
    SITE/pki/               the site PKI (``CaDirectory``): the root and every CA key; keep it offline
    SITE/nodes/ID/edgefl.toml   the node's profile: its board's, with ids, hosts, files and peers filled in
    SITE/nodes/ID/data/     its data directory (/var/lib/edgefl on its host): its keys (0600), certificates,
                            X.509 files, the PKI's public keys, its chain's genesis (cloud, fogs) and its
                            broker's configuration (broker/: cloud, fogs)

Each fog is the site of its devices in the PKI (it certifies them) and on
the topics; the cloud keeps the main chain, which registers every fog's
sub-chain at genesis, so the fogs are fixed once the cloud's chain exists.
Running ``init`` again with more devices certifies only the new ones: the
other devices' folders stay byte for byte as they were, and the fogs and the
cloud get the new certificates and device lists.  Secrets are created with
mode 0600 in folders of mode 0700 and never printed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import tomllib
from pathlib import Path

from edgefl.crypto import SigningKey
from edgefl.crypto.ca import CaDirectory
from edgefl.errors import EdgeflError
from edgefl.names import check_segment
from edgefl.provision import profile
from edgefl.runtime import write_atomic
from edgefl.transport import BrokerSettings
from edgefl.transport.mosquitto import render

DATA_DIR = "/var/lib/edgefl"  # a node's data directory on its host (the units' StateDirectory)
SERVICE_USER = "edgefl"
ROOT_SITE = "cloud"  # the root's and the cloud's site
TLS_PORT = 8883


class SiteError(EdgeflError, ValueError):
    reason = "site"


@dataclasses.dataclass
class Fog:
    host: str
    devices: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Site:
    """What ``site.toml`` holds."""

    cloud: str = "cloud-1"
    cloud_host: str = ""
    root: str = "root"
    port: int = TLS_PORT
    days: int = 365
    board: str = "pi4"  # the devices' default board profile
    committee: int = 7  # members of each fog's sub-chain committee, the fog included (fixed at genesis)
    epoch_blocks: int = 0  # re-draw each such committee from those members every this many blocks (0: never)
    seats: int = 4  # the seats of a re-drawn committee
    fogs: dict[str, Fog] = dataclasses.field(default_factory=dict)

    def role(self, node: str) -> str:
        if node == self.cloud:
            return "cloud"
        if node in self.fogs:
            return "fog"
        if self.fog_of(node) is not None:
            return "device"
        raise SiteError(f"{node} is not a node of this site (nodes: {', '.join(self.nodes())})")

    def fog_of(self, device: str) -> str | None:
        return next((f for f, fog in self.fogs.items() if device in fog.devices), None)

    def devices(self) -> list[str]:
        return [d for fog in self.fogs.values() for d in fog.devices]

    def nodes(self) -> list[str]:
        return [self.cloud, *self.fogs, *self.devices()]

    def to_toml(self) -> str:
        lines = ["# The site: edit with `edgefl site init` (which adds fogs and devices), not by hand.",
                 "[site]"]
        for key in ("cloud", "cloud_host", "root", "port", "days", "board", "committee", "epoch_blocks", "seats"):
            lines.append(f"{key} = {profile._value(getattr(self, key))}")
        for name, fog in self.fogs.items():
            lines += ["", f"[fogs.{profile._value(name)}]", f"host = {profile._value(fog.host)}",
                      f"devices = {profile._value(fog.devices)}"]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> "Site":
        data = tomllib.loads(text)
        fogs = {name: Fog(**f) for name, f in data.get("fogs", {}).items()}
        return cls(**data.get("site", {}), fogs=fogs)


def parse_nodes(spec: str) -> dict[str, str]:
    """``id[=host],id[=host]…`` -> {id: host} (host empty when not given)."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, host = item.partition("=")
        out[check_segment(name, "node id")] = host
    return out


def deal_devices(site: Site, specs: list[str]) -> None:
    """Add the devices ``specs`` name to ``site``'s fogs.

    ``N``: devices dev-1 … dev-N in all, the new ones dealt to the fogs with fewest;
    ``FOG=ID,ID``: these devices at FOG; ``ID,ID``: at the only fog.
    """
    fogs = list(site.fogs)
    if not fogs:
        raise SiteError("name the fogs first (--fogs)")
    for spec in specs:
        fog, eq, ids = spec.partition("=")
        if not eq:
            fog, ids = "", spec
        if ids.strip().isdigit():
            if fog:
                raise SiteError(f"{spec!r}: a count of devices is dealt over all the fogs; name ids for one fog")
            wanted = [f"dev-{i}" for i in range(1, int(ids) + 1)]
            new = [d for d in wanted if site.fog_of(d) is None]
            for d in new:
                site.fogs[min(fogs, key=lambda f: len(site.fogs[f].devices))].devices.append(d)
            continue
        if not fog:
            if len(fogs) != 1:
                raise SiteError(f"{spec!r}: which fog? write FOG=ID,ID (fogs: {', '.join(fogs)})")
            fog = fogs[0]
        if fog not in site.fogs:
            raise SiteError(f"{spec!r}: no fog {fog!r} (fogs: {', '.join(fogs)})")
        for d in parse_nodes(ids):
            at = site.fog_of(d)
            if at is not None and at != fog:
                raise SiteError(f"{d} is a device of {at} already")
            if d in site.fogs or d == site.cloud:
                raise SiteError(f"{d} is a fog or the cloud")
            if at is None:
                site.fogs[fog].devices.append(d)


class SiteDirectory:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.ca = CaDirectory(self.path / "pki")

    @property
    def spec_path(self) -> Path:
        return self.path / "site.toml"

    def node_dir(self, node: str) -> Path:
        return self.path / "nodes" / node

    def data_dir(self, node: str) -> Path:
        return self.node_dir(node) / "data"

    def load(self) -> Site:
        if not self.spec_path.exists():
            raise SiteError(f"{self.spec_path} missing: run `edgefl site init {self.path} --fogs … --devices …`")
        return Site.from_toml(self.spec_path.read_text())

    # ------------------------------------------------------------------ profiles

    def settings(self, site: Site, node: str, *, data_dir: str = DATA_DIR) -> profile.Settings:
        """The settings that make a board's profile this node's (on its host: ``data_dir``)."""
        role = site.role(node)
        fog = site.fog_of(node) if role == "device" else None
        s: profile.Settings = {
            "node": {"id": node, "role": role, "site": fog or (node if role == "fog" else ROOT_SITE),
                     "data_dir": data_dir},
            "mqtt": {"host": site.fogs[fog].host if fog else "127.0.0.1", "port": site.port,
                     "tls_ca": "{data_dir}/tls/ca.pem", "tls_cert": "{data_dir}/tls/{id}.pem",
                     "tls_key": "{data_dir}/tls/{id}.key"},
            "security": {"registry": "pki"},
            "ledger": {"main_node": site.cloud},
        }
        if fog:
            s["node"]["fog"] = fog
        if role == "fog":
            s["fl"] = {"devices": list(site.fogs[node].devices)}
            s["ledger"]["committee_size"] = site.committee
            s["ledger"]["epoch_blocks"] = site.epoch_blocks
            s["ledger"]["epoch_seats"] = site.seats
        return s

    def render_profile(self, site: Site, node: str, board: str | None = None, *, data_dir: str = DATA_DIR) -> str:
        role = site.role(node)
        board = board or {"cloud": "cloud", "fog": "fog"}.get(role, site.board)
        return profile.render(board, self.settings(site, node, data_dir=data_dir),
                              header=f"{node}: {role} of this site, from the {board} profile "
                                     f"(written by `edgefl site init`)")

    def config(self, site: Site, node: str, *, data_dir: str | os.PathLike | None = None, overrides=()):
        """The node's configuration, reading its files in ``data_dir`` (default: its folder in the site)."""
        return profile.check(self.render_profile(site, node, data_dir=str(data_dir or self.data_dir(node))),
                             overrides)

    # ------------------------------------------------------------------ brokers

    def broker_files(self, site: Site, node: str, *, data_dir: str = DATA_DIR,
                     run_user: str = SERVICE_USER, bind: str = "0.0.0.0", port: int | None = None,
                     cloud_port: int | None = None) -> dict[str, str]:
        """The Mosquitto configuration of a fog's or the cloud's broker: mTLS, the ACL, persistence in
        ``{data_dir}/broker`` (never the system broker's), and for a fog the bridge to the cloud's broker."""
        role = site.role(node)
        if role == "device":
            raise SiteError(f"{node} is a device: it runs no broker")
        b = f"{data_dir}/broker"
        s = BrokerSettings(role=role, port=port or site.port, bind=bind, data_dir=f"{b}/data", run_user=run_user,
                           auth="tls", acl_file=f"{b}/acl", readers=[node],
                           # a fog's broker trusts the root's X.509 CA and its own (its devices'), never another's
                           cafile=f"{data_dir}/tls/{node}-trust.pem" if role == "fog" else f"{data_dir}/tls/ca.pem",
                           bridge_cafile=f"{data_dir}/tls/ca.pem",
                           certfile=f"{data_dir}/tls/{node}.pem", keyfile=f"{data_dir}/tls/{node}.key",
                           crlfile=f"{data_dir}/tls/crl.pem", log_dest="stderr")
        if role == "fog":
            s = dataclasses.replace(s, cloud_host=site.cloud_host, cloud_port=cloud_port or site.port, fog_id=node,
                                    site=node)
        return render(s)

    # ------------------------------------------------------------------ init

    def init(self, *, fogs: dict[str, str], devices: list[str], cloud: str | None = None,
             cloud_host: str | None = None, port: int | None = None, days: int | None = None,
             board: str | None = None, committee: int | None = None, epoch_blocks: int | None = None,
             seats: int | None = None, now: float | None = None) -> dict[str, list[str]]:
        """Create the site, or add to it; returns {"created": nodes, "updated": nodes}."""
        site = self.load() if self.spec_path.exists() else Site()
        fresh = not self.spec_path.exists()
        if cloud and cloud != site.cloud and not fresh:
            raise SiteError(f"this site's cloud is {site.cloud}; a site has one cloud")
        if committee is not None and committee != site.committee:
            if not fresh:
                raise SiteError(f"this site's committees have {site.committee} members, fixed at genesis")
            if not 1 <= committee <= 64:
                raise SiteError(f"a committee has 1 to 64 members, not {committee}")
            site.committee = committee
        for name, value, low in (("epoch_blocks", epoch_blocks, 3), ("seats", seats, 4)):
            if value is None or value == getattr(site, name):
                continue
            if not fresh:
                raise SiteError(f"this site's {name} is {getattr(site, name)}, fixed at genesis")
            if not (low <= value <= (1 << 20 if name == "epoch_blocks" else 64) or (name == "epoch_blocks"
                                                                                    and value == 0)):
                raise SiteError(f"{name} {value} is out of range (epoch blocks: 0 or at least 3; seats: 4 to 64)")
            setattr(site, name, value)
        site.cloud = check_segment(cloud or site.cloud, "node id")
        site.cloud_host = cloud_host or site.cloud_host or f"{site.cloud}.local"
        site.port = port or site.port
        site.days = days or site.days
        site.board = board or site.board
        profile.profile_path(site.board)  # a known board
        added = sorted(set(fogs) - set(site.fogs))
        if added and (self.data_dir(site.cloud) / "ledger").exists():
            raise SiteError(f"the cloud's main chain registers the fogs {sorted(site.fogs)} at genesis; "
                            f"a site keeps the fogs it began with (not {', '.join(added)})")
        for name, host in fogs.items():
            if name in site.fogs:
                site.fogs[name].host = host or site.fogs[name].host
            else:
                site.fogs[name] = Fog(host or f"{name}.local")
        deal_devices(site, devices)
        ids = site.nodes()
        if len(ids) != len(set(ids)) or site.root in ids:
            raise SiteError(f"node ids must differ from each other and from the root ({site.root})")

        now = time.time() if now is None else now
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, self.ca.path, self.path / "nodes"):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        if not self.ca.anchor_path.exists():
            self.ca.init(site.root, ROOT_SITE, days=10 * site.days, now=now)
        created = []
        for node in ids:
            if not self.ca.cert_path(node).exists():
                role = site.role(node)
                host = site.cloud_host if role == "cloud" else site.fogs[node].host if role == "fog" else ""
                hosts: tuple[str, ...] = (host, "localhost", "127.0.0.1") if host else ()
                issuer = site.fog_of(node) if role == "device" else None
                self.ca.issue(node, role, issuer=issuer, site=node if role == "fog" else None, days=site.days,
                              hosts=hosts, now=now)
                created.append(node)
        updated = []
        for node in ids:
            new = node in created
            if not new and site.role(node) == "device":
                continue  # a device's folder never changes once written (its card may be out there)
            if self._write_node(site, node, new):
                updated.append(node)
        self._geneses(site, created)
        write_atomic(self.spec_path, site.to_toml().encode())
        return {"created": created, "updated": [n for n in updated if n not in created]}

    def _write_node(self, site: Site, node: str, new: bool) -> bool:
        """Write (new) or refresh (fogs, cloud: public files, profile, broker) a node's folder; True if changed."""
        role, data = site.role(node), self.data_dir(node)
        changed = False
        if new:
            if self.node_dir(node).exists():
                shutil.rmtree(self.node_dir(node))
            self.ca.export(node, data)
            changed = True
        else:  # what others' certification changed: the public certificates and keys
            for folder, pattern in (("pki/certs", "*.cert"), ("trust", "*.pub")):
                for src in sorted((self.ca.path / folder).glob(pattern)):
                    changed |= _write_if_changed(data / folder / src.name, src.read_bytes())
        for private in (self.node_dir(node), data, data / "keys", data / "tls"):
            private.mkdir(parents=True, exist_ok=True)
            private.chmod(0o700)
        changed |= _write_if_changed(self.node_dir(node) / "edgefl.toml", self.render_profile(site, node).encode())
        if role != "device":
            for name, text in self.broker_files(site, node).items():
                changed |= _write_if_changed(data / "broker" / name, text.encode())
            (data / "broker" / "data").mkdir(exist_ok=True)
        return changed

    def _geneses(self, site: Site, created: list[str]) -> None:
        """`edgefl ledger init` for the chains of the nodes created now (edgefl.consensus.committees.site_geneses):
        a fog's committee is the fog and its first devices dealt so far — fixed here: devices added later are
        not members — and every member holds the sub-chain's block 0."""
        from edgefl.consensus import committees

        def config(node: str):
            return self.config(site, node)

        def private(node: str) -> SigningKey:
            cfg = config(node)
            return SigningKey.load(cfg.path(cfg.security.key_file))

        specs = committees.site_geneses(site.cloud, {f: fog.devices for f, fog in site.fogs.items()}, config,
                                        lambda n: self.ca.certificate(n).key, time.time_ns() // 1_000_000)
        for holder, spec in specs.items():
            if holder in created:
                committees.write_genesis(spec, holder, config, private)


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    write_atomic(path, data)
    return True
