"""Site PKI: chains, expiry, revocation, issuing rules, strict decoders, and the envelope registry."""

import dataclasses
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.crypto.ca import CaDirectory
from edgefl.crypto.envelope import IdentityRejected, Rejected, Signer, Verifier
from edgefl.crypto.keys import SigningKey
from edgefl.crypto.pki import Certificate, Crl, PkiError, PkiRegistry, Revocation, issue, sign_crl
from edgefl.runtime.metrics import Metrics
from edgefl.transport.messages import Ping

T0 = (int(time.time()) // 86400 - 10) * 86400  # ten days ago: files loaded "now" are in date
DAY = 86400
YEAR = 365 * DAY


class Site:
    """root -> fog-1 (site s1) -> dev-a, dev-b; root -> cloud-1; all valid for a year from T0."""

    def __init__(self):
        self.keys = {n: SigningKey() for n in ("root", "fog-1", "fog-2", "dev-a", "dev-b", "cloud-1")}
        self.certs = {}
        self.root = self.make("root", None, "cloud", "cloud")
        self.make("fog-1", "root", "fog", "s1")
        self.make("fog-2", "root", "fog", "s2")
        self.make("cloud-1", "root", "cloud", "cloud")
        self.make("dev-a", "fog-1", "device", "s1")
        self.make("dev-b", "fog-1", "device", "s1")

    def make(self, name, issuer, role, site, nb=T0, na=T0 + YEAR, key=None):
        ca_key = self.keys[issuer or name]
        cert = issue(ca_key, self.certs[issuer] if issuer else None, subject=name, role=role, site=site,
                     public_key=(key or self.keys[name]).public_key, not_before=nb, not_after=na)
        self.certs[name] = cert
        return cert

    def registry(self, **kw):
        reg = PkiRegistry(self.root, metrics=kw.pop("metrics", Metrics()), **kw)
        for c in self.certs.values():
            reg.add(c)
        return reg

    def crl(self, issuer, number, *revoked, at=T0 + DAY, next_update=T0 + 30 * DAY):
        entries = [Revocation(serial=self.certs[n].serial, at=at, reason="test") for n in revoked]
        return sign_crl(self.keys[issuer], issuer, number, entries, this_update=at, next_update=next_update)


def reason(reg, sender, at=T0 + 10, role=None):
    with pytest.raises(IdentityRejected) as exc:
        reg.key_for(sender, at, role)
    return exc.value.reason


def forge(cert, signer: SigningKey, **changes):
    """A certificate with ``changes``, signed by ``signer`` (bypassing the issuing rules)."""
    c = dataclasses.replace(cert, signature=b"", **changes)
    return dataclasses.replace(c, signature=signer.sign_schnorr(c.digest))


def test_valid_chains_give_the_certified_key():
    s = Site()
    reg = s.registry()
    for name in ("dev-a", "fog-1", "cloud-1", "root"):
        assert reg.key_for(name, T0 + 10) == s.keys[name].public_key
    assert reg.key_for("dev-a", T0 + 10, "device") == s.keys["dev-a"].public_key


def test_unknown_expired_not_yet_valid_and_wrong_role():
    s = Site()
    reg = s.registry()
    assert reason(reg, "nobody") == "unknown_sender"
    assert reason(reg, "dev-a", at=T0 + YEAR + 1) == "expired"
    assert reason(reg, "dev-a", at=T0 - 1) == "not_yet_valid"
    assert reason(reg, "dev-a", role="fog") == "wrong_role"
    assert reason(reg, "fog-1", role="device") == "wrong_role"
    # an expired fog takes its devices with it, although theirs are still in date
    s2 = Site()
    s2.make("fog-1", "root", "fog", "s1", na=T0 + DAY)
    s2.make("dev-a", "fog-1", "device", "s1", na=T0 + YEAR)
    reg2 = s2.registry()
    assert reason(reg2, "dev-a", at=T0 + 2 * DAY) == "expired"
    assert reg2.key_for("dev-a", T0 + DAY // 2)


def test_renewed_certificate_supersedes_the_expired_one():
    s = Site()
    old = s.make("dev-a", "fog-1", "device", "s1", na=T0 + DAY)
    s.make("dev-a", "fog-1", "device", "s1", nb=T0 + DAY - 100, na=T0 + YEAR)
    reg = s.registry()
    reg.add(old)
    assert reg.key_for("dev-a", T0 + 2 * DAY) == s.keys["dev-a"].public_key
    assert len(reg.certificates("dev-a")) == 2


def test_revocation_applies_from_its_time_and_down_the_chain():
    s = Site()
    reg = s.registry()
    assert reg.add_crl(s.crl("fog-1", 1, "dev-b", at=T0 + DAY), at=T0 + DAY)
    assert reg.key_for("dev-b", T0 + DAY - 1)  # what it signed before revocation stays verifiable
    assert reason(reg, "dev-b", at=T0 + DAY) == "revoked"
    assert reg.key_for("dev-a", T0 + DAY)
    # the root revokes fog-1: its devices go too; fog-2 is untouched
    assert reg.add_crl(s.crl("root", 1, "fog-1", at=T0 + 2 * DAY), at=T0 + 2 * DAY)
    assert reason(reg, "fog-1", at=T0 + 3 * DAY) == "revoked"
    assert reason(reg, "dev-a", at=T0 + 3 * DAY) == "revoked"
    assert reg.key_for("fog-2", T0 + 3 * DAY)
    # a newer CRL of fog-1 that drops dev-b un-revokes it (CRLs replace, they do not accumulate)
    reg2 = s.registry()
    reg2.add_crl(s.crl("fog-1", 1, "dev-b"), at=T0 + DAY)
    reg2.add_crl(s.crl("fog-1", 2), at=T0 + DAY)
    assert reg2.key_for("dev-b", T0 + 2 * DAY)


@pytest.mark.parametrize("case", ["foreign_root", "self_signed", "bad_signature", "device_issues", "fog_issues_fog",
                                  "other_site", "unknown_issuer", "fog_key_claims_root"])
def test_wrong_issuer(case):
    s = Site()
    reg = s.registry()
    dev = s.certs["dev-a"]
    mallory = SigningKey()
    if case == "foreign_root":  # a complete chain under another root
        other = Site()
        bad = [other.certs["fog-1"], forge(other.certs["dev-a"], other.keys["fog-1"], subject="dev-x")]
        bad[0] = forge(other.certs["fog-1"], other.keys["root"], subject="fog-x")
        bad[1] = forge(other.certs["dev-a"], other.keys["fog-1"], subject="dev-x", issuer="fog-x")
        name = "dev-x"
    elif case == "self_signed":
        bad, name = [forge(dev, mallory, subject="dev-x", issuer="dev-x", public_key=mallory.public_key.raw)], "dev-x"
    elif case == "bad_signature":
        bad, name = [forge(dev, mallory, subject="dev-x")], "dev-x"
    elif case == "device_issues":
        bad, name = [forge(dev, s.keys["dev-a"], subject="dev-x", issuer="dev-a")], "dev-x"
    elif case == "fog_issues_fog":
        bad, name = [forge(s.certs["fog-2"], s.keys["fog-1"], subject="fog-x", issuer="fog-1")], "fog-x"
    elif case == "other_site":
        bad, name = [forge(dev, s.keys["fog-1"], subject="dev-x", site="s2")], "dev-x"
    elif case == "unknown_issuer":
        bad, name = [forge(dev, mallory, subject="dev-x", issuer="fog-9")], "dev-x"
    else:  # a fog's key signing a certificate that names the root as issuer
        bad, name = [forge(s.certs["fog-2"], s.keys["fog-1"], subject="fog-x", issuer="root")], "fog-x"
    for c in bad:
        reg.add(c)
    assert reason(reg, name) == "wrong_issuer"
    with pytest.raises(IdentityRejected, match="wrong_issuer"):
        reg.validate(bad[-1], T0 + 10)


def test_issue_refuses_what_validation_rejects():
    s = Site()
    with pytest.raises(PkiError, match="certifies devices"):
        issue(s.keys["fog-1"], s.certs["fog-1"], subject="fog-x", role="fog", site="s1",
              public_key=SigningKey().public_key, not_before=T0, not_after=T0 + DAY)
    with pytest.raises(PkiError, match="cannot certify a device of site s2"):
        issue(s.keys["fog-1"], s.certs["fog-1"], subject="dev-x", role="device", site="s2",
              public_key=SigningKey().public_key, not_before=T0, not_after=T0 + DAY)
    with pytest.raises(PkiError, match="not a certificate authority"):
        issue(s.keys["dev-a"], s.certs["dev-a"], subject="dev-x", role="device", site="s1",
              public_key=SigningKey().public_key, not_before=T0, not_after=T0 + DAY)
    with pytest.raises(PkiError, match="does not belong"):
        issue(s.keys["fog-2"], s.certs["fog-1"], subject="dev-x", role="device", site="s1",
              public_key=SigningKey().public_key, not_before=T0, not_after=T0 + DAY)
    with pytest.raises(PkiError, match="root certifies"):
        issue(s.keys["root"], s.root, subject="dev-x", role="device", site="s1",
              public_key=SigningKey().public_key, not_before=T0, not_after=T0 + DAY)
    with pytest.raises(PkiError, match="trust anchor"):
        PkiRegistry(s.certs["fog-1"])


def test_crl_acceptance_rules(tmp_path):
    s = Site()
    m = Metrics()
    reg = s.registry(metrics=m, crl_dir=tmp_path)
    first = s.crl("fog-1", 2, "dev-b")
    assert reg.add_crl(first, at=T0 + DAY)
    assert not reg.add_crl(first, at=T0 + DAY)  # the same again: nothing to do, no error
    cases = [
        (s.crl("fog-1", 1), "stale_crl"),  # older number: a replay
        (dataclasses.replace(s.crl("fog-1", 3), issuer="fog-2"), "bad_signature"),
        (sign_crl(SigningKey(), "fog-1", 4, [], this_update=T0, next_update=T0 + DAY), "bad_signature"),
        (s.crl("dev-a", 1), "wrong_issuer"),  # devices are not CAs
        (s.crl("cloud-1", 1), "wrong_issuer"),  # nor are cloud nodes other than the root
        (sign_crl(SigningKey(), "fog-9", 1, [], this_update=T0, next_update=T0 + DAY), "unknown_issuer"),
    ]
    for crl, why in cases:
        with pytest.raises(PkiError) as exc:
            reg.add_crl(crl, at=T0 + DAY)
        assert exc.value.reason == why, crl
        assert m.get("crl_rejected", reason=why) >= 1
    assert reg.crl("fog-1") == first
    # a CRL from a revoked or expired CA is refused
    reg.add_crl(s.crl("root", 1, "fog-2"), at=T0 + DAY)
    with pytest.raises(PkiError, match="revoked"):
        reg.add_crl(s.crl("fog-2", 1), at=T0 + 2 * DAY)
    # accepted CRLs were persisted and come back with the files
    (tmp_path / "junk.crl").write_bytes(b"\xa0garbage")
    anchor = tmp_path / "ca.cert"
    anchor.write_bytes(s.root.to_bytes())
    certs = tmp_path / "certs"
    certs.mkdir()
    for name, c in s.certs.items():
        (certs / f"{name}.cert").write_bytes(c.to_bytes())
    (certs / "bad.cert").write_bytes(s.certs["dev-a"].to_bytes()[:-5])
    m2 = Metrics()
    reloaded = PkiRegistry.from_files(anchor, certs, tmp_path, metrics=m2)
    assert reloaded.crl("fog-1") == first and reloaded.crl("root").number == 1
    assert m2.total("pki_rejected") == 2  # bad.cert and junk.crl: skipped, logged, counted
    assert reason(reloaded, "dev-b", at=T0 + 2 * DAY) == "revoked"


def test_require_fresh_crl():
    s = Site()
    reg = s.registry(require_fresh_crl=True)
    assert reason(reg, "fog-1") == "stale_crl"
    reg.add_crl(s.crl("root", 1, at=T0, next_update=T0 + DAY), at=T0)
    reg.add_crl(s.crl("fog-1", 1, at=T0, next_update=T0 + DAY), at=T0)
    assert reg.key_for("dev-a", T0 + 10)
    assert reason(reg, "dev-a", at=T0 + DAY + 1) == "stale_crl"


# --------------------------------------------------------------------------- decoders


def test_certificate_and_crl_round_trip_canonically():
    s = Site()
    for c in s.certs.values():
        assert Certificate.from_bytes(c.to_bytes()) == c
    crl = s.crl("fog-1", 7, "dev-a", "dev-b")
    assert Crl.from_bytes(crl.to_bytes()) == crl and crl.verify(s.certs["fog-1"])


def _field_error(data, cls=Certificate):
    with pytest.raises(codec.CodecError) as exc:
        cls.from_bytes(data)
    return exc.value.field


def test_decoders_name_the_bad_field():
    s = Site()
    body = s.certs["dev-a"].to_wire()
    assert _field_error(codec.encode({**body, "role": "king"})) == "Certificate.role"
    assert _field_error(codec.encode({**body, "public_key": b"\x02" + b"\xff" * 32})) == "Certificate.public_key"
    assert _field_error(codec.encode({**body, "public_key": b"\x02" * 3})) == "Certificate.public_key"
    assert _field_error(codec.encode({**body, "subject": "a/b"})) == "Certificate.subject"
    assert _field_error(codec.encode({**body, "serial": 0})) == "Certificate.serial"
    assert _field_error(codec.encode({**body, "not_after": T0 - 1})) == "Certificate.not_after"
    assert _field_error(codec.encode({**body, "extra": 1})) == "Certificate"
    assert _field_error(codec.encode({k: v for k, v in body.items() if k != "issuer"})) == "Certificate.issuer"
    assert _field_error(codec.encode({**body, "signature": b"x" * 10})) == "Certificate.signature"
    assert _field_error(b"\x00" * 2000) == "Certificate"  # over the size limit
    crl = s.crl("fog-1", 1, "dev-a", "dev-b").to_wire()
    crl["revoked"] = sorted(crl["revoked"], key=lambda r: r["serial"], reverse=True)
    assert _field_error(codec.encode(crl), Crl) == "Crl.revoked"
    # non-canonical bytes (a longer integer form) are refused: the digest must be of one encoding only
    good = s.certs["dev-a"].to_bytes()
    with pytest.raises(codec.NotCanonical):
        Certificate.from_bytes(good.replace(b"\x6anot_before\x1a", b"\x6anot_before\x1b\x00\x00\x00\x00", 1))


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_raise_codec_errors(data):
    for cls in (Certificate, Crl):
        try:
            cls.from_bytes(data)
        except codec.CodecError:
            pass


@given(st.integers(0, 10_000), st.integers(0, 7))
@settings(max_examples=300, deadline=None)
def test_any_bit_flip_is_caught(pos, bit):
    """A flipped bit anywhere in a certificate: refused by the decoder, or no longer valid."""
    s = _SITE
    good = s.certs["dev-a"].to_bytes()
    bad = bytearray(good)
    bad[pos % len(good)] ^= 1 << bit
    try:
        cert = Certificate.from_bytes(bytes(bad))
    except codec.CodecError:
        return
    reg = s.registry()
    with pytest.raises(IdentityRejected):
        reg.validate(cert, T0 + 10)


_SITE = Site()


# --------------------------------------------------------------------------- envelopes


def test_envelopes_are_judged_by_the_pki():
    s = Site()
    m = Metrics()
    now = [T0 + 10]
    reg = s.registry()
    v = Verifier(reg, metrics=m, clock=lambda: now[0])

    def send(name, key=None, role=None, **kw):
        wire = Signer(name, key or s.keys[name]).seal(Ping(nonce=b"n"), ts_ms=int(now[0] * 1000))
        return v.open(wire, expect_role=role, **kw)

    assert send("dev-a", role="device").sender == "dev-a"
    for name, key, role, why in [("dev-x", SigningKey(), None, "unknown_sender"),
                                 ("dev-a", None, "fog", "wrong_role"),
                                 ("dev-a", SigningKey(), "device", "bad_signature")]:
        with pytest.raises(Rejected) as exc:
            send(name, key, role)
        assert exc.value.reason == why
    reg.add_crl(s.crl("fog-1", 1, "dev-b", at=T0 + 20), at=T0 + 20)
    now[0] = T0 + 30
    with pytest.raises(Rejected, match="revoked"):
        send("dev-b")
    now[0] = T0 + YEAR + 1
    with pytest.raises(Rejected, match="expired"):
        send("dev-a", check_fresh=False)
    for why in ("unknown_sender", "wrong_role", "bad_signature", "revoked", "expired"):
        assert m.get("envelope_rejected", reason=why) == 1, why


# --------------------------------------------------------------------------- files and CLI


def test_ca_directory_round_trip(tmp_path):
    ca = CaDirectory(tmp_path / "ca")
    ca.init("root", "cloud")
    ca.issue("fog-1", "fog", site="s1", hosts=("127.0.0.1",))
    ca.issue("dev-1", "device")
    key = SigningKey()
    dev2 = ca.issue("dev-2", "device", public_key=key.public_key)  # the device made its own key
    assert dev2.key == key.public_key and not ca.key_path("dev-2").exists()
    assert (tmp_path / "ca" / "keys" / "dev-1.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca" / "tls" / "dev-1.key").stat().st_mode & 0o777 == 0o600
    ca.revoke("dev-1", reason="lost")
    ca.revoke("dev-1", reason="again")  # idempotent: still one entry, a newer number
    crl = ca.registry().crl("fog-1")
    assert crl.number == 3 and [r.serial for r in crl.revoked] == [ca.certificate("dev-1").serial]
    reg = ca.registry()
    with pytest.raises(IdentityRejected, match="revoked"):
        reg.validate(ca.certificate("dev-1"))
    reg.validate(dev2)
    with pytest.raises(ValueError, match="reserved"):
        ca.issue("fog-1-ca", "device")
    # TLS key files get the same care as secp256k1 ones
    from edgefl.crypto import tls
    from edgefl.crypto.keys import KeyFileError
    tls_key = ca.tls_path("dev-1", "key")
    assert tls.load_key(tls_key)
    tls_key.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        tls.load_key(tls_key)
    tls_key.chmod(0o600)
    tls_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        tls.load_key(tls_key)
    with pytest.raises(KeyFileError, match="cannot read"):
        tls.load_chain(tmp_path / "missing.pem")
    # export: a node's data directory that the default configuration reads
    ca.export("dev-2", tmp_path / "dev-2")
    from edgefl.runtime.config import load_config
    from edgefl.transport.session import key_registry
    cfg = load_config(overrides=[f"node.data_dir={tmp_path / 'dev-2'}", "security.registry=pki"], env={})
    exported = key_registry(cfg)
    assert exported.key_for("dev-2", dev2.not_before + 1, "device") == key.public_key
    with pytest.raises(IdentityRejected, match="revoked"):
        exported.key_for("dev-1", crl.this_update + 1)


def edgefl(*args):
    return subprocess.run([sys.executable, "-m", "edgefl", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "EDGEFL_LOG__LEVEL": "WARNING"})


def test_pki_cli(tmp_path):
    d = str(tmp_path / "pki")
    for args in (["init", "--id", "root", "--site", "cloud"],
                 ["issue", "--id", "fog-1", "--role", "fog", "--site", "s1", "--host", "127.0.0.1"],
                 ["issue", "--id", "dev-1", "--role", "device"]):
        out = edgefl("pki", "--dir", d, *args)
        assert out.returncode == 0, out.stderr
    shown = edgefl("pki", "--dir", d, "show", "dev-1")
    assert shown.returncode == 0 and "status: valid" in shown.stdout and "issued by fog-1" in shown.stdout
    assert edgefl("pki", "--dir", d, "revoke", "--id", "dev-1", "--reason", "stolen").returncode == 0
    shown = edgefl("pki", "--dir", d, "show", "dev-1")
    assert shown.returncode == 1 and "status: revoked" in shown.stdout and "stolen" in shown.stdout
    crl = edgefl("pki", "--dir", d, "show", f"{d}/pki/crl/fog-1.crl")
    assert "CRL #2 of fog-1" in crl.stdout and "status: current" in crl.stdout
    bad = edgefl("pki", "--dir", d, "issue", "--id", "dev-2", "--role", "fog", "--issuer", "fog-1")
    assert bad.returncode == 1 and "certifies devices, not a fog" in bad.stderr


def test_a_fog_cannot_certify_a_name_of_another_site_or_a_root_certified_name():
    """The registry took the newest valid certificate of a name: a fog-1-issued dev-2 certificate made a forged
    dev-2 envelope verify, and a fog-1-issued fog-2 certificate made genuine fog-2 envelopes fail."""
    s = Site()
    s.keys["dev-2"] = SigningKey()
    s.make("dev-2", "fog-2", "device", "s2")
    reg = s.registry()
    mallory = SigningKey()
    for name in ("dev-2", "fog-2", "cloud-1"):  # all valid by the issuing rules: devices of fog-1's own site
        reg.add(issue(s.keys["fog-1"], s.certs["fog-1"], subject=name, role="device", site="s1",
                      public_key=mallory.public_key, not_before=T0 + 5, not_after=T0 + YEAR))
    at = T0 + 10
    assert reg.key_for("fog-2", at, "fog") == s.keys["fog-2"].public_key
    assert reg.key_for("cloud-1", at) == s.keys["cloud-1"].public_key
    assert reason(reg, "fog-2", role="device") == "wrong_role"  # a name the root certified is the root's
    assert reg.key_for("dev-2", at, "device", site="s2") == s.keys["dev-2"].public_key
    assert reg.key_for("dev-2", at, "device", site="s1") == mallory.public_key  # fog-1's own namespace
    with pytest.raises(IdentityRejected) as exc:
        reg.key_for("dev-2", at, "device")  # which dev-2? without the site, neither
    assert exc.value.reason == "ambiguous"
    with pytest.raises(IdentityRejected) as exc:
        reg.key_for("dev-a", at, "device", site="s2")
    assert exc.value.reason == "wrong_site"
    v = Verifier(reg, metrics=Metrics(), clock=lambda: at)
    forged = Signer("dev-2", mallory).seal(Ping(nonce=b"n"), ts_ms=at * 1000)
    with pytest.raises(Rejected, match="bad_signature"):  # on dev-2's own topic (site s2): dev-2's key
        v.open(forged, expect_role="device", expect_site="s2")
    genuine = Signer("fog-2", s.keys["fog-2"]).seal(Ping(nonce=b"n"), ts_ms=at * 1000)
    assert v.open(genuine, expect_role="fog", expect_site="s2").sender == "fog-2"


def test_the_largest_crl_a_ca_can_sign_can_be_read_back():
    """CRL_LIMITS allowed 4 items per entry; an entry is a map of three: a CA could sign a CRL of MAX_REVOKED
    entries that no node could read from its file."""
    from edgefl.crypto.pki import CRL_LIMITS, MAX_REVOKED

    key = SigningKey()
    crl = sign_crl(key, "fog-1", 1, [Revocation(serial=i + 1, at=T0, reason="r" * 32) for i in range(MAX_REVOKED)],
                   this_update=T0, next_update=T0 + DAY)
    data = crl.to_bytes()
    assert len(data) <= CRL_LIMITS.max_size
    assert Crl.from_bytes(data) == crl
