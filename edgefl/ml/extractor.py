"""The device's feature extractor: weights, their initialisation and loading, and a numpy reference.

conv 3×3×30 SAME + ReLU → max-pool 2×2 → conv 3×3×80 SAME + ReLU → max-pool 2×2
→ 7×7×80 = 3,920 features per 28×28×1 image (NHWC, flattened in H, W, C order).

The same weights are exported as ONNX and as TFLite (``edgefl.ml.export``);
``reference_features`` is the plain-numpy forward pass both are checked against.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from edgefl import codec
from edgefl.crypto import tagged_hash
from edgefl.errors import EdgeflError
from edgefl.runtime import write_atomic

IMAGE_SHAPE = (28, 28, 1)
FILTERS = (30, 80)
FEATURES = 7 * 7 * FILTERS[1]  # 3920
WEIGHTS_TAG = b"edgefl/extractor-weights/v1"
MAX_NPZ_BYTES = 64 << 20

# name -> shape (HWIO for convolution kernels)
SHAPES = {
    "conv1_w": (3, 3, IMAGE_SHAPE[2], FILTERS[0]),
    "conv1_b": (FILTERS[0],),
    "conv2_w": (3, 3, FILTERS[0], FILTERS[1]),
    "conv2_b": (FILTERS[1],),
}


class WeightsError(EdgeflError, ValueError):
    reason = "weights"

    """A weights file is missing, too large, corrupt or holds arrays of the wrong shape."""


@dataclass(frozen=True)
class ExtractorWeights:
    """Extractor weights (float32, HWIO kernels) and the model version they are released as."""

    conv1_w: np.ndarray
    conv1_b: np.ndarray
    conv2_w: np.ndarray
    conv2_b: np.ndarray
    version: int = 1

    def __post_init__(self):
        for name, shape in SHAPES.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != shape:
                got = getattr(arr, "shape", type(arr).__name__)
                raise WeightsError(f"{name}: shape {got}, expected {shape}")
            if not np.isfinite(arr).all():
                raise WeightsError(f"{name}: contains NaN or infinity")
            object.__setattr__(self, name, np.ascontiguousarray(arr, dtype=np.float32))
        if not 0 < self.version < 1 << 31:
            raise WeightsError(f"version {self.version} outside [1, 2^31)")

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SHAPES}

    def digest(self) -> bytes:
        """Hash of the weights themselves (canonical CBOR), carried inside every exported model."""
        return tagged_hash(WEIGHTS_TAG, codec.encode(self.arrays()))

    @classmethod
    def random(cls, seed: int = 0, version: int = 1) -> "ExtractorWeights":
        """Glorot-uniform kernels and zero biases from a seeded PCG64, the requester's initial model."""
        rng = np.random.Generator(np.random.PCG64(seed))
        arrays = {}
        for name, shape in SHAPES.items():
            if name.endswith("_b"):
                arrays[name] = np.zeros(shape, np.float32)
            else:
                fan_in, fan_out = shape[0] * shape[1] * shape[2], shape[0] * shape[1] * shape[3]
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                arrays[name] = rng.uniform(-limit, limit, shape).astype(np.float32)
        return cls(**arrays, version=version)

    def save(self, path: str | os.PathLike) -> None:
        buf = io.BytesIO()
        np.savez(buf, version=np.array(self.version, np.int64), **self.arrays())
        write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike, *, max_bytes: int = MAX_NPZ_BYTES) -> "ExtractorWeights":
        """Load trained weights from an .npz holding conv1_w, conv1_b, conv2_w, conv2_b (HWIO)."""
        arrays = load_npz(path, max_bytes=max_bytes)
        missing = sorted(set(SHAPES) - set(arrays))
        if missing:
            raise WeightsError(f"{path}: missing arrays {', '.join(missing)}")
        version = int(arrays["version"]) if "version" in arrays else 1
        try:
            return cls(**{k: arrays[k] for k in SHAPES}, version=version)
        except WeightsError as exc:
            raise WeightsError(f"{path}: {exc}") from None


def load_npz(path: str | os.PathLike, *, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """Arrays of an .npz, refusing pickles, oversize files and oversize (or bomb) members."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror}") from None
    if size > max_bytes:
        raise WeightsError(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
            if total > max_bytes:
                raise WeightsError(f"{path}: {total} bytes uncompressed exceeds the limit of {max_bytes}")
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except WeightsError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise WeightsError(f"{path}: not a valid .npz file: {exc}") from None


# --------------------------------------------------------------------------- reference forward pass


def _conv_same_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # n, h, w, c, 3, 3
    out = np.tensordot(windows, w.transpose(2, 0, 1, 3), axes=([3, 4, 5], [0, 1, 2])) + b
    return np.maximum(out, 0)


def _pool2(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def reference_features(weights: ExtractorWeights, images: np.ndarray) -> np.ndarray:
    """The extractor in float64 numpy: (n, 28, 28, 1) → (n, 3920)."""
    x = np.asarray(images, np.float64)
    x = _pool2(_conv_same_relu(x, weights.conv1_w.astype(np.float64), weights.conv1_b))
    x = _pool2(_conv_same_relu(x, weights.conv2_w.astype(np.float64), weights.conv2_b))
    return x.reshape(len(x), -1)
