"""Attack behaviours: each changes what it should (hand-checked where it is arithmetic), and nothing when off."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.fl import aggregate as agg
from edgefl.fl import attacks as A
from edgefl.ml.data import synthetic_digits

DATA = synthetic_digits(40, seed=3)


def p(*values):
    return [np.array(values, np.float32)]


def test_off_by_default_and_every_attack_touches_only_its_kind():
    images, labels = DATA.images, DATA.labels
    none = A.make()
    assert none.name == "none"
    x, y = none.data(images, labels, seed=1)
    assert x is images and y is labels
    own = p(1, 2)
    assert none.update(own, [own], origin=p(0, 0)) == own
    for name, cls in A.ATTACKS.items():
        attack = cls()
        if attack.kind != "data":  # an update attack leaves the data alone
            x, y = attack.data(images, labels, seed=1)
            assert x is images and y is labels, name
        if attack.kind != "update":  # a data attack sends the honest model
            assert attack.update(own, [own, p(3, 4)], origin=p(0, 0)) == own, name
    with pytest.raises(ValueError, match="unknown attack 'flip'"):
        A.make("flip")
    with pytest.raises(ValueError, match="'labelflip'.*bogus"):
        A.make("labelflip", bogus=1)
    with pytest.raises(ValueError, match="class"):
        A.make("labelflip", target=10)


def test_label_flipping_changes_exactly_the_source_class():
    images, labels = DATA.images, DATA.labels
    x, y = A.make("labelflip", source=3, target=8).data(images, labels)
    assert x is images
    assert (y[labels == 3] == 8).all() and (labels == 3).any()
    assert np.array_equal(y[labels != 3], labels[labels != 3])
    assert np.array_equal(labels, DATA.labels)  # the input is not modified in place


def test_label_reversal_maps_every_class_to_its_mirror():
    x, y = A.make("labelreverse").data(DATA.images, DATA.labels)
    assert x is DATA.images and y.dtype == DATA.labels.dtype
    assert np.array_equal(y, 9 - DATA.labels) and (y != DATA.labels).all()  # no class is its own mirror


def test_random_labels_replace_a_seeded_fraction():
    a = A.make("randomlabels", fraction=0.5)
    _, y1 = a.data(DATA.images, DATA.labels, seed=1)
    _, y1b = a.data(DATA.images, DATA.labels, seed=1)
    _, y2 = a.data(DATA.images, DATA.labels, seed=2)
    assert np.array_equal(y1, y1b) and not np.array_equal(y1, y2)
    assert ((0 <= y1) & (y1 < 10)).all() and 0 < (y1 != DATA.labels).sum() <= 20  # 20 of 40 drawn anew
    _, y = A.make("randomlabels", fraction=0.0).data(DATA.images, DATA.labels)
    assert np.array_equal(y, DATA.labels)


def test_noisy_inputs_stay_images():
    x, y = A.make("noisy", sigma=0.3).data(DATA.images, DATA.labels, seed=4)
    assert y is DATA.labels and x.dtype == np.float32 and x.shape == DATA.images.shape
    assert 0 <= x.min() and x.max() <= 1 and np.abs(x - DATA.images).mean() > 0.05
    x0, _ = A.make("noisy", sigma=0.0).data(DATA.images, DATA.labels)
    assert np.array_equal(x0, DATA.images)


def test_backdoor_triggers_and_relabels_a_fraction_and_builds_the_triggered_test_set():
    bd = A.make("backdoor", target=2, size=3, fraction=0.5)
    x, y = bd.data(DATA.images, DATA.labels, seed=5)
    patch = (slice(-4, -1), slice(-4, -1))
    assert not any((img[patch] == 1).all() for img in DATA.images)  # no original has the trigger
    changed = np.array([not np.array_equal(x[i], DATA.images[i]) for i in range(40)])
    assert changed.sum() == 20 and (y[changed] == 2).all()
    assert all((x[i][patch] == 1).all() for i in np.flatnonzero(changed))
    untouched = ~changed
    assert np.array_equal(x[untouched], DATA.images[untouched]) and np.array_equal(y[untouched], DATA.labels[untouched])
    # outside the patch every triggered image is the original
    mask = np.ones((28, 28, 1), bool)
    mask[patch] = False
    assert np.array_equal(x[:, mask], DATA.images[:, mask])
    tx, ty = A.backdoor_test_set(bd, DATA.images, DATA.labels)
    assert len(tx) == (DATA.labels != 2).sum() and (ty == 2).all() and (tx[:, 24:27, 24:27] == 1).all()


def test_sign_flipping_scaling_and_gaussian_by_hand():
    origin, own = p(1, 1), p(3, 0)  # the honest step (2, −1)
    assert A.make("signflip").update(own, [], origin=origin)[0].tolist() == [-1, 2]  # 1 − 2, 1 + 1
    assert A.make("signflip", scale=3).update(own, [], origin=origin)[0].tolist() == [-5, 4]
    assert A.make("scaling", factor=10).update(own, [], origin=origin)[0].tolist() == [21, -9]  # 1 + 10·(2, −1)
    g = A.make("gaussian", sigma=2.0)
    big = [np.zeros((100, 100), np.float32)]
    out = g.update(big, [], origin=big, seed=1)[0]
    assert out.shape == (100, 100) and abs(out.mean()) < 0.1 and abs(out.std() - 2.0) < 0.1
    assert np.array_equal(out, g.update(big, [], origin=big, seed=1)[0])
    assert not np.array_equal(out, g.update(big, [], origin=big, seed=2)[0])


def test_a_little_is_enough_by_hand():
    honest = [p(1, 10), p(3, 10)]  # per coordinate μ = (2, 10), σ = (1, 0)
    assert A.make("alie", z=1.5).update(honest[0], honest, origin=p(0, 0))[0].tolist() == [0.5, 10.0]
    # n = 10, f = 2: s = ⌊10/2 + 1⌋ − 2 = 4, z = Φ⁻¹((10 − 4)/10) = Φ⁻¹(0.6) ≈ 0.253347
    assert math.isclose(A.make("alie", n=10, f=2).z_max(), 0.2533471, rel_tol=1e-6)
    with pytest.raises(ValueError, match="honest updates"):
        A.make("alie").update(honest[0], [], origin=p(0, 0))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(7, 9), f=st.integers(1, 3), d=st.integers(1, 6))
def test_fang_trimmed_mean_values_lie_beyond_the_honest_extremes_against_the_step(seed, n, f, d):
    rng = np.random.default_rng(seed)
    origin = [np.float32(rng.normal(0, 1, d))]
    honest = [[np.float32(origin[0] + rng.normal(0.3, 1, d))] for _ in range(n)]
    x = np.stack([h[0] for h in honest]).astype(np.float64)
    step = np.sign(x.mean(axis=0) - origin[0])
    fang = A.make("fang", target="trimmedmean", f=f)
    crafted = [fang.update(honest[0], honest, origin=origin, seed=i)[0] for i in range(f)]
    for c in crafted:
        up, down = step < 0, step >= 0
        assert (c[up] >= np.float32(x.max(axis=0)[up])).all() and (c[down] <= np.float32(x.min(axis=0)[down])).all()
    # the trimmed mean with them moves against the honest step in every coordinate (or stays)
    clean = agg.make("trimmedmean", f=f).aggregate([agg.Update(h) for h in honest]).params[0]
    attacked = agg.make("trimmedmean", f=f).aggregate([agg.Update(h) for h in honest] +
                                                      [agg.Update([c]) for c in crafted]).params[0]
    assert (step * (attacked.astype(np.float64) - clean) <= 1e-6).all()


def test_fang_krum_is_chosen_by_krum_when_honest_updates_spread():
    rng = np.random.default_rng(0)
    origin = [np.zeros(30, np.float32)]
    honest = [[np.float32(0.05 + rng.normal(0, 1.0, 30))] for _ in range(8)]  # non-IID: steps differ widely
    fang = A.make("fang", target="krum", f=2)
    crafted = fang.update(honest[0], honest, origin=origin)
    step = np.sign(np.mean([h[0] for h in honest], axis=0))
    assert (np.sign(crafted[0]) == -step).all()  # against the honest step in every coordinate
    ups = [agg.Update(h) for h in honest] + [agg.Update(crafted)] * 2
    assert agg.make("krum", f=2).aggregate(ups).kept[0] >= 8  # Krum picks the attackers' model


def test_choose_attackers():
    ids = [f"dev-{i}" for i in range(10)]
    chosen = A.choose_attackers(ids, 0.3, seed=1)
    assert len(chosen) == 3 and set(chosen) <= set(ids) and chosen == sorted(chosen)
    assert A.choose_attackers(ids[::-1], 0.3, seed=1) == chosen  # order of the list does not matter
    assert {tuple(A.choose_attackers(ids, 0.3, seed=s)) for s in range(10)} != {tuple(chosen)}
    assert A.choose_attackers(ids, 0.0, seed=1) == [] and A.choose_attackers(ids, 1.0, seed=1) == sorted(ids)
    assert len(A.choose_attackers(ids[:5], 0.3, seed=0)) == 2  # round(1.5) = 2
    with pytest.raises(ValueError, match="fraction"):
        A.choose_attackers(ids, 1.5, seed=0)


def test_a_byzantine_fog_poisons_its_aggregate():
    devices = [p(1, 2), p(3, 4)]
    honest = agg.make("fedavg").aggregate([agg.Update(d) for d in devices]).params  # (2, 3)
    out = A.poison_aggregate(A.make("signflip"), honest, devices, origin=p(0, 0))
    assert out[0].tolist() == [-2, -3]
    assert A.poison_aggregate(A.make("labelflip"), honest, devices, origin=p(0, 0)) == honest


def test_robust_aggregators_absorb_sign_flipping_that_breaks_fedavg():
    """One round on generated digits, 10 devices of which 3 send their step reversed and boosted (×10): FedAvg's
    model falls below chance, the robust aggregators' stay useful, Multi-Krum's near the clean one."""
    from edgefl.ml import trainer as T
    from edgefl.ml.backends import open_backend
    from edgefl.ml.export import export
    from edgefl.ml.extractor import ExtractorWeights
    from edgefl.ml.privacy import normalise

    digits = synthetic_digits(700, seed=2)
    feats = normalise(open_backend("onnxruntime", export(ExtractorWeights.random(seed=0), "onnx")).run(digits.images),
                      16).astype(np.float32)
    cfg = T.TrainConfig(layers=[3920, 32, 10], optimizer="adam", lr=1e-3, batch_size=16, seed=0)
    model = T.init_model(cfg.layers, seed=0).with_input_transform(feats[:500])
    ids = [f"d{i}" for i in range(10)]
    bad = set(A.choose_attackers(ids, 0.3, seed=4))
    honest = [T.Trainer(cfg).fit(model, feats[i * 50:(i + 1) * 50], digits.labels[i * 50:(i + 1) * 50],
                                 epochs=3).model.params for i in range(10)]
    flip = A.make("signflip", scale=10.0)
    sent = [flip.update(h, honest, origin=model.params) if d in bad else h for d, h in zip(ids, honest)]
    test_x, test_y = feats[500:], digits.labels[500:]

    def acc(name, updates, **kw):
        r = agg.make(name, **kw).aggregate([agg.Update(u, 50.0, d) for d, u in zip(ids, updates)], origin=model.params)
        return T.accuracy(model.with_params(r.params), test_x, test_y), {ids[i] for i in r.kept}

    clean, _ = acc("fedavg", honest)
    attacked, _ = acc("fedavg", sent)
    assert len(bad) == 3 and clean > 0.5 and attacked < clean - 0.2, (clean, attacked)
    for name, kw in [("median", {}), ("krum", {"f": 3}), ("multikrum", {"f": 3}), ("trimmedmean", {"f": 3})]:
        robust, kept = acc(name, sent, **kw)
        # about 0.5 (median, trimmed mean, Krum's single 50-item model) to 0.62 (Multi-Krum) against 0.65 clean
        assert robust > max(clean - 0.2, attacked + 0.4), (name, robust, clean, attacked)
        if name == "multikrum":  # the mean of the 7 it keeps: the honest ones
            assert robust > clean - 0.05
        if "krum" in name:
            assert not kept & bad, name
