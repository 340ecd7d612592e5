"""Data sets: IDX (MNIST's format, gzip or raw) and .npz loaders with limits, and a generated digit set.

Loaders never trust a file: sizes are bounded before anything is allocated,
and every problem raises ``DataError`` naming the file and what is wrong.

``synthetic_digits`` draws seven-segment digits with random stroke width,
slant, scale, shift and pixel noise: a small, learnable 10-class stand-in for
MNIST that the package generates for its demo and tests (no download).
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefl.errors import EdgeflError

MAX_IDX_BYTES = 256 << 20
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(EdgeflError, ValueError):
    reason = "data"

    """A data file is missing, too large, truncated or not in the expected format."""


@dataclass(frozen=True)
class Dataset:
    """Images (n, 28, 28, 1) float32 in [0, 1] and labels (n,) int64 in [0, 10)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        check_dataset(self.images, self.labels, "dataset")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> "Dataset":
        return Dataset(self.images[rows], self.labels[rows])

    def split(self, first: int) -> tuple["Dataset", "Dataset"]:
        return self.subset(slice(0, first)), self.subset(slice(first, None))


def check_dataset(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1) or images.dtype != np.float32:
        raise DataError(f"{where}: images must be float32 (n, 28, 28, 1), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers (n,) for {len(images)} images, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: labels must lie in [0, 9]")


def _read_limited(path: str | os.PathLike, max_bytes: int) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise DataError(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as gz:
                    data = gz.read(max_bytes + 1)
            else:
                data = f.read()
    except OSError as exc:  # includes gzip.BadGzipFile
        if isinstance(exc, gzip.BadGzipFile) or exc.strerror is None:
            raise DataError(f"{path}: corrupt gzip stream: {exc}") from None
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    except EOFError:
        raise DataError(f"{path}: gzip stream ends early (truncated file)") from None
    except zlib.error as exc:
        raise DataError(f"{path}: corrupt gzip stream: {exc}") from None
    if len(data) > max_bytes:
        raise DataError(f"{path}: more than {max_bytes} bytes once decompressed")
    return data


def load_idx(path: str | os.PathLike, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """An IDX array (gzip or raw): magic 00 00 type ndim, big-endian uint32 dimensions, data."""
    data = _read_limited(path, max_bytes)
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (bad magic {data[:4].hex() or 'empty'})")
    dtype = _IDX_TYPES.get(data[2])
    if dtype is None:
        raise DataError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX with {ndim} dimensions (1 to 4 supported)")
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(data) - 4 - 4 * ndim
    if body != expected:
        raise DataError(f"{path}: dimensions {list(dims)} need {expected} data bytes, the file has {body}")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def save_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = True) -> None:
    codes = {v.newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes[np.dtype(array.dtype).newbyteorder("=")]
    be = np.ascontiguousarray(array, dtype=_IDX_TYPES[code])
    blob = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + be.tobytes()
    Path(path).write_bytes(gzip.compress(blob, mtime=0) if compress else blob)


def load_mnist_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> Dataset:
    images = load_idx(images_path)
    labels = load_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images (n, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{labels_path}: expected uint8 labels (n,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} outside [0, 9]")
    return Dataset((images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int64))


def load_mnist(folder: str | os.PathLike, kind: str = "t10k") -> Dataset:
    """MNIST from ``{kind}-images-idx3-ubyte[.gz]`` and ``{kind}-labels-idx1-ubyte[.gz]`` in a folder."""
    folder = Path(folder)

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (folder / name).exists():
                return folder / name
        raise DataError(f"{folder}: no {stem}[.gz]")

    return load_mnist_idx(find(f"{kind}-images-idx3-ubyte"), find(f"{kind}-labels-idx1-ubyte"))


def load_npz_dataset(path: str | os.PathLike, *, max_bytes: int = MAX_IDX_BYTES) -> Dataset:
    """A data set from an .npz holding ``images`` (uint8 0..255 or float32 0..1; (n, 28, 28[, 1])) and ``labels``."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise DataError(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
        if total > max_bytes:
            raise DataError(f"{path}: {total} bytes uncompressed exceeds the limit of {max_bytes}")
        with np.load(path, allow_pickle=False) as npz:
            missing = {"images", "labels"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(sorted(missing))}")
            images, labels = npz["images"], npz["labels"]
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a valid .npz file: {exc}") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif images.dtype != np.float32:
        raise DataError(f"{path}: images must be uint8 or float32, got {images.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    check_dataset(images, labels, str(path))
    return Dataset(images, labels.astype(np.int64))


def load_dataset(source: str, items: int | None = None, *, seed: int = 0) -> Dataset:
    """``"generated"`` (``items`` seven-segment digits from ``seed``), an .npz file or a folder of MNIST IDX
    files; at most ``items`` of it."""
    if source == "generated":
        return synthetic_digits(items or 1000, seed=seed)
    data = load_mnist(source) if Path(source).is_dir() else load_npz_dataset(source)
    return data if items is None else data.subset(slice(0, items))


def save_npz_dataset(path: str | os.PathLike, data: Dataset) -> None:
    np.savez_compressed(path, images=np.round(data.images[..., 0] * 255).astype(np.uint8), labels=data.labels.astype(np.uint8))


# --------------------------------------------------------------------------- generated digits

# seven segments as strokes in a unit box (x right, y down): a top, b upper right, c lower right,
# d bottom, e lower left, f upper left, g middle
_SEGMENTS = {"a": ((0, 0), (1, 0)), "b": ((1, 0), (1, 1)), "c": ((1, 1), (1, 2)), "d": ((0, 2), (1, 2)),
             "e": ((0, 1), (0, 2)), "f": ((0, 0), (0, 1)), "g": ((0, 1), (1, 1))}
_DIGITS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]


def synthetic_digits(n: int, seed: int = 0) -> Dataset:
    """``n`` 28×28 seven-segment digits, balanced over the ten classes, deterministic in ``seed``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    images = np.zeros((n, 28, 28), np.float32)
    for i, digit in enumerate(labels):
        width, height = rng.uniform(8, 12), rng.uniform(16, 20)
        cx, cy = 14 + rng.uniform(-3, 3), 14 + rng.uniform(-2, 2)
        slant, thick = rng.uniform(-0.25, 0.25), rng.uniform(1.2, 2.2)
        img = np.zeros((28, 28), np.float32)
        for seg in _DIGITS[digit]:
            (x0, y0), (x1, y1) = _SEGMENTS[seg]
            p0 = np.array([cx + (x0 - 0.5) * width - slant * (y0 - 1) * height / 2, cy + (y0 - 1) * height / 2])
            p1 = np.array([cx + (x1 - 0.5) * width - slant * (y1 - 1) * height / 2, cy + (y1 - 1) * height / 2])
            d = p1 - p0
            t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / float(d @ d), 0, 1)
            dist = np.hypot(xx - (p0[0] + t * d[0]), yy - (p0[1] + t * d[1]))
            img = np.maximum(img, np.clip(thick + 0.5 - dist, 0, 1))
        images[i] = img
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    np.clip(images, 0, 1, out=images)
    return Dataset(images[..., None], labels.astype(np.int64))
