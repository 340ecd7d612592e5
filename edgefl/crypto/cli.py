"""`edgefl keygen` and `edgefl pki init | issue | revoke | crl | show | export`."""

from __future__ import annotations

from pathlib import Path

from edgefl.crypto.keys import SigningKey, VerifyingKey, load_public, save_public
from edgefl.names import ROLES, check_segment


def register(sub) -> None:
    p = sub.add_parser("keygen", help="create a secp256k1 key pair for a node")
    p.add_argument("--id", help="node id (default: node.id of the profile)")
    p.add_argument("--out", help="directory for ID.key (mode 0600) and ID.pub (default: the profile's key directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(func=keygen)

    pki = sub.add_parser("pki", help="site PKI: certificates, revocation, TLS files for Mosquitto")
    pki.add_argument("--dir", help="PKI directory (default: node.data_dir of the profile)")
    pki.set_defaults(func=lambda args: pki.print_help() or 2)
    actions = pki.add_subparsers(dest="pki_cmd", metavar="ACTION")

    p = actions.add_parser("init", help="create the root CA (at the cloud)")
    p.add_argument("--id", required=True, help="the root's node id")
    p.add_argument("--site", required=True)
    p.add_argument("--days", type=int, default=3650)
    p.add_argument("--host", action="append", default=[], help="host name or IP of the root's broker (repeatable)")
    p.set_defaults(func=pki_init)

    p = actions.add_parser("issue", help="certify a node: edgefl certificate plus its X.509 TLS certificate")
    p.add_argument("--id", required=True, help="node id (the TLS certificate's CN)")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--issuer", help="certifying CA: the root for fog/cloud, a fog for devices "
                                    "(default: the root, or the only fog here)")
    p.add_argument("--site", help="default: the issuer's site")
    p.add_argument("--pub", help="the node's public key (hex or an ID.pub file from `edgefl keygen`); "
                                 "default: create the key pair here")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--host", action="append", default=[],
                   help="host name or IP for a broker's TLS certificate (repeatable; fogs, cloud)")
    p.set_defaults(func=pki_issue)

    p = actions.add_parser("revoke", help="revoke a certificate: re-sign its issuer's CRL")
    p.add_argument("--id", help="the certificate's subject")
    p.add_argument("--serial", type=int, help="or its serial (with --issuer)")
    p.add_argument("--issuer")
    p.add_argument("--reason", default="unspecified")
    p.set_defaults(func=pki_revoke)

    p = actions.add_parser("crl", help="re-sign a CA's CRL with a new number and next_update")
    p.add_argument("--issuer", required=True)
    p.add_argument("--days", type=int, default=30)
    p.set_defaults(func=pki_crl)

    p = actions.add_parser("show", help="print a certificate or CRL and whether it is valid now")
    p.add_argument("what", help="a node id (its certificate here), or a .cert / .crl file")
    p.set_defaults(func=pki_show)

    p = actions.add_parser("export", help="copy what a node needs into its future data directory")
    p.add_argument("--id", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=pki_export)


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


def _ca(args):
    from edgefl.crypto.ca import CaDirectory

    return CaDirectory(Path(args.dir) if args.dir else args.config.path("{data_dir}"))


def pki_init(args) -> int:
    ca = _ca(args)
    cert = ca.init(args.id, args.site, days=args.days, hosts=tuple(args.host))
    print(f"root {cert.describe()}\ntrust anchor: {ca.anchor_path}\nX.509 CA (Mosquitto cafile): "
          f"{ca.tls_path('ca', 'pem')}")
    return 0


def pki_issue(args) -> int:
    ca = _ca(args)
    pub = None
    if args.pub:
        pub = load_public(args.pub) if Path(args.pub).exists() else VerifyingKey(bytes.fromhex(args.pub))
    cert = ca.issue(args.id, args.role, issuer=args.issuer, site=args.site, public_key=pub, days=args.days,
                    hosts=tuple(args.host))
    print(cert.describe())
    print(f"certificate: {ca.cert_path(args.id)}\nTLS: {ca.tls_path(args.id, 'pem')} {ca.tls_path(args.id, 'key')}")
    return 0


def pki_revoke(args) -> int:
    crl = _ca(args).revoke(args.id, serial=args.serial, issuer=args.issuer, reason=args.reason)
    print(crl.describe())
    return 0


def pki_crl(args) -> int:
    print(_ca(args).refresh_crl(args.issuer, days=args.days).describe())
    return 0


def pki_show(args) -> int:
    from edgefl.crypto.envelope import IdentityRejected
    from edgefl.crypto.pki import Certificate, Crl, PkiError

    ca = _ca(args)
    path = Path(args.what)
    # a file when one is named; otherwise a node id, even where a folder of that name exists
    data = path.read_bytes() if path.is_file() else ca.cert_path(check_segment(args.what, "node id")).read_bytes()
    try:
        reg = ca.registry()
    except PkiError:
        reg = None  # no trust anchor here: show the object without judging it
    if path.suffix == ".crl":
        crl = Crl.from_bytes(data)
        print(crl.describe())
        if reg is not None:
            held = reg.crl(crl.issuer)
            print("status: " + ("current" if held is not None and held.digest == crl.digest else
                                "not the CRL this directory holds"))
        return 0
    cert = Certificate.from_bytes(data)
    print(cert.describe())
    if reg is None:
        return 0
    try:
        reg.validate(cert)
    except IdentityRejected as exc:
        print(f"status: {exc.reason} ({exc.detail})")
        return 1
    print("status: valid")
    return 0


def pki_export(args) -> int:
    files = _ca(args).export(args.id, args.out)
    for f in files:
        print(f)
    print(f"-> node.data_dir = {Path(args.out).resolve()}, security.registry = \"pki\"; for mTLS "
          f"mqtt.tls_ca = \"{{data_dir}}/tls/ca.pem\", mqtt.tls_cert = \"{{data_dir}}/tls/{args.id}.pem\", "
          f"mqtt.tls_key = \"{{data_dir}}/tls/{args.id}.key\"")
    return 0

