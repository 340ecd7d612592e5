"""The site PKI: certificates and revocation lists in canonical CBOR, and the key registry they back.

Hierarchy::

    root CA (role cloud, self-signed: the trust anchor every node is configured with)
      ├── fog certificates: each fog is an intermediate CA for the devices of its own site
      │     └── device certificates
      └── cloud node certificates

The same rules bind issuing (``issue``) and validating (``PkiRegistry``): the
root issues fog and cloud certificates, a fog issues device certificates of
its own site, nobody else issues anything, and chains are at most three long.

A certificate is the canonical CBOR map {serial, subject, role, site,
public_key, not_before, not_after, issuer, signature}; a CRL is {issuer,
number, this_update, next_update, revoked: [{serial, at, reason}],
signature}.  Both are signed with BIP340 Schnorr over a tagged hash of the map
without its signature, so each is a self-contained record that anyone holding
the root certificate can verify: a node learns them from files, from any
MQTT topic, or from the ledger, and trusts them only for their signatures.

``PkiRegistry`` is the envelope ``KeyRegistry``: ``key_for(sender, at, role)``
returns the certified key of ``sender`` or raises ``IdentityRejected`` with
``unknown_sender``, ``wrong_issuer``, ``expired``, ``not_yet_valid``,
``revoked``, ``wrong_role`` or ``stale_crl``.

Ledger hook: a CRL is recorded as a Type-I transaction whose payload is
``crl.to_bytes()`` (type ``Crl.TYPE``, version ``Crl.VERSION``); a reader
decodes it with ``Crl.from_bytes`` and checks it with ``PkiRegistry.add_crl``
(or ``Crl.verify`` against the issuer's certificate).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Iterable

from edgefl import codec
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto.envelope import IdentityRejected
from edgefl.crypto.hashing import tagged_hash
from edgefl.crypto.keys import SigningKey, VerifyingKey, write_atomic
from edgefl.errors import EdgeflError
from edgefl.names import InvalidName, check_segment
from edgefl.runtime import METRICS, Metrics, RateLimited

log = logging.getLogger("edgefl.pki")

ROLES = ("device", "fog", "cloud")
CERT_TAG = b"edgefl/pki/certificate/v1"
CRL_TAG = b"edgefl/pki/crl/v1"
MAX_SERIAL = (1 << 63) - 1
MAX_TIME = (1 << 40) - 1  # unix seconds; beyond the year 36000
MAX_CHAIN = 3
MAX_REVOKED = 8192  # entries per CRL: a CRL travels as one retained MQTT packet
CERT_LIMITS = codec.Limits(max_size=1024, max_depth=2, max_items=32)
CRL_LIMITS = codec.Limits(max_size=512 << 10, max_depth=3, max_items=7 * MAX_REVOKED + 16)  # an entry: a map of 3

Id = Annotated[str, MaxLen(64)]
Time = Annotated[int, Range(0, MAX_TIME)]
Serial = Annotated[int, Range(1, MAX_SERIAL)]


class PkiError(EdgeflError, ValueError):
    """A certificate or CRL cannot be issued or used; ``reason`` is a short stable label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Signed(Message):
    """Shared by certificates and CRLs: canonical bytes, the signed digest, decoding with limits."""

    TAG: bytes
    LIMITS: codec.Limits

    def tbs(self) -> bytes:
        """The canonical bytes the signature covers: the map without ``signature``."""
        body = self.to_wire()
        body.pop("signature", None)
        return codec.encode(body)

    @functools.cached_property
    def digest(self) -> bytes:
        return tagged_hash(self.TAG, self.tbs())

    def to_bytes(self) -> bytes:
        return codec.encode_message(self)

    @classmethod
    def from_bytes(cls, data: bytes):
        """Decode canonical bytes strictly; every error is a ``codec.CodecError`` naming the field."""
        if len(data) > cls.LIMITS.max_size:
            raise codec.TooLarge(f"{len(data)} bytes exceeds {cls.LIMITS.max_size}", field=cls.__name__)
        obj = cls.from_wire(codec.decode(data, cls.LIMITS, canonical=True))
        obj.check()
        return obj

    def check(self) -> None:
        raise NotImplementedError

    def _check_id(self, name: str) -> None:
        try:
            check_segment(getattr(self, name), name)
        except InvalidName as exc:
            raise codec.SchemaError(str(exc), field=f"{type(self).__name__}.{name}") from None

    def _check_signature_field(self) -> None:
        if len(self.signature) not in (0, 64):
            raise codec.SchemaError(f"{len(self.signature)} bytes, expected 64",
                                    field=f"{type(self).__name__}.signature")


@message("certificate", max_size=CERT_LIMITS.max_size)
class Certificate(_Signed):
    serial: Serial
    subject: Id
    role: Annotated[str, MaxLen(8)]
    site: Id
    public_key: Annotated[bytes, MaxLen(33)]
    not_before: Time
    not_after: Time
    issuer: Id
    signature: Annotated[bytes, MaxLen(64)] = b""

    TAG = CERT_TAG
    LIMITS = CERT_LIMITS

    def check(self) -> None:
        """Field checks the annotations cannot express; raises ``codec.SchemaError`` naming the field."""
        for name in ("subject", "site", "issuer"):
            self._check_id(name)
        if self.role not in ROLES:
            raise codec.SchemaError(f"{self.role!r} is not one of {ROLES}", field="Certificate.role")
        if len(self.public_key) != 33:
            raise codec.SchemaError(f"{len(self.public_key)} bytes, expected a 33-byte compressed point",
                                    field="Certificate.public_key")
        try:
            _ = self.key  # decodes the point
        except ValueError:
            raise codec.SchemaError("not a point on secp256k1", field="Certificate.public_key") from None
        if self.not_after < self.not_before:
            raise codec.SchemaError("ends before it begins", field="Certificate.not_after")
        self._check_signature_field()

    @functools.cached_property
    def key(self) -> VerifyingKey:
        return VerifyingKey(self.public_key)

    @property
    def self_signed(self) -> bool:
        return self.issuer == self.subject

    def window_problem(self, at: float) -> IdentityRejected | None:
        if at < self.not_before:
            return IdentityRejected("not_yet_valid", f"{self.subject}: certificate valid from {self.not_before}",
                                    self.subject)
        if at > self.not_after:
            return IdentityRejected("expired", f"{self.subject}: certificate expired at {self.not_after}",
                                    self.subject)
        return None

    def describe(self) -> str:
        return (f"{self.subject} ({self.role}, site {self.site}) serial {self.serial} issued by {self.issuer}, "
                f"valid {_iso(self.not_before)} .. {_iso(self.not_after)}, key {self.public_key.hex()}")


@message("crl-entry")
class Revocation(Message):
    serial: Serial
    at: Time  # revoked from this time on: what the key signed before stays valid
    reason: Annotated[str, MaxLen(32)] = "unspecified"


@message("crl", max_size=CRL_LIMITS.max_size)
class Crl(_Signed):
    issuer: Id
    number: Serial  # strictly increasing per issuer: a replayed older CRL is refused
    this_update: Time
    next_update: Time
    revoked: Annotated[list[Revocation], MaxLen(MAX_REVOKED)] = dataclasses.field(default_factory=list)
    signature: Annotated[bytes, MaxLen(64)] = b""

    TAG = CRL_TAG
    LIMITS = CRL_LIMITS

    def check(self) -> None:
        self._check_id("issuer")
        serials = [r.serial for r in self.revoked]
        if serials != sorted(set(serials)):
            raise codec.SchemaError("entries must be sorted by serial, without repeats", field="Crl.revoked")
        if self.next_update < self.this_update:
            raise codec.SchemaError("before this_update", field="Crl.next_update")
        self._check_signature_field()

    def verify(self, issuer: Certificate) -> bool:
        """Signed by ``issuer``'s key (the caller decides whether ``issuer`` is a valid CA)."""
        return issuer.subject == self.issuer and issuer.key.verify_schnorr(self.signature, self.digest)

    def describe(self) -> str:
        lines = [f"CRL #{self.number} of {self.issuer}, {_iso(self.this_update)} .. {_iso(self.next_update)}, "
                 f"{len(self.revoked)} revoked"]
        lines += [f"  serial {r.serial} since {_iso(r.at)} ({r.reason})" for r in self.revoked]
        return "\n".join(lines)


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --------------------------------------------------------------------------- issuing


def issuance_problem(issuer: Certificate, role: str, site: str, *, issuer_is_root: bool) -> str | None:
    """Why ``issuer`` may not certify a ``role`` in ``site`` (None: it may). One rule set for issuing and checking."""
    if issuer_is_root:
        return None if role in ("fog", "cloud") else f"the root certifies fogs and cloud nodes, not a {role}"
    if issuer.role == "fog":
        if role != "device":
            return f"fog {issuer.subject} certifies devices, not a {role}"
        if site != issuer.site:
            return f"fog {issuer.subject} of site {issuer.site} cannot certify a device of site {site}"
        return None
    return f"{issuer.subject} ({issuer.role}) is not a certificate authority"


def issue(ca_key: SigningKey, ca_cert: Certificate | None, *, subject: str, role: str, site: str,
          public_key: VerifyingKey, not_before: int, not_after: int, serial: int | None = None) -> Certificate:
    """Sign a certificate. ``ca_cert=None`` makes the self-signed root (``public_key`` must be ``ca_key``'s)."""
    if ca_cert is None:
        if role != "cloud" or public_key != ca_key.public_key:
            raise PkiError("wrong_issuer", "the root certificate is self-signed, of role cloud")
        issuer = subject
    else:
        if ca_cert.key != ca_key.public_key:
            raise PkiError("wrong_issuer", f"the key does not belong to {ca_cert.subject}'s certificate")
        problem = issuance_problem(ca_cert, role, site, issuer_is_root=ca_cert.self_signed)
        if problem:
            raise PkiError("wrong_issuer", problem)
        issuer = ca_cert.subject
    cert = Certificate(serial=serial or secrets.randbelow(MAX_SERIAL) + 1, subject=subject, role=role, site=site,
                       public_key=public_key.raw, not_before=int(not_before), not_after=int(not_after), issuer=issuer)
    cert.check()
    return dataclasses.replace(cert, signature=ca_key.sign_schnorr(cert.digest))


def sign_crl(ca_key: SigningKey, issuer: str, number: int, revoked: Iterable[Revocation], *,
             this_update: int, next_update: int) -> Crl:
    crl = Crl(issuer=issuer, number=number, this_update=int(this_update), next_update=int(next_update),
              revoked=sorted(revoked, key=lambda r: r.serial))
    crl.check()
    return dataclasses.replace(crl, signature=ca_key.sign_schnorr(crl.digest))


# --------------------------------------------------------------------------- the registry


class PkiRegistry:
    """Certified identities: the envelope key registry of a PKI deployment.

    Certificates may arrive in any order (a device's before its fog's); each
    is checked when used, against the trust anchor, the issuing rules, the
    validity windows of the whole chain and the CRLs.  Signature checks are
    cached per (certificate, issuer key), so a lookup costs dictionary
    probes, not elliptic-curve work.
    """

    def __init__(self, anchor: Certificate, *, metrics: Metrics = METRICS, require_fresh_crl: bool = False,
                 crl_dir: str | os.PathLike | None = None):
        anchor.check()
        if not (anchor.self_signed and anchor.role == "cloud" and anchor.key.verify_schnorr(anchor.signature,
                                                                                            anchor.digest)):
            raise PkiError("wrong_issuer", f"trust anchor {anchor.subject} is not a self-signed root certificate")
        self.anchor = anchor
        self.metrics = metrics
        self.require_fresh_crl = require_fresh_crl
        self.crl_dir = Path(crl_dir) if crl_dir else None
        self.cert_dir: Path | None = None  # where from_files read certificates: reload() reads it again
        self._certs: dict[str, list[Certificate]] = {anchor.subject: [anchor]}
        self._crls: dict[str, Crl] = {}
        self._revoked: dict[tuple[str, int], Revocation] = {}
        self._signed: dict[tuple[bytes, bytes], bool] = {}
        self._log = RateLimited(log)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_files(cls, ca_cert: str | os.PathLike, cert_dir: str | os.PathLike | None = None,
                   crl_dir: str | os.PathLike | None = None, **kw) -> "PkiRegistry":
        """The anchor from ``ca_cert``, every ``*.cert`` in ``cert_dir``, every ``*.crl`` in ``crl_dir``.

        A bad anchor is an error; a bad certificate or CRL file is logged, counted and skipped.
        """
        try:
            anchor = Certificate.from_bytes(Path(ca_cert).read_bytes())
        except OSError as exc:
            raise PkiError("unreadable", f"{ca_cert}: cannot read the root certificate ({exc.strerror})") from None
        except codec.CodecError as exc:
            raise PkiError("malformed", f"{ca_cert}: not an edgefl certificate ({exc})") from None
        reg = cls(anchor, crl_dir=crl_dir, **kw)
        reg.cert_dir = Path(cert_dir) if cert_dir else None
        reg.reload()
        return reg

    def reload(self) -> list[str]:
        """Learn the certificates and CRLs written to the folders since (at start, and on a node's SIGHUP:
        a device certified by `edgefl site init` after its fog started); the subjects newly certified."""
        learned: list[str] = []

        def add(cert: Certificate) -> None:
            if self.add(cert):
                learned.append(cert.subject)

        for path in sorted(self.cert_dir.glob("*.cert")) if self.cert_dir and self.cert_dir.is_dir() else []:
            self._load(path, Certificate, add)
        for path in sorted(self.crl_dir.glob("*.crl")) if self.crl_dir and self.crl_dir.is_dir() else []:
            self._load(path, Crl, lambda crl: self.add_crl(crl, persist=False))
        return learned

    @classmethod
    def from_config(cls, cfg, *, metrics: Metrics = METRICS) -> "PkiRegistry":
        s = cfg.security
        return cls.from_files(cfg.path(s.ca_cert), cfg.path(s.cert_dir), cfg.path(s.crl_dir), metrics=metrics,
                              require_fresh_crl=s.require_fresh_crl)

    def _load(self, path: Path, kind, add) -> None:
        try:
            add(kind.from_bytes(path.read_bytes()))
        except (OSError, codec.CodecError) as exc:
            self.metrics.inc("pki_rejected", reason=getattr(exc, "reason", "unreadable"))
            log.warning("skipping %s: %s", path, exc)
        except PkiError as exc:  # add_crl has counted it
            log.warning("skipping %s: %s", path, exc)

    def add(self, cert: Certificate) -> bool:
        """Learn a certificate (validity is judged when it is used). False if already known."""
        cert.check()
        known = self._certs.setdefault(cert.subject, [])
        if any(c.digest == cert.digest for c in known):
            return False
        known.append(cert)
        known.sort(key=lambda c: c.not_before, reverse=True)  # newest first
        return True

    def add_crl(self, crl: Crl, *, at: float | None = None, persist: bool = True) -> bool:
        """Accept a CRL signed by a currently valid CA; True if it is newer than the one held.

        Raises ``PkiError`` (logged and counted as ``crl_rejected{reason}``)
        for a CRL from an unknown or invalid issuer, with a bad signature, or
        older than the one held.  A repeat of the held CRL returns False.
        """
        try:
            return self._add_crl(crl, time.time() if at is None else at, persist)
        except PkiError as exc:
            self.metrics.inc("crl_rejected", reason=exc.reason)
            self._log.warning(exc.reason, "rejected CRL of %s: %s", crl.issuer, exc, reason=exc.reason)
            raise

    def _add_crl(self, crl: Crl, at: float, persist: bool) -> bool:
        crl.check()
        held = self._crls.get(crl.issuer)
        if held is not None and crl.number <= held.number:
            if crl.number == held.number and crl.digest == held.digest:
                return False
            raise PkiError("stale_crl", f"CRL #{crl.number} is not newer than #{held.number}")
        issuers = self._certs.get(crl.issuer, [])
        if not issuers:
            raise PkiError("unknown_issuer", f"no certificate for {crl.issuer}")
        problems = []
        for ca in issuers:
            problem = self._problem(ca, at)
            if problem is None and not (ca.role == "fog" or ca.digest == self.anchor.digest):
                problem = IdentityRejected("wrong_issuer", f"{ca.subject} ({ca.role}) is not a CA")
            if problem is None and not crl.verify(ca):
                problem = IdentityRejected("bad_signature", f"not signed by {ca.subject}'s key")
            if problem is None:
                break
            problems.append(problem)
        else:
            raise PkiError(problems[0].reason, problems[0].detail)
        self._crls[crl.issuer] = crl
        self._revoked = {k: v for k, v in self._revoked.items() if k[0] != crl.issuer}
        self._revoked.update({(crl.issuer, r.serial): r for r in crl.revoked})
        if persist and self.crl_dir is not None:
            write_atomic(self.crl_dir / f"{crl.issuer}.crl", crl.to_bytes())
        self.metrics.inc("crl_accepted")
        log.log(logging.INFO if persist else logging.DEBUG, "CRL #%d of %s: %d revoked", crl.number, crl.issuer,
                len(crl.revoked))
        return True

    def crl(self, issuer: str) -> Crl | None:
        return self._crls.get(issuer)

    def revoked_subjects(self, issuer: str) -> list[str]:
        """The names whose certificates from ``issuer`` its current CRL revokes (for closing their connections)."""
        return sorted({c.subject for certs in self._certs.values() for c in certs
                       if c.issuer == issuer and (issuer, c.serial) in self._revoked})

    def certificates(self, subject: str) -> list[Certificate]:
        return list(self._certs.get(subject, ()))

    # ------------------------------------------------------------------ checking

    def key_for(self, sender: str, at: float, role: str | None = None, site: str | None = None) -> VerifyingKey:
        """The certified key of ``sender`` at time ``at``, in ``role`` and ``site`` when given (the topic's).

        A name is bound to where it was certified: a name the root certified
        (a fog or cloud node) is that node's wherever a fog certifies the same
        name for a device of its own site; a device name belongs to each site
        whose fog certified it, so without the site a name certified in two
        sites is ``ambiguous`` rather than whichever certificate is newest.
        """
        certs = self._certs.get(sender)
        if not certs:
            raise IdentityRejected("unknown_sender", f"no certificate for {sender!r}", sender)
        valid, first = [], None
        for cert in certs:  # newest first
            problem = self._problem(cert, at)
            if problem is None:
                valid.append(cert)
            else:
                first = first or problem
        if not valid:
            raise IdentityRejected(first.reason, first.detail, sender)
        valid = [c for c in valid if c.issuer == self.anchor.subject] or valid
        if role is not None:
            if not any(c.role == role for c in valid):
                raise IdentityRejected("wrong_role", f"{sender} is certified as {valid[0].role}, not {role}", sender)
            valid = [c for c in valid if c.role == role]
        if site is not None:
            if not any(c.site == site for c in valid):
                raise IdentityRejected("wrong_site", f"{sender} is certified in site {valid[0].site}, not {site}",
                                       sender)
            valid = [c for c in valid if c.site == site]
        homes = sorted({(c.site, c.role) for c in valid})
        if len(homes) > 1:
            raise IdentityRejected("ambiguous", f"{sender} is certified as {homes}: the topic must say which",
                                   sender)
        return valid[0].key

    def validate(self, cert: Certificate, at: float | None = None) -> None:
        """Raise ``IdentityRejected`` if ``cert`` does not chain to the anchor, valid and unrevoked, at ``at``."""
        problem = self._problem(cert, time.time() if at is None else at)
        if problem is not None:
            raise problem

    def _problem(self, cert: Certificate, at: float, depth: int = 1) -> IdentityRejected | None:
        if cert.digest == self.anchor.digest:
            return cert.window_problem(at)
        who = cert.subject
        if cert.self_signed:
            return IdentityRejected("wrong_issuer", f"{who}: self-signed, and not the trust anchor", who)
        if depth >= MAX_CHAIN:
            return IdentityRejected("wrong_issuer", f"{who}: chain longer than {MAX_CHAIN}", who)
        candidates = self._certs.get(cert.issuer)
        if not candidates:
            return IdentityRejected("wrong_issuer", f"{who}: issuer {cert.issuer} is unknown", who)
        issuer = next((c for c in candidates if self._signed_by(cert, c)), None)
        if issuer is None:
            return IdentityRejected("wrong_issuer", f"{who}: not signed by any certificate of {cert.issuer}", who)
        rule = issuance_problem(issuer, cert.role, cert.site, issuer_is_root=issuer.digest == self.anchor.digest)
        if rule:
            return IdentityRejected("wrong_issuer", f"{who}: {rule}", who)
        problem = cert.window_problem(at)
        if problem is not None:
            return problem
        revoked = self._revoked.get((cert.issuer, cert.serial))
        if revoked is not None and revoked.at <= at:
            return IdentityRejected("revoked", f"{who}: serial {cert.serial} revoked by {cert.issuer} "
                                    f"at {revoked.at} ({revoked.reason})", who)
        if self.require_fresh_crl:
            crl = self._crls.get(cert.issuer)
            if crl is None or at > crl.next_update:
                return IdentityRejected("stale_crl", f"{who}: no current CRL from {cert.issuer}", who)
        up = self._problem(issuer, at, depth + 1)
        if up is not None:
            return IdentityRejected(up.reason, f"{who}: issuer {up.detail}", who)
        return None

    def _signed_by(self, cert: Certificate, issuer: Certificate) -> bool:
        key = (cert.digest + cert.signature, issuer.public_key)
        ok = self._signed.get(key)
        if ok is None:
            ok = self._signed[key] = issuer.key.verify_schnorr(cert.signature, cert.digest)
        return ok
