"""RSA accumulator core: parameters, hash-to-prime, update, witnesses, membership, RootFactor, encoding."""

import hashlib

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.crypto import accumulator as acc
from edgefl.crypto.accumulator import primes

N = acc.RSA2048_N
HALF = (N - 1) // 2


def test_rsa2048_constant_integrity():
    digits = str(N)
    # Published figures of the RSA-2048 challenge number: 617 digits, digit sum 2738, 2048 bits.
    assert len(digits) == 617 and sum(map(int, digits)) == 2738 and N.bit_length() == 2048
    assert digits.startswith("25195908475657893494027183240048398571429282126204")
    assert digits.endswith("122822120720357")
    assert hashlib.sha256(digits.encode()).hexdigest() == \
        "b3c2468add10e2a0c4a251d9d2bac4ba04d4b3527156ceead43a1305e03f1fc0"
    assert acc.ELEMENT_BYTES == 256
    assert N % 2 == 1 and gmpy2.gcd(N, gmpy2.primorial(100000)) == 1  # no small factor
    assert not gmpy2.is_prime(N)  # a composite modulus (Fermat base 3 says so)


def test_generator_is_hash_derived_quadratic_residue():
    h = int.from_bytes(hashlib.shake_256(b"edgefl/accumulator/generator/v1" + N.to_bytes(256, "big"))
                       .digest(272), "big") % N
    y = pow(h, 2, N)
    assert acc.GENERATOR == min(y, N - y)
    assert 2 <= acc.GENERATOR <= HALF
    assert gmpy2.jacobi(acc.GENERATOR, N) == 1


def _reference_hash_to_prime(data: bytes) -> int:
    """The documented definition, written out independently, with a stronger primality test."""
    counter = 0
    while True:
        c = int.from_bytes(hashlib.sha256(data + counter.to_bytes(4, "big")).digest(), "big") | (1 << 255) | 1
        if gmpy2.is_prime(c, 40):
            return c
        counter += 1


@given(st.binary(max_size=300))
@settings(max_examples=40, deadline=None)
def test_hash_to_prime_matches_its_definition(data):
    x = acc.hash_to_prime(data)
    assert x == _reference_hash_to_prime(data)
    assert x.bit_length() == 256 and gmpy2.is_prime(x, 40) and type(x) is int
    assert acc.hash_to_prime(data) == x  # cached path gives the same


def test_hash_to_prime_cache_and_input_types():
    primes._cache.clear()
    x = acc.hash_to_prime(b"block")
    assert primes._cache.get(hashlib.sha256(b"block").digest()) == x
    assert acc.hash_to_prime(bytearray(b"block")) == x == acc.hash_to_prime(memoryview(b"block"))
    with pytest.raises(acc.InvalidInput, match="data"):
        acc.hash_to_prime("block")


def test_representative_encodes_the_index_as_8_bytes():
    assert acc.representative(b"blk", 5) == acc.hash_to_prime(b"blk" + (5).to_bytes(8, "big"))
    assert acc.representative(b"blk", 5) != acc.representative(b"blk", 6)
    assert acc.representative(b"blk", 2**64 - 1) == acc.hash_to_prime(b"blk" + b"\xff" * 8)
    for bad in (-1, 2**64, 1.0, "3", None, True):
        with pytest.raises(acc.InvalidInput, match="index"):
            acc.representative(b"blk", bad)
    assert primes.is_representative(acc.representative(b"blk", 0))
    assert not primes.is_representative(acc.representative(b"blk", 0) + 2)


def _chain(blocks):
    a = acc.Accumulator()
    for b in blocks:
        a.add(b)
    return a


blocks_st = st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=6, unique=True)


@given(blocks_st, st.data())
@settings(max_examples=15, deadline=None)
def test_random_chain_membership(blocks, data):
    a = _chain(blocks)
    n = len(blocks)
    # v_i = v_{i-1}^{x_i}, v_n = g^{prod x}
    assert a.values[0] == acc.GENERATOR and a.value == acc.accumulate(a.elements)
    for i in range(n):
        assert a.values[i + 1] == acc.update(a.values[i], a.elements[i])
    ws = acc.root_factor(a.elements)
    assert ws == acc.root_factor_naive(a.elements)
    for i, blk in enumerate(blocks):
        w = acc.witness(a.elements, i)
        assert w == ws[i]
        assert acc.verify_membership(w, a.elements[i], a.value)
        assert acc.verify_block(blk, i, w, a.value)
        assert not acc.verify_block(blk + b"!", i, w, a.value)            # altered block
        assert not acc.verify_block(blk, (i + 1) % (n + 1), w, a.value)    # wrong position
        assert not acc.verify_membership(N - w, a.elements[i], a.value)     # -w: not canonical
        assert not acc.verify_membership(w, a.elements[i], N - a.value)
        assert not acc.verify_membership(w, a.elements[i], a.values[i])     # an older accumulator
    outsider = data.draw(st.binary(min_size=1, max_size=24).filter(lambda b: b not in blocks))
    x_out = acc.representative(outsider, 0)
    assert not any(acc.verify_membership(w, x_out, a.value) for w in ws)   # non-member
    assert not acc.verify_block(outsider, 0, acc.GENERATOR, a.value)


def test_witness_update_on_append():
    a = _chain([b"a", b"b", b"c"])
    ws = a.witnesses()
    before = a.value
    a.add(b"d")
    a.add(b"e")
    new = a.elements[3:]
    for i in range(3):
        w2 = acc.update_witness(ws[i], new)
        assert not acc.verify_membership(ws[i], a.elements[i], a.value)
        assert acc.verify_membership(w2, a.elements[i], a.value)
        assert w2 == acc.witness(a.elements, i)
    assert acc.verify_membership(acc.update_witness(before, new[1:]), new[0], a.value)  # new block's witness
    assert acc.update_witness(ws[0], []) == ws[0]


def test_root_factor_of_one_and_none():
    x = acc.representative(b"only", 0)
    assert acc.root_factor([x]) == [acc.GENERATOR]
    assert acc.root_factor([]) == []


def test_encoding_round_trip_and_rejections():
    g = acc.GENERATOR
    b = acc.to_bytes(g)
    assert len(b) == 256 and acc.from_bytes(b) == g
    assert acc.from_bytes(acc.to_bytes(HALF)) == HALF
    assert acc.from_bytes((2).to_bytes(256, "big")) == 2
    for bad in (0, 1, N, N - 1, HALF + 1, -5, N + 7, 1 << 2048):
        with pytest.raises(acc.InvalidElement):
            acc.to_bytes(bad)
        if 0 <= bad < 1 << 2048:
            with pytest.raises(acc.InvalidElement):
                acc.from_bytes(bad.to_bytes(256, "big"))
    for bad in (b"", b"\x01" * 255, b"\x01" * 257, bytes(300)):
        with pytest.raises(acc.EncodingError, match="bytes"):
            acc.from_bytes(bad)
    with pytest.raises(acc.EncodingError):
        acc.from_bytes("00" * 256)
    with pytest.raises(acc.InvalidElement):
        acc.to_bytes("5")
    assert issubclass(acc.AccumulatorError, ValueError)


@pytest.mark.parametrize("v", [0, 1, N, N - 1, -3, 1 << 4096, HALF + 1, 2.0, "7", None])
def test_malformed_values_are_rejected_with_typed_errors(v):
    x = acc.representative(b"blk", 0)
    with pytest.raises(acc.InvalidElement, match="v"):
        acc.update(v, x)
    with pytest.raises(acc.InvalidElement):
        acc.update_witness(v, [x])
    assert acc.verify_membership(v, x, acc.GENERATOR) is False
    assert acc.verify_membership(acc.GENERATOR, x, v) is False


@pytest.mark.parametrize("x", [0, 1, -7, 2.5, "11", None, True])
def test_malformed_exponents_are_rejected_with_typed_errors(x):
    with pytest.raises(acc.InvalidExponent, match="x"):
        acc.update(acc.GENERATOR, x)
    with pytest.raises(acc.InvalidExponent):
        acc.witness([x, 3], 1)
    with pytest.raises(acc.InvalidExponent):
        acc.root_factor([3, x])
    assert acc.verify_membership(acc.GENERATOR, x, acc.GENERATOR) is False


def test_oversize_and_misshapen_arguments():
    with pytest.raises(acc.InvalidExponent, match="bits"):
        acc.witness([1 << 300, 3], 0)
    with pytest.raises(acc.InvalidInput):
        acc.witness([3, 5], 2)
    with pytest.raises(acc.InvalidInput):
        acc.witness(b"\x03\x05", 0)
    assert acc.verify_membership(acc.GENERATOR, 1 << 300, acc.GENERATOR) is False
    assert acc.verify_block("not bytes", 0, acc.GENERATOR, acc.GENERATOR) is False


@given(st.one_of(st.integers(), st.none(), st.binary(max_size=8), st.floats(), st.text(max_size=4)),
       st.one_of(st.integers(), st.none(), st.floats()),
       st.one_of(st.integers(), st.none(), st.text(max_size=4)))
@settings(max_examples=200, deadline=None)
def test_verify_membership_never_raises(w, x, v):
    assert acc.verify_membership(w, x, v) in (True, False)


def test_other_moduli_through_group():
    p, q = gmpy2.next_prime(1 << 200), gmpy2.next_prime(3 << 199)
    grp = acc.Group(int(p * q))
    x = acc.representative(b"blk", 0)
    v = acc.update(grp.generator, x, group=grp)
    assert acc.verify_membership(grp.generator, x, v, group=grp)
    assert not acc.verify_membership(grp.generator, x, v)  # different group
    assert len(grp.to_bytes(v)) == grp.element_bytes == 51
    with pytest.raises(acc.AccumulatorError):
        acc.Group(100)
