"""X.509 certificates for Mosquitto's TLS listener and its clients (the ``cryptography`` package).

They mirror the edgefl PKI: the root X.509 CA belongs to the root and issues
the fogs' and cloud nodes' TLS certificates, each fog has an X.509 CA that
issues its devices' TLS certificates, every leaf's CN is the node id (so
Mosquitto's ``use_identity_as_username`` makes it the MQTT username the ACL
patterns match) and its serial is the serial of the node's edgefl certificate.

A fog's X.509 CA is a trust anchor of its own, not an intermediate under the
root: a broker trusts exactly the CAs whose clients it serves (a fog's broker
the root's and its own, the cloud's broker the root's), so a certificate that
another site's fog mints, for any name, chains to nothing the broker trusts.
Its name constraints say the same to anyone who does trust it: it certifies
only subjects O=<its site>, OU=device; and no CA certifies CAs (path length 0).  TLS keys are P-256: TLS 1.3 has no secp256k1
signature scheme, so the TLS layer gets keys of its own while the CN ties
both certificates to one identity.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefl.crypto.keys import KeyFileError, read_private, write_atomic, write_private

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def save_key(key: PrivateKey, path: str | os.PathLike) -> Path:
    return write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))


def load_key(path: str | os.PathLike) -> PrivateKey:
    data = read_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: not an elliptic-curve key")
    return key


def save_chain(certs: list[x509.Certificate], path: str | os.PathLike) -> Path:
    """PEM, leaf first: what Mosquitto's certfile and Python's load_cert_chain expect."""
    return write_atomic(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


def load_chain(path: str | os.PathLike) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read certificate ({exc.strerror})") from None
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM certificate ({exc})") from None
    return certs


def _name(common_name: str, unit: str, site: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, site),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def certificate(*, subject: str, role: str, site: str, public_key: ec.EllipticCurvePublicKey, serial: int,
                not_before: int, not_after: int, issuer: x509.Certificate | None, issuer_key: PrivateKey,
                ca: bool = False, hosts: tuple[str, ...] = (), devices_of: str | None = None) -> x509.Certificate:
    """A CA certificate (``ca=True``: CN "<id> CA", so it never looks self-issued next to the
    node's own leaf; ``devices_of``: name-constrained to the devices of that site) or a leaf for
    client and, with ``hosts``, server authentication."""
    name = _name(f"{subject} CA", "ca", site) if ca else _name(subject, role, site)
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.subject if issuer is not None else name)
               .public_key(public_key)
               .serial_number(serial)
               .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.timezone.utc))
               .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.timezone.utc))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = (builder
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True))
        if devices_of is not None:
            devices = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, devices_of),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "device")])
            builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=[x509.DirectoryName(devices)],
                                                                 excluded_subtrees=None), critical=True)
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [])
        builder = (builder
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def crl(ca: x509.Certificate, ca_key: PrivateKey, revoked: dict[int, int], *, this_update: int) -> bytes:
    """PEM X.509 CRL of ``ca`` listing ``revoked`` (serial -> unix time), the same serials as the edgefl CRL.

    Its next update is the CA's own expiry: OpenSSL refuses every client of a CA
    whose CRL has lapsed, and keeping revocations current is the edgefl CRL's
    job (``security.require_fresh_crl``), not the broker's.
    """
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.subject)
               .last_update(dt.datetime.fromtimestamp(this_update, dt.timezone.utc))
               .next_update(ca.not_valid_after_utc)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    for serial, at in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(dt.datetime.fromtimestamp(at, dt.timezone.utc)).build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
