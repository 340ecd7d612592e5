"""The systemd units, rendered from the profiles, checked by systemd itself (`systemd-analyze`)."""

import os
import re
import shutil
import subprocess

import pytest

from edgefl.provision.units import units
from edgefl.runtime.config import load_config
from tests.conftest import need_tool

GOAL = 2.5  # systemd-analyze security's exposure: a hardened agent in the wild scores 2.2


def rendered(board, node, role):
    cfg = load_config(board, overrides=[f"node.id={node}", f"node.role={role}", "node.data_dir=/var/lib/edgefl",
                                        "node.fog=fog-1"], env={})
    return cfg, units(cfg)


def fake_root(tmp_path, files: dict[str, str]):
    """A root holding systemd's own units, these units, and every program they start (the host's, where it
    has them; else an executable stand-in for what the card's installer creates: the venv, install.sh)."""
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in files.items():
        (root / "etc/systemd/system" / name).write_text(text)
        for program in re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, re.M):
            target = root / program.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if os.path.exists(program):
                shutil.copy(program, target)
            else:
                target.write_text("#!/bin/sh\n")
                target.chmod(0o755)
    return root


def exposure(path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)], capture_output=True,
                         text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


@pytest.mark.parametrize("board,node,role", [("pi4", "dev-1", "device"), ("pizero2w", "dev-2", "device"),
                                             ("fog", "fog-1", "fog"), ("cloud", "cloud-1", "cloud")])
def test_units_verify_clean_and_expose_little(tmp_path, board, node, role):
    need_tool("systemd-analyze", package="systemd")
    need_tool("mosquitto", package="mosquitto")
    cfg, files = rendered(board, node, role)
    root = fake_root(tmp_path, files)
    for name in files:
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", name],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (name, out.stderr)
        if name.endswith(".service"):  # what runs a process (a .path unit only watches a file)
            score = exposure(root / "etc/systemd/system" / name)
            assert score <= GOAL, (name, score)
            print(f"{name} ({board}): exposure {score}")
    unit = files[f"edgefl-{role}.service"]
    for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "User=edgefl", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
                 "ReadWritePaths=/var/lib/edgefl", "SystemCallFilter=@system-service",
                 f"MemoryMax={cfg.board.memory_max_mb}M",
                 "ExecStart=/opt/edgefl/venv/bin/edgefl --profile /etc/edgefl/edgefl.toml run"):
        assert f"\n{line}\n" in unit, line
    assert len(re.findall(r"^ReadWritePaths=", unit, re.M)) == 1  # the data directory, nothing else


def test_a_unit_systemd_would_reject_is_caught(tmp_path):
    """The check above can fail: a typo in a directive or a program that is not there."""
    need_tool("systemd-analyze", package="systemd")
    _, files = rendered("pi4", "dev-1", "device")
    bad = files["edgefl-device.service"].replace("ProtectHome=yes", "ProtectHome=perhaps")
    root = fake_root(tmp_path, {"edgefl-device.service": bad})
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", "edgefl-device.service"],
                         capture_output=True, text=True, timeout=60)
    assert "Failed to parse protect home value" in out.stderr
    weak = files["edgefl-device.service"].replace("User=edgefl", "User=root").replace("CapabilityBoundingSet=\n", "")
    (tmp_path / "weak.service").write_text(weak)
    assert exposure(tmp_path / "weak.service") > exposure(root / "etc/systemd/system/edgefl-device.service") + 1
    missing = files["edgefl-device.service"].replace("/opt/edgefl/venv/bin/edgefl", "/opt/nowhere/edgefl")
    (root / "etc/systemd/system/edgefl-device.service").write_text(missing)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", "edgefl-device.service"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "is not executable" in out.stderr
