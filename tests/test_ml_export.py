"""Extractor export: ONNX and TFLite from one set of weights, every backend against a numpy reference."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgefl import codec
from edgefl.ml import export as E
from edgefl.ml.backends import (
    BACKENDS,
    BackendUnavailable,
    LiteRTBackend,
    OnnxRuntimeBackend,
    TFLiteRuntimeBackend,
    open_backend,
    tflite_runtime_problem,
)
from edgefl.ml.data import synthetic_digits
from edgefl.ml.extractor import FEATURES, ExtractorWeights, WeightsError, reference_features

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5


@pytest.fixture(scope="module")
def weights():
    w = ExtractorWeights.random(seed=11, version=3)
    # non-zero biases, so a layout mistake in them cannot hide
    rng = np.random.default_rng(1)
    return ExtractorWeights(**{**w.arrays(), "conv1_b": rng.normal(0, 0.1, 30), "conv2_b": rng.normal(0, 0.1, 80)},
                            version=3)


@pytest.fixture(scope="module")
def models(weights):
    return {fmt: E.export(weights, fmt) for fmt in E.FORMATS}


@pytest.fixture(scope="module")
def images():
    return synthetic_digits(7, seed=2).images


def test_exports_are_deterministic_and_carry_their_version(weights, models):
    for fmt, data in models.items():
        assert E.export(weights, fmt) == data
        assert E.detect_format(data) == fmt
        assert E.model_version(data) == 3
    assert E.export(ExtractorWeights.random(seed=12, version=3), "onnx") != models["onnx"]


@pytest.mark.parametrize("backend", [OnnxRuntimeBackend, LiteRTBackend])
def test_backends_match_the_numpy_reference_at_any_batch_size(backend, weights, models, images):
    ref = reference_features(weights, images)
    with backend(models[backend.format], threads=2) as b:
        for n in (1, 7, 3):  # resizing the batch dimension back and forth
            out = b.run(images[:n])
            assert out.shape == (n, FEATURES) and out.dtype == np.float32
            np.testing.assert_allclose(out, ref[:n], atol=TOL, rtol=0)


def test_onnx_and_tflite_agree(models, images):
    a = open_backend("onnxruntime", models["onnx"]).run(images)
    b = open_backend("litert", models["tflite"]).run(images)
    assert np.abs(a - b).max() <= TOL
    assert np.count_nonzero(a) > a.size // 4  # the features are not trivially zero


def _tflite_python():
    path = os.environ.get("EDGEFL_TFLITE_PYTHON") or REPO / ".venv-tflite" / "bin" / "python"
    if not Path(path).exists():
        if os.environ.get("EDGEFL_REQUIRE_TFLITE", "") not in ("", "0"):
            pytest.fail(f"{path} missing: scripts/setup.sh test creates it (numpy<2 + tflite-runtime)")
        pytest.skip("no numpy<2 environment with tflite-runtime (scripts/setup.sh test creates .venv-tflite)")
    return str(path)


def test_tflite_runtime_backend_in_a_numpy1_environment(tmp_path, weights, models, images):
    python = _tflite_python()
    (tmp_path / "m.tflite").write_bytes(models["tflite"])
    np.save(tmp_path / "x.npy", images)
    out = subprocess.run([python, "-m", "edgefl.ml.backends", "--backend", "tflite_runtime", "--model",
                          str(tmp_path / "m.tflite"), "--input", str(tmp_path / "x.npy"), "--output",
                          str(tmp_path / "y.npy"), "--threads", "2"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    feats = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(feats, reference_features(weights, images), atol=TOL, rtol=0)
    np.testing.assert_allclose(feats, open_backend("onnxruntime", models["onnx"]).run(images), atol=TOL, rtol=0)


def test_tflite_runtime_refuses_clearly_beside_numpy2(models):
    problem = tflite_runtime_problem()
    if int(np.__version__.split(".")[0]) >= 2:
        assert problem is not None and ("numpy" in problem or "not installed" in problem)
    if problem:
        with pytest.raises(BackendUnavailable, match="litert"):
            TFLiteRuntimeBackend(models["tflite"])
    assert set(BACKENDS) == {"onnxruntime", "litert", "tflite_runtime"}


def test_a_device_refuses_a_model_whose_hash_does_not_match(weights, models):
    release = E.ModelRelease.of(models["onnx"], weights, "onnx")
    assert release.check(models["onnx"]) == models["onnx"]
    wire = codec.decode(codec.encode_message(release), canonical=True)
    assert E.ModelRelease.from_wire(wire) == release
    tampered = bytearray(models["onnx"])
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(E.ModelHashMismatch, match="does not match"):
        release.check(bytes(tampered))
    with pytest.raises(E.ModelHashMismatch):
        release.check(models["tflite"])
    with pytest.raises(E.ModelHashMismatch):
        E.verify_model(models["onnx"], E.model_hash(models["tflite"]))


def test_model_files_are_read_with_limits_and_clear_errors(tmp_path, models):
    good = tmp_path / "m.onnx"
    good.write_bytes(models["onnx"])
    assert E.read_model(good) == models["onnx"]
    with pytest.raises(E.ModelError, match="exceeds the limit"):
        E.read_model(good, max_bytes=1000)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff" * 100)
    with pytest.raises(E.ModelError, match="neither an ONNX nor a TFLite"):
        E.read_model(junk)
    with pytest.raises(E.ModelError, match="cannot read"):
        E.read_model(tmp_path / "missing.onnx")


def test_weights_round_trip_and_bad_npz_files(tmp_path, weights):
    path = tmp_path / "w.npz"
    weights.save(path)
    back = ExtractorWeights.load(path)
    assert back.version == 3 and back.digest() == weights.digest()
    np.savez(tmp_path / "short.npz", conv1_w=weights.conv1_w)
    with pytest.raises(WeightsError, match="missing arrays conv1_b, conv2_b, conv2_w"):
        ExtractorWeights.load(tmp_path / "short.npz")
    np.savez(tmp_path / "shape.npz", **{**weights.arrays(), "conv2_w": np.zeros((3, 3, 30, 81), np.float32)})
    with pytest.raises(WeightsError, match=r"conv2_w: shape \(3, 3, 30, 81\)"):
        ExtractorWeights.load(tmp_path / "shape.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsError, match="not a valid .npz"):
        ExtractorWeights.load(tmp_path / "bad.npz")
    with pytest.raises(WeightsError, match="exceeds the limit"):
        ExtractorWeights.load(path, max_bytes=100)


def test_export_cli_writes_both_formats_and_verify_refuses_a_mismatch(tmp_path, capsys):
    from edgefl.cli import main

    assert main(["model", "export", "--out", str(tmp_path), "--seed", "4", "--version", "2"]) == 0
    onnx, tfl = tmp_path / "extractor-v2.onnx", tmp_path / "extractor-v2.tflite"
    assert E.model_version(onnx.read_bytes()) == 2 == E.model_version(tfl.read_bytes())
    capsys.readouterr()
    assert main(["model", "verify", str(tfl), "--hash", str(tmp_path / "extractor-v2.tflite.release.cbor")]) == 0
    assert main(["model", "verify", str(onnx), "--hash", E.model_hash(tfl.read_bytes()).hex()]) == 1
    assert "REFUSED" in capsys.readouterr().out
