"""`edgefl site init`: every node's material, correct by construction, over the real brokers it configures."""

import os
import stat
import subprocess
import sys

import pytest

from edgefl.crypto import identity
from edgefl.crypto.ca import CaDirectory
from edgefl.crypto.keys import SigningKey
from edgefl.ledger.chain import Chain
from edgefl.ledger.service import db_path
from edgefl.provision.site import SiteDirectory, SiteError
from edgefl.runtime.config import ConfigError, load_config
from edgefl.transport.messages import Ping
from edgefl.transport.session import Session
from tests.conftest import connected, need_mosquitto
from tests.site_helpers import Deployed


def edgefl(*args):
    return subprocess.run([sys.executable, "-m", "edgefl", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("site") / "lab"
    out = edgefl("site", "init", str(path), "--fogs", "fog-1,fog-2=10.0.0.2", "--devices", "3",
                 "--cloud", "cloud-1=cloud.example.org")
    assert out.returncode == 0, out.stderr
    return path, out.stdout + out.stderr


def files(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_node_gets_its_profile_keys_certificates_and_chain(site_dir):
    path, _ = site_dir
    sd = SiteDirectory(path)
    site = sd.load()
    assert site.fogs["fog-1"].devices == ["dev-1", "dev-3"] and site.fogs["fog-2"].devices == ["dev-2"]
    assert site.fogs["fog-2"].host == "10.0.0.2" and site.cloud_host == "cloud.example.org"
    for node in site.nodes():
        written = load_config(sd.node_dir(node) / "edgefl.toml", env={})
        assert (written.node.id, written.node.role, written.node.data_dir) == (node, site.role(node), "/var/lib/edgefl")
        assert written.security.registry == "pki" and written.ledger.main_node == "cloud-1"
        cfg = sd.config(site, node)
        identity.check(cfg)  # key, certificate and TLS files belong together and to this node
    dev = load_config(sd.node_dir("dev-2") / "edgefl.toml", env={})
    assert (dev.node.fog, dev.node.site, dev.mqtt.host, dev.mqtt.port) == ("fog-2", "fog-2", "10.0.0.2", 8883)
    assert dev.board.name == "pi4" and dev.mqtt.tls_cert == "{data_dir}/tls/{id}.pem"
    assert load_config(sd.node_dir("fog-1") / "edgefl.toml", env={}).fl.devices == ["dev-1", "dev-3"]
    with Chain.open(db_path(sd.config(site, "cloud-1")), readonly=True) as main:
        assert main.spec.role == "main" and sorted(main.spec.subchains) == ["fog-1", "fog-2"]
    with Chain.open(db_path(sd.config(site, "fog-2")), readonly=True) as sub:
        assert sub.spec.parent == "main" and sub.spec.parent_committee.ids == ["cloud-1"]
    # the root's key stays in the site's PKI; no node has it
    assert sd.ca.key_path("root").exists()
    assert not list((path / "nodes").rglob("root.key")) and not list((path / "nodes").rglob("ca.key"))


def test_secrets_are_0600_in_0700_folders_and_never_printed(site_dir):
    path, printed = site_dir
    secrets = [p for p in path.rglob("*") if p.is_file() and (p.suffix == ".key")]
    assert len(secrets) > 10
    for p in secrets:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        text = p.read_text().strip()
        body = "".join(text.splitlines()[1:-1]) if text.startswith("-----") else text
        assert body[:24] not in printed
    for folder in [path / "pki", *(path / "nodes").iterdir()]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for node in (path / "nodes").iterdir():
        assert stat.S_IMODE((node / "data" / "keys").stat().st_mode) == 0o700
    assert "PRIVATE KEY" not in printed and "dev-3" in printed


def test_rerun_adds_a_device_without_touching_the_others(tmp_path):
    sd = SiteDirectory(tmp_path / "site")
    sd.init(fogs={"fog-1": "", "fog-2": ""}, devices=["2"])
    before = {n: files(sd.node_dir(n)) for n in ("dev-1", "dev-2")}
    certs = {n: sd.ca.certificate(n).digest for n in ("cloud-1", "fog-1", "fog-2", "dev-1", "dev-2")}
    again = sd.init(fogs={}, devices=["3", "fog-2=cam-7"])
    assert again == {"created": ["dev-3", "cam-7"], "updated": ["cloud-1", "fog-1", "fog-2"]}
    assert {n: files(sd.node_dir(n)) for n in ("dev-1", "dev-2")} == before
    assert {n: sd.ca.certificate(n).digest for n in certs} == certs
    site = sd.load()
    assert site.fogs["fog-1"].devices == ["dev-1", "dev-3"] and site.fogs["fog-2"].devices == ["dev-2", "cam-7"]
    fog = sd.config(site, "fog-2")
    assert fog.fl.devices == ["dev-2", "cam-7"] and (sd.data_dir("fog-2") / "pki/certs/cam-7.cert").exists()
    assert sd.init(fogs={}, devices=["3"]) == {"created": [], "updated": []}  # nothing new: nothing written
    with pytest.raises(SiteError, match="keeps the fogs it began with"):
        sd.init(fogs={"fog-3": ""}, devices=[])
    with pytest.raises(SiteError, match="a device of fog-2 already"):
        sd.init(fogs={}, devices=["fog-1=cam-7"])


def test_a_node_refuses_to_start_with_a_key_or_tls_certificate_not_its_own(site_dir, tmp_path):
    sd = SiteDirectory(site_dir[0])
    d = Deployed(site_dir[0], tmp_path / "hosts")
    wrong = d.hosts / "dev-1" / "keys" / "dev-1.key"
    SigningKey.load(d.hosts / "dev-3" / "keys" / "dev-3.key").save(wrong)
    with pytest.raises(ConfigError, match="certifies .*belongs to another node"):
        identity.check(d.config("dev-1"))
    (d.hosts / "dev-2" / "tls" / "dev-2.pem").write_bytes((d.hosts / "dev-3" / "tls" / "dev-3.pem").read_bytes())
    with pytest.raises(ConfigError, match="dev-3's TLS certificate, not dev-2's"):
        identity.check(d.config("dev-2"))
    (d.hosts / "fog-1" / "tls" / "fog-1.key").write_bytes((d.hosts / "fog-2" / "tls" / "fog-2.key").read_bytes())
    with pytest.raises(ConfigError, match="fog-1.key is not the key of"):
        identity.check(d.config("fog-1"))
    # a revoked node learns it at start, not from silence
    CaDirectory(sd.ca.path).revoke("dev-3")
    (d.hosts / "dev-3" / "pki" / "crl" / "fog-1.crl").write_bytes(sd.ca.crl_path("fog-1").read_bytes())
    with pytest.raises(ConfigError, match="revoked"):
        identity.check(d.config("dev-3"))
    out = subprocess.run(d.command("dev-1", "run", "--for", "1"), capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 2 and "belongs to another node" in out.stderr


@pytest.mark.broker
async def test_the_site_brokers_carry_mtls_and_the_bridge(site_dir, tmp_path):
    """Both brokers from their rendered files (persistence and every path in the node's data directory,
    no root), the nodes' own profiles: device to fog on the fog's broker, fog to cloud over the bridge."""
    need_mosquitto()
    d = Deployed(site_dir[0], tmp_path / "hosts")
    for node in ("cloud-1", "fog-1"):
        conf = (d.hosts / node / "broker" / "mosquitto.conf").read_text()
        paths = [w for line in conf.splitlines() if not line.startswith("#") for w in line.split() if "/" in w
                 and not w.startswith("edgefl/")]
        assert paths and all(p.startswith(str(d.hosts / node)) for p in paths), paths
        assert f"persistence_location {d.hosts / node}/broker/data/" in conf
    with d.brokers():
        cloud, fog, dev = (Session.from_config(d.config(n)) for n in ("cloud-1", "fog-1", "dev-1"))
        async with cloud, fog, dev:
            await connected(cloud, fog, dev)
            assert (await dev.request("fog-1", Ping(nonce=b"d1"), timeout=10)).message.nonce == b"d1"
            assert (await fog.request("cloud-1", Ping(nonce=b"f1"), timeout=10)).message.nonce == b"f1"
            assert (await cloud.request("fog-1", Ping(nonce=b"c1"), timeout=10)).message.nonce == b"c1"


def test_a_fog_with_three_devices_gets_a_committee_and_each_member_a_replica(tmp_path):
    """The committee is fixed when the site begins: the fog and its first devices hold the same block 0, and the
    main chain registers them as the sub-chain's committee (its Type-II anchors need their quorum)."""
    sd = SiteDirectory(tmp_path / "site")
    sd.init(fogs={"fog-1": "", "fog-2": ""}, devices=["fog-1=a1,a2,a3", "fog-2=b1"])
    site = sd.load()
    with Chain.open(db_path(sd.config(site, "fog-1")), readonly=True) as sub:
        spec, block0 = sub.spec, sub.store.block_row(0)[0]
    assert spec.sealer == "quorum" and spec.committee.ids == ["a1", "a2", "a3", "fog-1"] and spec.proposal.name == "pbft"
    assert spec.committee.threshold == 3
    for d in ("a1", "a2", "a3"):
        with Chain.open(db_path(sd.config(site, d), "fog-1"), readonly=True) as replica:
            assert replica.store.block_row(0)[0] == block0 and replica.tip.height == 0
    assert not db_path(sd.config(site, "b1"), "fog-2").exists()  # fog-2 has one device: it seals alone
    with Chain.open(db_path(sd.config(site, "fog-2")), readonly=True) as single:
        assert single.spec.sealer == "single"
    with Chain.open(db_path(sd.config(site, "cloud-1")), readonly=True) as main:
        assert main.spec.subchains["fog-1"] == spec.committee and main.spec.subchains["fog-2"].ids == ["fog-2"]
    # a device added later is not a member (the committee is in both geneses), and gets no replica
    sd.init(fogs={}, devices=["fog-1=a4"])
    assert not db_path(sd.config(sd.load(), "a4"), "fog-1").exists()


def test_the_committee_size_is_the_sites_and_fixed_at_genesis(tmp_path):
    """`site init --committee N`: each fog's committee is itself and its first N-1 devices; under 4 it seals
    alone; the size is written into the fogs' profiles and cannot change once the chains exist."""
    sd = SiteDirectory(tmp_path / "site")
    sd.init(fogs={"fog-1": "", "fog-2": ""}, devices=["fog-1=a1,a2,a3,a4,a5", "fog-2=b1,b2,b3"], committee=5)
    site = sd.load()
    assert site.committee == 5 and sd.config(site, "fog-1").ledger.committee_size == 5
    with Chain.open(db_path(sd.config(site, "fog-1")), readonly=True) as sub:
        assert sub.spec.committee.ids == ["a1", "a2", "a3", "a4", "fog-1"] and sub.spec.committee.threshold == 4
    assert not db_path(sd.config(site, "a5"), "fog-1").exists()  # not a member: no replica
    with Chain.open(db_path(sd.config(site, "fog-2")), readonly=True) as sub:
        assert sub.spec.committee.ids == ["b1", "b2", "b3", "fog-2"]  # fewer devices: all of them
    sd.init(fogs={}, devices=["fog-1=a6"])  # re-run without --committee: the site's size stays
    assert sd.load().committee == 5
    with pytest.raises(SiteError, match="fixed at genesis"):
        sd.init(fogs={}, devices=[], committee=7)

    small = SiteDirectory(tmp_path / "small")
    small.init(fogs={"fog-1": ""}, devices=["fog-1=a1,a2,a3"], committee=3)
    with Chain.open(db_path(small.config(small.load(), "fog-1")), readonly=True) as sub:
        assert sub.spec.sealer == "single" and sub.spec.committee.ids == ["fog-1"]
    with pytest.raises(SiteError, match="1 to 64"):
        SiteDirectory(tmp_path / "bad").init(fogs={"fog-1": ""}, devices=[], committee=0)


def test_site_init_can_have_committees_redrawn_every_epoch(tmp_path):
    """`site init --committee 6 --epoch-blocks 8 --seats 4`: the fog and five devices are the pool, four seated
    in epoch 0 (the fog among them), every pool member holds a replica; fixed once the chains exist."""
    sd = SiteDirectory(tmp_path / "site")
    sd.init(fogs={"fog-1": ""}, devices=["fog-1=a1,a2,a3,a4,a5"], committee=6, epoch_blocks=8, seats=4)
    site = sd.load()
    assert (site.epoch_blocks, site.seats) == (8, 4)
    cfg = sd.config(site, "fog-1")
    assert (cfg.ledger.epoch_blocks, cfg.ledger.epoch_seats) == (8, 4)
    with Chain.open(db_path(cfg), readonly=True) as sub:
        spec = sub.spec
    assert spec.committee.ids == ["a1", "a2", "a3", "a4", "a5", "fog-1"]
    assert (spec.epochs.blocks, spec.epochs.first, spec.epochs.always) == (8, ["a1", "a2", "a3", "fog-1"], ["fog-1"])
    assert all(db_path(sd.config(site, d), "fog-1").exists() for d in ("a1", "a2", "a3", "a4", "a5"))
    with pytest.raises(SiteError, match="fixed at genesis"):
        sd.init(fogs={}, devices=[], epoch_blocks=16)
    with pytest.raises(SiteError, match="out of range"):
        SiteDirectory(tmp_path / "bad").init(fogs={"fog-1": ""}, devices=[], epoch_blocks=2)
