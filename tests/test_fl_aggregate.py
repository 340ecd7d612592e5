"""The aggregators: hand-computed cases, their n/f conditions, properties, and bit-for-bit replay of a record.

Every expected value below is worked out by hand in the comments beside it
(small 1-D and 2-D updates), not by calling the code under test.
"""

import dataclasses
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.codec import SchemaError
from edgefl.fl.aggregate import (
    AGGREGATORS,
    AggregationError,
    Update,
    describe,
    from_spec,
    make,
    options_text,
    parse_options,
)
from edgefl.fl.protocol import Aggregation, AggregatorSpec
from edgefl.fl.round import Contribution, check_aggregation, record_aggregation
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.errors import LedgerError
from edgefl.ml import trainer as T
from edgefl.runtime.config import load_config


def ups(*rows, weights=None):
    """Updates of one float32 parameter array each (a row)."""
    weights = weights or [1.0] * len(rows)
    return [Update([np.array(r, np.float32)], w, f"d{i}") for i, (r, w) in enumerate(zip(rows, weights))]


def run(name, updates, **kw):
    origin = kw.pop("origin", None)
    reference = kw.pop("reference", None)
    return make(name, **kw).aggregate(updates, origin=origin, reference=reference)


# --------------------------------------------------------------------------- hand-computed cases


def test_fedavg_weighted_mean():
    r = run("fedavg", ups([1.0], [3.0], weights=[1, 3]))  # (1·1 + 3·3)/4 = 2.5
    assert r.params[0].tolist() == [2.5] and r.kept == [0, 1] and r.weights == [0.25, 0.75]


def test_krum_and_multikrum_by_hand():
    # 0, 1, 2, 3, 100 with f = 1: each scores its n − f − 2 = 2 nearest squared distances:
    # 0: 1 + 4 = 5; 1: 1 + 1 = 2; 2: 1 + 1 = 2; 3: 1 + 4 = 5; 100: 97² + 98² = 19013
    u = ups([0.0], [1.0], [2.0], [3.0], [100.0])
    k = run("krum", u, f=1)
    assert k.params[0].tolist() == [1.0] and k.kept == [1] and k.weights == [0, 1, 0, 0, 0]  # tie 1/2: lower index
    # m = 3: indices 1, 2 (score 2), then 0 (score 5, tie with 3: lower index) — weighted by examples
    u = ups([0.0], [1.0], [2.0], [3.0], [100.0], weights=[1, 1, 2, 1, 1])
    m = run("multikrum", u, f=1, m=3)
    assert m.kept == [0, 1, 2] and m.weights == [0.25, 0.25, 0.5, 0, 0]
    assert m.params[0].tolist() == [1.25]  # (0 + 1 + 2·2)/4
    assert run("multikrum", u, f=1).kept == [0, 1, 2, 3]  # m = n − f drops the outlier


def test_trimmed_mean_and_median_by_hand():
    # coordinate 0: 1 2 3 100 4 → drop 1 (d0) and 100 (d3) → (2 + 3 + 4)/3 = 3 from d1, d2, d4
    # coordinate 1: 10 20 30 −5 40 → drop −5 (d3) and 40 (d4) → 20 from d0, d1, d2
    u = ups([1, 10], [2, 20], [3, 30], [100, -5], [4, 40])
    r = run("trimmedmean", u, f=1)
    assert r.params[0].tolist() == [3.0, 20.0]
    assert r.kept == [0, 1, 2, 4] and r.weights == [1 / 6, 2 / 6, 2 / 6, 0, 1 / 6]
    assert run("trimmedmean", u, beta=0.2).params[0].tolist() == [3.0, 20.0]  # ⌊0.2 · 5⌋ = 1
    assert run("trimmedmean", u, beta=0.1).params[0].tolist() == [22.0, 19.0]  # ⌊0.5⌋ = 0: the mean
    # median, n even: 5 1 3 100 → (3 + 5)/2 = 4 from d2 and d0; n odd: 5 1 3 → 3 from d2
    r = run("median", ups([5.0], [1.0], [3.0], [100.0]))
    assert r.params[0].tolist() == [4.0] and r.weights == [0.5, 0, 0.5, 0]
    assert run("median", ups([5.0], [1.0], [3.0])).weights == [0, 0, 1]
    assert run("median", ups([2.0], [2.0], [2.0])).weights == [0, 1, 0]  # ties by index: the middle one


def test_bulyan_by_hand():
    # 0 1 2 3 4 5 1000, f = 1: θ = 5 chosen by Krum one at a time (n − f − 2 nearest of those left):
    # 7 left: 2 and 3 score 10 → 2; then {0,1,3,4,5,1000}: 3 scores 1+4+4 = 9 → 3; {0,1,4,5,1000}: 1 and 4
    # score 10 → 1; {0,4,5,1000}: 4 and 5 score 1 → 4; {0,5,1000} (at least one neighbour): 0 and 5 score 25 → 0.
    # Chosen 0..4; median 2; the β = θ − 2f = 3 closest to it: 2, 1, 3 → mean 2 from d1, d2, d3.
    r = run("bulyan", ups(*[[v] for v in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1000.0)]), f=1)
    assert r.params[0].tolist() == [2.0] and r.kept == [1, 2, 3] and r.weights == [0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0]


def test_geometric_median_by_hand():
    # four points symmetric about (0, 0): the weighted mean is the geometric median, every share ¼
    r = run("geomedian", ups([1, 0], [-1, 0], [0, 1], [0, -1]))
    assert r.params[0].tolist() == [0.0, 0.0] and r.weights == [0.25] * 4
    # in 1-D the geometric median is the median: 0, 1, 10 → 1 (the mean 11/3 is where it starts)
    r = run("geomedian", ups([0.0], [1.0], [10.0]), iterations=500, tol=1e-9)
    assert abs(float(r.params[0][0]) - 1.0) < 1e-3 and r.weights[1] > 0.99


def test_fltrust_by_hand():
    # origin o = (5, 5); the server's update g0 = (1, 0). Updates (minus o): a = (2, 0): cos 1, rescaled to (1, 0);
    # b = (0, 3): cos 0; c = (−1, 0): cos −1 → trust 0; d = (1, 1): cos 1/√2, rescaled to (1/√2, 1/√2).
    # Σ trust = 1 + 1/√2; o + (1·(1, 0) + (1/√2)(1/√2, 1/√2)) / (1 + 1/√2) = o + (1.5, 0.5)/(1 + 1/√2)
    o = np.array([5, 5], np.float32)
    u = ups(o + [2, 0], o + [0, 3], o + [-1, 0], o + [1, 1])
    r = run("fltrust", u, origin=[o], reference=[o + np.float32([1, 0])])
    s = 1 + 1 / math.sqrt(2)
    np.testing.assert_allclose(r.params[0], [5 + 1.5 / s, 5 + 0.5 / s], rtol=1e-6)
    assert r.kept == [0, 3]
    np.testing.assert_allclose(r.weights, [1 / s, 0, 0, (1 / math.sqrt(2)) / s], rtol=1e-12)
    # nobody points the server's way: the model stays at the origin, nothing kept
    r = run("fltrust", u[1:3], origin=[o], reference=[o + np.float32([1, 0])])
    assert r.params[0].tolist() == [5.0, 5.0] and r.kept == [] and r.weights == [0, 0]
    with pytest.raises(AggregationError, match="reference"):
        run("fltrust", u, origin=[o])


def test_clip_around_any_aggregator():
    # max_norm 1: (3, 4) has norm 5 → (0.6, 0.8); (0.3, 0) stays; the mean (0.45, 0.4)
    r = run("clip", ups([3, 4], [0.3, 0]), max_norm=1.0, origin=[np.zeros(2, np.float32)])
    np.testing.assert_allclose(r.params[0], [0.45, 0.4], rtol=1e-6)
    # differences from the origin are clipped: from (10, 10) the same updates shifted are the same result shifted
    o = np.float32([10, 10])
    r = run("clip", ups(o + [3, 4], o + [0.3, 0]), max_norm=1.0, origin=[o])
    np.testing.assert_allclose(r.params[0], [10.45, 10.4], rtol=1e-6)
    # around Krum (f = 1), an inner option: the clipped 100 stays the farthest
    r = run("clip", ups([0.0], [0.1], [0.2], [0.3], [100.0]), max_norm=0.5, inner="krum", f=1,
            origin=[np.zeros(1, np.float32)])
    assert r.kept == [1]
    assert describe(make("clip", max_norm=2, inner="krum", f=1)) == ("clip", ["f=1", 'inner="krum"', "max_norm=2.0"])
    with pytest.raises(ValueError, match="clip itself"):
        make("clip", inner="clip")


def test_random_selection_is_seeded_and_fedavg_of_the_drawn():
    u = ups([1.0], [2.0], [4.0], [8.0], weights=[1, 1, 2, 4])
    origin = [np.zeros(1, np.float32)]
    r = run("random", u, fraction=0.5, seed=3, origin=origin)
    assert len(r.kept) == 2 and r == run("random", u, fraction=0.5, seed=3, origin=origin)
    w = {i: u[i].weight for i in r.kept}
    mean = sum(w[i] * float(u[i].params[0][0]) for i in r.kept) / sum(w.values())
    assert r.params[0].tolist() == [np.float32(mean)]
    assert r.weights == [w[i] / sum(w.values()) if i in w else 0 for i in range(4)]
    draws = {tuple(run("random", u, seed=s, origin=origin).kept) for s in range(12)}
    draws |= {tuple(run("random", u, origin=[np.float32([k])]).kept) for k in range(12)}  # another round's model
    assert len(draws) > 1
    assert len(run("random", u, fraction=0.01).kept) == 1


@pytest.mark.parametrize("name, options, n, rule", [
    ("krum", {"f": 1}, 4, "2f+3"), ("krum", {"f": 2}, 6, "2f+3"), ("multikrum", {"f": 1}, 4, "2f+3"),
    ("bulyan", {"f": 1}, 6, "4f+3"), ("bulyan", {"f": 2}, 10, "4f+3"), ("trimmedmean", {"f": 2}, 4, "2f+1"),
])
def test_each_checks_its_condition_on_n_and_f(name, options, n, rule):
    f = options["f"]
    with pytest.raises(AggregationError, match=rf"^{name} needs n ≥ {re.escape(rule)}.*n = {n}, f = {f}$"):
        run(name, ups(*[[float(i)] for i in range(n)]), **options)
    run(name, ups(*[[float(i)] for i in range(n + 1)]), **options)  # one more is enough
    with pytest.raises(AggregationError, match=rf"n = {n}, f = {f}$"):  # asked ahead, and through the clipping
        make("clip", inner=name, **options).check(n)
    make(name, **options).check(n + 1)


def test_bad_inputs_and_options():
    with pytest.raises(AggregationError, match="no updates"):
        run("median", [])
    with pytest.raises(AggregationError, match="shapes"):
        run("median", ups([1.0], [1.0, 2.0]))
    with pytest.raises(AggregationError, match="origin"):
        run("clip", ups([1.0, 2.0]), origin=[np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="unknown aggregator 'krum2'"):
        make("krum2")
    with pytest.raises(ValueError, match="aggregator 'krum'.*beta"):
        make("krum", beta=0.1)
    with pytest.raises(ValueError, match="f must be a non-negative integer"):
        make("bulyan", f=-1)
    with pytest.raises(ValueError, match="f must be a non-negative integer"):
        make("krum", f=1.0)
    with pytest.raises(ValueError, match="'krum'.*'m'"):
        make("krum", m=3)
    with pytest.raises(AggregationError, match="m = 6"):
        run("multikrum", ups(*[[float(i)] for i in range(5)]), m=6)


def test_options_round_trip_in_canonical_text():
    for name in AGGREGATORS:
        agg = make(name)
        assert from_spec(*describe(agg)) == agg
        assert AggregatorSpec(*describe(agg)).build() == agg
    assert options_text({"m": 3, "f": 1, "x": 0.1, "s": "a b", "b": True}) == ['b=true', 'f=1', 'm=3', 's="a b"',
                                                                              'x=0.1']
    assert parse_options(['b=true', 'f=1', 's="a b"', 'x=0.1', 'inner=krum']) == {
        "b": True, "f": 1, "s": "a b", "x": 0.1, "inner": "krum"}
    assert AggregatorSpec.of("multikrum", f=2) == AggregatorSpec("multikrum", ["f=2"])
    with pytest.raises(SchemaError, match="not canonical"):
        AggregatorSpec("multikrum", ["m=3", "f=2"])
    with pytest.raises(SchemaError, match="not canonical"):
        AggregatorSpec("krum", [])  # the defaults are spelt out
    with pytest.raises(SchemaError, match="fl.aggregator"):
        AggregatorSpec("nope")


def test_the_config_accepts_the_registry_names():
    assert load_config(overrides=["ml.aggregator=bulyan"]).ml.aggregator == "bulyan"
    with pytest.raises(ValueError, match="'krum'.*'median'"):
        load_config(overrides=["ml.cloud_aggregator=krum2"])


# --------------------------------------------------------------------------- properties

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def matrix(n_lo=5, n_hi=9, d_hi=4):
    return st.integers(n_lo, n_hi).flatmap(
        lambda n: st.integers(1, d_hi).flatmap(
            lambda d: st.lists(st.lists(finite, min_size=d, max_size=d), min_size=n, max_size=n)))


@settings(max_examples=60, deadline=None)
@given(rows=matrix(), weights=st.lists(st.integers(1, 50), min_size=9, max_size=9))
def test_fedavg_is_the_weighted_mean(rows, weights):
    w = weights[:len(rows)]
    r = run("fedavg", ups(*rows, weights=w))
    np.testing.assert_allclose(r.params[0], np.average(np.float64(np.float32(rows)), axis=0, weights=w),
                               rtol=1e-5, atol=1e-3)
    assert math.isclose(sum(r.weights), 1.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 9), d=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_order_does_not_matter_to_what_is_chosen(n, d, seed):
    """Coordinate-wise and distance-based choices follow the values, not the order (up to float rounding).
    Continuous random rows: no ties, whose order-dependent break would be the only difference.  (Not Bulyan:
    its last Krum picks score one neighbour each, and two mutual nearest neighbours always tie.)"""
    rng = np.random.default_rng(seed)
    rows = rng.normal(0, 10, (n, d)) * rng.choice([1, 100], (n, 1))
    perm = rng.permutation(n)
    u = ups(*rows)
    p = [u[i] for i in perm]
    for name, kw in [("median", {}), ("trimmedmean", {"f": 1}), ("fedavg", {}), ("geomedian", {})]:
        np.testing.assert_allclose(run(name, p, **kw).params[0], run(name, u, **kw).params[0], rtol=1e-5, atol=1e-4)
    for name, kw in [("krum", {"f": 1}), ("multikrum", {"f": 1}), ("median", {}), ("trimmedmean", {"f": 1})]:
        a, b = run(name, u, **kw), run(name, p, **kw)
        assert [b.weights[list(perm).index(i)] for i in range(n)] == pytest.approx(a.weights), name  # shares follow


@settings(max_examples=40, deadline=None)
@given(row=st.lists(finite, min_size=1, max_size=5), n=st.integers(7, 9))
def test_identical_updates_give_that_update(row, n):
    u = ups(*[row] * n)
    for name, kw in [("median", {}), ("trimmedmean", {"f": 2}), ("krum", {"f": 2}), ("bulyan", {"f": 1}),
                     ("multikrum", {"f": 2})]:
        assert np.array_equal(run(name, u, **kw).params[0], u[0].params[0]), name  # exactly (−0.0 == 0.0)
    for name in ("fedavg", "geomedian"):
        np.testing.assert_allclose(run(name, u).params[0], row, rtol=1e-6)


def honest_and_outliers(draw_f=st.integers(1, 3)):
    @st.composite
    def build(draw):
        f = draw(draw_f)
        n = draw(st.integers(4 * f + 3, 4 * f + 6))
        d = draw(st.integers(1, 4))
        centre = np.array(draw(st.lists(st.floats(-100, 100), min_size=d, max_size=d)))
        honest = [centre + np.array(draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d))) for _ in range(n - f)]
        scale = draw(st.floats(1e4, 1e12))
        direction = np.array(draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d))) + 2.0  # away from the centre
        bad = [centre + scale * direction * draw(st.floats(0.5, 1.0)) for _ in range(f)]
        at = sorted(draw(st.permutations(range(n)))[:f])
        rows = list(honest)
        for i, b in zip(at, bad):
            rows.insert(i, b)
        return f, rows, at, np.array(honest)
    return build()


@settings(max_examples=50, deadline=None)
@given(case=honest_and_outliers())
def test_krum_never_picks_an_outlier_far_from_a_tight_honest_cluster(case):
    f, rows, at, _ = case
    u = ups(*rows)
    assert run("krum", u, f=f).kept[0] not in at
    assert set(run("multikrum", u, f=f).kept) == set(range(len(rows))) - set(at)  # m = n − f: exactly the honest
    assert not set(run("bulyan", u, f=f).kept) & set(at)


@settings(max_examples=50, deadline=None)
@given(case=honest_and_outliers())
def test_robust_aggregators_stay_bounded_whatever_f_updates_say(case):
    f, rows, _, honest = case
    u = ups(*rows)
    lo, hi = np.float32(honest.min(axis=0)), np.float32(honest.max(axis=0))
    for name, kw in [("median", {}), ("trimmedmean", {"f": f}), ("krum", {"f": f}), ("multikrum", {"f": f}),
                     ("bulyan", {"f": f})]:
        p = run(name, u, **kw).params[0]
        assert (lo - 1e-3 <= p).all() and (p <= hi + 1e-3).all(), (name, p, lo, hi)
    centre = honest.mean(axis=0)
    assert np.linalg.norm(run("geomedian", u).params[0] - centre) < 10  # the cluster's radius is ≤ 2
    origin = [np.float32(centre)]
    for inner in ("fedavg", "median"):
        p = run("clip", u, max_norm=1.0, inner=inner, origin=origin).params[0]
        assert np.linalg.norm(p - centre) <= 1.0 + 1e-3
    p = run("fltrust", u, origin=origin, reference=[np.float32(centre + 0.5)]).params[0]
    assert np.linalg.norm(p - centre) <= 0.5 * math.sqrt(len(centre)) + 1e-3  # never longer than the server's


# --------------------------------------------------------------------------- recorded and replayed


LAYERS = [6, 4, 3]
SPECS = [("fedavg", {}), ("krum", {"f": 1}), ("multikrum", {"f": 1, "m": 3}), ("trimmedmean", {"f": 1}),
         ("median", {}), ("bulyan", {"f": 1}), ("geomedian", {}), ("fltrust", {}),
         ("clip", {"max_norm": 0.5, "inner": "median"}), ("random", {"seed": 7})]


def _inputs(tmp_path, n=7):
    blobs = BlobStore(tmp_path / "blobs")
    cfg = T.TrainConfig(layers=LAYERS, batch_size=4, seed=1)
    base = T.init_model(LAYERS, seed=1)
    rng = np.random.default_rng(5)
    contributions = []
    for i in range(n):
        params = [np.float32(p + rng.normal(0, 0.1 if i < n - 1 else 50.0, p.shape)) for p in base.params]
        model = base.with_params(params)
        # a fog's inputs are devices' trained states, the cloud's are models: both replay
        data = T.init_state(model, cfg).to_bytes() if i % 2 else model.to_bytes()
        contributions.append(Contribution(f"d{i}", blobs.put(data), 10 + i, params))
    ref = base.with_params([p + np.float32(0.05) for p in base.params])
    reference = Contribution("server", blobs.put(ref.to_bytes()), 20, ref.params)
    return blobs, base, contributions, reference


@pytest.mark.parametrize("name, options", SPECS)
def test_a_recorded_aggregation_replays_bit_for_bit(tmp_path, name, options):
    blobs, base, contributions, reference = _inputs(tmp_path)
    spec = AggregatorSpec.of(name, **options)
    ref = reference if spec.build().needs_reference else None
    model, rec = record_aggregation(spec, base, contributions, blobs, task="t", round=3, reference=ref)
    assert (rec.aggregator, rec.options, rec.origin) == (name, spec.options, blobs.put(base.to_bytes()))
    assert len(rec.shares) == 7 and math.isclose(sum(rec.shares), 1.0) and rec.kept
    assert rec.kept == [i for i, s in enumerate(rec.shares) if s > 0]
    if name not in ("fedavg", "geomedian", "fltrust", "clip", "random"):
        assert 6 not in rec.kept  # the far one
    assert Aggregation.from_wire(rec.to_wire()) == rec
    assert check_aggregation(rec, blobs.get)
    # any change to what the record says breaks the replay
    tampered = [dataclasses.replace(rec, models=rec.models[::-1], senders=rec.senders[::-1],
                                    weights=rec.weights[::-1]),
                dataclasses.replace(rec, shares=[*rec.shares[1:], rec.shares[0]]),
                dataclasses.replace(rec, kept=rec.kept[1:])]
    if name in ("fedavg", "multikrum", "geomedian", "random"):  # weighted by examples (Krum keeps one)
        k = rec.kept[0]
        tampered.append(dataclasses.replace(rec, weights=[w + (i == k) for i, w in enumerate(rec.weights)]))
    if name in ("fltrust", "clip", "random"):  # the others see the origin only as the result's architecture
        tampered.append(dataclasses.replace(rec, origin=rec.models[0]))
    if name == "fltrust":
        tampered.append(dataclasses.replace(rec, reference=rec.models[1]))
    other = {"fedavg": ("median", []), "random": ("random", ["fraction=0.5", "seed=8"])}.get(name, ("fedavg", []))
    tampered.append(dataclasses.replace(rec, aggregator=other[0], options=other[1]))
    for i, bad in enumerate(tampered):
        assert not _replays(bad, blobs), i


def _replays(rec, blobs):
    try:
        return check_aggregation(rec, blobs.get)
    except (AggregationError, ValueError):
        return False


def test_a_tampered_blob_fails_the_replay(tmp_path):
    blobs, base, contributions, _ = _inputs(tmp_path)
    _, rec = record_aggregation(AggregatorSpec.of("median"), base, contributions, blobs, task="t", round=0)
    path = blobs.path(rec.models[2])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError):
        check_aggregation(rec, blobs.get)
    forged = {**{c: blobs.get(c) for c in rec.models if c != rec.models[2]}, rec.origin: blobs.get(rec.origin),
              rec.models[2]: base.with_params([p + 1 for p in base.params]).to_bytes()}
    assert not check_aggregation(rec, forged.__getitem__)  # an unchecked source that lies: a different result


def test_the_record_checks_its_own_fields():
    base = dict(task="t", round=0, aggregator="median", senders=["a", "b"], models=[b"x" * 32, b"y" * 32],
                weights=[1.0, 1.0], model=b"z" * 32)
    with pytest.raises(SchemaError, match="share"):
        Aggregation(**base, shares=[1.0])
    with pytest.raises(SchemaError, match="kept"):
        Aggregation(**base, kept=[1, 0])
    with pytest.raises(SchemaError, match="kept"):
        Aggregation(**base, kept=[2])
    with pytest.raises(AggregationError, match="origin"):
        check_aggregation(Aggregation(**base), lambda c: b"")


# --------------------------------------------------------------------------- at the fogs and the cloud, over MQTT


@pytest.mark.broker
async def test_the_task_names_the_aggregators_fogs_and_cloud_use_and_both_replay(broker, tmp_path):
    """Fogs run Krum (f = 1) over their devices, the cloud FLTrust over the fogs (its reference the round's model
    trained on its own held-out data); both records recompute from the blobs.  A fog with one device cannot
    run Krum: it sends no update (logged, counted) and the cloud goes on without it at its timeout."""
    from edgefl.fl.protocol import Task
    from edgefl.nodes.site import LocalSite
    from edgefl.runtime.metrics import METRICS
    from tests.test_fl_round import CLOUD, SETTINGS, chain_of, final_model, records

    fogs = {"fog-a": [f"dev-a{i}" for i in range(1, 6)], "fog-b": ["dev-b1"]}
    settings = [*SETTINGS, "fl.rounds=1", "ml.aggregator=krum", "ml.cloud_aggregator=fltrust"]
    refused = METRICS.get("fl_aggregation_refused")
    site = LocalSite(tmp_path, broker.port, fogs, clients=("auditor",), settings=settings,
                     per_node={"cloud-1": [*CLOUD, "fl.round_timeout_s=3"]})
    async with site:
        final = await final_model(site, rounds=1)
        main = chain_of(site, "cloud-1")
        [(_, task)] = records(main, Task)
        assert task.aggregator == AggregatorSpec("krum", ["f=1"]) and task.cloud_aggregator == AggregatorSpec("fltrust")
        [(rec, cloud_agg)] = [(r, a) for r, a in records(main, Aggregation) if r.signer == "cloud-1"]
        assert (cloud_agg.aggregator, cloud_agg.senders) == ("fltrust", ["fog-a"]) and cloud_agg.model == final.model
        assert cloud_agg.reference is not None and check_aggregation(cloud_agg, site.nodes["cloud-1"].blobs.get)
        assert {cloud_agg.origin, cloud_agg.reference} <= main.store.referenced()  # blob gc keeps what replays it
        sub = chain_of(site, "fog-a")
        [(_, a)] = records(sub, Aggregation)
        assert (a.aggregator, a.options, a.senders, len(a.kept)) == ("krum", ["f=1"], fogs["fog-a"], 1)
        assert check_aggregation(a, site.nodes["fog-a"].blobs.get)
        sub.close()
        sub = chain_of(site, "fog-b")
        assert records(sub, Aggregation) == [] and METRICS.get("fl_aggregation_refused") == refused + 1
        sub.close()
        main.close()


def test_a_cloud_refuses_aggregators_a_fog_cannot_run_or_bad_options():
    from edgefl.nodes.cloud import CloudNode
    from edgefl.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="ml.aggregator.*fltrust needs a server's root data"):
        CloudNode.check(load_config(overrides=["ml.aggregator=fltrust"]))
    with pytest.raises(ConfigError, match="ml.cloud_aggregator_options.*beta"):
        CloudNode.check(load_config(overrides=["ml.cloud_aggregator=krum", 'ml.cloud_aggregator_options=["beta=1"]']))
    with pytest.raises(ConfigError, match="ml.aggregator.*fltrust"):  # not even inside the clipping
        CloudNode.check(load_config(overrides=["ml.aggregator=clip", 'ml.aggregator_options=["inner=fltrust"]']))
    CloudNode.check(load_config(overrides=["ml.aggregator=clip", 'ml.aggregator_options=["inner=krum", "f=1"]']))
    CloudNode.check(load_config(overrides=["ml.cloud_aggregator=fltrust"]))


def test_a_task_names_no_fog_aggregator_that_needs_root_data():
    from edgefl.fl.protocol import Extractor, Task
    from edgefl.ml.export import ModelRelease, export
    from edgefl.ml.extractor import ExtractorWeights

    w = ExtractorWeights.random(seed=1)
    onnx = export(w, "onnx")
    fields = dict(task="t", rounds=1, epsilon=1.0, unit="feature", noise="discrete_laplace",
                  config=T.TrainConfig(layers=[3920, 16, 10]), epochs=1, trainer="dense",
                  extractors=[Extractor(ModelRelease.of(onnx, w, "onnx"), b"\1" * 32)], model=b"\0" * 32)
    assert Task(**fields).aggregator == AggregatorSpec("fedavg")  # what a task says when it says nothing
    assert Task(**fields, cloud_aggregator=AggregatorSpec.of("fltrust")).cloud_aggregator.name == "fltrust"
    with pytest.raises(SchemaError, match="fl.task.aggregator"):
        Task(**fields, aggregator=AggregatorSpec.of("clip", inner="fltrust"))


@pytest.mark.parametrize("name, options", [("median", {}), ("fltrust", {})])
def test_in_process_rounds_learn_under_a_robust_aggregator(name, options):
    from edgefl.fl.simulation import SimDevice, run_rounds
    from edgefl.ml.backends import open_backend
    from edgefl.ml.data import synthetic_digits
    from edgefl.ml.export import export
    from edgefl.ml.extractor import ExtractorWeights
    from edgefl.ml.privacy import NoNoise, Privatiser

    digits = synthetic_digits(300, seed=1)
    feats = open_backend("onnxruntime", export(ExtractorWeights.random(seed=0), "onnx")).run(digits.images)
    cfg = T.TrainConfig(layers=[3920, 32, 10], optimizer="adam", lr=1e-3, batch_size=16, seed=0)
    devices = [SimDevice(f"d{i}", feats[i * 40:(i + 1) * 40], digits.labels[i * 40:(i + 1) * 40],
                         Privatiser(NoNoise(), epsilon=1.0, batch_size=16)) for i in range(5)]
    kw = dict(config=cfg, rounds=2, epochs=3, test_features=feats[250:], test_labels=digits.labels[250:],
              aggregator=make(name, **options))
    root = (feats[200:250], digits.labels[200:250])  # the server's own data, apart from the test items
    if name == "fltrust":
        with pytest.raises(ValueError, match="root data"):
            run_rounds(devices, **kw)
    acc = run_rounds(devices, **kw, root=root)
    assert len(acc) == 2 and acc[1] > 0.5, acc  # chance is 0.1


def test_an_aggregation_of_the_most_parties_fits_a_recorded_transaction():
    from edgefl.crypto.keys import SigningKey
    from edgefl.fl.protocol import MAX_PARTIES
    from edgefl.ledger.tx import decode_tx, record_tx

    n = MAX_PARTIES
    rec = Aggregation(task="digits", round=3, aggregator="clip", senders=[f"site-alpha/device-{i:04d}" for i in range(n)],
                      models=[i.to_bytes(32, "big") for i in range(n)], weights=[float(64 + i) for i in range(n)],
                      model=b"m" * 32, options=['f=1', 'inner="krum"', 'max_norm=5.0'], kept=list(range(n)),
                      shares=[1 / 3 + i * 1e-9 for i in range(n)], origin=b"o" * 32, reference=b"r" * 32)
    tx = record_tx(rec, "fog-a", SigningKey(b"\1" * 32), refs=rec.refs, model=rec.model)
    assert decode_tx(tx).body and Aggregation.from_wire(rec.to_wire()) == rec


def test_another_process_replays_the_record(tmp_path):
    """A fresh interpreter (another hash seed, other allocations) recomputes every aggregator's record."""
    import os
    import subprocess
    import sys

    blobs, base, contributions, reference = _inputs(tmp_path)
    recs = []
    for name, options in SPECS:
        spec = AggregatorSpec.of(name, **options)
        _, rec = record_aggregation(spec, base, contributions, blobs, task="t", round=1,
                           reference=reference if spec.build().needs_reference else None)
        recs.append(rec)
    (tmp_path / "recs.cbor").write_bytes(codec.encode([r.to_wire() for r in recs]))
    script = ("import sys; from edgefl import codec; from edgefl.fl.protocol import Aggregation; "
              "from edgefl.fl.round import check_aggregation; from edgefl.ledger.blobs import BlobStore; "
              "b = BlobStore(sys.argv[1]); "
              "recs = [Aggregation.from_wire(w) for w in codec.decode(open(sys.argv[2], 'rb').read())]; "
              "print([check_aggregation(r, b.get) for r in recs])")
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "blobs"), str(tmp_path / "recs.cbor")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([True] * len(SPECS))
