"""What went wrong when a small site was deployed by hand, one node per process: each stays fixed."""

import os
import subprocess
import sys
import time

import pytest

from edgefl.crypto.ca import CaDirectory
from edgefl.crypto.envelope import IdentityRejected
from edgefl.crypto.keys import load_public
from edgefl.ledger.chain import Chain
from edgefl.ledger.service import db_path, registry_for
from edgefl.runtime.config import load_config


def edgefl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgefl", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "EDGEFL_LOG__LEVEL": "WARNING",
                                        "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.fixture
def pki(tmp_path):
    ca = CaDirectory(tmp_path / "pki")
    ca.init("root", "cloud")
    ca.issue("cloud-1", "cloud")
    ca.issue("fog-1", "fog", site="s1")
    ca.issue("dev-1", "device")
    return ca


def node_cfg(ca, tmp_path, node, role, *extra):
    ca.export(node, tmp_path / node)
    return load_config(overrides=[f"node.id={node}", f"node.role={role}", f"node.data_dir={tmp_path / node}",
                                  "security.registry=pki", "ledger.main_node=cloud-1", *extra], env={})


def test_pki_writes_every_certified_public_key(pki):
    for node in ("root", "cloud-1", "fog-1", "dev-1"):
        assert load_public(pki.path / "trust" / f"{node}.pub") == pki.certificate(node).key


def test_one_registry_serves_envelopes_and_the_ledger(pki, tmp_path):
    """With security.registry = "pki" the ledger checks record signers against the PKI, not a trust directory."""
    fog = node_cfg(pki, tmp_path, "fog-1", "fog")
    (tmp_path / "fog-1" / "trust").rename(tmp_path / "no-trust")  # nobody copied any .pub file
    registry = registry_for(fog)
    assert registry.key_for("dev-1", time.time(), "device") == pki.certificate("dev-1").key
    pki.revoke("dev-1")
    with pytest.raises(IdentityRejected, match="revoked"):
        registry_for(node_cfg(pki, tmp_path, "fog-1", "fog")).key_for("dev-1", time.time())


def test_ledger_init_takes_committee_keys_from_the_pki(pki, tmp_path):
    for node, role, args in (("cloud-1", "cloud", ["--subchain", "fog-1"]), ("fog-1", "fog", [])):
        cfg = node_cfg(pki, tmp_path, node, role)
        for pub in (tmp_path / node / "trust").glob("*.pub"):
            pub.unlink()
        sets = [a for s in [f"node.id={node}", f"node.role={role}", f"node.data_dir={tmp_path / node}",
                            "security.registry=pki", "ledger.main_node=cloud-1"] for a in ("--set", s)]
        out = edgefl(*sets, "ledger", "init", *args)
        assert out.returncode == 0, out.stderr
        with Chain.open(db_path(cfg), readonly=True) as chain:
            if role == "cloud":
                assert chain.spec.subchains["fog-1"].members[0].key == pki.certificate("fog-1").key.raw
            else:
                assert chain.spec.parent_committee.members[0].key == pki.certificate("cloud-1").key.raw


def test_pki_show_a_node_beside_a_folder_of_its_name(pki, tmp_path):
    (tmp_path / "fog-1").mkdir(exist_ok=True)
    out = edgefl("pki", "--dir", str(pki.path), "show", "fog-1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "status: valid" in out.stdout and "fog-1 (fog, site s1)" in out.stdout


def test_broker_config_keeps_its_own_persistence_and_the_key_owner(pki, tmp_path):
    """Not the system broker's /var/lib/mosquitto, and run as whoever can read the broker's key."""
    data = tmp_path / "fog-data"
    pki.export("fog-1", data)
    out = edgefl("--set", f"node.data_dir={data}", "--set", "node.id=fog-1", "broker", "config", "--tls",
                 "--out", str(tmp_path / "conf"))
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "conf" / "mosquitto.conf").read_text()
    assert f"persistence_location {data}/broker/data/" in conf and (data / "broker" / "data").is_dir()
    assert "/var/lib/mosquitto" not in conf and f"keyfile {data}/tls/fog-1.key" in conf
    import pwd
    owner = pwd.getpwuid((data / "tls" / "fog-1.key").stat().st_uid).pw_name
    assert f"user {owner if owner != 'root' else 'mosquitto'}\n" in conf


def test_round_deadlines_do_not_stall_a_round_for_minutes():
    """A device that is down costs its fog one fl.round_timeout_s; the cloud waits for the fogs a little longer."""
    fog, cloud = load_config("fog", env={}), load_config("cloud", env={})
    assert fog.fl.round_timeout_s <= 60 and fog.fl.round_timeout_s == load_config(env={}).fl.round_timeout_s
    assert fog.fl.round_timeout_s < cloud.fl.round_timeout_s <= 180
