"""Sortition: the exact binomial draw against an independent reference, its statistics, and verification."""

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.consensus import sortition
from edgefl.consensus.sortition import Selection, draw, leader, sub_users, verify
from edgefl.crypto import vrf

TWO256 = 1 << 256


def cdf(k, w, p):
    """Reference: P[Binomial(w, p) <= k], term by term with math.comb and Fractions."""
    return sum(Fraction(math.comb(w, i)) * p ** i * (1 - p) ** (w - i) for i in range(k + 1))


def reference_j(beta_int, w, p):
    x = Fraction(beta_int, TWO256)
    return next(k for k in range(w + 1) if x < cdf(k, w, p))


@given(st.integers(0, TWO256 - 1), st.integers(0, 40), st.integers(1, 500), st.integers(1, 50), st.integers(1, 4))
@settings(max_examples=300, deadline=None)
def test_matches_the_reference(beta_int, w, total, tau_num, tau_den):
    tau = Fraction(tau_num, tau_den)
    total = max(total, w, math.ceil(tau))
    p = tau / total
    assert sub_users(beta_int.to_bytes(32, "big"), w, total, tau) == reference_j(beta_int, w, p)


@pytest.mark.parametrize("w, total, tau", [(5, 20, 3), (12, 100, 10), (1, 2, 1), (30, 31, 29)])
def test_interval_boundaries_are_exact(w, total, tau):
    """beta just below CDF(k) * 2^256 gives k; at the boundary it gives k + 1."""
    p = Fraction(tau, total)
    for k in range(w):
        edge = math.ceil(cdf(k, w, p) * TWO256)  # the least beta with beta / 2^256 >= CDF(k)
        assert edge < TWO256
        below, at = (sub_users(b.to_bytes(32, "big"), w, total, tau) for b in (edge - 1, edge))
        assert below <= k < at and at == reference_j(edge, w, p) and below == reference_j(edge - 1, w, p)


def test_extremes():
    assert sub_users(b"\x00" * 32, 10, 100, 5) == 0
    assert sub_users(b"\xff" * 32, 10, 100, 5) == 10  # 1 - 2^-256 is above CDF(9) = 1 - 0.05^10
    assert sub_users(b"\x00" * 32, 0, 100, 5) == 0
    assert sub_users(b"\x42" * 32, 7, 7, 7) == 7  # p = 1: every unit is selected
    with pytest.raises(TypeError):
        sub_users(b"\x00" * 32, 1, 10, 0.5)  # floats would make the draw depend on rounding
    for bad in [dict(weight=11), dict(weight=-1), dict(weight=sortition.MAX_WEIGHT + 1), dict(tau=11),
                dict(tau=0), dict(total=0), dict(beta=b"\x00")]:
        args = dict(beta=b"\x00" * 32, weight=1, total=10, tau=5) | bad
        with pytest.raises(ValueError):
            sub_users(**args)


WEIGHTS = [1, 2, 3, 5, 8, 13, 20, 48]  # W = 100
TAU = 10
DRAWS = 10_000


def test_mean_committee_size_and_weight_proportionality():
    """10,000 draws: mean selected sub-users within 3 standard errors of tau, and of w*p per node."""
    rng = random.Random(20240601)
    total = sum(WEIGHTS)
    p = Fraction(TAU, total)
    per_node = [0] * len(WEIGHTS)
    sizes = []
    for _ in range(DRAWS):
        size = 0
        for i, w in enumerate(WEIGHTS):
            j = sub_users(rng.getrandbits(256).to_bytes(32, "big"), w, total, TAU)
            per_node[i] += j
            size += j
        sizes.append(size)
    mean = sum(sizes) / DRAWS
    se = math.sqrt(TAU * (1 - p) / DRAWS)  # Var(sum of Binomial(w_i, p)) = W p (1 - p)
    assert abs(mean - TAU) < 3 * se, (mean, se)
    variance = sum((s - mean) ** 2 for s in sizes) / (DRAWS - 1)
    assert abs(variance - TAU * (1 - p)) < 0.1 * TAU  # the spread is binomial too, not just the mean
    for w, got in zip(WEIGHTS, per_node):
        expected = w * p
        se_node = math.sqrt(w * p * (1 - p) / DRAWS)
        assert abs(got / DRAWS - expected) < 3 * se_node, (w, got / DRAWS, float(expected))


def test_real_vrf_draws_verify_and_agree():
    rng = random.Random(7)
    seed = bytes(rng.getrandbits(8) for _ in range(32))
    keys = [rng.getrandbits(255).to_bytes(32, "big") for _ in WEIGHTS]
    total = sum(WEIGHTS)
    picks = []
    for i, (sk, w) in enumerate(zip(keys, WEIGHTS)):
        mine = draw(sk, seed, "committee", w, total, TAU, member=f"n{i}")
        theirs = verify(vrf.public_key(sk), mine.proof, seed, "committee", w, total, TAU, member=f"n{i}")
        assert theirs == mine
        assert verify(vrf.public_key(sk), mine.proof, seed, "leader", w, total, TAU) is None  # another role
        assert verify(vrf.public_key(sk), mine.proof, seed[::-1], "committee", w, total, TAU) is None
        assert verify(vrf.public_key(keys[i - 1]), mine.proof, seed, "committee", w, total, TAU) is None
        bad = bytearray(mine.proof)
        bad[40] ^= 1
        assert verify(vrf.public_key(sk), bytes(bad), seed, "committee", w, total, TAU) is None
        picks.append(mine)
    best = leader(picks)
    assert best is not None and best.j == max(p.j for p in picks)
    assert best.beta == max(p.beta for p in picks if p.j == best.j)


def test_leader_prefers_priority_then_beta():
    a = Selection(2, b"\x01" * 32, "a")
    b = Selection(3, b"\x00" * 32, "b")
    c = Selection(3, b"\x02" * 32, "c")
    assert leader([a, b, c]).member == "c"
    assert leader([Selection(0, b"\xff" * 32, "idle")]) is None
