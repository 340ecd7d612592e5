"""`edgefl bench crypto`: signatures, certificates, envelopes, ECVRF and sortition beside raw coincurve.

Every edgefl operation is measured interleaved with the bare coincurve calls
it wraps, on the same inputs, and reported as a ratio (edgefl / raw):

* ecdsa_sign, ecdsa_verify, schnorr_sign, schnorr_verify: ``edgefl.crypto.keys``
  against ``coincurve.PrivateKey.sign`` / ``PublicKey.verify`` (DER) and the
  BIP340 calls;
* cert_chain_check: a device certificate checked up to the root (two Schnorr
  verifications, issuing rules, validity windows, CRL lookups) with the
  signature cache cleared, against two bare Schnorr verifications;
  cert_lookup: the cached check every envelope pays;
* verify_tx: ``Verifier.open`` of a signed transaction-sized envelope (a
  128-byte payload) whose sender is judged by the PKI registry, against one
  bare ECDSA verification.  Published anchor for "verify transaction": 47 ms on
  a desktop, 179 ms on a Raspberry Pi 3B+; goal here <= 0.2 ms;
* verify_vote: a committee vote, i.e. an envelope carrying a sortition claim,
  opened and its claim verified (VRF + binomial draw), against a bare ECDSA
  verification plus the bare VRF point arithmetic;
* vrf_prove, vrf_verify: ``edgefl.crypto.vrf`` against the coincurve point
  operations alone (3 and 4 scalar multiplications), so the ratio is the cost
  of hashing to the curve, the nonce and the encodings;
* sortition_verify: ``sortition.verify`` (weight 50 of 1000, tau 20) against
  the same bare VRF arithmetic: the exact binomial draw on top of the proof.
"""

from __future__ import annotations

import hashlib
import os
import time

from coincurve import PrivateKey, PublicKey, PublicKeyXOnly

from edgefl.bench.harness import Report, interleave, ratio_row
from edgefl.consensus import SortitionClaim, sortition
from edgefl.crypto import PkiRegistry, Signer, SigningKey, Verifier, issue, vrf
from edgefl.runtime import Metrics
from edgefl.transport import Ping

ANCHOR_VERIFY_TX_MS = 47.0  # published: desktop; 179 ms on a Raspberry Pi 3B+
GOAL_VERIFY_TX = "<= 0.2 ms"
WEIGHT, TOTAL, TAU = 50, 1000, 20


def _pki():
    now = int(time.time())
    keys = {n: SigningKey() for n in ("root", "fog-1", "dev-1")}
    root = issue(keys["root"], None, subject="root", role="cloud", site="cloud", public_key=keys["root"].public_key,
                 not_before=now - 60, not_after=now + 86400)
    fog = issue(keys["root"], root, subject="fog-1", role="fog", site="s1", public_key=keys["fog-1"].public_key,
                not_before=now - 60, not_after=now + 86400)
    dev = issue(keys["fog-1"], fog, subject="dev-1", role="device", site="s1", public_key=keys["dev-1"].public_key,
                not_before=now - 60, not_after=now + 86400)
    reg = PkiRegistry(root, metrics=Metrics())
    reg.add(fog)
    reg.add(dev)
    return keys, (root, fog, dev), reg


def _raw_vrf(sk: bytes, alpha: bytes):
    """The bare coincurve arithmetic of ECVRF prove and verify, on precomputed scalars and points."""
    x = int.from_bytes(sk, "big")
    h = vrf.hash_to_curve(vrf.public_key(sk), alpha)
    k = (x * 7919 + 1) % vrf.N
    c = int.from_bytes(os.urandom(16), "big")
    s = (k + c * x) % vrf.N
    y = PublicKey.from_valid_secret(sk)
    gamma = h.multiply(sk)
    xb, kb, sb, negc = (v.to_bytes(32, "big") for v in (x, k, s, vrf.N - c))

    def prove():
        return h.multiply(xb).format(), PublicKey.from_valid_secret(kb).format(), h.multiply(kb).format()

    def verify():
        u = y.multiply(negc).add(sb)
        v = PublicKey.combine_keys([h.multiply(sb), gamma.multiply(negc)])
        return u.format(), v.format()

    return prove, verify


def run_sync(*, quick: bool = False) -> Report:
    report = Report("edgefl bench crypto: edgefl operations beside the raw coincurve calls (ms per operation)")
    n = 100 if quick else 2000
    rounds = 10 if quick else 40
    per = max(1, n // rounds)

    key = SigningKey()
    raw_priv, raw_pub = PrivateKey(key.secret), PublicKey(key.public_key.raw)
    xonly = PublicKeyXOnly(key.public_key.raw[1:])
    digest = hashlib.sha256(b"edgefl bench").digest()
    compact, der = key.sign(digest), raw_priv.sign(digest, hasher=None)
    schnorr = key.sign_schnorr(digest)

    keys, (root, fog, dev), reg = _pki()
    fog_x, root_x = PublicKeyXOnly(fog.public_key[1:]), PublicKeyXOnly(root.public_key[1:])
    dev_digest, fog_digest = dev.digest, fog.digest
    now = time.time()

    def chain_check():
        reg._signed.clear()  # the full check, signatures included
        reg.validate(dev, now)

    def chain_raw():
        fog_x.verify(dev.signature, dev_digest)
        root_x.verify(fog.signature, fog_digest)

    verifier = Verifier(reg, metrics=Metrics())
    tx = Signer("dev-1", keys["dev-1"]).seal(Ping(nonce=os.urandom(32), payload=os.urandom(128)))
    dev_pub = PublicKey(dev.public_key)
    tx_der = PrivateKey(keys["dev-1"].secret).sign(digest, hasher=None)

    vrf_sk = os.urandom(32)
    vrf_pk = vrf.public_key(vrf_sk)
    seed = os.urandom(32)
    alpha = sortition.alpha(seed, "committee")
    proof = vrf.prove(vrf_sk, alpha)
    raw_prove, raw_verify = _raw_vrf(vrf_sk, alpha)
    vote = Signer("dev-1", keys["dev-1"]).seal(SortitionClaim(epoch=1, member="dev-1", role="committee",
                                                              proof=proof))

    def verify_vote():
        env = verifier.open(vote, check_fresh=False, expect_role="device")
        claim = env.message
        return sortition.verify(vrf_pk, claim.proof, seed, claim.role, WEIGHT, TOTAL, TAU, claim.member)

    def verify_vote_raw():
        dev_pub.verify(tx_der, digest, hasher=None)
        raw_verify()

    pairs = [
        ("ecdsa_sign", lambda: key.sign(digest), lambda: raw_priv.sign(digest, hasher=None), ""),
        ("ecdsa_verify", lambda: key.public_key.verify(compact, digest),
         lambda: raw_pub.verify(der, digest, hasher=None), "compact signature -> DER, then libsecp256k1"),
        ("schnorr_sign", lambda: key.sign_schnorr(digest), lambda: raw_priv.sign_schnorr(digest), "BIP340"),
        ("schnorr_verify", lambda: key.public_key.verify_schnorr(schnorr, digest),
         lambda: xonly.verify(schnorr, digest), "BIP340"),
        ("cert_chain_check", chain_check, chain_raw, "device -> fog -> root, signature cache cleared"),
        ("verify_tx", lambda: verifier.open(tx, check_fresh=False), lambda: dev_pub.verify(tx_der, digest, hasher=None),
         "envelope with a 128 B payload, sender judged by the PKI registry"),
        ("verify_vote", verify_vote, verify_vote_raw, "envelope + sortition claim (VRF + binomial draw)"),
        ("vrf_prove", lambda: vrf.prove(vrf_sk, alpha), raw_prove, "raw: the 3 scalar multiplications"),
        ("vrf_verify", lambda: vrf.verify(vrf_pk, proof, alpha), raw_verify, "raw: the 4 scalar multiplications"),
        ("sortition_verify", lambda: sortition.verify(vrf_pk, proof, seed, "committee", WEIGHT, TOTAL, TAU),
         raw_verify, f"w={WEIGHT} of W={TOTAL}, tau={TAU}; raw: VRF arithmetic"),
    ]
    if verify_vote() is None or verifier.metrics.total("envelope_rejected"):
        raise RuntimeError("benchmark inputs do not verify")  # only success paths are timed
    for name, mine, raw, note in pairs:
        got = interleave({"edgefl": mine, "raw": raw}, rounds=rounds, per_round=per, warmup=20)
        extra = dict(anchor=ANCHOR_VERIFY_TX_MS, goal=GOAL_VERIFY_TX) if name == "verify_tx" else {}
        row = report.add(got["edgefl"].row(name, note=note, **extra))
        raw_row = report.add(got["raw"].row(f"{name}_raw"))
        report.add(ratio_row(f"{name}_ratio", row, raw_row))
        if name == "cert_chain_check":
            lookup = interleave({"lookup": lambda: reg.key_for("dev-1", now, "device")}, rounds=rounds,
                                per_round=per, warmup=20)["lookup"]
            report.add(lookup.row("cert_lookup", note="cached chain check: what each envelope pays"))
    return report


async def run(*, quick: bool = False) -> Report:
    return run_sync(quick=quick)
