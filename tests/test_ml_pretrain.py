"""The requester's extractor training (`edgefl model train`): gradients, learning, determinism, its release."""

import json

import numpy as np
import pytest

from edgefl import codec
from edgefl.cli import main
from edgefl.ml.data import synthetic_digits
from edgefl.ml.export import ModelRelease
from edgefl.ml.extractor import ExtractorWeights, reference_features
from edgefl.ml.pretrain import PretrainError, _Net, train_extractor


def test_gradients_match_finite_differences():
    d = synthetic_digits(6, seed=3)
    net = _Net(ExtractorWeights.random(seed=1), seed=0, lr=1e-3)
    net.p = {k: v.astype(np.float64) for k, v in net.p.items()}
    x = d.images.astype(np.float64)
    _, _, grads = net.loss_and_grads(x, d.labels)
    rng = np.random.default_rng(0)
    for name in ("conv1_w", "conv2_w", "conv2_b", "head_w", "head_b"):
        for _ in range(3):
            idx = tuple(int(rng.integers(0, n)) for n in net.p[name].shape)
            old, h = net.p[name][idx], 1e-6
            net.p[name][idx] = old + h
            up = net.loss_and_grads(x, d.labels)[0]
            net.p[name][idx] = old - h
            down = net.loss_and_grads(x, d.labels)[0]
            net.p[name][idx] = old
            assert (up - down) / (2 * h) == pytest.approx(grads[name][idx], rel=1e-3, abs=1e-7), (name, idx)


def test_training_learns_and_is_deterministic():
    d = synthetic_digits(200, seed=4)
    w, history = train_extractor(d.images, d.labels, epochs=3, seed=5, version=3)
    assert history.loss[0] > history.loss[-1] and history.accuracy[-1] > history.accuracy[0]
    again, _ = train_extractor(d.images, d.labels, epochs=3, seed=5, version=3)
    assert again.digest() == w.digest() and w.version == 3
    assert w.digest() != ExtractorWeights.random(seed=5, version=3).digest()
    with pytest.raises(PretrainError):
        train_extractor(d.images[:, :14], d.labels)
    with pytest.raises(PretrainError, match="labels"):
        train_extractor(d.images, d.labels + 10)


def test_model_train_writes_a_release_devices_accept(tmp_path, capsys):
    rc = main(["model", "train", "--data", "generated", "--items", "120", "--epochs", "1", "--version", "4",
               "--out", str(tmp_path)])
    assert rc == 0
    w = ExtractorWeights.load(tmp_path / "extractor-v4.npz")
    manifest = json.loads((tmp_path / "extractor-v4.json").read_text())
    assert manifest["weights"] == w.digest().hex() and manifest["trained"]["items"] == 120
    assert len(manifest["trained"]["loss"]) == 1
    for fmt, suffix in (("onnx", ".onnx"), ("tflite", ".tflite")):
        data = (tmp_path / f"extractor-v4{suffix}").read_bytes()
        release = ModelRelease.from_wire(codec.decode((tmp_path / f"extractor-v4{suffix}.release.cbor").read_bytes(),
                                                      canonical=True))
        assert release.check(data) == data and release.weights == w.digest() and release.version == 4
        assert manifest["models"][fmt]["hash"] == release.hash.hex()
    from edgefl.ml.backends import open_backend

    images = synthetic_digits(4, seed=9).images
    with open_backend("onnxruntime", (tmp_path / "extractor-v4.onnx").read_bytes()) as b:
        assert np.allclose(b.run(images), reference_features(w, images), atol=1e-4)
    assert "weights" in capsys.readouterr().out
