"""`edgefl provision`: one node of a site as files for a card's FAT boot partition (or a host's folder).

Everything goes into ``edgefl/`` beside the OS's files; the first boot
installs it (``firstboot/setup.sh``) and wipes the secrets from the boot
partition::

    edgefl/node.env, setup.sh, install.sh, install.env   the installer and what it installs
    edgefl/edgefl.toml          the node's profile: its board's (--profile) with the site's settings
    edgefl/data/                its data directory (-> /var/lib/edgefl): key, certificates, CA bundle, TLS files
    edgefl/units/               its systemd units (edgefl.provision.units)
    edgefl/wheels/              the edgefl wheel (pure Python: the same file for every board)

and for the OS's first boot:

    Trixie (cloud-init, NoCloud on the boot partition): user-data (host name, admin user and SSH key,
        runcmd: edgefl/setup.sh), network-config (netplan v2: the Wi-Fi), meta-data
    Bookworm (no cloud-init): firstrun.sh, started by ``systemd.run=`` added to cmdline.txt, which
        names the host, makes the admin user, writes the NetworkManager Wi-Fi connection, runs
        edgefl/setup.sh, then removes itself and its cmdline.txt entry (what Raspberry Pi Imager does)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Protocol

from edgefl import __version__, resources
from edgefl.errors import EdgeflError
from edgefl.provision import profile, units
from edgefl.provision.site import DATA_DIR, SERVICE_USER, SiteDirectory

OSES = ("bookworm", "trixie")
BACKENDS = {"onnxruntime": ["onnxruntime>=1.16"], "litert": ["ai-edge-litert>=1.2"],
            "tflite_runtime": ["tflite-runtime"]}
ML = ["onnx>=1.14", "onnxruntime>=1.16", "ai-edge-litert>=1.2", "flatbuffers>=2.0"]  # the [ml] extra: fog, cloud
FIRSTRUN = "systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot " \
           "systemd.unit=kernel-command-line.target"


class ProvisionError(EdgeflError, ValueError):
    reason = "provision"


@dataclasses.dataclass
class Options:
    os: str | None = None  # bookworm | trixie; None: a host's folder, no first-boot files
    hostname: str = ""  # default: the node id
    admin_user: str = "edgefl-admin"
    ssh_key: str = ""  # an OpenSSH public key line
    wifi_ssid: str = ""
    wifi_psk: str = ""
    wifi_country: str = "GB"
    wheel: Path | None = None  # default: built from this source tree
    index_url: str = ""  # install edgefl==VERSION and its dependencies from this index (e.g. the fog's)


class Boot(Protocol):
    """A FAT boot partition: a directory (a mounted card, a folder) or a partition inside an image."""

    def read(self, name: str) -> bytes | None: ...

    def write(self, files: dict[str, bytes]) -> None: ...


class BootDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self, name: str) -> bytes | None:
        p = self.path / name
        return p.read_bytes() if p.is_file() else None

    def write(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            p = self.path / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            if name.endswith(".sh"):
                p.chmod(0o755)


def requirements(cfg) -> list[str]:
    """What the node needs beside edgefl's own dependencies: a device its extractor backend, fog and cloud ML."""
    return BACKENDS[cfg.ml.backend] if cfg.node.role == "device" else ML


def build_wheel(out: Path) -> Path:
    """A pure-Python wheel of this source tree (``EDGEFL_NO_EXTENSIONS=1``: one file for every board;
    its compiled twins are an optimisation a Pi can build later), from a clean copy of the sources."""
    src = resources.folder("broker").parent
    if not (src / "setup.py").exists():
        raise ProvisionError("edgefl is installed without its sources here: give the wheel with --wheel FILE")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "src"
        shutil.copytree(src, tree, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "*.so", "*.c", "__pycache__", ".hypothesis",
            ".pytest_cache", "tests", "docs", "bench-results"))
        env = {**os.environ, "EDGEFL_NO_EXTENSIONS": "1"}
        out.mkdir(parents=True, exist_ok=True)
        run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                              "-w", str(out), str(tree)], capture_output=True, text=True, env=env, timeout=600)
        if run.returncode != 0:
            raise ProvisionError(f"pip wheel failed: {run.stderr.strip()[-2000:]}")
    wheel = out / f"edgefl-{__version__}-py3-none-any.whl"
    if not wheel.exists():
        raise ProvisionError(f"pip wheel made {sorted(p.name for p in out.iterdir())}, not {wheel.name}")
    return check_wheel(wheel)


def check_wheel(wheel: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    native = [n for n in names if n.endswith(".so")]
    if native or not any(n.startswith("edgefl/_data/firmware_profiles/") for n in names):
        raise ProvisionError(f"{wheel.name}: not a pure edgefl wheel with its data ({native[:3] or 'no _data'})")
    return wheel


def _env(values: dict[str, str]) -> bytes:
    return "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in values.items()).encode()


def node_files(sd: SiteDirectory, node: str, board: str | None, opts: Options) -> dict[str, bytes]:
    """The ``edgefl/`` folder: installer, profile, data directory, units, wheel."""
    site = sd.load()
    role = site.role(node)
    text = sd.render_profile(site, node, board)
    cfg = profile.check(text)
    if cfg.node.role != role:
        raise ProvisionError(f"profile {board} is for a {cfg.node.role}; {node} is a {role}")
    unit_files = units.units(cfg)
    files = {"edgefl.toml": text.encode()}
    data = sd.data_dir(node)
    for p in sorted(data.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            files[f"data/{p.relative_to(data)}"] = p.read_bytes()
    for name, unit in unit_files.items():
        files[f"units/{name}"] = unit.encode()
    for script in ("setup.sh", "install.sh"):
        files[script] = (resources.folder("firstboot") / script).read_bytes()
    files["node.env"] = _env({"NODE": node, "ROLE": role, "SERVICE_USER": SERVICE_USER, "DATA_DIR": DATA_DIR,
                              "PROFILE": units.PROFILE, "OPT": "/opt/edgefl", "UNITS": " ".join(unit_files)})
    files["install.env"] = _env({"VERSION": __version__, "REQUIREMENTS": " ".join(requirements(cfg)),
                                 "INDEX_URL": opts.index_url, "PIP_ARGS": "", "PYTHON": "python3"})
    if not opts.index_url:
        wheel = check_wheel(opts.wheel) if opts.wheel else build_wheel(Path(tempfile.mkdtemp(prefix="edgefl-wheel-")))
        files[f"wheels/{wheel.name}"] = wheel.read_bytes()
    return {f"edgefl/{k}": v for k, v in files.items()}


def _yaml(doc: dict, header: str = "") -> bytes:
    """JSON is YAML: no YAML writer needed, and no YAML quoting surprises (on, off, yes, no, 0123)."""
    return (header + json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def first_boot_files(node: str, opts: Options, boot: Boot) -> dict[str, bytes]:
    host = opts.hostname or node
    wifi = bool(opts.wifi_ssid)
    if wifi and not 8 <= len(opts.wifi_psk) <= 63:
        raise ProvisionError("--wifi-psk: a WPA passphrase has 8 to 63 characters")
    if opts.os == "trixie":
        user: dict = {"name": opts.admin_user, "groups": ["sudo", "adm", "video", "plugdev", "netdev"],
                      "shell": "/bin/bash", "lock_passwd": True}
        cloud: dict = {"hostname": host, "manage_etc_hosts": True, "ssh_pwauth": False,
                       "runcmd": [["bash", "/boot/firmware/edgefl/setup.sh"],
                                  ["systemctl", "start", "--no-block", "edgefl-install.service"]]}
        if opts.ssh_key:
            user.update(ssh_authorized_keys=[opts.ssh_key], sudo="ALL=(ALL) NOPASSWD:ALL")
            cloud["users"] = [user]
            cloud["runcmd"].insert(0, ["systemctl", "enable", "--now", "ssh"])
        files = {"user-data": _yaml(cloud, "#cloud-config\n"),
                 "meta-data": _yaml({"instance-id": f"edgefl-{node}-{uuid.uuid4().hex[:8]}",
                                     "local-hostname": host})}
        if wifi:
            files["network-config"] = _yaml({"network": {"version": 2, "wifis": {"wlan0": {
                "dhcp4": True, "optional": True, "regulatory-domain": opts.wifi_country,
                "access-points": {opts.wifi_ssid: {"password": opts.wifi_psk}}}}}})
        return files
    # bookworm
    cmdline = boot.read("cmdline.txt")
    if cmdline is None:
        raise ProvisionError("Bookworm starts firstrun.sh from cmdline.txt: point --out at the card's boot "
                             "partition (or use --image) so that its cmdline.txt can be extended")
    line = cmdline.decode().strip().split(" systemd.run=")[0]
    files = {"firstrun.sh": (resources.folder("firstboot") / "firstrun.sh").read_bytes(),
             "cmdline.txt": f"{line} {FIRSTRUN}\n".encode(),
             "edgefl/firstboot.env": _env({"HOSTNAME": host, "ADMIN_USER": opts.admin_user if opts.ssh_key else "",
                                           "WIFI_SSID": opts.wifi_ssid, "WIFI_PSK": opts.wifi_psk,
                                           "WIFI_COUNTRY": opts.wifi_country, "WIFI_UUID": str(uuid.uuid4())})}
    if opts.ssh_key:
        files["edgefl/admin.pub"] = (opts.ssh_key.strip() + "\n").encode()
    return files


def provision(site_dir: str | os.PathLike, node: str, boot: Boot, opts: Options, board: str | None = None) -> list[str]:
    """Write ``node``'s bundle into ``boot``; returns the names written."""
    if opts.os is not None and opts.os not in OSES:
        raise ProvisionError(f"--os must be one of {', '.join(OSES)}")
    sd = SiteDirectory(site_dir)
    if opts.os is not None and sd.load().role(node) != "device":
        raise ProvisionError(f"{node} is not a device: copy its folder to its host (no --os) and run setup.sh there")
    if opts.ssh_key and not opts.ssh_key.split()[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ProvisionError("--ssh-key: not an OpenSSH public key")
    files = node_files(sd, node, board, opts)
    if opts.os is not None:
        files.update(first_boot_files(node, opts, boot))
    boot.write(files)
    return sorted(files)

