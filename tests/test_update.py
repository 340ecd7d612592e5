"""Signed over-the-air updates: a release recorded on the main chain reaches a device through its fog and is
installed into a fresh venv, switched to, and rolled back when the new version is not READY in time.

The wheels are tiny ones the test builds (an ``edgefl`` whose ``run`` says READY=1 over sd_notify, or never
does); the venvs, pip, the link switch and the notify socket are the real ones.
"""

import asyncio
import base64
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from edgefl.cli import main
from edgefl.crypto.envelope import DirectoryKeyRegistry
from edgefl.ledger.records import SoftwareRelease
from edgefl.nodes.site import LocalSite
from edgefl.update.apply import Installer, Process, apply
from edgefl.update.release import ReleaseError, UpdateState, check_wheel, sign_release, verify_release, version_key
from tests.conftest import need_mosquitto

AGENT = '''
import os, signal, socket, sys, time
VERSION = {version!r}

def main():
    if "--version" in sys.argv:
        print("edgefl " + VERSION)
        return 0
    print("edgefl " + VERSION + " running", flush=True)
    if {ready!r}:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(os.environ["NOTIFY_SOCKET"])
        s.send(b"READY=1\\nSTATUS=running")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)
'''


def tiny_wheel(folder: Path, version: str, *, ready: bool = True) -> Path:
    """A wheel of an `edgefl` whose `run` says READY=1 (or never does) and waits for SIGTERM."""
    dist = f"edgefl-{version}.dist-info"
    files = {
        "edgefl/__init__.py": f"__version__ = {version!r}\n",
        "edgefl/cli.py": AGENT.format(version=version, ready=ready),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: edgefl\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nedgefl = edgefl.cli:main\n",
    }
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for name, text in files.items()]
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    path = folder / f"edgefl-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET")}


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return result


def publish(site: LocalSite, wheel: Path) -> None:
    args = [a for s in site.overrides[site.cloud] for a in ("--set", s)]
    assert main([*args, "update", "publish", str(wheel)]) == 0


async def test_a_release_reaches_the_device_and_is_installed_or_rolled_back(tmp_path, capsys):
    need_mosquitto()
    from edgefl.transport.mosquitto import LocalMosquitto

    wheels = tmp_path / "wheels"
    root = tmp_path / "opt"
    installer = Installer(root, pip_args=["--no-deps", "--no-index"], seed_pip=False)
    # the card's first install: 0.1.0, running under its "service"
    first = tiny_wheel(wheels, "0.1.0")
    installer.install(SoftwareRelease("edgefl", "0.1.0", hashlib.sha256(first.read_bytes()).digest(),
                                      first.stat().st_size, first.name), first)
    installer.switch("0.1.0")
    agent_log = tmp_path / "agent.log"
    service = Process([str(root / "venv/bin/edgefl"), "run"], env=clean_env(), log_file=agent_log)
    service.restart()
    try:
        assert service.wait_ready(30)
        with LocalMosquitto(tmp_path / "broker") as broker:
            # the device refuses the FL task (its ε limit): only the update moves here
            site = LocalSite(tmp_path / "site", broker.port, {"fog-1": ["dev-1"]},
                             settings=["fl.rounds=1", "fl.hidden=[20]"], per_node={"dev-1": ["ml.epsilon=0.001"]})
            device_cfg = site.cfgs["dev-1"]
            staged = UpdateState(device_cfg.path("{data_dir}"), root)
            async with site:
                # 0.2.0: recorded on the main chain, relayed by the fog, staged by the device
                publish(site, tiny_wheel(wheels, "0.2.0"))
                pending = await until(staged.pending, 60, "the device to stage 0.2.0")
                assert pending["version"] == "0.2.0"
                cloud = site.nodes[site.cloud]
                recorded = await cloud.ledger.call(cloud.ledger.chain.records, SoftwareRelease.TYPE)
                assert [r.unwrap().version for _, r in recorded] == ["0.2.0"] and recorded[0][1].signer == "cloud-1"
                assert site.nodes["fog-1"].blobs.has(recorded[0][1].model)  # the fog mirrored the wheel
                capsys.readouterr()
                assert main([*[a for s in site.overrides[site.cloud] for a in ("--set", s)], "update", "status"]) == 0
                shown = json.loads(capsys.readouterr().out)
                assert [(r["version"], r["signer"]) for r in shown["releases"]] == [("0.2.0", "cloud-1")]

                status = await asyncio.to_thread(apply, device_cfg, installer, service, window=15)
                assert status["installed"] == "0.2.0" and status["previous"] == "0.1.0"
                assert status["history"][-1]["result"] == "installed"
                assert os.readlink(root / "venv") == "venvs/0.2.0" and staged.pending() is None
                assert "edgefl 0.2.0 running" in agent_log.read_text()

                # 0.3.0 never says READY: switched to, then back
                publish(site, tiny_wheel(wheels, "0.3.0", ready=False))
                await until(lambda: (staged.pending() or {}).get("version") == "0.3.0", 60,
                            "the device to stage 0.3.0")
                status = await asyncio.to_thread(apply, device_cfg, installer, service, window=4)
            assert status["history"][-1]["result"] == "rolled_back" and status["failed"] == ["0.3.0"]
            assert status["installed"] == "0.2.0" and os.readlink(root / "venv") == "venvs/0.2.0"
            assert service.proc.poll() is None and agent_log.read_text().count("edgefl 0.2.0 running") == 2
            assert "edgefl 0.3.0 running" in agent_log.read_text()  # it was really started
            assert not staged.wanted(verify_release((Path(tmp_path / "site/dev-1/update/staged/0.3.0/release.tx")
                                                     ).read_bytes(), DirectoryKeyRegistry(tmp_path / "site/trust"),
                                                    ["cloud-1"]))  # never tried again
            assert apply(device_cfg, installer, service, window=4) == status  # nothing pending: nothing done
            assert sorted(p.name for p in (root / "venvs").iterdir()) == ["0.1.0", "0.2.0", "0.3.0"]
    finally:
        service.stop()


def _site_keys(tmp_path):
    site = LocalSite(tmp_path / "site", 1883, {"fog-1": ["dev-1"]})
    return site, DirectoryKeyRegistry(tmp_path / "site/trust")


def test_only_the_main_chains_node_may_release_and_only_the_released_bytes_install(tmp_path):
    site, registry = _site_keys(tmp_path)
    wheel = tiny_wheel(tmp_path / "w", "0.2.0")
    rel, tx = sign_release(wheel, "cloud-1", site.key("cloud-1"))
    assert verify_release(tx, registry, ["cloud-1"]) == rel
    _, by_fog = sign_release(wheel, "fog-1", site.key("fog-1"))
    with pytest.raises(ReleaseError) as e:
        verify_release(by_fog, registry, ["cloud-1"])
    assert e.value.reason == "signer"
    _, forged = sign_release(wheel, "cloud-1", site.key("fog-1"))  # the cloud's name, another key
    with pytest.raises(ReleaseError) as e:
        verify_release(forged, registry, ["cloud-1"])
    assert e.value.reason == "bad_signature"
    check_wheel(rel, wheel.read_bytes())
    with pytest.raises(ReleaseError) as e:
        check_wheel(rel, wheel.read_bytes()[:-1] + b"x")
    assert e.value.reason == "digest"
    with pytest.raises(ReleaseError):
        sign_release(wheel, "cloud-1", site.key("cloud-1"), version="0.2.1")
    bad = tmp_path / "w/edgefl-0.2.0.whl"
    bad.write_bytes(b"x")
    with pytest.raises(ReleaseError) as e:
        sign_release(bad, "cloud-1", site.key("cloud-1"))
    assert e.value.reason == "filename"


def test_a_tampered_staged_wheel_is_refused_and_nothing_switches(tmp_path):
    site, _ = _site_keys(tmp_path)
    wheel = tiny_wheel(tmp_path / "w", "0.2.0")
    rel, tx = sign_release(wheel, "cloud-1", site.key("cloud-1"))
    cfg = site.cfgs["dev-1"]
    root = tmp_path / "opt"
    state = UpdateState(cfg.path("{data_dir}"), root)
    state.stage(rel, tx, wheel.read_bytes())
    staged = Path(state.pending()["wheel"])
    staged.write_bytes(staged.read_bytes() + b"\0")  # after the agent checked it
    installer = Installer(root, pip_args=["--no-deps", "--no-index"], seed_pip=False)

    class NoService:
        def restart(self):
            raise AssertionError("nothing may be restarted")

    status = apply(cfg, installer, NoService(), window=1)
    assert status["history"][-1]["result"] == "refused: digest" and status["failed"] == []
    assert not (root / "venv").exists() and not (root / "venvs").exists() and state.pending() is None


def test_versions_order_as_pep440_does_for_release_numbers():
    order = ["0.1.0", "0.1.1rc1", "0.1.1", "0.2", "0.10.0", "1.0.0"]
    assert sorted(order, key=version_key) == order
    assert version_key("0.2") == version_key("0.2.0")
    with pytest.raises(ReleaseError):
        version_key("latest")


def test_a_release_record_names_one_wheel_file():
    with pytest.raises(ValueError):
        SoftwareRelease("edgefl", "0.2.0", bytes(32), 1, "../../etc/edgefl-0.2.0-py3-none-any.whl").check()
    with pytest.raises(ValueError):
        SoftwareRelease("edgefl", "0.2.0", bytes(32), 1, "edgefl-0.3.0-py3-none-any.whl").check()
    SoftwareRelease("edgefl", "0.2.0", bytes(32), 1, "edgefl-0.2.0-py3-none-any.whl").check()
