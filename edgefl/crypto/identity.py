"""A node's look at its own identity before it connects.

A node with the wrong signing key, or another node's TLS certificate, would
otherwise only ever see silence: its peers drop what it signs (bad
signature), the broker files it under someone else's name.  ``check`` finds
that at start and says which file is wrong.
"""

from __future__ import annotations

import time

from edgefl.crypto.envelope import IdentityRejected
from edgefl.crypto.keys import KeyFileError, SigningKey, load_public
from edgefl.runtime import Config, ConfigError


def check(cfg: Config, *, at: float | None = None) -> None:
    """Raise ``ConfigError`` unless this node's key, certificate and TLS files belong together and to it."""
    node, s = cfg.node.id, cfg.security
    at = time.time() if at is None else at
    key_file = cfg.path(s.key_file)
    try:
        key = SigningKey.load(key_file).public_key
    except KeyFileError as exc:
        raise ConfigError("security.key_file", str(exc)) from None
    if s.registry == "pki":
        from edgefl.crypto.pki import PkiError, PkiRegistry

        try:
            certified = PkiRegistry.from_config(cfg).key_for(node, at, cfg.node.role)
        except PkiError as exc:
            raise ConfigError("security.ca_cert", str(exc)) from None
        except IdentityRejected as exc:
            raise ConfigError("security.cert_dir", f"{node}'s own certificate: {exc.detail}") from None
        if certified != key:
            raise ConfigError("security.key_file", f"{key_file} holds key {key.hex()[:16]}…, but {node}'s "
                                                   f"certificate certifies {certified.hex()[:16]}…: the key or the "
                                                   f"certificate belongs to another node")
    else:
        pub = cfg.path(s.trust_dir) / f"{node}.pub"
        if pub.is_file() and load_public(pub) != key:
            raise ConfigError("security.key_file", f"{key_file} is not the key of {pub}, which the others trust "
                                                   f"for {node}")

    if cfg.mqtt.tls_cert:
        _check_tls(cfg, cfg.mqtt.tls_cert, at)


def _check_tls(cfg: Config, tls_cert: str, at: float) -> None:
    from cryptography.hazmat.primitives import serialization

    from edgefl.crypto import tls

    node = cfg.node.id
    cert_file = cfg.path(tls_cert)
    try:
        leaf = tls.load_chain(cert_file)[0]
    except (KeyFileError, IndexError) as exc:
        raise ConfigError("mqtt.tls_cert", str(exc) or f"{cert_file}: no certificate") from None
    name = tls.common_name(leaf)
    if name != node:
        raise ConfigError("mqtt.tls_cert", f"{cert_file} is {name}'s TLS certificate, not {node}'s: the broker "
                                           f"would take this node for {name}")
    if not leaf.not_valid_before_utc.timestamp() <= at <= leaf.not_valid_after_utc.timestamp():
        raise ConfigError("mqtt.tls_cert", f"{cert_file} is valid {leaf.not_valid_before_utc:%Y-%m-%d} .. "
                                           f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now")
    if cfg.mqtt.tls_key:
        key_file = cfg.path(cfg.mqtt.tls_key)
        try:
            key = tls.load_key(key_file)
        except KeyFileError as exc:
            raise ConfigError("mqtt.tls_key", str(exc)) from None
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
            raise ConfigError("mqtt.tls_key", f"{key_file} is not the key of {cert_file}")
