"""Root's part: install a staged release beside the running one, switch over, roll back if it is not READY.

    /opt/edgefl/venvs/0.1.0/       a venv per version, each built where it stays (a venv cannot move:
    /opt/edgefl/venvs/0.2.0/       its scripts name their interpreter by absolute path)
    /opt/edgefl/venv -> venvs/0.2.0    what the unit runs (``ExecStart=/opt/edgefl/venv/bin/edgefl …``),
                                       switched by an atomic rename of a new symlink over it

``apply`` checks the staged release again (its record's signature against
the site's registry, the wheel's size and SHA-256), builds its venv and
checks that ``edgefl --version`` there says the released version, switches
the link and restarts the agent.  The agent must say READY (sd_notify)
within the window, the unit's watchdog interval; otherwise the link goes
back to the previous venv and that one is restarted, and the version is
never tried again.  ``Systemd`` restarts the unit and reads its state;
``Process`` runs the agent as a child under a notify socket of its own,
where there is no systemd (the tests, a bare host).  The outcome is kept in
``/opt/edgefl/status.json`` beside the venvs (root's, readable by the
agent), which `edgefl update status` shows.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgefl.ledger.records import SoftwareRelease
from edgefl.runtime import Config
from edgefl.transport.session import key_registry
from edgefl.update.release import ROOT, ReleaseError, UpdateState, check_wheel, verify_release, version_key

log = logging.getLogger("edgefl.update")
KEEP = 3  # venvs kept: the running one, the one to roll back to, one more


class Installer:
    """Builds ``ROOT/venvs/VERSION`` and installs a wheel into it with pip."""

    def __init__(self, root: Path = ROOT, *, python: str = sys.executable, pip_args: list[str] = (),
                 requirements: list[str] = (), seed_pip: bool = True):
        """``seed_pip``: give each venv its own pip (what the next update runs); False drives this
        interpreter's pip into it instead (``pip --python``), which is faster."""
        self.root, self.python, self.pip_args = Path(root), python, list(pip_args)
        self.requirements, self.seed_pip = list(requirements), seed_pip

    @classmethod
    def from_env_file(cls, root: Path = ROOT, **kw) -> "Installer":
        """As ``install.env`` beside the venvs says (what the card's first install used: index, pip options)."""
        env = {}
        path = Path(root) / "install.env"
        if path.exists():
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip():
                    env[key.strip()] = " ".join(shlex.split(value))
        args = shlex.split(env.get("PIP_ARGS", ""))
        if env.get("INDEX_URL"):
            args += ["--index-url", env["INDEX_URL"]]
        return cls(root, pip_args=args, requirements=shlex.split(env.get("REQUIREMENTS", "")), **kw)

    def venv(self, version: str) -> Path:
        return self.root / "venvs" / version

    def install(self, rel: SoftwareRelease, wheel: Path) -> Path:
        target = self.venv(rel.version)
        if (target / ".complete").exists():
            return target
        shutil.rmtree(target, ignore_errors=True)  # a build that did not finish
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="edgefl-update-") as tmp:
            local = Path(tmp) / rel.filename  # pip reads version and tags from the file's name
            shutil.copyfile(wheel, local)
            self._run([self.python, "-m", "venv", *([] if self.seed_pip else ["--without-pip"]), str(target)])
            pip = [str(target / "bin/python"), "-m", "pip"] if self.seed_pip else \
                [self.python, "-m", "pip", "--python", str(target / "bin/python")]
            self._run([*pip, "install", "--no-cache-dir", "--disable-pip-version-check", "--quiet", *self.pip_args,
                       str(local), *self.requirements])
        said = self._run([str(target / "bin/edgefl"), "--version"]).strip()
        if said != f"edgefl {rel.version}":
            shutil.rmtree(target, ignore_errors=True)
            raise ReleaseError("install", f"the venv of {rel.version} says {said!r}")
        (target / ".complete").write_text(rel.version + "\n")
        return target

    @staticmethod
    def _run(argv: list[str]) -> str:
        # nothing of this process's own environment leaks into the new venv's Python
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env)
        if out.returncode != 0:
            raise ReleaseError("install", f"{shlex.join(argv[:4])} … exited {out.returncode}: "
                                          f"{(out.stderr or out.stdout).strip()[-800:]}")
        return out.stdout

    # ------------------------------------------------------------------ the link

    @property
    def link(self) -> Path:
        return self.root / "venv"

    def running(self) -> str | None:
        """The version the link points at (a venv left by an older installer is adopted: moved under venvs/)."""
        if self.link.is_symlink():
            return Path(os.readlink(self.link)).name
        if self.link.is_dir():  # the first installer's layout: a real folder; its scripts name venv/bin/python,
            said = self._run([str(self.link / "bin/edgefl"), "--version"]).split()[-1]  # which the link keeps
            self.venv(said).parent.mkdir(parents=True, exist_ok=True)
            self.link.rename(self.venv(said))
            self.switch(said)
            return said
        return None

    def switch(self, version: str) -> None:
        """Point the link at ``venvs/VERSION``, atomically (a new link renamed over the old)."""
        tmp = self.root / f".venv.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path("venvs") / version)
        os.replace(tmp, self.link)

    def prune(self, keep: set[str]) -> None:
        """Remove old venvs, newest kept first, never one named in ``keep``."""
        folders = sorted((p for p in (self.root / "venvs").iterdir() if p.is_dir()),
                         key=lambda p: version_key(p.name), reverse=True)
        for old in folders[KEEP:]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the agent's service


class Systemd:
    """The agent as its unit: READY is the unit becoming active (``Type=notify``)."""

    def __init__(self, unit: str = "edgefl-device.service", systemctl: str = "systemctl"):
        self.unit, self.systemctl = unit, systemctl

    def restart(self) -> None:
        subprocess.run([self.systemctl, "restart", "--no-block", self.unit], check=True, timeout=60)

    def wait_ready(self, window: float) -> bool:
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            state = subprocess.run([self.systemctl, "show", "--property=ActiveState", "--value", self.unit],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
            if state == "active":
                return True
            time.sleep(0.5)
        return False


class Process:
    """The agent as a child of this process under a notify socket of ours: ``Type=notify`` without systemd."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, log_file: Path | None = None):
        self.argv, self.env, self.log_file = argv, env, log_file
        self.proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._dir = tempfile.mkdtemp(prefix="edgefl-notify-")

    def restart(self) -> None:
        self.stop()
        path = os.path.join(self._dir, "notify")
        Path(path).unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(path)
        env = {**(self.env if self.env is not None else os.environ), "NOTIFY_SOCKET": path}
        sink = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
        if self.log_file:
            sink.close()

    def wait_ready(self, window: float) -> bool:
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            if self.proc.poll() is not None:
                return False
            self._sock.settimeout(min(left, 0.2))
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            if "READY=1" in data.decode(errors="replace").split("\n"):
                return True
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --------------------------------------------------------------------------- apply


def apply(cfg: Config, installer: Installer, service, *, window: float) -> dict:
    """Install what the agent staged (if anything), switch, and keep it only if it gets READY in ``window``."""
    state = UpdateState(cfg.path("{data_dir}"), installer.root)
    pending = state.pending()
    status = state.status()
    if pending is None:
        return status
    try:
        rel = verify_release(Path(pending["tx"]).read_bytes(), key_registry(cfg), [cfg.ledger.main_node])
        if rel.version != pending["version"]:
            raise ReleaseError("staged", f"pending.json names {pending['version']}, its record {rel.version}")
        wheel = Path(pending["wheel"])
        check_wheel(rel, wheel.read_bytes())
        previous = installer.running()
        status["installed"] = status.get("installed") or previous
        if rel.version in status["failed"] or (previous and version_key(rel.version) <= version_key(previous)):
            raise ReleaseError("not_newer", f"{rel.version} is not to be installed over {previous}")
        installer.install(rel, wheel)
    except (ReleaseError, OSError, KeyError) as exc:
        reason = getattr(exc, "reason", "staged")
        log.error("update %s not installed: %s", pending.get("version"), exc)
        # a version that does not install is not tried again; a bad staged copy may be staged again
        _finish(state, status, pending.get("version"), f"refused: {reason}", str(exc), failed=reason == "install")
        return status
    installer.switch(rel.version)
    service.restart()
    if service.wait_ready(window):
        status.update(installed=rel.version, previous=previous)
        installer.prune({rel.version, previous or ""})
        log.info("updated %s -> %s", previous, rel.version)
        _finish(state, status, rel.version, "installed", f"READY within {window:g} s")
        return status
    log.error("%s was not READY within %g s: back to %s", rel.version, window, previous)
    detail = f"not READY within {window:g} s"
    if previous:
        installer.switch(previous)
        service.restart()
        back = service.wait_ready(window)
        detail += f"; {previous} restarted" + ("" if back else f" and not READY within {window:g} s either")
    _finish(state, status, rel.version, "rolled_back", detail, failed=True)
    return status


def _finish(state: UpdateState, status: dict, version: str | None, result: str, detail: str, *,
            failed: bool = False) -> None:
    """Record the attempt (which also ends the staged release's pending state)."""
    status.setdefault("history", []).append({"version": version, "result": result, "detail": detail,
                                             "at": round(time.time(), 3)})
    if failed and version and version not in status.setdefault("failed", []):
        status["failed"].append(version)
    state.record(status)
