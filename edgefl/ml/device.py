"""The device's side of training: a verified extractor, private features, the batch it sends.

    fx = FeatureExtractor.open("onnxruntime", model_bytes, release, privatiser, threads=4, chunk_rows=64)
    batch = fx.batch(ids, images, labels, task="t1", round=0)    # a FeatureBatch, ready to sign

The model's bytes are checked against the published ``ModelRelease`` before a
runtime ever sees them; raw images never leave ``batch``.  Images stream
through the backend and the privatiser ``chunk_rows`` at a time
(``ml.chunk_rows``): a runtime sizes its activations to the batch it is
given (LiteRT about 150 KB per 28×28 image for the default extractor) and
noise needs about 40 bytes per value of float64 scratch, so what a batch
costs beyond its own features is bounded by the chunk, not by ``fl.items``.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from edgefl.codec import Array, MaxLen, Message, Range, message
from edgefl.ml.backends import Backend, backend_class
from edgefl.ml.export import ModelError, ModelRelease
from edgefl.ml.privacy import PrivacySpend, Privatiser

MAX_ROWS = 1024


@message("feature_batch", max_size=40 << 20)
class FeatureBatch(Message):
    """Perturbed features and labels of some of a device's items; ``features`` lie on ``grid`` (0: no DP)."""

    task: Annotated[str, MaxLen(128)]
    round: Annotated[int, Range(0, (1 << 63) - 1)]
    model: Annotated[bytes, MaxLen(32)]
    ids: Annotated[np.ndarray, Array("int64", 1, MAX_ROWS)]
    labels: Annotated[np.ndarray, Array("uint8", 1, MAX_ROWS)]
    features: Annotated[np.ndarray, Array(None, 2, MAX_ROWS * 3920)]
    grid: float
    epsilon: float
    unit: Annotated[str, MaxLen(16)]

    def __post_init__(self):
        n = len(self.ids)
        if len(self.labels) != n or self.features.shape[0] != n:
            raise ValueError(f"feature_batch: {n} ids, {len(self.labels)} labels, {self.features.shape[0]} rows")
        if self.features.dtype not in (np.float32, np.float64):
            raise ValueError(f"feature_batch: features are {self.features.dtype}, expected float32 or float64")


class FeatureExtractor:
    """Backend + privatiser for one verified model."""

    def __init__(self, backend: Backend, release: ModelRelease, privatiser: Privatiser, *, chunk_rows: int = 0):
        self.backend, self.release, self.privatiser = backend, release, privatiser
        self.chunk_rows = chunk_rows  # 0: the whole batch at once

    @classmethod
    def open(cls, backend: str, model: bytes, release: ModelRelease, privatiser: Privatiser, *,
             threads: int = 1, chunk_rows: int = 0) -> "FeatureExtractor":
        kind = backend_class(backend)
        release.check(model)  # refuses a model whose hash does not match the published one
        if kind.format != release.format:
            raise ModelError(f"backend {backend} runs {kind.format} models, the release is {release.format}")
        return cls(kind(model, threads=threads), release, privatiser, chunk_rows=chunk_rows)

    def features(self, images: np.ndarray) -> np.ndarray:
        n, step = len(images), self.chunk_rows
        if step <= 0 or n <= step:
            return self.backend.run(images)
        out = None
        for start in range(0, n, step):
            part = self.backend.run(images[start:start + step])
            if out is None:
                out = np.empty((n, *part.shape[1:]), part.dtype)
            out[start:start + len(part)] = part
        return out

    def batch(self, ids, images: np.ndarray, labels: np.ndarray, *, task: str, round: int) -> FeatureBatch:
        """Released and charged at once (the accountant's recorder keeps the spend first)."""
        rel = self.privatiser.release(np.asarray(ids, np.int64), self.features(images), task=task, round=round,
                                      chunk_rows=self.chunk_rows)
        return self._batch(ids, labels, rel, task, round)

    def draw(self, ids, images: np.ndarray, labels: np.ndarray, *, task: str,
             round: int) -> tuple[FeatureBatch, PrivacySpend | None]:
        """The batch and its quoted spend, nothing charged: the caller keeps both, records the spend and
        settles it (``PrivacyAccountant.settle``) before the batch leaves, so that a crash in between
        finishes this release on restart instead of drawing (and spending ε on) another."""
        rel = self.privatiser.release(np.asarray(ids, np.int64), self.features(images), task=task, round=round,
                                      charge=False, chunk_rows=self.chunk_rows)
        return self._batch(ids, labels, rel, task, round), rel.spend

    def _batch(self, ids, labels: np.ndarray, rel, task: str, round: int) -> FeatureBatch:
        ids = np.asarray(ids, np.int64)
        keep = np.isin(ids, rel.ids)
        return FeatureBatch(task=task, round=round, model=self.release.hash, ids=rel.ids,
                            labels=np.asarray(labels)[keep].astype(np.uint8), features=rel.values, grid=rel.grid,
                            epsilon=float(self.privatiser.epsilon), unit=self.privatiser.unit)
