"""The requester trains the extractor's convolutional layers on its own public data before releasing them.

    weights, history = train_extractor(images, labels, epochs=5, seed=0, version=2)

The extractor (``edgefl.ml.extractor``: conv 3×3×30 → pool → conv 3×3×80 →
pool → 3,920 features) gets a linear softmax head over its features and the
two are trained together with Adam on mini-batches of the requester's
labelled images; the head is then dropped and the convolutional weights are
what ``edgefl model train`` releases (exported, hashed and recorded exactly
as a random initialisation is).  A linear head asks for features that a
linear classifier separates, which is what the fog's ridge warm start fits.

Plain numpy, float32: each convolution is a matrix product over its 3×3
windows (im2col), gradients by hand.  The BLAS runs on one thread, so the
same data, options and seed give the same weights, hence the same release
hash, on the same platform.  The devices' private data never enters: train
on data the requester may use (generated digits, its own labelled sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgefl.errors import EdgeflError
from edgefl.ml import blas
from edgefl.ml.extractor import FEATURES, FILTERS, ExtractorWeights

CLASSES = 10


class PretrainError(EdgeflError, ValueError):
    reason = "pretrain"


@dataclass
class History:
    """Per epoch: mean training loss and accuracy of the (extractor + head) on the training images."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def _windows(x: np.ndarray) -> np.ndarray:
    """(n, h, w, c) → (n·h·w, c·9): every 3×3 SAME window, in the (c, kh, kw) order of the kernels below."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2)).reshape(n * h * w, c * 9)


def _kernel(w: np.ndarray) -> np.ndarray:
    """HWIO (3, 3, c, o) → (c·9, o) matching ``_windows``."""
    return np.ascontiguousarray(w.transpose(2, 0, 1, 3).reshape(-1, w.shape[3]))


def _unkernel(g: np.ndarray, c: int) -> np.ndarray:
    return np.ascontiguousarray(g.reshape(c, 3, 3, -1).transpose(1, 2, 0, 3))


def _unwindows(g: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The adjoint of ``_windows``: window gradients summed back onto the (n, h, w, c) input."""
    n, h, w, c = shape
    g = g.reshape(n, h, w, c, 3, 3)
    out = np.zeros((n, h + 2, w + 2, c), np.float32)
    for kh in range(3):
        for kw in range(3):
            out[:, kh:kh + h, kw:kw + w, :] += g[..., kh, kw]
    return out[:, 1:-1, 1:-1, :]


def _pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2×2 max-pool and the one-hot mask of each window's (first) maximum, for the backward pass."""
    n, h, w, c = x.shape
    win = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    arg = win.argmax(axis=-1)
    mask = np.zeros(win.shape, np.float32)
    np.put_along_axis(mask, arg[..., None], 1.0, axis=-1)
    return np.take_along_axis(win, arg[..., None], axis=-1)[..., 0], mask


def _unpool(g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    n, h, w, c = g.shape
    full = (mask * g[..., None]).reshape(n, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return full.reshape(n, 2 * h, 2 * w, c)


class _Net:
    """Extractor + linear head; ``step`` takes one Adam step on a batch and returns (loss, correct)."""

    NAMES = ("conv1_w", "conv1_b", "conv2_w", "conv2_b", "head_w", "head_b")

    def __init__(self, init: ExtractorWeights, seed: int, lr: float):
        rng = np.random.Generator(np.random.PCG64([seed, 1]))
        limit = math.sqrt(6.0 / (FEATURES + CLASSES))
        self.p = {**{k: v.copy() for k, v in init.arrays().items()},
                  "head_w": rng.uniform(-limit, limit, (FEATURES, CLASSES)).astype(np.float32),
                  "head_b": np.zeros(CLASSES, np.float32)}
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.t, self.lr = 0, np.float32(lr)

    def step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        loss, correct, grads = self.loss_and_grads(x, y)
        self._adam(grads)
        return loss, correct

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int, dict[str, np.ndarray]]:
        p, n = self.p, len(y)
        c1, c2 = FILTERS
        cols1 = _windows(x)
        a1 = np.maximum(cols1 @ _kernel(p["conv1_w"]) + p["conv1_b"], 0).reshape(n, 28, 28, c1)
        p1, m1 = _pool(a1)
        cols2 = _windows(p1)
        k2 = _kernel(p["conv2_w"])
        a2 = np.maximum(cols2 @ k2 + p["conv2_b"], 0).reshape(n, 14, 14, c2)
        p2, m2 = _pool(a2)
        f = p2.reshape(n, FEATURES)
        logits = f @ p["head_w"] + p["head_b"]
        z = logits - logits.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = float(-np.log(np.maximum(prob[rows, y], 1e-30)).mean())
        correct = int((logits.argmax(axis=1) == y).sum())
        d = prob
        d[rows, y] -= 1.0
        d /= np.float32(n)
        g = {"head_w": f.T @ d, "head_b": d.sum(axis=0)}
        dz2 = (_unpool((d @ p["head_w"].T).reshape(n, 7, 7, c2), m2) * (a2 > 0)).reshape(-1, c2)
        g["conv2_w"], g["conv2_b"] = _unkernel(cols2.T @ dz2, c1), dz2.sum(axis=0)
        dp1 = _unwindows(dz2 @ k2.T, (n, 14, 14, c1))
        dz1 = (_unpool(dp1, m1) * (a1 > 0)).reshape(-1, c1)
        g["conv1_w"], g["conv1_b"] = _unkernel(cols1.T @ dz1, 1), dz1.sum(axis=0)
        return loss, correct, g

    def _adam(self, grads: dict[str, np.ndarray], b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.t += 1
        c1, c2 = np.float32(1 - b1 ** self.t), np.float32(1 - b2 ** self.t)
        for k, g in grads.items():
            g = g.astype(np.float32)
            self.m[k] = np.float32(b1) * self.m[k] + np.float32(1 - b1) * g
            self.v[k] = np.float32(b2) * self.v[k] + np.float32(1 - b2) * (g * g)
            self.p[k] = (self.p[k] - self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + np.float32(eps))
                         ).astype(np.float32)


def train_extractor(images: np.ndarray, labels: np.ndarray, *, epochs: int = 5, batch_size: int = 64,
                    lr: float = 1e-3, seed: int = 0, version: int = 2, init: ExtractorWeights | None = None,
                    on_epoch: Callable[[int, float, float], None] | None = None) -> tuple[ExtractorWeights, History]:
    """Train the convolutional layers (from ``init``, default the seeded random release) on (images, labels).

    ``images`` (n, 28, 28, 1) float32 in [0, 1] as devices feed the extractor;
    ``on_epoch(epoch, loss, accuracy)`` after each epoch.
    """
    images = np.ascontiguousarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1) or len(labels) != len(images) or not len(labels):
        raise PretrainError(f"need (n, 28, 28, 1) images with n labels, got {images.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= CLASSES:
        raise PretrainError(f"labels must lie in [0, {CLASSES})")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise PretrainError("epochs and batch_size must be at least 1 and lr positive")
    net = _Net(init or ExtractorWeights.random(seed=seed), seed, lr)
    history = History()
    with blas.single_threaded():
        for epoch in range(epochs):
            order = np.random.Generator(np.random.PCG64([seed, 2, epoch])).permutation(len(labels))
            total, correct = 0.0, 0
            for at in range(0, len(order), batch_size):
                rows = order[at:at + batch_size]
                loss, right = net.step(images[rows], labels[rows])
                total += loss * len(rows)
                correct += right
            history.loss.append(total / len(labels))
            history.accuracy.append(correct / len(labels))
            if on_epoch is not None:
                on_epoch(epoch + 1, history.loss[-1], history.accuracy[-1])
    weights = ExtractorWeights(**{k: net.p[k] for k in ("conv1_w", "conv1_b", "conv2_w", "conv2_b")},
                               version=version)
    return weights, history
