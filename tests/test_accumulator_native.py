"""ext/accumulator.pyx and its pure-Python twin: same products, same errors, both equal to plain pow()."""

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.crypto.accumulator import RSA2048_N
from tests.conftest import load_twin, twin_modules

moduli = st.sampled_from([RSA2048_N, 1000003 * 1000033, 2**127 - 1, 2**521 - 1, 15, 3])


def reference(bases, exps, n):
    out = 1
    for b, e in zip(bases, exps):
        out = out * pow(b, e, n) % n
    return out


@given(moduli, st.data())
@settings(max_examples=120, deadline=None)
def test_multi_exp_twins_agree_with_pow(n, data):
    t = data.draw(st.integers(0, 12))
    bases = data.draw(st.lists(st.integers(0, 3 * n), min_size=t, max_size=t))
    exps = data.draw(st.lists(st.one_of(st.integers(0, 3), st.integers(0, 2**400)), min_size=t, max_size=t))
    want = reference(bases, exps, n)
    for name, m in twin_modules("accumulator").items():
        assert m.multi_exp(bases, exps, n) == want, name
        assert m.multi_exp_joint(bases, exps, n, data.draw(st.integers(1, 9))) == want, name
        assert type(m.multi_exp(bases, exps, n)) is int


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_negative_exponents_use_inverses(data):
    n = RSA2048_N
    t = data.draw(st.integers(1, 6))
    bases = data.draw(st.lists(st.integers(2, n - 1), min_size=t, max_size=t))
    exps = data.draw(st.lists(st.integers(-2**300, 2**300), min_size=t, max_size=t))
    want = reference(bases, exps, n)  # Python's pow() inverts for negative exponents
    results = {name: m.multi_exp(bases, exps, n) for name, m in twin_modules("accumulator").items()}
    assert set(results.values()) == {want}


def test_mpz_inputs_and_large_batches(impl_name):
    m = load_twin("accumulator", impl_name)
    n = RSA2048_N
    bases = [gmpy2.mpz(3 + i) ** 50 for i in range(70)]
    exps = [gmpy2.mpz(2**256 - 189 * i) for i in range(70)]
    want = reference([int(b) for b in bases], [int(e) for e in exps], n)
    assert m.multi_exp(bases, exps, n) == want
    assert m.multi_exp_joint(bases, exps, n) == want


def test_errors(impl_name):
    m = load_twin("accumulator", impl_name)
    with pytest.raises(ValueError, match="exponents"):
        m.multi_exp([2, 3], [1], 35)
    for bad in (1, 2, 0, -35, 36):
        with pytest.raises(ValueError, match="modulus"):
            m.multi_exp([2], [1], bad)
        with pytest.raises(ValueError, match="modulus"):
            m.multi_exp_joint([2], [1], bad)
    with pytest.raises(ValueError, match="base 1 is not invertible"):
        m.multi_exp([2, 7], [1, -1], 35)
    with pytest.raises(ValueError, match="non-negative"):
        m.multi_exp_joint([2], [-1], 35)
    with pytest.raises(ValueError, match="group"):
        m.multi_exp_joint([2], [1], 35, 0)
    assert m.multi_exp([], [], 35) == 1
    assert m.multi_exp([0], [5], 35) == 0


def test_window_widths_agree():
    mods = twin_modules("accumulator")
    for bits in (0, 1, 8, 64, 128, 256, 384, 1024, 4096, 1 << 20):
        assert len({m.window(bits) for m in mods.values()}) == 1
