# cython: language_level=3
"""The device's privacy kernels: normalisation and discrete Laplace noise, fused loops.

Pure-Python twin: edgefl/_pure/noise.py (same API, bit-identical results; the
API is described there).  numpy spends a pass over memory per operation; here
each step is one loop.  The logarithm is numpy's ``np.log`` in both, since
C's ``log`` may differ in the last bit; everything else is exact or a single
IEEE operation, and the build turns floating-point contraction off
(``-ffp-contract=off``) so that no multiply-add is fused behind our back.
"""
cimport cython
from libc.stdint cimport int64_t, uint64_t

import numpy as np

cdef double TWO_M63 = 2.0 ** -63

ctypedef fused real:
    float
    double


def normalise(const real[:, ::1] x, double b):
    cdef Py_ssize_t n = x.shape[0], d = x.shape[1], i, j
    cdef double lo, hi, v, scale, two_b = 2 * b
    out = np.empty((n, d), np.float64)
    cdef double[:, ::1] o = out
    with nogil:
        for i in range(n):
            lo = hi = x[i, 0] if d else 0.0
            for j in range(1, d):
                v = x[i, j]
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
            if hi - lo > 0:
                scale = two_b / (hi - lo)
                for j in range(d):
                    v = (x[i, j] - lo) * scale - b
                    o[i, j] = -b if v < -b else (b if v > b else v)  # rounding may overshoot by an ulp
            else:
                for j in range(d):
                    o[i, j] = 0.0
    return out


def two_sided(const uint64_t[::1] words not None, double scale):
    cdef Py_ssize_t n = words.shape[0], i, r = 0
    cdef int64_t k, negative
    cdef double minus = -scale
    g_arr = np.empty(n, np.float64)
    k_arr = np.empty(n, np.int64)
    redo_arr = np.empty(n, np.int64)  # only the first few entries are ever written
    cdef double[::1] g = g_arr
    cdef int64_t[::1] ks = k_arr, redo = redo_arr
    with nogil:
        for i in range(n):  # bits 1..63: U = (j + 1/2)·2^-63, rounded to the nearest double
            g[i] = (<double>(<int64_t>(words[i] >> 1)) + 0.5) * TWO_M63
    np.log(g_arr, out=g_arr)
    with nogil:
        for i in range(n):  # branch-free: the sign bit is a coin flip, a branch on it mispredicts half the time
            k = <int64_t>(g[i] * minus)  # ln U ≤ 0, so the product is ≥ 0 and truncation is floor
            negative = <int64_t>(words[i] & 1)
            redo[r] = i
            r += negative & (k == 0)  # (−, 0) would count zero twice: redraw
            ks[i] = (k ^ -negative) + negative  # −k when negative
    return k_arr, redo_arr[:r].copy()


ctypedef fused out_real:
    float
    double


def on_grid(const double[::1] values not None, const int64_t[::1] k not None, double grid, int64_t limit,
            out_real[::1] out not None):
    cdef Py_ssize_t n = values.shape[0], i
    cdef double v, lim = <double>limit
    cdef bint nan = False
    if k.shape[0] != n or out.shape[0] != n:
        raise ValueError(f"on_grid: {n} values, {k.shape[0]} draws, {out.shape[0]} outputs")
    if not 0 <= limit < 2 ** 51:
        raise ValueError(f"on_grid: limit {limit} out of range")
    with nogil:
        for i in range(n):
            v = values[i] / grid
            nan |= v != v
            # clipping before rounding gives the same integer (rint is monotone and ±limit are integers);
            # then adding and subtracting 1.5·2^52 rounds to nearest, ties to even, like rint, without a call
            v = -lim if v < -lim else (lim if v > lim else v)
            v = (v + 6755399441055744.0) - 6755399441055744.0
            out[i] = <out_real>(<double>(<int64_t>v + k[i]) * grid)
    if nan:
        raise ValueError("on_grid: values contain NaN")
