"""`edgefl broker config` and `edgefl ping`."""

from __future__ import annotations

import ipaddress
import os
import statistics
import sys
import time
from pathlib import Path

from edgefl.bench.harness import percentile
from edgefl.runtime import run
from edgefl.transport.mosquitto import BrokerSettings, render


def register(sub) -> None:
    broker = sub.add_parser("broker", help="Mosquitto configuration").add_subparsers(dest="broker_cmd",
                                                                                      metavar="ACTION")
    p = broker.add_parser("config", help="render mosquitto.conf (and the ACL) from broker/*.tmpl")
    p.add_argument("--role", choices=["fog", "cloud"], default="fog")
    p.add_argument("--port", type=int, default=None, help="listener port (default 1883, 8883 with --tls)")
    p.add_argument("--bind", default=None, help="listener address (default 0.0.0.0; 127.0.0.1 with --anonymous)")
    p.add_argument("--tls", action="store_true", help="TLS listener with client certificates (CN = node id)")
    p.add_argument("--cafile", help="the X.509 CAs whose clients the broker accepts (default, as `edgefl pki` lays "
                                    "it out: a fog's {data_dir}/tls/{id}-trust.pem, the root's and its own; a "
                                    "cloud's {data_dir}/tls/ca.pem)")
    p.add_argument("--certfile", help="broker certificate chain (default: {data_dir}/tls/{id}.pem of the profile)")
    p.add_argument("--keyfile", help="broker key (default: {data_dir}/tls/{id}.key)")
    p.add_argument("--crlfile", help="X.509 CRLs (default: {data_dir}/tls/crl.pem when it exists)")
    p.add_argument("--anonymous", action="store_true", help="no identities or ACL: listens on loopback only (demos)")
    p.add_argument("--reader", action="append", default=[],
                   help="identity that reads the whole tree and publishes as the broker's role: the fog itself on a "
                        "fog broker, the cloud nodes on a cloud broker (repeatable)")
    p.add_argument("--data-dir", help="the broker's persistence folder (default: {data_dir}/broker/data of the "
                                      "profile: its own, never the system broker's /var/lib/mosquitto)")
    p.add_argument("--user", help="the user Mosquitto runs as when started as root (default: the owner of "
                                  "--keyfile, who can read it; else mosquitto)")
    p.add_argument("--max-packet-size", type=int, default=1 << 20)
    p.add_argument("--cloud-host", default="", help="fog only: bridge to this cloud broker")
    p.add_argument("--cloud-port", type=int, default=0, help="the cloud listener's port (default: 8883 with --tls, "
                                                              "1883 without, as the cloud's is rendered)")
    p.add_argument("--cloud-password-file", help="fog only, without --tls: the first line is this fog's password at "
                                                  "the cloud's broker")
    p.add_argument("--fog-id", default="", help="fog only: this fog's node id (bridge identity)")
    p.add_argument("--site", default="", help="the broker's site: its devices and readers publish only beneath it "
                                             "(default: the profile's node.site)")
    p.add_argument("--out", help="write mosquitto.conf and acl here instead of printing")
    p.set_defaults(func=broker_config)

    p = broker.add_parser("run", help="start Mosquitto on a free loopback port (foreground, Ctrl-C stops it)")
    p.add_argument("--port", type=int, help="port (default: a free one)")
    p.add_argument("--dir", help="working directory for config, persistence and log (default: a temporary one)")
    p.set_defaults(func=broker_run)

    p = sub.add_parser("ping", help="signed round trips to a peer through the broker; prints median/p99")
    p.add_argument("peer", help="node id of the peer")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=ping)


def tls_files(cfg, role: str) -> dict[str, str]:
    """A broker's TLS files in the data directory `edgefl pki` lays out, for ``broker config --tls``.

    A fog's broker trusts the root's X.509 CA and its own (tls/ID-trust.pem),
    never another fog's, so what another site's fog certifies chains to
    nothing it accepts; a cloud's broker trusts the root's. The bridge checks
    the cloud broker against the root's CA.
    """
    root_ca, trust = cfg.path("{data_dir}/tls/ca.pem"), cfg.path("{data_dir}/tls/{id}-trust.pem")
    crl = cfg.path("{data_dir}/tls/crl.pem")
    return {"cafile": str(trust if role == "fog" and trust.exists() else root_ca), "bridge_cafile": str(root_ca),
            "certfile": str(cfg.path("{data_dir}/tls/{id}.pem")), "keyfile": str(cfg.path("{data_dir}/tls/{id}.key")),
            "crlfile": str(crl) if crl.exists() else ""}


def broker_config(args) -> int:
    if args.anonymous and args.tls:
        raise ValueError("--anonymous and --tls exclude each other")
    bind = args.bind or ("127.0.0.1" if args.anonymous else "0.0.0.0")
    if args.anonymous and not ipaddress.ip_address(bind).is_loopback:
        raise ValueError(f"--anonymous lets anyone act as anyone: it listens on loopback only, not {bind}")
    if args.tls:  # the files `edgefl pki issue --id <this fog> --host ...` wrote into the node's data directory
        for name, path in tls_files(args.config, args.role).items():
            setattr(args, name, getattr(args, name, None) or path)
    data_dir = args.data_dir or str(args.config.path("{data_dir}/broker/data"))
    user = args.user or (_owner(args.keyfile) if args.tls else None) or "mosquitto"
    settings = BrokerSettings(
        role=args.role, port=args.port or (8883 if args.tls else 1883), bind=bind, data_dir=data_dir,
        run_user=user,
        max_packet_size=args.max_packet_size, auth="none" if args.anonymous else "tls" if args.tls else "password",
        readers=args.reader, cafile=args.cafile if args.tls else "", certfile=args.certfile if args.tls else "",
        keyfile=args.keyfile if args.tls else "", crlfile=args.crlfile if args.tls else "",
        bridge_cafile=getattr(args, "bridge_cafile", ""),
        cloud_host=args.cloud_host if args.role == "fog" else "",
        cloud_port=args.cloud_port, fog_id=args.fog_id, site=args.site or args.config.node.site,
        remote_password=_first_line(args),
        acl_file=str(Path(args.out) / "acl") if args.out else str(args.config.path("{data_dir}/broker/acl")),
    )
    files = render(settings)
    Path(data_dir).mkdir(parents=True, exist_ok=True)  # Mosquitto does not create it
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            print(f"wrote {out / name}")
    else:
        for name, text in files.items():
            sys.stdout.write(f"# ---- {name}\n{text}")
    return 0


def _first_line(args) -> str:
    if not args.cloud_password_file:
        return ""
    with open(args.cloud_password_file) as f:
        return f.readline().strip()


def _owner(path: str) -> str | None:
    import pwd

    try:
        name = pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (OSError, KeyError):
        return None
    return None if name == "root" else name


def broker_run(args) -> int:
    import signal
    import tempfile

    from edgefl.transport.mosquitto import LocalMosquitto

    workdir = args.dir or tempfile.mkdtemp(prefix="edgefl-mosquitto-")
    with LocalMosquitto(workdir, port=args.port) as broker:
        print(f"mosquitto listening on 127.0.0.1:{broker.port} (config {broker.conf}); Ctrl-C stops it", flush=True)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
    return 0


def ping(args) -> int:
    from edgefl.transport.messages import Ping
    from edgefl.transport.session import Session

    async def main() -> list[float]:
        session = Session.from_config(args.config, client_id=f"{args.config.node.id}-ping-{os.getpid()}")
        async with session:
            await session.wait_connected(args.timeout)
            times = []
            payload = os.urandom(args.size)
            for i in range(args.count):
                t0 = time.perf_counter()
                await session.request(args.peer, Ping(nonce=i.to_bytes(4, "big"), payload=payload),
                                      timeout=args.timeout)
                times.append(time.perf_counter() - t0)
            return times

    times = run(main())
    ms = [t * 1e3 for t in times]
    print(f"{len(ms)} signed round trips to {args.peer} ({args.size} B): "
          f"median {statistics.median(ms):.3f} ms, p99 {percentile(ms, 99):.3f} ms, max {max(ms):.3f} ms")
    return 0
