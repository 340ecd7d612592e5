"""Data loaders (IDX, npz) with limits and clear errors, generated digits, partitions, the device's batch."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.crypto.envelope import Signer, StaticKeyRegistry, Verifier
from edgefl.crypto.keys import SigningKey
from edgefl.fl.partition import PartitionError, partitioner
from edgefl.fl.simulation import SimDevice, run_rounds
from edgefl.ml import data as D
from edgefl.ml import export as E
from edgefl.ml import trainer as T
from edgefl.ml.device import FeatureBatch, FeatureExtractor
from edgefl.ml.extractor import ExtractorWeights
from edgefl.ml.privacy import DiscreteLaplace, NoNoise, PrivacyAccountant, Privatiser


@pytest.fixture(scope="module")
def digits():
    return D.synthetic_digits(300, seed=5)


def test_generated_digits_are_deterministic_and_balanced(digits):
    again = D.synthetic_digits(300, seed=5)
    assert np.array_equal(again.images, digits.images) and np.array_equal(again.labels, digits.labels)
    assert np.bincount(digits.labels).tolist() == [30] * 10
    assert digits.images.dtype == np.float32 and 0 <= digits.images.min() and digits.images.max() <= 1


def test_idx_round_trip_gzip_and_raw(tmp_path, digits):
    imgs = np.round(digits.images[..., 0] * 255).astype(np.uint8)
    D.save_idx(tmp_path / "i.gz", imgs)
    D.save_idx(tmp_path / "l", digits.labels.astype(np.uint8), compress=False)
    ds = D.load_mnist_idx(tmp_path / "i.gz", tmp_path / "l")
    assert np.array_equal(ds.labels, digits.labels)
    assert np.abs(ds.images - digits.images).max() <= 0.5 / 255 + 1e-6
    D.save_idx(tmp_path / "f.gz", np.arange(6, dtype=">f8").reshape(2, 3))
    assert D.load_idx(tmp_path / "f.gz").tolist() == [[0, 1, 2], [3, 4, 5]]


def _raw(dims, body, code=0x08):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


@pytest.mark.parametrize("blob, message", [
    (b"\x01\x02\x03\x04" + b"\0" * 8, "bad magic"),
    (b"", "bad magic"),
    (_raw((2, 2), b"\0" * 4, code=0x07), "unknown IDX element type 0x07"),
    (_raw((2, 3), b"\0" * 5), r"dimensions \[2, 3\] need 6 data bytes, the file has 5"),
    (_raw((2,), b"\0" * 3), "need 2 data bytes, the file has 3"),
    (bytes([0, 0, 8, 3, 0, 0]), "truncated header"),
    (bytes([0, 0, 8, 9]), "9 dimensions"),
    (gzip.compress(_raw((4,), b"\0" * 4))[:-6], "truncated"),
    (b"\x1f\x8b\x08\x00" + b"junk" * 10, "gzip"),
])
def test_idx_loader_rejects_corrupt_files_naming_the_problem(tmp_path, blob, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(blob)
    with pytest.raises(D.DataError, match=message):
        D.load_idx(path)


def test_idx_limits_and_mismatched_pairs(tmp_path):
    D.save_idx(tmp_path / "big.gz", np.zeros(100_000, np.uint8))  # compresses to a few hundred bytes
    with pytest.raises(D.DataError, match="more than 1000 bytes once decompressed"):
        D.load_idx(tmp_path / "big.gz", max_bytes=1000)
    with pytest.raises(D.DataError, match="exceeds the limit"):
        D.load_idx(tmp_path / "big.gz", max_bytes=10)
    D.save_idx(tmp_path / "i.gz", np.zeros((3, 28, 28), np.uint8))
    D.save_idx(tmp_path / "l.gz", np.zeros(2, np.uint8))
    with pytest.raises(D.DataError, match="2 labels for 3 images"):
        D.load_mnist_idx(tmp_path / "i.gz", tmp_path / "l.gz")
    D.save_idx(tmp_path / "l.gz", np.array([0, 1, 12], np.uint8))
    with pytest.raises(D.DataError, match="label 12 outside"):
        D.load_mnist_idx(tmp_path / "i.gz", tmp_path / "l.gz")
    with pytest.raises(D.DataError, match="no t10k-images"):
        D.load_mnist(tmp_path)
    with pytest.raises(D.DataError, match="cannot read"):
        D.load_idx(tmp_path / "missing")


def test_npz_data_sets(tmp_path, digits):
    D.save_npz_dataset(tmp_path / "d.npz", digits)
    back = D.load_npz_dataset(tmp_path / "d.npz")
    assert np.array_equal(back.labels, digits.labels) and back.images.shape == digits.images.shape
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(D.DataError, match="missing arrays labels"):
        D.load_npz_dataset(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 27, 28), np.uint8), labels=np.zeros(2, np.uint8))
    with pytest.raises(D.DataError, match=r"\(n, 28, 28, 1\)"):
        D.load_npz_dataset(tmp_path / "shape.npz")
    np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object), labels=np.zeros(2, np.uint8))
    with pytest.raises(D.DataError, match="not a valid .npz"):
        D.load_npz_dataset(tmp_path / "obj.npz")  # pickles are refused
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:200])
    with pytest.raises(D.DataError, match="not a valid .npz"):
        D.load_npz_dataset(tmp_path / "trunc.npz")


@given(st.integers(20, 400), st.integers(1, 10), st.integers(0, 2**32),
       st.sampled_from([("iid", {}), ("dirichlet", {"alpha": 0.3}), ("dirichlet", {"alpha": 100.0}),
                        ("shards", {"shards_per_part": 2})]))
@settings(max_examples=60, deadline=None)
def test_partitions_are_disjoint_cover_everything_and_repeat_with_the_seed(n, parts, seed, spec):
    name, opts = spec
    labels = np.random.default_rng(seed).integers(0, 10, n)
    split = partitioner(name, **opts).split(labels, parts, seed)
    assert len(split) == parts and all(len(p) for p in split)
    assert sorted(np.concatenate(split).tolist()) == list(range(n))
    again = partitioner(name, **opts).split(labels, parts, seed)
    assert all(np.array_equal(a, b) for a, b in zip(split, again))
    if name == "iid":
        assert max(map(len, split)) - min(map(len, split)) <= 1


def test_non_iid_partitions_skew_the_labels():
    labels = np.repeat(np.arange(10), 100)
    shards = partitioner("shards", shards_per_part=2).split(labels, 10, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in shards)
    skewed = partitioner("dirichlet", alpha=0.05).split(labels, 10, seed=0)
    assert np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in skewed]) > 0.5
    with pytest.raises(PartitionError):
        partitioner("iid").split(labels[:3], 5)
    with pytest.raises(ValueError, match="unknown partitioner"):
        partitioner("zipf")


def test_the_device_sends_signed_noisy_features_from_a_verified_model(digits):
    w = ExtractorWeights.random(seed=1)
    model = E.export(w, "tflite")
    release = E.ModelRelease.of(model, w, "tflite")
    records = []
    acct = PrivacyAccountant(1.0, device="dev-1", recorder=records.append)
    fx = FeatureExtractor.open("litert", model, release, Privatiser(DiscreteLaplace(), epsilon=1.0, batch_size=64,
                                                                    accountant=acct))
    batch = fx.batch(np.arange(8), digits.images[:8], digits.labels[:8], task="t", round=0)
    assert batch.features.shape == (8, 3920) and batch.model == release.hash and len(records) == 1
    steps = batch.features.astype(np.float64) / batch.grid
    assert np.array_equal(steps, np.round(steps))
    key = SigningKey()
    envelope = Signer("dev-1", key).seal(batch)
    opened = Verifier(StaticKeyRegistry({"dev-1": key.public_key})).open(envelope)
    got = opened.message
    assert isinstance(got, FeatureBatch) and np.array_equal(got.features, batch.features)
    # the budget is spent: the same items are withheld next round
    assert fx.batch(np.arange(8), digits.images[:8], digits.labels[:8], task="t", round=1).ids.size == 0
    with pytest.raises(E.ModelHashMismatch):
        FeatureExtractor.open("onnxruntime", E.export(w, "onnx"), release, fx.privatiser)


@pytest.mark.parametrize("warm", [False, True])
def test_federated_rounds_learn_the_generated_digits(digits, warm):
    w = ExtractorWeights.random(seed=0)
    backend_model = E.export(w, "onnx")
    from edgefl.ml.backends import open_backend

    feats = open_backend("onnxruntime", backend_model).run(digits.images)
    cfg = T.TrainConfig(layers=[3920, 32, 10], optimizer="adam", lr=1e-3, batch_size=16, seed=0)
    devices = [SimDevice(f"d{i}", feats[i * 50:(i + 1) * 50], digits.labels[i * 50:(i + 1) * 50],
                         Privatiser(NoNoise(), epsilon=1.0, batch_size=16)) for i in range(4)]
    acc = run_rounds(devices, config=cfg, rounds=2, epochs=3, test_features=feats[200:], test_labels=digits.labels[200:],
                     warm_start=warm, average_releases=warm)
    assert len(acc) == 2 and acc[1] > 0.5  # chance is 0.1
