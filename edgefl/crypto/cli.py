"""`edgefl keygen`."""

from __future__ import annotations

from pathlib import Path

from edgefl.crypto.keys import SigningKey, save_public
from edgefl.transport.topics import check_segment


def register(sub) -> None:
    p = sub.add_parser("keygen", help="create a secp256k1 key pair for a node")
    p.add_argument("--id", help="node id (default: node.id of the profile)")
    p.add_argument("--out", help="directory for ID.key (mode 0600) and ID.pub (default: the profile's key directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(func=keygen)


def keygen(args) -> int:
    cfg = args.config
    node_id = check_segment(args.id or cfg.node.id, "node id")
    out = Path(args.out) if args.out else cfg.path(cfg.security.key_file).parent
    key_path = out / f"{node_id}.key"
    if key_path.exists() and not args.force:
        raise FileExistsError(f"{key_path} exists (use --force to replace it)")
    key = SigningKey()
    key.save(key_path)
    save_public(key.public_key, out / f"{node_id}.pub")
    print(f"{node_id} {key.public_key.hex()}")
    print(f"secret key: {key_path} (0600)\npublic key: {out / (node_id + '.pub')}")
    return 0
