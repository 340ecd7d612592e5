"""ECVRF-SECP256K1-SHA256-TAI: the published vectors byte for byte, uniqueness properties, malformed proofs."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.crypto import vrf

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ecvrf_secp256k1_sha256_tai.json").read_text())
N = vrf.N


def h(s):
    return bytes.fromhex(s)


@pytest.mark.parametrize("v", VECTORS, ids=[f"sk={v['sk'][:12]}" for v in VECTORS])
def test_vectors(v):
    sk, pk, alpha, pi, beta = (h(v[k]) for k in ("sk", "pk", "alpha", "pi", "beta"))
    assert vrf.public_key(sk) == pk
    assert vrf.prove(sk, alpha) == pi
    assert vrf.verify(pk, pi, alpha) == beta
    assert vrf.proof_to_hash(pi) == beta


def test_vectors_cover_the_edges():
    """The set includes keys near the group order, so reductions mod n are exercised."""
    assert len(VECTORS) == 46
    assert any(int(v["sk"], 16) == N - 1 for v in VECTORS) and any(int(v["sk"], 16) == 1 for v in VECTORS)


secret = st.integers(1, N - 1).map(lambda x: x.to_bytes(32, "big"))


@given(secret, st.binary(max_size=64), st.binary(max_size=64))
@settings(max_examples=40, deadline=None)
def test_only_the_right_key_and_input_verify(sk, alpha, other):
    pk = vrf.public_key(sk)
    pi = vrf.prove(sk, alpha)
    assert len(pi) == vrf.PROOF_SIZE
    assert vrf.prove(sk, alpha) == pi  # deterministic: one proof, one output per (key, input)
    beta = vrf.verify(pk, pi, alpha)
    assert beta == vrf.proof_to_hash(pi) and len(beta) == 32
    if other != alpha:
        assert vrf.verify(pk, pi, other) is None
        assert vrf.proof_to_hash(vrf.prove(sk, other)) != beta
    wrong_pk = vrf.public_key(((int.from_bytes(sk, "big") % (N - 1)) + 1).to_bytes(32, "big"))
    assert vrf.verify(wrong_pk, pi, alpha) is None


V0 = VECTORS[0]
PK, PI, ALPHA = h(V0["pk"]), h(V0["pi"]), h(V0["alpha"])


@given(st.integers(0, vrf.PROOF_SIZE - 1), st.integers(0, 7))
@settings(max_examples=300, deadline=None)
def test_any_flipped_bit_in_the_proof_fails(pos, bit):
    bad = bytearray(PI)
    bad[pos] ^= 1 << bit
    assert vrf.verify(PK, bytes(bad), ALPHA) is None


def _proof(gamma=PI[:33], c=PI[33:49], s=PI[49:]):
    return gamma + c + s


NOT_ON_CURVE = b"\x02" + (5).to_bytes(32, "big")  # x = 5: x^3 + 7 = 132 is not a square mod p


@pytest.mark.parametrize("pi, field", [
    (b"", "pi"), (PI[:80], "pi"), (PI + b"\x00", "pi"),
    (_proof(gamma=b"\x04" + PI[1:33]), "pi.gamma"),
    (_proof(gamma=NOT_ON_CURVE), "pi.gamma"),
    (_proof(gamma=b"\x02" + b"\xff" * 32), "pi.gamma"),  # x >= p
    (_proof(s=N.to_bytes(32, "big")), "pi.s"),
    (_proof(s=b"\xff" * 32), "pi.s"),
])
def test_malformed_proofs_are_refused_with_the_field(pi, field):
    assert vrf.verify(PK, pi, ALPHA) is None
    with pytest.raises(vrf.VrfProofError) as exc:
        vrf.proof_to_hash(pi)
    assert exc.value.field == field


@pytest.mark.parametrize("pi", [
    _proof(c=b"\x00" * 16), _proof(s=b"\x00" * 32), _proof(c=b"\x00" * 16, s=b"\x00" * 32),
    _proof(s=(N - 1).to_bytes(32, "big")),
])
def test_degenerate_scalars_fail_without_raising(pi):
    assert vrf.verify(PK, pi, ALPHA) is None


@given(st.binary(max_size=100), st.binary(max_size=40))
@settings(max_examples=200, deadline=None)
def test_garbage_never_raises(pi, pk):
    assert vrf.verify(pk, pi, ALPHA) is None or (pk == PK and pi == PI)


def test_bad_arguments():
    assert vrf.verify("not bytes", PI, ALPHA) is None
    assert vrf.verify(PK, None, ALPHA) is None
    assert vrf.verify(PK[:-1], PI, ALPHA) is None
    for sk in (b"", b"\x00" * 32, N.to_bytes(32, "big"), b"\x01" * 33):
        with pytest.raises(ValueError):
            vrf.prove(sk, ALPHA)
