"""Render Mosquitto configuration from broker/*.tmpl, and run a local broker.

``render`` serves `edgefl broker config`; ``LocalMosquitto`` starts the real
Debian Mosquitto on a free loopback port for the demo, benchmarks and tests,
using the same templates a fog would.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from edgefl import resources
from edgefl.errors import EdgeflError
from edgefl.names import check_segment


class BrokerError(EdgeflError, RuntimeError):
    reason = "broker"


@dataclass
class BrokerSettings:
    role: str = "fog"
    port: int = 1883
    bind: str = "0.0.0.0"
    data_dir: str = "/var/lib/mosquitto"
    max_packet_size: int = 1 << 20
    max_queued_bytes: int = 256 << 20
    client_expiration: str = "7d"
    log_dest: str = "stderr"
    run_user: str = "mosquitto"
    auth: str = "password"  # password | tls | none
    password_file: str = "/etc/mosquitto/edgefl.passwd"
    acl_file: str = "/etc/mosquitto/edgefl.acl"
    # identities that read the whole tree and publish as the broker's own role: a fog broker's fog, a cloud
    # broker's cloud nodes; the other clients are a fog's devices, or the fogs' bridges on a cloud broker
    readers: list[str] = field(default_factory=list)
    cafile: str = ""  # the CAs whose client certificates the listener accepts (a fog's: tls/FOG-trust.pem)
    bridge_cafile: str = ""  # the CA the cloud broker's certificate chains to (default: cafile)
    certfile: str = ""
    keyfile: str = ""
    crlfile: str = ""  # X.509 CRLs of the site's CAs (`edgefl pki` writes tls/crl.pem): the revoked cannot connect
    # bridge (a fog broker forwarding to the cloud broker), TLS exactly when this broker's identities are
    # certificates: the cloud's listener is rendered the same way (mTLS on 8883, else plain on 1883)
    cloud_host: str = ""
    cloud_port: int = 0  # 0: the cloud listener's default, 8883 with TLS, 1883 without
    fog_id: str = ""
    site: str = ""  # the broker's site: its devices (a fog's) and readers publish only beneath it
    remote_password: str = ""


def _template(name: str) -> Template:
    return Template((resources.folder("broker") / name).read_text())


def render(s: BrokerSettings) -> dict[str, str]:
    """File name -> contents: ``mosquitto.conf`` and, with identities, ``acl``."""
    if s.auth not in ("password", "tls", "none"):
        raise BrokerError(f"auth must be password, tls or none, not {s.auth!r}")
    tls = ""
    if s.auth == "tls":
        if not (s.cafile and s.certfile and s.keyfile):
            raise BrokerError("auth=tls needs cafile, certfile and keyfile")
        tls = _template("tls.conf.tmpl").substitute(vars(s), crlfile=f"crlfile {s.crlfile}" if s.crlfile else "")
    auth = _template(f"auth-{s.auth}.conf.tmpl").substitute(vars(s))
    bridge = ""
    if s.cloud_host:
        if not (s.fog_id and s.site):
            raise BrokerError("a bridge to the cloud needs fog_id and site")
        bridge = _template("bridge.conf.tmpl").substitute(
            vars(s), cloud_port=bridge_port(s),
            remote_password=f"remote_password {s.remote_password}" if s.remote_password else "",
            bridge_tls=(f"bridge_cafile {s.bridge_cafile or s.cafile}\nbridge_certfile {s.certfile}\n"
                        f"bridge_keyfile {s.keyfile}\n"
                        "bridge_tls_version tlsv1.2") if s.auth == "tls" else "")
    conf = _template("mosquitto.conf.tmpl").substitute(vars(s), tls=tls, auth=auth, bridge=bridge)
    files = {"mosquitto.conf": _tidy(conf)}
    if s.auth != "none":
        files["acl"] = _tidy(acl(s))
    return files


def acl(s: BrokerSettings) -> str:
    """Mosquitto's acl_file for a broker of ``s.role`` at ``s.site`` (any site, ``+``, when it is not set)."""
    site = s.site or "+"
    for who in (site, *s.readers):
        if who != "+":
            check_segment(who, "site or reader")
    # a fog broker's clients are its site's devices; a cloud broker's are the fogs' bridges (each under its id)
    clients = f"{site}/device" if s.role == "fog" else "+/fog"
    readers = "\n".join(f"user {r}\ntopic write edgefl/v1/{site}/{s.role}/{r}/#\ntopic read edgefl/v1/#"
                        for r in s.readers)
    return _template("acl.tmpl").substitute(role=s.role, site=site, client_subtree=clients,
                                            clients="devices" if s.role == "fog" else "fog bridges",
                                            readers=readers)


TLS_PORT, PLAIN_PORT = 8883, 1883


def bridge_port(s: BrokerSettings) -> int:
    """The cloud listener's port for this fog's bridge: the one that speaks what the bridge speaks.

    The bridge uses TLS (with this broker's certificate) exactly when this broker's identities are
    certificates, as the cloud's rendered listener does; plain MQTT to the TLS port would never connect.
    """
    tls = s.auth == "tls"
    port = s.cloud_port or (TLS_PORT if tls else PLAIN_PORT)
    if port == TLS_PORT and not tls:
        raise BrokerError(f"port {TLS_PORT} is the cloud's TLS listener; a broker without TLS identities "
                          f"bridges to its plain port ({PLAIN_PORT}), or render this one with TLS")
    return port


def _tidy(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    for line in lines:
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


class LocalMosquitto:
    """A real Mosquitto on 127.0.0.1, configured from the fog template.

    ``stop()`` and ``start()`` keep the port and the persistence directory, so a
    restart looks to clients like a broker outage.
    """

    def __init__(self, workdir: str | os.PathLike, *, port: int | None = None, auth: str = "none",
                 users: dict[str, str] | None = None, readers: list[str] | None = None,
                 max_packet_size: int = 1 << 20, tls: dict[str, str] | None = None, site: str = "",
                 conf: str | os.PathLike | None = None):
        """``conf``: run this configuration as it is (listening on ``port``) instead of rendering one."""
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.users = users or {}
        self.binary = mosquitto_binary()
        if self.binary is None:
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        if conf is not None:
            self.conf = Path(conf)
            return
        (self.workdir / "data").mkdir(exist_ok=True)
        settings = BrokerSettings(
            role="fog", port=self.port, bind="127.0.0.1", data_dir=str(self.workdir / "data"),
            max_packet_size=max_packet_size, run_user=getpass.getuser(), auth=auth,
            password_file=str(self.workdir / "passwd"), acl_file=str(self.workdir / "acl"),
            readers=list(readers or []), log_dest=f"file {self.workdir / 'mosquitto.log'}", site=site,
            **(tls or {}),
        )
        for name, text in render(settings).items():
            (self.workdir / name).write_text(text)
        if auth == "password":
            self._write_passwords()
        self.conf = self.workdir / "mosquitto.conf"

    def _write_passwords(self) -> None:
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        path = self.workdir / "passwd"
        path.write_text("")
        for user, password in self.users.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
        path.chmod(0o600)

    def start(self, timeout: float = 10.0) -> "LocalMosquitto":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BrokerError(f"mosquitto exited with {self.proc.returncode}: {err.strip()} {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence file) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, the ACL and the TLS files (certificates, CRLs)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "mosquitto.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def __enter__(self) -> "LocalMosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
