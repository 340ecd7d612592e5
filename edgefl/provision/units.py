"""The systemd units a node runs under, rendered from its profile.

``edgefl-device.service`` / ``edgefl-fog.service`` / ``edgefl-cloud.service``
run ``edgefl run`` as the unprivileged ``edgefl`` user from its venv:
``Type=notify`` (the agent says READY=1 once its services run, WATCHDOG=1
from its event loop, STOPPING=1 on SIGTERM: ``edgefl.runtime.notify``),
``WatchdogSec``, ``Restart=on-failure``, ``MemoryMax`` from the profile, and
a sandbox in which the agent can write only its data directory, has no
capabilities, no devices, no other users' files, no new privileges and
only the system calls of an ordinary service.  ``systemd-analyze security``
rates it 1.x ("OK"); the tests check it stays at or below 2.5.

``edgefl-broker.service`` runs a fog's or the cloud's Mosquitto from the
node's data directory in the same sandbox (it listens, so it may bind).
``edgefl-install.service`` (devices) builds the venv from the wheel the card
carried, once, when the network is up after the first boot.
"""

from __future__ import annotations

from edgefl.runtime import Config, memory

USER = "edgefl"
VENV = "/opt/edgefl/venv"
PROFILE = "/etc/edgefl/edgefl.toml"  # read-only to the agent: it cannot change its own settings
WATCHDOG_S = 30

# The sandbox: each line narrows what a compromised agent could do.
HARDENING = [
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),  # no capabilities at all
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),  # the whole file system read-only ...
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("PrivateIPC", "yes"),
    ("PrivateMounts", "yes"),
    ("PrivateUsers", "yes"),
    ("DevicePolicy", "closed"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("KeyringMode", "private"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),  # CPython, numpy, ONNX Runtime and LiteRT do not JIT
    ("RemoveIPC", "yes"),
    ("UMask", "0077"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("SystemCallErrorNumber", "EPERM"),
]


def memory_max_mb(cfg: Config) -> int:
    return memory.ceiling_mb(cfg.board)


def _environment(cfg: Config) -> list[str]:
    """The agent's environment: the BLAS's thread count set before numpy loads it (it starts its threads then)."""
    env = ["PYTHONUNBUFFERED=1"]
    if cfg.ml.blas_threads:
        env += [f"OPENBLAS_NUM_THREADS={cfg.ml.blas_threads}", f"OMP_NUM_THREADS={cfg.ml.blas_threads}"]
    return env


def _render(sections: list[tuple[str, list[tuple[str, str]]]], comment: str) -> str:
    lines = [f"# {comment}", "# Rendered by `edgefl provision` from the node's profile."]
    for name, entries in sections:
        lines += ["", f"[{name}]"] + [f"{k}={v}" for k, v in entries]
    return "\n".join(lines) + "\n"


def _sandbox(data_dir: str) -> list[tuple[str, str]]:
    return [("User", USER), ("Group", USER), ("StateDirectory", data_dir.removeprefix("/var/lib/")),
            ("StateDirectoryMode", "0700"), ("WorkingDirectory", data_dir), ("ReadWritePaths", data_dir),
            *HARDENING]


def node_unit(cfg: Config, *, venv: str = VENV, profile: str = PROFILE) -> str:
    """``edgefl-<role>.service`` for the node of ``cfg``."""
    role, data_dir = cfg.node.role, str(cfg.path("{data_dir}"))
    if not data_dir.startswith("/var/lib/"):
        raise ValueError(f"node.data_dir = {data_dir}: a service keeps its state under /var/lib")
    after = ["network-online.target", "time-sync.target"]
    after += ["edgefl-install.service"] if role == "device" else ["edgefl-broker.service"]
    unit = [("Description", f"edgefl {role} {cfg.node.id}"), ("Wants", "network-online.target"),
            ("After", " ".join(after)), ("StartLimitIntervalSec", "600"), ("StartLimitBurst", "10")]
    if role != "device":
        unit.insert(1, ("Requires", "edgefl-broker.service"))
    service = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", f"{venv}/bin/edgefl --profile {profile} run"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),  # new certificates, a fog's fl.devices: no restart
        ("Environment", " ".join(_environment(cfg))),
        ("WatchdogSec", str(WATCHDOG_S)),
        ("TimeoutStartSec", "180"),  # a device loads its extractor before it is ready
        ("TimeoutStopSec", str(int(cfg.mqtt.drain_timeout_s) + 10)),  # it exits within drain + 5 s of SIGTERM
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("MemoryMax", f"{memory_max_mb(cfg)}M"),
        *_sandbox(data_dir),
    ]
    return _render([("Unit", unit), ("Service", service), ("Install", [("WantedBy", "multi-user.target")])],
                   f"edgefl-{role}.service: the {role} {cfg.node.id} ({cfg.board.model or cfg.board.name})")


def broker_unit(cfg: Config) -> str:
    """``edgefl-broker.service``: the fog's or the cloud's Mosquitto, from the node's data directory."""
    data_dir = str(cfg.path("{data_dir}"))
    service = [
        ("Type", "notify"),  # Debian's Mosquitto speaks sd_notify
        ("NotifyAccess", "main"),
        ("ExecStart", f"/usr/sbin/mosquitto -c {data_dir}/broker/mosquitto.conf"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),  # re-reads certificates, CRLs and the ACL
        ("Restart", "on-failure"),
        ("RestartSec", "2"),
        ("MemoryMax", f"{max(256, memory_max_mb(cfg) // 4)}M"),
        *_sandbox(data_dir),
    ]
    unit = [("Description", f"Mosquitto of edgefl {cfg.node.role} {cfg.node.id}"),
            ("Wants", "network-online.target"), ("After", "network-online.target")]
    return _render([("Unit", unit), ("Service", service), ("Install", [("WantedBy", "multi-user.target")])],
                   f"edgefl-broker.service: the broker of {cfg.node.id}")


def install_unit(*, script: str = "/opt/edgefl/install.sh", venv: str = VENV) -> str:
    """``edgefl-install.service``: build the venv once, after the first boot, when the network is up."""
    unit = [("Description", "edgefl: install the agent's venv from the wheel the card carried"),
            ("Wants", "network-online.target"), ("After", "network-online.target"),
            ("Before", "edgefl-device.service"), ("ConditionPathExists", f"!{venv}/bin/edgefl")]
    # root, so that the agent cannot write the code it runs; no capabilities, and only /opt/edgefl writable
    relaxed = {"PrivateUsers", "MemoryDenyWriteExecute", "UMask", "RestrictAddressFamilies"}
    service = [("Type", "oneshot"), ("RemainAfterExit", "yes"), ("ExecStart", script), ("TimeoutStartSec", "3600"),
               ("Restart", "on-failure"), ("RestartSec", "30"), ("ReadWritePaths", "/opt/edgefl"),
               ("UMask", "0022"), ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
               *[(k, v) for k, v in HARDENING if k not in relaxed]]
    return _render([("Unit", unit), ("Service", service), ("Install", [("WantedBy", "multi-user.target")])],
                   "edgefl-install.service: the device agent's venv, built once")


def update_units(cfg: Config, *, venv: str = VENV, profile: str = PROFILE) -> dict[str, str]:
    """``edgefl-update.path`` and ``.service``: when the agent stages a release (``update/pending.json``),
    root installs it beside the running venv, switches, and rolls back unless it is READY (edgefl.update)."""
    data_dir, role = str(cfg.path("{data_dir}")), cfg.node.role
    pending = f"{data_dir}/update/pending.json"
    path = _render([("Unit", [("Description", f"edgefl: a release staged by the {role} agent")]),
                    ("Path", [("PathChanged", pending), ("Unit", "edgefl-update.service")]),
                    ("Install", [("WantedBy", "paths.target")])], "edgefl-update.path: a release was staged")
    # root, so that the agent cannot write the code it runs; it may read the agent's staged files (and
    # nothing else of it), write only /opt/edgefl, and restart the agent's unit
    relaxed = {"PrivateUsers", "MemoryDenyWriteExecute", "UMask", "RestrictAddressFamilies", "CapabilityBoundingSet"}
    service = [("Type", "oneshot"),
               ("ExecStart", f"{venv}/bin/edgefl --profile {profile} update apply --unit edgefl-{role}.service"),
               ("TimeoutStartSec", "3600"), ("ReadWritePaths", "/opt/edgefl"),
               ("CapabilityBoundingSet", "CAP_DAC_READ_SEARCH"), ("UMask", "0022"),
               ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
               *[(k, v) for k, v in HARDENING if k not in relaxed]]
    unit = [("Description", f"edgefl: install a staged release of the {role} agent, or roll back"),
            ("Wants", "network-online.target"), ("After", "network-online.target"),
            ("ConditionPathExists", pending)]
    return {"edgefl-update.path": path,
            "edgefl-update.service": _render([("Unit", unit), ("Service", service)],
                                             "edgefl-update.service: a staged release, installed or rolled back")}


def units(cfg: Config) -> dict[str, str]:
    """File name -> text: every unit the node of ``cfg`` needs on its host."""
    out = {f"edgefl-{cfg.node.role}.service": node_unit(cfg)}
    if cfg.node.role == "device":
        out["edgefl-install.service"] = install_unit()
        out.update(update_units(cfg))
    else:
        out["edgefl-broker.service"] = broker_unit(cfg)
    return out
