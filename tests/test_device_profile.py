"""The agent honours its profile: thread counts, a memory ceiling kept by streaming in chunks, the low-memory
mode, and the Prometheus text-format metrics on a local port (off on devices)."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefl.ml import blas
from edgefl.ml import privacy as P
from edgefl.ml.device import FeatureExtractor
from edgefl.ml.export import ModelRelease, export
from edgefl.ml.extractor import ExtractorWeights
from edgefl.provision.units import node_unit
from edgefl.runtime import memory, metrics
from edgefl.runtime.config import load_config
from edgefl.transport.mosquitto import free_port

REPO = Path(__file__).resolve().parents[1]


def counter_stream():
    """A replayable entropy source: the same words for the same sequence of reads."""
    state = {"i": 0}

    def read(n):
        out = bytearray()
        while len(out) < n:
            out += state["i"].to_bytes(8, "little")
            state["i"] += 1
        return bytes(out[:n])

    return read


def test_chunked_release_is_the_release_row_by_row():
    rng = np.random.default_rng(3)
    ids, x = np.arange(50), rng.normal(size=(50, 40)).astype(np.float32)
    whole = P.Privatiser(P.NoNoise(), epsilon=1.0, batch_size=64).release(ids, x)
    chunked = P.Privatiser(P.NoNoise(), epsilon=1.0, batch_size=64).release(ids, x, chunk_rows=7)
    assert np.array_equal(whole.values, chunked.values) and np.array_equal(whole.ids, chunked.ids)
    # with noise, from the same words in the same order: the same grid, dtype and values, bit for bit
    a = P.Privatiser(P.DiscreteLaplace(counter_stream()), epsilon=2.0, batch_size=64).release(ids, x)
    b = P.Privatiser(P.DiscreteLaplace(counter_stream()), epsilon=2.0, batch_size=64).release(ids, x, chunk_rows=7)
    assert a.grid == b.grid and a.values.dtype == b.values.dtype
    assert np.array_equal(a.values, b.values) and np.array_equal(np.rint(b.values / b.grid) * b.grid, b.values)
    c = P.Privatiser(P.DiscreteLaplace(), epsilon=2.0, batch_size=64).release(ids, x, chunk_rows=7)
    assert not np.array_equal(c.values, b.values)  # fresh words: other noise


def test_chunked_release_charges_the_accountant_once(tmp_path):
    spent = []
    acct = P.PrivacyAccountant(10.0, device="d", path=tmp_path / "p.cbor", recorder=spent.append)
    rel = P.Privatiser(P.DiscreteLaplace(), epsilon=1.0, batch_size=64, accountant=acct).release(
        np.arange(30), np.ones((30, 8), np.float32) * np.arange(8), chunk_rows=4, task="t", round=0)
    assert len(spent) == 1 and spent[0] is rel.spend and acct.spent(29) == 1.0


@pytest.mark.parametrize("backend", ["litert", "onnxruntime"])
def test_chunked_extraction_gives_the_same_features(backend):
    fmt = "tflite" if backend == "litert" else "onnx"
    weights = ExtractorWeights.random(seed=0)
    model = export(weights, fmt)
    images = np.random.default_rng(1).random((37, 28, 28, 1), np.float32)
    priv = P.Privatiser(P.NoNoise(), epsilon=1.0, batch_size=64)
    whole = FeatureExtractor.open(backend, model, ModelRelease.of(model, weights, fmt), priv)
    chunked = FeatureExtractor.open(backend, model, ModelRelease.of(model, weights, fmt), priv, chunk_rows=8)
    np.testing.assert_allclose(chunked.features(images), whole.features(images), rtol=1e-5, atol=1e-6)


PEAK = """
import sys, numpy as np
from edgefl.ml.data import synthetic_digits
from edgefl.ml.device import FeatureExtractor
from edgefl.ml.export import ModelRelease, export
from edgefl.ml.extractor import ExtractorWeights
from edgefl.ml.privacy import DiscreteLaplace, Privatiser
from edgefl.runtime import memory
w = ExtractorWeights.random(seed=0)
model = export(w, "tflite")
data = synthetic_digits(1024, seed=1)
fx = FeatureExtractor.open("litert", model, ModelRelease.of(model, w, "tflite"),
                           Privatiser(DiscreteLaplace(), epsilon=1, batch_size=64), chunk_rows=int(sys.argv[1]))
fx.batch(np.arange(2), data.images[:2], data.labels[:2], task="t", round=0)
memory.release_freed()
base = memory.peak_rss_mb()
batch = fx.batch(np.arange(1024), data.images, data.labels, task="t", round=0)
print(memory.peak_rss_mb() - base, batch.features.nbytes / 2**20)
"""


def test_a_full_batch_streamed_in_chunks_stays_far_under_the_zero_2w_ceiling():
    """1,024 items (the most a batch holds) through LiteRT: all at once the runtime's activations and the
    noise's scratch take over 300 MB, more than the Zero 2 W's whole 256 MB MemoryMax; 16 rows at a time
    the peak grows by little more than the batch itself."""
    ceiling = memory.ceiling_mb(load_config("pizero2w", env={}).board)

    def growth(chunk):
        out = subprocess.run([sys.executable, "-c", PEAK, str(chunk)], capture_output=True, text=True, timeout=120,
                             cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
        return [float(v) for v in out.stdout.split()]

    streamed, batch_mb = growth(16)
    whole, _ = growth(0)
    assert streamed < 3 * batch_mb + 8 < ceiling / 4, (streamed, batch_mb)
    assert whole > ceiling > streamed, (whole, streamed)


def test_memory_readings_and_the_low_memory_allocator():
    rss, peak = memory.rss_mb(), memory.peak_rss_mb()
    assert 5 < rss <= peak
    assert memory.release_freed() is True  # glibc on this machine
    assert memory.low_memory_allocator() is True


def test_profiles_set_the_device_caps_and_keep_metrics_off_on_devices():
    for board in ("pizero2w", "pi3bplus", "pi4", "pi5"):
        cfg = load_config(board, env={})
        assert cfg.metrics.port == 0 and cfg.ml.blas_threads == 1 and cfg.ml.chunk_rows > 0
    zero = load_config("pizero2w", env={})
    assert zero.board.low_memory and zero.ml.chunk_rows <= 16
    for host in ("fog", "cloud"):
        cfg = load_config(host, env={})
        assert cfg.metrics.port > 0 and cfg.metrics.bind == "127.0.0.1"


def test_the_unit_starts_the_blas_with_the_profiles_threads():
    cfg = load_config("pizero2w", env={}, overrides=["node.data_dir=/var/lib/edgefl", "node.id=dev-1"])
    env = next(line for line in node_unit(cfg).splitlines() if line.startswith("Environment="))
    assert "OPENBLAS_NUM_THREADS=1" in env and "OMP_NUM_THREADS=1" in env


def test_blas_threads_can_be_held():
    before = blas.threads()
    if before is None:
        pytest.skip("no BLAS thread control in this numpy")
    try:
        assert blas.set_threads(1) and blas.threads() == 1
    finally:
        blas.set_threads(before)


# --------------------------------------------------------------------------- metrics


async def _get(port: int, request: bytes) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.splitlines()[0], body


async def test_metrics_are_served_in_the_prometheus_text_format():
    m = metrics.Metrics()
    m.inc("fl_batch_rejected", reason="late")
    m.inc("fl_batch_rejected", 2, reason='odd "quote"\\')
    m.inc("mqtt_reconnect")
    port, ready = free_port(), asyncio.Event()
    server = asyncio.create_task(metrics.serve("127.0.0.1", port, m, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        status, body = await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.0 200 OK"
        lines = body.splitlines()
        assert "# TYPE edgefl_fl_batch_rejected_total counter" in lines
        assert 'edgefl_fl_batch_rejected_total{reason="late"} 1' in lines
        assert 'edgefl_fl_batch_rejected_total{reason="odd \\"quote\\"\\\\"} 2' in lines
        assert "edgefl_mqtt_reconnect_total 1" in lines
        rss = next(int(line.split()[1]) for line in lines if line.startswith("process_resident_memory_bytes "))
        assert rss > 1 << 20
        # what is not a scrape is refused, answered and counted
        assert (await _get(port, b"GET /other HTTP/1.1\r\n\r\n"))[0].startswith("HTTP/1.0 404")
        assert (await _get(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0].startswith("HTTP/1.0 405")
        assert (await _get(port, b"nonsense\r\n\r\n"))[0].startswith("HTTP/1.0 400")
        assert (await _get(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n"))[0].startswith(
            "HTTP/1.0 431")
        assert {r: m.get("metrics_http_rejected", reason=r) for r in ("not_found", "method", "malformed",
                                                                      "too_large")} == dict.fromkeys(
            ("not_found", "method", "malformed", "too_large"), 1)
        # a second server on the same port: logged and counted, not a crash
        await asyncio.wait_for(metrics.serve("127.0.0.1", port, m), 5)
        assert m.get("metrics_http_unavailable") == 1
    finally:
        server.cancel()


def test_metrics_cli_reads_the_text_format():
    """The exposition parses as the text format: every sample line is NAME{LABELS} VALUE after its TYPE."""
    m = metrics.Metrics()
    m.inc("a.b-c", reason="x")
    text = metrics.prometheus_text(m)
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert name in typed and float(line.rsplit(" ", 1)[1]) >= 0
    assert "edgefl_a_b_c_total" in typed
    json.dumps(text)
