"""Runtime backends for the feature extractor, behind one interface and chosen by name.

    backend = open_backend("onnxruntime", model_bytes, threads=4)
    features = backend.run(images)        # (n, 28, 28, 1) float32 → (n, 3920) float32

``onnxruntime`` runs the ONNX export; ``litert`` (ai-edge-litert) and
``tflite_runtime`` run the TFLite export.  The firmware profile picks one
(``ml.backend``) and its thread count (``ml.threads``).

tflite-runtime 2.14, its last release, was built against numpy 1.x and crashes
when an Interpreter is created under numpy 2.  The backend detects that
combination and refuses with a clear error instead; run it in an environment
with numpy<2 (Raspberry Pi OS bookworm ships numpy 1.24; ``scripts/setup.sh
test`` makes ``.venv-tflite``), where ``python -m edgefl.ml.backends`` also
serves it to other processes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import sys
import time
from typing import ClassVar

import numpy as np

from edgefl.errors import EdgeflError

IMAGE_SHAPE = (28, 28, 1)


class BackendUnavailable(EdgeflError, RuntimeError):
    """The runtime is missing or cannot run in this environment; the message says what to do."""

    reason = "backend_unavailable"


class Backend:
    """One extractor runtime. ``run`` takes NHWC float32 images of any batch size."""

    name: ClassVar[str]
    format: ClassVar[str]  # "onnx" or "tflite": which export it runs

    def __init__(self, model: bytes, *, threads: int = 1):
        raise NotImplementedError

    def run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _images(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"images must be (batch, 28, 28, 1), got {images.shape}")
        return images


class OnnxRuntimeBackend(Backend):
    name, format = "onnxruntime", "onnx"

    def __init__(self, model: bytes, *, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed (pip install onnxruntime): {exc}") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(bytes(model), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: self._images(images)})[0]


class _TFLiteInterpreterBackend(Backend):
    """What the two TFLite runtimes share: resize the batch dimension, invoke, copy out."""

    format = "tflite"

    def _start(self, interpreter) -> None:
        self._interp = interpreter
        self._in = interpreter.get_input_details()[0]["index"]
        self._out = interpreter.get_output_details()[0]["index"]
        self._batch = None

    def run(self, images: np.ndarray) -> np.ndarray:
        images = self._images(images)
        if images.shape[0] != self._batch:
            self._interp.resize_tensor_input(self._in, list(images.shape), strict=True)
            self._interp.allocate_tensors()
            self._batch = images.shape[0]
        self._interp.set_tensor(self._in, images)
        self._interp.invoke()
        return self._interp.get_tensor(self._out)


class LiteRTBackend(_TFLiteInterpreterBackend):
    name = "litert"

    def __init__(self, model: bytes, *, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise BackendUnavailable(f"ai-edge-litert is not installed (pip install ai-edge-litert): {exc}") from None
        self._model = bytes(model)  # the interpreter reads from this buffer for its lifetime
        self._start(Interpreter(model_content=self._model, num_threads=threads))


def tflite_runtime_problem() -> str | None:
    """Why tflite_runtime cannot run in this process, or None when it can."""
    try:
        version = importlib.metadata.version("tflite-runtime")
    except importlib.metadata.PackageNotFoundError:
        return ("tflite-runtime is not installed; it needs numpy<2 (pip install 'numpy<2' tflite-runtime), "
                "or use the 'litert' backend")
    major = int(np.__version__.split(".")[0])
    if major >= 2 and _release(version) < (2, 15):
        return (f"tflite-runtime {version} was built for numpy 1.x and crashes at Interpreter creation under "
                f"numpy {np.__version__}; use the 'litert' backend (ai-edge-litert) or run tflite_runtime in an "
                f"environment with numpy<2 (scripts/setup.sh test creates .venv-tflite)")
    return None


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class TFLiteRuntimeBackend(_TFLiteInterpreterBackend):
    name = "tflite_runtime"

    def __init__(self, model: bytes, *, threads: int = 1):
        problem = tflite_runtime_problem()
        if problem:
            raise BackendUnavailable(problem)
        from tflite_runtime.interpreter import Interpreter

        self._model = bytes(model)
        self._start(Interpreter(model_content=self._model, num_threads=threads))


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (OnnxRuntimeBackend, LiteRTBackend, TFLiteRuntimeBackend)}
_NEEDS = {"onnxruntime": ("onnxruntime",), "litert": ("ai_edge_litert.interpreter",)}


def backend_problem(name: str) -> str | None:
    """Why backend ``name`` cannot run here (a package missing), or None: checked before a node starts."""
    if name == "tflite_runtime":
        return tflite_runtime_problem()
    for module in _NEEDS.get(name, ()):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"the {name} backend needs {module.partition('.')[0]} ({exc}): pip install 'edgefl[ml]'"
    return None


def backend_class(name: str) -> type[Backend]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


def open_backend(name: str, model: bytes, *, threads: int = 1) -> Backend:
    return backend_class(name)(model, threads=threads)


# --------------------------------------------------------------------------- subprocess entry point


def _main(argv: list[str] | None = None) -> int:
    """Run a backend from files, e.g. in a numpy<2 environment: `python -m edgefl.ml.backends ...`.

    Writes the features to ``--output`` (.npy) and, with ``--time N``, prints
    JSON with the median seconds per call over N calls after a warm-up.
    """
    p = argparse.ArgumentParser(prog="python -m edgefl.ml.backends")
    p.add_argument("--backend", required=True, choices=list(BACKENDS))
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help=".npy of (n, 28, 28, 1) float32 images")
    p.add_argument("--output", help=".npy for the features")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--time", type=int, default=0, metavar="N")
    args = p.parse_args(argv)
    with open(args.model, "rb") as f:
        model = f.read()
    images = np.load(args.input, allow_pickle=False)
    try:
        backend = open_backend(args.backend, model, threads=args.threads)
    except BackendUnavailable as exc:
        print(f"backend unavailable: {exc}", file=sys.stderr)
        return 3
    features = backend.run(images)
    if args.output:
        np.save(args.output, features)
    if args.time:
        backend.run(images)
        times = []
        for _ in range(args.time):
            c0, t0 = time.process_time(), time.perf_counter()
            backend.run(images)
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        print(json.dumps({"wall": [t for t, _ in times], "cpu": [c for _, c in times],
                          "numpy": np.__version__, "runtime": importlib.metadata.version("tflite-runtime")
                          if args.backend == "tflite_runtime" else args.backend}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
