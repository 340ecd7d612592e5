"""Pure-Python (numpy) twin of ext/noise.pyx: same functions, bit-identical results.

The device's privacy kernels (edgefl.ml.privacy holds the checks and the
reasoning):

normalise(x, b) -> float64 (n, d)
    each row of a finite, C-contiguous float32/float64 (n, d) array scaled
    linearly onto [−b, b] (min → −b, max → b, a constant row → 0).
two_sided(words, scale) -> (k int64, redo int64)
    one discrete Laplace draw per 64-bit word: bit 0 is the sign, bits 1..63
    an integer j and U = (j + ½)·2^-63 rounded to float64, uniform on (0, 1],
    G = ⌊−ln(U)·scale⌋; ``redo`` lists the positions drawn as (−, 0), which
    must be drawn again.
on_grid(values, k, grid, limit, out) -> None
    1-D arrays of one length; out ← (clip(rint(values / grid), −limit, limit) + k) · grid, cast to out's
    dtype (float32 or float64).

Both implementations take the logarithm from numpy's ``np.log`` (C's ``log``
may differ in the last bit); every other step is exact or a single IEEE
operation, so the twins agree bit for bit.
"""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray, b: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    scale = np.divide(2 * b, span, out=np.zeros_like(span), where=span > 0)
    out = (x - lo) * scale - b
    out[(span == 0).ravel()] = 0.0
    np.clip(out, -b, b, out=out)  # rounding may overshoot by an ulp
    return out


def two_sided(words: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    g = (words >> np.uint64(1)).astype(np.float64)  # rounds to nearest, as C's conversion does
    g += 0.5
    g *= 2.0 ** -63
    np.log(g, out=g)
    g *= -scale
    k = np.floor(g, out=g).astype(np.int64)
    negative = (words & np.uint64(1)).astype(bool)
    redo = np.flatnonzero(negative & (k == 0))  # (−, 0) would count zero twice
    np.negative(k, out=k, where=negative)
    return k, redo


def on_grid(values: np.ndarray, k: np.ndarray, grid: float, limit: int, out: np.ndarray) -> None:
    if len(k) != len(values) or len(out) != len(values):
        raise ValueError(f"on_grid: {len(values)} values, {len(k)} draws, {len(out)} outputs")
    if not 0 <= limit < 2 ** 51:
        raise ValueError(f"on_grid: limit {limit} out of range")
    if np.isnan(values).any():
        raise ValueError("on_grid: values contain NaN")
    with np.errstate(over="ignore"):  # ±inf is clipped to ±limit like any value beyond it
        q = np.clip(np.rint(np.asarray(values, np.float64) / grid), -limit, limit).astype(np.int64)
    out[...] = ((q + k) * grid).astype(out.dtype)
