"""ECDSA and BIP340 Schnorr through edgefl.crypto.keys: the BIP340 vectors and tamper properties."""

import csv
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.crypto.keys import SigningKey, VerifyingKey

VECTORS = list(csv.DictReader((Path(__file__).parent / "vectors" / "bip340_test_vectors.csv").open()))


@pytest.mark.parametrize("v", VECTORS, ids=[v["index"] for v in VECTORS])
def test_bip340_vectors(v):
    msg, sig = bytes.fromhex(v["message"]), bytes.fromhex(v["signature"])
    expected = v["verification result"] == "TRUE"
    if v["secret key"]:
        key = SigningKey(bytes.fromhex(v["secret key"]))
        assert key.public_key.raw[1:].hex().upper() == v["public key"]
        assert key.sign_schnorr(msg, aux=bytes.fromhex(v["aux_rand"])) == sig
    try:
        pub = VerifyingKey(b"\x02" + bytes.fromhex(v["public key"]))  # x-only: either parity verifies
    except ValueError:
        assert not expected  # "public key not on the curve" and friends
        return
    assert pub.verify_schnorr(sig, msg) is expected


KEY = SigningKey()


@given(st.binary(min_size=32, max_size=32), st.integers(0, 63), st.integers(0, 7))
@settings(max_examples=200, deadline=None)
def test_any_flipped_bit_fails(digest, pos, bit):
    for sign, verify in ((KEY.sign, KEY.public_key.verify), (KEY.sign_schnorr, KEY.public_key.verify_schnorr)):
        sig = sign(digest)
        assert verify(sig, digest)
        bad = bytearray(sig)
        bad[pos] ^= 1 << bit
        assert not verify(bytes(bad), digest)
        other = bytearray(digest)
        other[pos % 32] ^= 1 << bit
        assert not verify(sig, bytes(other))
        assert not SigningKey().public_key.verify(sig, digest)


def test_schnorr_rejects_bad_shapes():
    sig = KEY.sign_schnorr(b"\x01" * 32)
    assert not KEY.public_key.verify_schnorr(sig[:63], b"\x01" * 32)
    assert not KEY.public_key.verify_schnorr(sig, b"\x01" * 31)
    with pytest.raises(ValueError):
        KEY.sign_schnorr(b"short")
