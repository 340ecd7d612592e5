"""The files of a site PKI, as `edgefl pki` keeps them.

A PKI directory has the layout of a node's data directory, so a node whose
``node.data_dir`` is (a copy of) it finds everything at the default paths::

    keys/ID.key           secp256k1 secret keys created here (0600): CA keys, provisioned nodes
    pki/ca.cert           the root certificate: the trust anchor (security.ca_cert)
    pki/certs/ID.cert     every certificate issued (security.cert_dir)
    pki/crl/ISSUER.crl    the current CRL of each CA (security.crl_dir)
    trust/ID.pub          every certified public key, as `edgefl keygen` writes it (security.trust_dir)
    tls/ca.pem            the root X.509 CA: Mosquitto's cafile, clients' mqtt.tls_ca
    tls/ca.key            its key (root host only)
    tls/ID.pem, ID.key    a node's X.509 chain (leaf first) and P-256 key: mqtt.tls_cert / mqtt.tls_key,
                          or a broker's certfile / keyfile
    tls/FOG-ca.pem, .key  a fog's X.509 CA, which issues its devices' TLS certificates (a trust anchor of
                          its own, name-constrained to O=<its site>, OU=device: see edgefl.crypto.tls)
    tls/FOG-trust.pem     what FOG's broker trusts (its cafile): the root's X.509 CA and FOG's own
    tls/crl-CA.pem        the X.509 CRL of each X.509 CA, the same serials as pki/crl/CA.crl
    tls/crl.pem           all of them: Mosquitto's crlfile (revoked certificates cannot connect)

The cloud runs ``init`` and issues fog certificates; each fog, given its
bundle (``export``), issues and revokes its devices' certificates itself.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgefl.crypto import tls
from edgefl.crypto.keys import SigningKey, VerifyingKey, write_atomic
from edgefl.crypto.pki import Certificate, Crl, PkiError, PkiRegistry, Revocation, issue, sign_crl
from edgefl.names import check_segment
from edgefl.runtime import Metrics

DAY = 86400
BACKDATE = 300  # seconds of clock skew a fresh certificate tolerates
CRL_DAYS = 30


def _check_id(node: str) -> None:
    check_segment(node, "node id")
    # tls/ca.pem, tls/FOG-ca.pem, tls/FOG-trust.pem, tls/crl.pem and tls/crl-CA.pem are the X.509 CAs and CRLs
    if node in ("ca", "crl") or node.endswith(("-ca", "-trust")) or node.startswith("crl-"):
        raise ValueError(f"node id {node!r}: 'ca', 'crl', names ending in '-ca' or '-trust' or starting 'crl-' "
                         "are reserved")


class CaDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ paths

    def key_path(self, node: str) -> Path:
        return self.path / "keys" / f"{node}.key"

    def cert_path(self, node: str) -> Path:
        return self.path / "pki" / "certs" / f"{node}.cert"

    def pub_path(self, node: str) -> Path:
        return self.path / "trust" / f"{node}.pub"

    def crl_path(self, issuer: str) -> Path:
        return self.path / "pki" / "crl" / f"{issuer}.crl"

    @property
    def anchor_path(self) -> Path:
        return self.path / "pki" / "ca.cert"

    def tls_path(self, name: str, ext: str) -> Path:
        return self.path / "tls" / f"{name}.{ext}"

    def _tls_ca(self, issuer: Certificate) -> tuple[list, tls.PrivateKey]:
        """The X.509 CA chain (excluding the root) and key that sign ``issuer``'s TLS leaves."""
        if issuer.self_signed:
            return [], tls.load_key(self.tls_path("ca", "key"))
        return tls.load_chain(self.tls_path(f"{issuer.subject}-ca", "pem")), \
            tls.load_key(self.tls_path(f"{issuer.subject}-ca", "key"))

    # ------------------------------------------------------------------ reading

    def certificate(self, node: str) -> Certificate:
        path = self.cert_path(node)
        try:
            return Certificate.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise PkiError("unknown", f"no certificate for {node} in {path.parent}") from None

    def root(self) -> Certificate:
        try:
            return Certificate.from_bytes(self.anchor_path.read_bytes())
        except FileNotFoundError:
            raise PkiError("unknown", f"{self.anchor_path} missing: run `edgefl pki init` first") from None

    def signing_key(self, node: str) -> SigningKey:
        path = self.key_path(node)
        if not path.exists():
            raise PkiError("no_key", f"{path} missing: {node}'s key signs for it; run this where that key is")
        return SigningKey.load(path)

    def registry(self, metrics: Metrics | None = None) -> PkiRegistry:
        kw = {"metrics": metrics} if metrics is not None else {}
        return PkiRegistry.from_files(self.anchor_path, self.path / "pki" / "certs", self.path / "pki" / "crl", **kw)

    # ------------------------------------------------------------------ writing

    def init(self, root_id: str, site: str, *, days: int = 3650, hosts: tuple[str, ...] = (),
             now: float | None = None) -> Certificate:
        """Create the root: its key, self-signed certificate, X.509 CA and TLS leaf, and an empty CRL."""
        _check_id(root_id)
        check_segment(site, "site")
        if self.anchor_path.exists():
            raise FileExistsError(f"{self.anchor_path} exists: this directory already has a root")
        now = int(time.time() if now is None else now)
        key = self._new_key(root_id)
        cert = issue(key, None, subject=root_id, role="cloud", site=site, public_key=key.public_key,
                     not_before=now - BACKDATE, not_after=now + days * DAY)
        ca_key = tls.new_key()
        tls.save_key(ca_key, self.tls_path("ca", "key"))
        ca = tls.certificate(subject=root_id, role="cloud", site=site, public_key=ca_key.public_key(),
                             serial=cert.serial, not_before=cert.not_before, not_after=cert.not_after, issuer=None,
                             issuer_key=ca_key, ca=True)
        tls.save_chain([ca], self.tls_path("ca", "pem"))
        self._write_cert(cert)
        write_atomic(self.anchor_path, cert.to_bytes())
        self._tls_leaf(cert, cert, hosts)
        self.refresh_crl(root_id, now=now)
        return cert

    def issue(self, subject: str, role: str, *, issuer: str | None = None, site: str | None = None,
              public_key: VerifyingKey | None = None, days: int = 365, hosts: tuple[str, ...] = (),
              now: float | None = None) -> Certificate:
        """Certify ``subject``: edgefl certificate, TLS leaf, and for a fog its X.509 CA and first CRL.

        Without ``public_key`` the node's key is created here (or reused from
        keys/SUBJECT.key when present, to renew a certificate).
        """
        _check_id(subject)
        root = self.root()
        issuer = issuer or (root.subject if role in ("fog", "cloud") else self._only_fog())
        ca_cert = self.certificate(issuer)
        ca_key = self.signing_key(issuer)
        site = site or ca_cert.site
        now = int(time.time() if now is None else now)
        if public_key is None:
            path = self.key_path(subject)
            public_key = (SigningKey.load(path) if path.exists() else self._new_key(subject)).public_key
        cert = issue(ca_key, ca_cert, subject=subject, role=role, site=site, public_key=public_key,
                     not_before=now - BACKDATE, not_after=min(now + days * DAY, ca_cert.not_after))
        if role == "fog":  # its own X.509 CA: self-signed, for its site's devices only
            fog_ca_key = tls.new_key()
            fog_ca = tls.certificate(subject=subject, role=role, site=site, public_key=fog_ca_key.public_key(),
                                     serial=cert.serial, not_before=cert.not_before, not_after=cert.not_after,
                                     issuer=None, issuer_key=fog_ca_key, ca=True, devices_of=site)
            tls.save_key(fog_ca_key, self.tls_path(f"{subject}-ca", "key"))
            tls.save_chain([fog_ca], self.tls_path(f"{subject}-ca", "pem"))
            root_ca = tls.load_chain(self.tls_path("ca", "pem"))
            tls.save_chain([*root_ca, fog_ca], self.tls_path(f"{subject}-trust", "pem"))
        self._write_cert(cert)
        self._tls_leaf(cert, ca_cert, hosts)
        if role == "fog" and self.key_path(subject).exists():
            self.refresh_crl(subject, now=now)
        return cert

    def revoke(self, subject: str | None = None, *, serial: int | None = None, issuer: str | None = None,
               reason: str = "unspecified", now: float | None = None) -> Crl:
        """Add a certificate to its issuer's CRL and re-sign it (needs the issuer's key)."""
        if subject is not None:
            cert = self.certificate(subject)
            serial, issuer = cert.serial, cert.issuer
        elif serial is None or issuer is None:
            raise ValueError("name the certificate: its subject, or its serial and issuer")
        now = int(time.time() if now is None else now)
        held = self._held_crl(issuer)
        entries = {r.serial: r for r in (held.revoked if held else [])}
        entries.setdefault(serial, Revocation(serial=serial, at=now, reason=reason))
        return self.refresh_crl(issuer, revoked=list(entries.values()), now=now)

    def refresh_crl(self, issuer: str, *, revoked: list[Revocation] | None = None, days: int = CRL_DAYS,
                    now: float | None = None) -> Crl:
        """Sign the next CRL of ``issuer`` (same entries unless given) and write it."""
        now = int(time.time() if now is None else now)
        held = self._held_crl(issuer)
        if revoked is None:
            revoked = list(held.revoked) if held else []
        crl = sign_crl(self.signing_key(issuer), issuer, (held.number + 1) if held else 1, revoked,
                       this_update=now, next_update=now + days * DAY)
        write_atomic(self.crl_path(issuer), crl.to_bytes())
        self._x509_crl(crl)
        return crl

    def _x509_crl(self, crl: Crl) -> None:
        """The broker's copy of a CRL: X.509, signed by the issuer's X.509 CA, merged into tls/crl.pem."""
        name = "ca" if crl.issuer == self.root().subject else f"{crl.issuer}-ca"
        if not self.tls_path(name, "key").exists():
            return
        ca = tls.load_chain(self.tls_path(name, "pem"))[0]
        pem = tls.crl(ca, tls.load_key(self.tls_path(name, "key")), {r.serial: r.at for r in crl.revoked},
                      this_update=crl.this_update)
        write_atomic(self.tls_path(f"crl-{crl.issuer}", "pem"), pem)
        write_atomic(self.tls_path("crl", "pem"),
                     b"".join(p.read_bytes() for p in sorted((self.path / "tls").glob("crl-*.pem"))))

    def export(self, node: str, out: str | Path) -> list[Path]:
        """Copy what ``node`` needs into ``out`` (its future data_dir): its keys, the public PKI, its TLS files."""
        out = Path(out)
        wanted = [self.key_path(node), self.anchor_path, self.tls_path("ca", "pem"), self.tls_path(node, "pem"),
                  self.tls_path(node, "key"), self.tls_path(f"{node}-ca", "pem"), self.tls_path(f"{node}-ca", "key"),
                  self.tls_path(f"{node}-trust", "pem")]
        for folder, pattern in (("pki/certs", "*.cert"), ("pki/crl", "*.crl"), ("tls", "crl*.pem"),
                                ("trust", "*.pub")):
            wanted += sorted((self.path / folder).glob(pattern))
        if not self.cert_path(node).exists():
            raise PkiError("unknown", f"no certificate for {node}: issue one first")
        copied = []
        for src in wanted:
            if src.exists():
                dst = out / src.relative_to(self.path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)  # keeps 0600 on keys
                copied.append(dst)
        return copied

    # ------------------------------------------------------------------ helpers

    def _new_key(self, node: str) -> SigningKey:
        path = self.key_path(node)
        if path.exists():
            raise FileExistsError(f"{path} exists")
        key = SigningKey()
        key.save(path)
        return key

    def _only_fog(self) -> str:
        fogs = [p.stem[:-3] for p in (self.path / "tls").glob("*-ca.key")]
        fogs = [f for f in fogs if self.key_path(f).exists()]
        if len(fogs) != 1:
            raise PkiError("wrong_issuer", "name the fog that certifies this device (--issuer)")
        return fogs[0]

    def _held_crl(self, issuer: str) -> Crl | None:
        path = self.crl_path(issuer)
        return Crl.from_bytes(path.read_bytes()) if path.exists() else None

    def _write_cert(self, cert: Certificate) -> None:
        write_atomic(self.cert_path(cert.subject), cert.to_bytes())
        # the certified key as `edgefl keygen` writes it too, for nodes that trust a directory of keys
        write_atomic(self.pub_path(cert.subject), (cert.key.hex() + "\n").encode())

    def _tls_leaf(self, cert: Certificate, issuer: Certificate, hosts: tuple[str, ...]) -> None:
        chain, signer = self._tls_ca(issuer)
        issuer_cert = chain[0] if chain else tls.load_chain(self.tls_path("ca", "pem"))[0]
        key = tls.new_key()
        leaf = tls.certificate(subject=cert.subject, role=cert.role, site=cert.site, public_key=key.public_key(),
                               serial=cert.serial, not_before=cert.not_before, not_after=cert.not_after,
                               issuer=issuer_cert, issuer_key=signer, hosts=hosts)
        tls.save_key(key, self.tls_path(cert.subject, "key"))
        tls.save_chain([leaf, *chain], self.tls_path(cert.subject, "pem"))
