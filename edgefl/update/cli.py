"""`edgefl update publish | status | apply`: signed over-the-air releases (edgefl.update)."""

from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub) -> None:
    up = sub.add_parser("update", help="signed over-the-air releases through the ledger").add_subparsers(
        dest="update_command", metavar="COMMAND")
    p = up.add_parser("publish", help="on the cloud: release a wheel (recorded on the main chain, announced to "
                                      "the fogs and through them to the devices)")
    p.add_argument("wheel", metavar="WHEEL", help="the wheel file, e.g. dist/edgefl-0.2.0-py3-none-any.whl")
    p.add_argument("--version", help="refuse unless the wheel is this version")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for the running cloud to record it (default: return at once)")
    p.set_defaults(func=publish_cmd)
    p = up.add_parser("status", help="this node's version, what it staged, what was installed or rolled back; on "
                                     "the cloud also the releases on the main chain")
    p.set_defaults(func=status_cmd)
    p = up.add_parser("apply", help="as root (edgefl-update.service): install the staged release into a fresh "
                                    "venv, switch, roll back unless it is READY within the window")
    p.add_argument("--root", default="/opt/edgefl", help="where the venvs are (default /opt/edgefl)")
    p.add_argument("--unit", default="edgefl-device.service", help="the agent's unit (default edgefl-device.service)")
    p.add_argument("--window", type=float, help="seconds to READY (default the unit's WatchdogSec, 30)")
    p.set_defaults(func=apply_cmd)


def publish_cmd(args) -> int:
    from edgefl.crypto.keys import SigningKey
    from edgefl.ledger.blobs import BlobStore
    from edgefl.ledger.tx import txid
    from edgefl.runtime.files import write_atomic
    from edgefl.update.release import sign_release
    from edgefl.update.service import outbox

    cfg = args.config
    if cfg.node.role != "cloud":
        raise SystemExit(f"edgefl update publish: run it with the cloud's profile (node.role is {cfg.node.role})")
    key = SigningKey.load(cfg.path(cfg.security.key_file))
    rel, tx = sign_release(args.wheel, cfg.node.id, key, version=args.version)
    blobs = BlobStore(cfg.path(cfg.ledger.blob_dir), max_blob=cfg.ledger.max_blob_bytes)
    blobs.put(Path(args.wheel).read_bytes())  # its content id is the SHA-256 the record names
    name = f"{rel.version}-{txid(tx).hex()[:16]}.tx"
    write_atomic(outbox(cfg) / name, tx, mode=0o600)
    print(f"{rel.package} {rel.version}: {rel.filename}, {rel.size} bytes, SHA-256 {rel.wheel.hex()}, signed by "
          f"{cfg.node.id}; the running cloud records it on the main chain and announces it")
    deadline = time.monotonic() + args.wait
    published = outbox(cfg).parent / "published"
    while time.monotonic() < deadline:
        if (published / name).exists():
            print("recorded and announced")
            return 0
        if (published / (name + ".refused")).exists():
            print("refused by the cloud: see its log")
            return 1
        time.sleep(0.5)
    return 0 if not args.wait else 1


def status_cmd(args) -> int:
    from edgefl import __version__
    from edgefl.update.release import UpdateState

    cfg = args.config
    state = UpdateState(cfg.path("{data_dir}"))
    doc = {"node": cfg.node.id, "role": cfg.node.role, "running": __version__, "pending": state.pending(),
           **state.status()}
    if cfg.node.role == "cloud":
        doc["releases"] = _recorded(cfg)
    print(json.dumps(doc, indent=1))
    return 0


def _recorded(cfg) -> list[dict]:
    from edgefl.ledger.cli import _open
    from edgefl.ledger.records import SoftwareRelease
    from edgefl.ledger.service import db_path

    if not db_path(cfg).exists():
        return []
    out = []
    with _open(cfg, None) as chain:
        for txid, rec in chain.records(SoftwareRelease.TYPE, limit=64):
            rel = rec.unwrap()
            out.append({"version": rel.version, "wheel": rel.wheel.hex(), "size": rel.size, "signer": rec.signer,
                        "height": chain.store.tx(txid)[0], "ts_ms": rec.ts})
    return out


def apply_cmd(args) -> int:
    from edgefl.provision.units import WATCHDOG_S
    from edgefl.update.apply import Installer, Systemd, apply

    installer = Installer.from_env_file(Path(args.root))
    status = apply(args.config, installer, Systemd(args.unit), window=args.window or WATCHDOG_S)
    last = status.get("history", [])[-1:] or [{"result": "nothing staged"}]
    print(json.dumps(last[0]))
    return 0 if last[0]["result"] in ("installed", "nothing staged") else 1
