"""Normalisation, secure discrete Laplace noise on a grid, the ε accountant and its ledger records."""

import hashlib
import math
import os
import typing

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefl import codec
from edgefl.crypto.hashing import merkle_root
from edgefl.ml import privacy as P
from tests.conftest import twin_modules

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=finite),
       st.integers(2, 256))
@settings(max_examples=200, deadline=None)
def test_normalised_rows_span_exactly_the_bound(x, n):
    b = math.sqrt(n - 1)
    out = P.normalise(x, n)
    assert out.shape == x.shape and (np.abs(out) <= b).all()
    for row, src in zip(out, x.astype(np.float64)):
        if src.max() > src.min():
            assert row.min() == pytest.approx(-b) and row.max() == pytest.approx(b)
            assert (np.argsort(row, kind="stable") == np.argsort(src, kind="stable")).all() or \
                np.array_equal(np.sort(row), row[np.argsort(src, kind="stable")])  # order kept (ties aside)
        else:
            assert (row == 0).all()


def test_normalise_refuses_bad_input():
    with pytest.raises(P.PrivacyError, match="N ≥ 2"):
        P.normalise(np.zeros((1, 3)), 1)
    with pytest.raises(P.PrivacyError, match="NaN"):
        P.normalise(np.array([[0.0, np.nan]]), 64)


@pytest.mark.parametrize("scale", [0.7, 3.0, 4096.0])
def test_discrete_laplace_mean_and_variance_from_a_million_samples(scale):
    k = P.two_sided_geometric((1_000_000,), scale)
    a = math.exp(-1 / scale)
    var = 2 * a / (1 - a) ** 2
    assert abs(k.mean()) < 5 * math.sqrt(var / k.size)  # 5 sigma
    assert k.var() == pytest.approx(var, rel=0.01)
    p0 = (1 - a) / (1 + a)
    assert (k == 0).mean() == pytest.approx(p0, abs=5 * math.sqrt(p0 * (1 - p0) / k.size))
    assert abs((k > 0).mean() - (k < 0).mean()) < 0.005  # symmetric


def test_the_mechanism_has_the_laplace_scale_of_the_design():
    n, eps = 64, 2.0
    b = P.bound(n)
    noised = P.DiscreteLaplace().perturb(np.zeros((250, 4000)), bound=b, coordinates=1, epsilon=eps)
    nominal = 2 * b / eps  # 2·sqrt(N−1)/ε
    # rounding to the grid may add at most one grid step of sensitivity per bound: scale within 2^-11
    assert nominal <= noised.scale <= nominal * (1 + 2.0 ** -10)
    x = noised.values.astype(np.float64)
    assert abs(x.mean()) < 5 * math.sqrt(2) * noised.scale / math.sqrt(x.size)
    assert x.std() == pytest.approx(math.sqrt(2) * noised.scale, rel=0.01)
    assert np.abs(x).mean() == pytest.approx(noised.scale, rel=0.01)


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 30)),
                  elements=st.floats(-7.9, 7.9, allow_nan=False)),
       st.sampled_from([0.1, 1.0, 2.0, 5.0, 10.0, 1000.0]), st.sampled_from(["feature", "record"]))
@settings(max_examples=150, deadline=None)
def test_noisy_values_lie_on_the_grid_whatever_the_input(values, eps, unit):
    b = P.bound(64)
    noised = P.DiscreteLaplace().perturb(values, bound=b, coordinates=P.coordinates(unit, values.shape[1]),
                                         epsilon=eps)
    g = noised.grid
    assert math.log2(g).is_integer()
    steps = noised.values.astype(np.float64) / g
    assert np.array_equal(steps, np.round(steps))  # no float-porous low bits: only grid points come out
    assert noised.values.dtype in (np.float32, np.float64)


def test_record_unit_noise_covers_the_whole_vector():
    b = P.bound(64)
    feat = P.DiscreteLaplace().perturb(np.zeros((2, 3920)), bound=b, coordinates=1, epsilon=1.0)
    rec = P.DiscreteLaplace().perturb(np.zeros((2, 3920)), bound=b, coordinates=3920, epsilon=1.0)
    assert rec.sensitivity == pytest.approx(3920 * feat.sensitivity, rel=1e-3)
    assert rec.scale == pytest.approx(3920 * feat.scale, rel=1e-3)


def test_the_sampler_is_a_function_of_its_entropy_only():
    def source():
        stream, pos = hashlib.shake_256(b"seed").digest(1 << 16), [0]

        def read(n):
            pos[0] += n
            return stream[pos[0] - n:pos[0]]

        return read

    a = P.two_sided_geometric((500,), 10.0, randbytes=source())
    b = P.two_sided_geometric((500,), 10.0, randbytes=source())
    assert np.array_equal(a, b)
    with pytest.raises(P.PrivacyError):
        P.two_sided_geometric((3,), 0.0)
    with pytest.raises(P.PrivacyError, match="ε"):
        P.DiscreteLaplace().perturb(np.zeros((1, 2)), bound=1.0, coordinates=1, epsilon=0.0)


def test_the_sampler_as_implemented_is_epsilon_dp_up_to_a_negligible_delta():
    s, steps = 300.0, 600  # scale and sensitivity in grid steps: ε = 2
    pmf = P.sampler_pmf(s)
    k = np.arange(len(pmf)) - len(pmf) // 2
    assert len(pmf) % 2 and np.array_equal(pmf, pmf[::-1]) and pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert k[-1] == math.floor(64 * math.log(2) * s)  # the tail ends where U = 2^-64
    ideal = np.exp(-np.abs(k) / s)
    ideal /= ideal.sum()
    assert np.abs(pmf / ideal - 1)[np.abs(k) <= 20 * s].max() < 1e-7
    assert P.sampler_delta(pmf, steps, steps / s) < 1e-13
    assert P.sampler_delta(pmf, steps, 0.9 * steps / s) > 0.05  # at a smaller ε the same noise is not enough
    draws = P.two_sided_geometric((200_000,), s)  # and the sampler draws from these probabilities
    assert abs(draws.var() / (pmf * k.astype(float) ** 2).sum() - 1) < 0.02


def test_chacha20_words_are_the_rfc8439_keystream_under_a_fresh_os_key(monkeypatch):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    key = bytes(range(32))
    monkeypatch.setattr(os, "urandom", lambda n: key[:n])
    for n in (0, 1, 63, 64, 65, 100_000):
        expected = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(n))
        assert bytes(P.chacha20_bytes(n)) == expected
    # RFC 8439 appendix A.1, test vector 1: all-zero key and nonce, counter 0
    monkeypatch.setattr(os, "urandom", lambda n: bytes(n))
    assert bytes(P.chacha20_bytes(16)).hex() == "76b8e0ada0f13d90405d6ae55386bd28"


def test_entropy_sources_by_name():
    a, b = P.chacha20_bytes(4096), P.chacha20_bytes(4096)
    assert len(a) == 4096 and a != b  # a fresh key per call
    assert P.DiscreteLaplace("urandom").randbytes is os.urandom
    assert P.DiscreteLaplace().randbytes is P.chacha20_bytes
    with pytest.raises(P.PrivacyError, match="unknown noise source"):
        P.DiscreteLaplace("mersenne")
    from edgefl.runtime.config import MlSection
    assert set(typing.get_args(typing.get_type_hints(MlSection)["noise_source"])) == set(P.SOURCES)
    ml = MlSection(noise_source="urandom")
    assert P.mechanism(ml.noise, randbytes=ml.noise_source).randbytes is os.urandom
    k = P.two_sided_geometric((200_000,), 5.0, randbytes="urandom")
    a5 = math.exp(-1 / 5.0)
    assert k.var() == pytest.approx(2 * a5 / (1 - a5) ** 2, rel=0.02)
    with pytest.raises(P.PrivacyError, match="scale"):
        P.two_sided_geometric((3,), 2.0 ** 41)


# --------------------------------------------------------------------------- compiled kernel and twin

words_st = st.binary(min_size=0, max_size=8 * 300).map(lambda b: b[:len(b) // 8 * 8])


@given(words_st, st.floats(1e-3, 2.0 ** 40))
@settings(max_examples=200, deadline=None)
def test_noise_twins_draw_identical_integers(raw, scale):
    words = np.frombuffer(raw, "<u8").astype(np.uint64)
    words[:len(words) // 4] |= np.uint64(2**64 - 2)  # the extremes: U rounds to 1 (ln U = 0) ...
    words[len(words) // 4:len(words) // 3] &= np.uint64(1)  # ... and U = 2^-64, the largest draw
    draws = {name: m.two_sided(words, scale) for name, m in twin_modules("noise").items()}
    k, redo = draws["pure"]
    for other, other_redo in draws.values():
        assert other.dtype == np.int64 and np.array_equal(other, k) and np.array_equal(other_redo, redo)
    assert ((words[redo] & np.uint64(1)) == 1).all() and (k[redo] == 0).all()


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), st.tuples(st.integers(0, 5), st.integers(1, 50)),
                  elements=finite | st.sampled_from([0.0, 1.0])),
       st.floats(0.5, 64.0))
@settings(max_examples=200, deadline=None)
def test_normalise_twins_agree_bit_for_bit(x, b):
    outs = [m.normalise(x, b) for m in twin_modules("noise").values()]
    assert all(o.dtype == np.float64 and o.tobytes() == outs[0].tobytes() for o in outs)


@given(hnp.arrays(np.float64, st.integers(0, 200),
                  elements=st.floats(allow_nan=False) | st.floats(-40, 40) | st.sampled_from([0.5, -2.5, 1.5])),
       st.integers(-12, 0), st.integers(0, 9000), st.sampled_from([np.float32, np.float64]), st.data())
@settings(max_examples=200, deadline=None)
def test_on_grid_twins_agree_bit_for_bit(values, log_grid, limit, dtype, data):
    k = np.array(data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=len(values), max_size=len(values))),
                 np.int64)
    outs = []
    for m in twin_modules("noise").values():
        out = np.empty(len(values), dtype)
        m.on_grid(values, k, 2.0 ** log_grid, limit, out)
        outs.append(out)
    assert all(o.tobytes() == outs[0].tobytes() for o in outs)
    if values.size:
        values[0] = np.nan
        for m in twin_modules("noise").values():
            with pytest.raises(ValueError, match="NaN"):
                m.on_grid(values, k, 2.0 ** log_grid, limit, np.empty(len(values), dtype))


def _charge(acct, items, eps=1.0, rnd=0):
    return acct.charge(items, eps, task="t", round=rnd, mechanism="discrete_laplace", sensitivity=1.0, scale=1.0,
                       grid=2.0 ** -12)


def test_accountant_refuses_past_the_budget_all_or_nothing():
    acct = P.PrivacyAccountant(2.5, device="d1")
    _charge(acct, [1, 2, 3])
    _charge(acct, [1, 2])
    assert acct.spent(1) == 2.0 and acct.spent(3) == 1.0
    with pytest.raises(P.BudgetExceeded, match="1 item") as err:
        _charge(acct, [3, 1])  # item 1 would reach 3.0 > 2.5
    assert err.value.items == [1]
    assert acct.spent(3) == 1.0  # nothing was charged
    _charge(acct, [3], eps=1.5)  # exactly the budget is allowed
    assert acct.remaining(3) == 0.0
    assert acct.admissible([1, 2, 3, 4], 0.5).tolist() == [True, True, False, True]
    tenth = P.PrivacyAccountant(0.3, device="d2")
    for _ in range(3):
        _charge(tenth, [9], eps=0.1)  # 0.1 + 0.1 + 0.1 > 0.3 in floating point, still within budget
    with pytest.raises(P.PrivacyError, match="twice"):
        _charge(acct, [5, 5])


def test_spending_is_recorded_before_release_and_a_failed_record_charges_nothing():
    records = []
    acct = P.PrivacyAccountant(10, device="dev-7", recorder=records.append)
    spend = _charge(acct, [4, 8, 15], eps=2.0, rnd=3)
    assert records == [spend]
    assert (spend.device, spend.round, spend.items, spend.epsilon, spend.max_spent) == ("dev-7", 3, 3, 2.0, 2.0)
    assert spend.items_root == merkle_root([i.to_bytes(8, "big") for i in (4, 8, 15)])
    wire = codec.decode(codec.encode_message(spend), canonical=True)
    assert P.PrivacySpend.from_wire(wire) == spend

    def down(_spend):
        raise ConnectionError("ledger unreachable")

    acct.recorder = down
    with pytest.raises(ConnectionError):
        _charge(acct, [4])
    assert acct.spent(4) == 2.0


def test_spent_budget_survives_a_restart_and_a_corrupt_file_refuses_to_start(tmp_path):
    path = tmp_path / "privacy.cbor"
    acct = P.PrivacyAccountant(3, device="d", path=path)
    _charge(acct, [1, 2], eps=2.0)
    again = P.PrivacyAccountant(3, device="d", path=path)
    assert again.spent(1) == 2.0
    with pytest.raises(P.BudgetExceeded):
        _charge(again, [2], eps=2.0)
    with pytest.raises(P.PrivacyError, match="belongs to"):
        P.PrivacyAccountant(3, device="other", path=path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(P.PrivacyError, match="cannot read the privacy ledger"):
        P.PrivacyAccountant(3, device="d", path=path)


def test_a_crash_while_saving_the_privacy_ledger_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "privacy.cbor"
    _charge(P.PrivacyAccountant(3, device="d", path=path), [1], eps=1.0)
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError, match="power cut"):
        _charge(P.PrivacyAccountant(3, device="d", path=path), [1, 2], eps=1.0)
    monkeypatch.undo()
    again = P.PrivacyAccountant(3, device="d", path=path)
    assert (again.spent(1), again.spent(2)) == (1.0, 0.0)


def test_a_device_stops_sharing_an_item_once_its_budget_is_spent():
    acct = P.PrivacyAccountant(2.0, device="d")
    priv = P.Privatiser(P.DiscreteLaplace(), epsilon=1.0, batch_size=64, accountant=acct)
    feats = np.random.default_rng(0).random((4, 3920)).astype(np.float32)
    first = priv.release([0, 1, 2, 3], feats, task="t", round=0)
    assert first.ids.tolist() == [0, 1, 2, 3] and first.values.shape == (4, 3920)
    assert priv.release([0, 1], feats[:2], task="t", round=1).spend.max_spent == 2.0
    third = priv.release([0, 1, 2, 3], feats, task="t", round=2)
    assert third.ids.tolist() == [2, 3] and third.withheld.tolist() == [0, 1]
    assert third.values.shape == (2, 3920)
    assert priv.release([0, 1], feats[:2], task="t", round=3).ids.size == 0
    with pytest.raises(P.PrivacyError, match="accountant counts"):
        P.Privatiser(P.DiscreteLaplace(), epsilon=1.0, batch_size=64, unit="record", accountant=acct)
