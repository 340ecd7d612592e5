"""`edgefl provision`: a device's boot-partition bundle for Bookworm and Trixie, written into a directory or
straight into a card image, and its first boot run for real in a fake root."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgefl.provision.bundle import BootDir, Options, ProvisionError, build_wheel, provision
from edgefl.provision.image import ImageBoot, boot_offset
from edgefl.provision.site import SiteDirectory
from edgefl.runtime.config import load_config
from tests.conftest import need_tool

PSK = "correct-horse-battery"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5lZGdlZmwtdGVzdC1rZXktbm90LXJlYWwtMDEyMzQ1 admin@laptop"
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel a bundle carries, built once: pure Python, with the profiles, templates and scripts."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    sd = SiteDirectory(tmp_path_factory.mktemp("site") / "lab")
    sd.init(fogs={"fog-1": "fog-1.lan"}, devices=["2"])
    return sd


def opts(wheel, os_name, **kw):
    return Options(os=os_name, wheel=wheel, ssh_key=SSH_KEY, wifi_ssid="Lab Net", wifi_psk=PSK, **kw)


def fake_root(tmp_path, boot: Path) -> Path:
    """A root as a fresh Raspberry Pi OS has it, as far as the first boot touches it; boot files at
    /boot/firmware (where Bookworm and Trixie mount the FAT partition)."""
    need_tool("systemctl", "useradd", package="systemd passwd")  # setup.sh enables units with systemctl --root
    root = tmp_path / "root"
    (root / "etc" / "sudoers.d").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    (root / "etc" / "hostname").write_text("raspberrypi\n")
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    (root / "var/lib/systemd/rfkill").mkdir(parents=True)
    (root / "var/lib/systemd/rfkill/platform-3f300000.mmcnr:wlan").write_text("1\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "boot").mkdir()
    shutil.copytree(boot, root / "boot" / "firmware")
    return root


def account(root: Path, user: str):
    line = next(li for li in (root / "etc/passwd").read_text().splitlines() if li.startswith(user + ":"))
    return line.split(":")


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def check_installed(root: Path, site: SiteDirectory, node: str):
    """What setup.sh leaves: the service user, the data directory (0700, secrets 0600, its owner), the
    profile, the code and the units, enabled; and nothing secret on the boot partition."""
    user = account(root, "edgefl")
    uid, gid = int(user[2]), int(user[3])
    assert user[6] == "/usr/sbin/nologin" and int(uid) < 1000  # a system user without a login
    data = root / "var/lib/edgefl"
    for p in [data, *data.rglob("*")]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), p
        assert stat.S_IMODE(st.st_mode) == (0o700 if p.is_dir() else 0o600), p
    src = site.data_dir(node)
    assert {p.relative_to(data) for p in data.rglob("*")} == {p.relative_to(src) for p in src.rglob("*")}
    assert (data / f"keys/{node}.key").read_bytes() == (src / f"keys/{node}.key").read_bytes()
    cfg = load_config(root / "etc/edgefl/edgefl.toml", env={})
    assert (cfg.node.id, cfg.node.data_dir, cfg.security.registry) == (node, "/var/lib/edgefl", "pki")
    assert stat.S_IMODE((root / "etc/edgefl/edgefl.toml").stat().st_mode) == 0o644
    assert list((root / "opt/edgefl/wheels").glob("edgefl-*.whl"))
    assert os.access(root / "opt/edgefl/install.sh", os.X_OK)
    for unit in ("edgefl-device.service", "edgefl-install.service"):
        assert (root / "etc/systemd/system" / unit).is_file()
        assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()
    boot = root / "boot/firmware"
    assert not (boot / "edgefl/data").exists()
    leaked = every_byte(boot)
    for secret in (src / f"keys/{node}.key", src / f"tls/{node}.key"):
        assert secret.read_bytes().strip()[-40:] not in leaked


# --------------------------------------------------------------------------- Bookworm


def test_firstrun_is_valid_bash():
    from edgefl import resources

    for script in ("firstrun.sh", "setup.sh", "install.sh"):
        out = subprocess.run(["bash", "-n", str(resources.folder("firstboot") / script)], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr


def test_bookworm_bundle_and_its_first_boot_in_a_fake_root(tmp_path, site, wheel):
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE)
    names = provision(site.path, "dev-1", BootDir(boot), opts(wheel, "bookworm"), board="pizero2w")
    assert "firstrun.sh" in names and "edgefl/wheels/" + wheel.name in names
    cmdline = (boot / "cmdline.txt").read_text()
    assert cmdline.startswith(CMDLINE.strip() + " systemd.run=/boot/firmware/firstrun.sh ")
    assert "systemd.run_success_action=reboot" in cmdline and cmdline.count("\n") == 1
    provision(site.path, "dev-1", BootDir(boot), opts(wheel, "bookworm"), board="pizero2w")  # again: one entry
    assert (boot / "cmdline.txt").read_text() == cmdline
    prof = load_config(boot / "edgefl/edgefl.toml", env={})
    assert (prof.board.name, prof.node.id, prof.node.fog, prof.mqtt.host) == ("pizero2w", "dev-1", "fog-1",
                                                                              "fog-1.lan")
    assert "MemoryMax=256M" in (boot / "edgefl/units/edgefl-device.service").read_text()

    root = fake_root(tmp_path, boot)
    run = subprocess.run(["bash", str(root / "boot/firmware/firstrun.sh")], capture_output=True, text=True,
                         env={**os.environ, "EDGEFL_ROOT": str(root)}, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert PSK not in run.stdout + run.stderr
    check_installed(root, site, "dev-1")
    assert (root / "etc/hostname").read_text() == "dev-1\n" and "127.0.1.1\tdev-1" in (root / "etc/hosts").read_text()
    admin = account(root, "edgefl-admin")
    keys = root / admin[5].lstrip("/") / ".ssh/authorized_keys"
    assert keys.read_text().strip() == SSH_KEY and stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert keys.stat().st_uid == int(admin[2]) and "sudo:" in (root / "etc/group").read_text()
    assert "edgefl-admin" in next(li for li in (root / "etc/group").read_text().splitlines()
                                  if li.startswith("sudo:"))
    assert "PasswordAuthentication no" in (root / "etc/ssh/sshd_config.d/edgefl.conf").read_text()
    wifi = root / "etc/NetworkManager/system-connections/edgefl-wifi.nmconnection"
    text = wifi.read_text()
    assert stat.S_IMODE(wifi.stat().st_mode) == 0o600 and "ssid=Lab Net" in text and f"psk={PSK}" in text
    assert (root / "var/lib/systemd/rfkill/platform-3f300000.mmcnr:wlan").read_text().strip() == "0"
    # it removed itself, its cmdline.txt entry and every secret from the boot partition
    after = root / "boot/firmware"
    assert not (after / "firstrun.sh").exists() and (after / "cmdline.txt").read_text() == CMDLINE
    assert PSK.encode() not in every_byte(after)


def test_bookworm_needs_the_cards_cmdline(tmp_path, site, wheel):
    with pytest.raises(ProvisionError, match="cmdline.txt"):
        provision(site.path, "dev-1", BootDir(tmp_path), opts(wheel, "bookworm"))
    with pytest.raises(ProvisionError, match="8 to 63"):
        provision(site.path, "dev-1", BootDir(tmp_path), Options(os="trixie", wheel=wheel, wifi_ssid="x",
                                                                 wifi_psk="short"))
    with pytest.raises(ProvisionError, match="not a device"):
        provision(site.path, "fog-1", BootDir(tmp_path), opts(wheel, "trixie"))


# --------------------------------------------------------------------------- Trixie


def test_trixie_cloud_init_passes_its_schema_and_installs_in_a_fake_root(tmp_path, site, wheel):
    need_tool("cloud-init", package="cloud-init")
    boot = tmp_path / "boot"
    provision(site.path, "dev-2", BootDir(boot), opts(wheel, "trixie", hostname="cam-2"), board="pi5")
    out = subprocess.run(["cloud-init", "schema", "--config-file", str(boot / "user-data")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "Valid cloud-config" in out.stdout, out.stdout + out.stderr
    user_data = json.loads((boot / "user-data").read_text().removeprefix("#cloud-config\n"))
    assert user_data["hostname"] == "cam-2" and user_data["users"][0]["ssh_authorized_keys"] == [SSH_KEY]
    assert user_data["users"][0]["lock_passwd"] is True and user_data["ssh_pwauth"] is False
    assert ["bash", "/boot/firmware/edgefl/setup.sh"] in user_data["runcmd"]
    # network-config and meta-data as cloud-init reads them (its YAML parser)
    parsed = subprocess.run(["/usr/bin/python3", "-c", "import sys, json, yaml; print(json.dumps([yaml.safe_load("
                             "open(f)) for f in sys.argv[1:]]))", str(boot / "network-config"),
                             str(boot / "meta-data")], capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0, parsed.stderr
    net, meta = json.loads(parsed.stdout)
    wlan = net["network"]["wifis"]["wlan0"]
    assert net["network"]["version"] == 2 and wlan["access-points"] == {"Lab Net": {"password": PSK}}
    assert wlan["dhcp4"] is True and wlan["regulatory-domain"] == "GB"
    assert meta["local-hostname"] == "cam-2" and meta["instance-id"].startswith("edgefl-dev-2-")
    assert not (boot / "firstrun.sh").exists() and not (boot / "cmdline.txt").exists()
    # what runcmd runs
    root = fake_root(tmp_path, boot)
    run = subprocess.run(["bash", str(root / "boot/firmware/edgefl/setup.sh")], capture_output=True, text=True,
                         env={**os.environ, "EDGEFL_ROOT": str(root)}, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    check_installed(root, site, "dev-2")
    assert load_config(root / "etc/edgefl/edgefl.toml", env={}).board.name == "pi5"


def test_a_bad_user_data_fails_the_schema(tmp_path):
    need_tool("cloud-init", package="cloud-init")
    bad = tmp_path / "user-data"
    bad.write_text('#cloud-config\n{"users": [{"name": "x", "lock_passwd": "maybe"}], "ssh_pwauth": false}\n')
    out = subprocess.run(["cloud-init", "schema", "--config-file", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "lock_passwd" in out.stdout + out.stderr


# --------------------------------------------------------------------------- the wheel and its install


def test_the_wheel_is_pure_and_carries_its_data(wheel):
    assert wheel.name == "edgefl-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert not [n for n in names if n.endswith(".so")]
    for n in ("edgefl/provision/bundle.py", "edgefl/_data/firstboot/firstrun.sh", "edgefl/_data/broker/acl.tmpl",
              "edgefl/_data/firmware_profiles/pizero2w.toml"):
        assert n in names


def test_install_builds_the_venv_from_the_carried_wheel(tmp_path, site, wheel):
    """install.sh as edgefl-install.service runs it; edgefl's dependencies come from this environment here
    (no package index in the test): the venv must run `edgefl --version` before it is switched to."""
    boot = tmp_path / "boot"
    provision(site.path, "dev-1", BootDir(boot), opts(wheel, "trixie"))
    root = fake_root(tmp_path, boot)
    subprocess.run(["bash", str(root / "boot/firmware/edgefl/setup.sh")], check=True, capture_output=True,
                   env={**os.environ, "EDGEFL_ROOT": str(root)}, timeout=120)
    env_file = root / "opt/edgefl/install.env"
    assert "REQUIREMENTS='onnxruntime>=1.16'" in env_file.read_text()
    env_file.write_text(env_file.read_text().replace("REQUIREMENTS='onnxruntime>=1.16'", "REQUIREMENTS=''")
                        .replace("PIP_ARGS=''", "PIP_ARGS='--no-deps --no-index'")
                        .replace("PYTHON=python3", f"PYTHON={sys.executable}"))
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    pure = {k: v for k, v in os.environ.items() if k != "EDGEFL_REQUIRE_EXTENSIONS"}  # the wheel is pure
    run = subprocess.run(["bash", str(root / "opt/edgefl/install.sh")], capture_output=True, text=True,
                         env={**pure, "EDGEFL_ROOT": str(root), "PYTHONPATH": deps}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "edgefl 0.1.0" in run.stdout
    venv = root / "opt/edgefl/venv"
    assert os.access(venv / "bin/edgefl", os.X_OK) and not (root / "opt/edgefl/venv.new").exists()
    installed = list(venv.glob("lib/python*/site-packages/edgefl/_data/firstboot/setup.sh"))
    assert installed, "edgefl was not installed into the venv from the wheel"
    # the link the unit runs names the venv built where it stays: its scripts still find their interpreter
    assert os.readlink(venv) == "venvs/0.1.0" and (root / "opt/edgefl/venvs/0.1.0/.complete").exists()
    again = subprocess.run([str(venv / "bin/edgefl"), "--version"], capture_output=True, text=True, timeout=120,
                           env={**pure, "PYTHONPATH": deps})
    assert again.stdout.strip() == "edgefl 0.1.0", again.stderr


# --------------------------------------------------------------------------- into an image


def make_image(path: Path) -> bytes:
    """A small card image as Raspberry Pi OS ships one: an MBR, a FAT boot partition holding cmdline.txt,
    a root partition (here: random bytes, which must come out untouched)."""
    need_tool("sfdisk", package="fdisk")
    need_tool("mkfs.vfat", package="dosfstools")
    need_tool("mcopy", "mdir", package="mtools")
    subprocess.run(["truncate", "-s", "72M", str(path)], check=True)
    table = "label: dos\nstart=8192, size=114688, type=c\nstart=122880, type=83\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True, capture_output=True)
    subprocess.run(["mkfs.vfat", "-n", "bootfs", "--offset", "8192", str(path), str(114688 // 2)], check=True,
                   capture_output=True)
    rootfs = os.urandom(1 << 20)
    with open(path, "r+b") as f:
        f.seek(122880 * 512)
        f.write(rootfs)
    (path.parent / "cmdline.txt").write_text(CMDLINE)
    subprocess.run(["mcopy", "-i", f"{path}@@{8192 * 512}", str(path.parent / "cmdline.txt"), "::/cmdline.txt"],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return rootfs


def test_provision_into_an_image_without_mounting_it(tmp_path, site, wheel):
    image = tmp_path / "card.img"
    rootfs = make_image(image)
    mbr = image.read_bytes()[:512]
    assert boot_offset(image) == 8192 * 512
    out = subprocess.run([sys.executable, "-m", "edgefl", "provision", "--site", str(site.path), "--device", "dev-1",
                          "--profile", "pi4", "--image", str(image), "--os", "bookworm", "--wifi-ssid", "Lab Net",
                          "--wheel", str(wheel)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "EDGEFL_WIFI_PSK": PSK, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert PSK not in out.stdout + out.stderr
    data = image.read_bytes()
    assert data[:512] == mbr and data[122880 * 512:122880 * 512 + len(rootfs)] == rootfs
    boot = ImageBoot(image)
    assert "firstrun.sh" in boot.list() and "edgefl/wheels/" + wheel.name in boot.list()
    assert boot.read("cmdline.txt").decode().startswith(CMDLINE.strip() + " systemd.run=")
    # the same bundle as into a directory, file for file
    extracted = boot.extract(tmp_path / "from-image")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "cmdline.txt").write_text(CMDLINE)
    provision(site.path, "dev-1", BootDir(folder), Options(os="bookworm", wheel=wheel, wifi_ssid="Lab Net",
                                                           wifi_psk=PSK), board="pi4")

    def digests(d):
        skip = {"edgefl/firstboot.env"}  # holds a fresh connection uuid each time
        return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob("*")
                if p.is_file() and str(p.relative_to(d)) not in skip}
    assert digests(extracted) == digests(folder)
    # and it boots in the fake root like the folder does
    root = fake_root(tmp_path, extracted)
    run = subprocess.run(["bash", str(root / "boot/firmware/firstrun.sh")], capture_output=True, text=True,
                         env={**os.environ, "EDGEFL_ROOT": str(root)}, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    check_installed(root, site, "dev-1")


def test_an_image_without_a_fat_partition_is_refused(tmp_path):
    need_tool("sfdisk", package="fdisk")
    image = tmp_path / "linux.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["sfdisk", "-q", str(image)], input="label: dos\nstart=2048, type=83\n", text=True, check=True,
                   capture_output=True)
    from edgefl.provision.image import ImageError
    with pytest.raises(ImageError, match="no FAT partition"):
        ImageBoot(image)
