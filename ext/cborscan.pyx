# cython: language_level=3
"""Structural pre-scan of a CBOR item before cbor2 decodes it.

Pure-Python twin: edgefl/_pure/cborscan.py (same API, same results).
Walks item heads only, so limits on depth and item count are enforced before
any Python object is allocated.

scan(data, max_depth, max_items, whole=True, canonical=False) -> (status, items, offset)
    status 0: the first item holds ``items`` data items and ends at ``offset``;
    with ``whole`` it must also end the input.  Otherwise ``status`` is an
    error code and ``offset`` where the offending item starts.  With
    ``canonical``, status 9 (NOT_CANONICAL) says the item is well formed
    within the limits but not in the form edgefl's encoder writes (RFC 8949
    §4.2 as cbor2 implements it): shortest heads; floats in the shortest
    width that holds the value exactly, NaN as f97e00; map keys ordered by
    encoded length, then bytewise (only integer and string keys); only the
    typed-array tags the encoder writes, tag 40 only around arrays of other
    than one dimension.  ``offset`` then points at the first such item; the
    whole input was still scanned against the limits.
"""
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcmp, memcpy

# Error codes shared with the twin (edgefl.codec maps them to exceptions).
DEF OK = 0
DEF TRUNCATED = 1
DEF TRAILING = 2
DEF INDEFINITE = 3
DEF RESERVED = 4
DEF DEPTH = 5
DEF ITEMS = 6
DEF TAG = 7
DEF SIMPLE = 8
DEF NOT_CANONICAL = 9


cdef inline bint _allowed_tag(uint64_t tag) nogil:
    # RFC 8746: 40 = row-major multi-dimensional array, 64..87 = typed arrays.
    return tag == 40 or (64 <= tag <= 87)


cdef inline bint _written_tag(uint64_t tag) nogil:
    # The little-endian typed arrays edgefl's encoder writes (uint8, clamped and big-endian ones decode only).
    return tag == 40 or tag == 64 or tag == 69 or tag == 70 or tag == 71 or tag == 72 or tag == 77 \
        or tag == 78 or tag == 79 or tag == 84 or tag == 85 or tag == 86


cdef inline bint _half_exact(uint32_t bits) nogil:
    """Whether the finite, non-NaN float32 with these bits is exactly a float16."""
    cdef int exp = (bits >> 23) & 0xFF
    cdef uint32_t mant = bits & 0x7FFFFF, sig
    cdef int e, drop
    if exp == 255:
        return True  # infinity
    if exp == 0:
        return mant == 0  # zero; float32 subnormals are far below float16's range
    e = exp - 127
    if e > 15 or e < -24:
        return False
    if e >= -14:
        return (mant & 0x1FFF) == 0  # a normal float16 keeps 10 of the 23 mantissa bits
    sig = mant | 0x800000  # float16 subnormal: value must be a multiple of 2^-24
    drop = -(e + 1)
    return (sig & ((1u << drop) - 1)) == 0


cdef inline bint _float_canonical(const unsigned char *p, int ai) nogil:
    cdef uint16_t h
    cdef uint32_t f
    cdef uint64_t d
    cdef float fv
    cdef double dv
    cdef int k
    if ai == 25:
        h = (p[0] << 8) | p[1]
        if (h & 0x7C00) == 0x7C00 and (h & 0x3FF):
            return h == 0x7E00  # NaN: only the encoder's f97e00
        return True
    if ai == 26:
        f = 0
        for k in range(4):
            f = (f << 8) | p[k]
        if (f & 0x7F800000) == 0x7F800000 and (f & 0x7FFFFF):
            return False  # NaN is written as float16
        return not _half_exact(f)
    d = 0
    for k in range(8):
        d = (d << 8) | p[k]
    if (d >> 52 & 0x7FF) == 0x7FF:
        return False  # NaN or infinity: float16 holds both
    memcpy(&dv, &d, 8)
    if dv > 3.4028234663852886e38 or dv < -3.4028234663852886e38:
        return True
    fv = <float>dv
    return <double>fv != dv


def scan(const unsigned char[::1] data not None, Py_ssize_t max_depth, Py_ssize_t max_items, bint whole=True,
         bint canonical=False):
    cdef Py_ssize_t n = data.shape[0], pos = 0, items = 0, top = 0, start, size, k, key_len, first_bad = -1
    cdef uint64_t arg, remaining
    cdef unsigned char ib, major, ai
    cdef uint64_t *stack = <uint64_t *>malloc((max_depth + 2) * sizeof(uint64_t))
    cdef Py_ssize_t *prev_start = <Py_ssize_t *>malloc((max_depth + 2) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *prev_len = <Py_ssize_t *>malloc((max_depth + 2) * sizeof(Py_ssize_t))
    cdef unsigned char *is_map = <unsigned char *>malloc(max_depth + 2)
    cdef bint bad
    if stack == NULL or prev_start == NULL or prev_len == NULL or is_map == NULL:
        free(stack); free(prev_start); free(prev_len); free(is_map)
        raise MemoryError()
    try:
        stack[0] = 1
        is_map[0] = 0
        while top >= 0:
            if stack[top] == 0:
                top -= 1
                continue
            stack[top] -= 1
            start = pos
            if pos >= n:
                return TRUNCATED, items, start
            ib = data[pos]
            pos += 1
            major = ib >> 5
            ai = ib & 31
            if ai < 24:
                arg = ai
            elif ai <= 27:
                size = 1 << (ai - 24)
                if size > n - pos:
                    return TRUNCATED, items, start
                arg = 0
                for k in range(size):
                    arg = (arg << 8) | data[pos + k]
                pos += size
            elif ai == 31:
                return INDEFINITE, items, start
            else:
                return RESERVED, items, start
            items += 1
            if items > max_items:
                return ITEMS, items, start
            if canonical and first_bad < 0:
                bad = False
                if major == 7:
                    bad = ai >= 25 and not _float_canonical(&data[start + 1], ai)
                elif ai == 24:
                    bad = arg < 24
                elif ai == 25:
                    bad = arg < 0x100
                elif ai == 26:
                    bad = arg < 0x10000
                elif ai == 27:
                    bad = arg < 0x100000000
                if not bad and major == 6:
                    bad = not _written_tag(arg) or (arg == 40 and pos + 1 < n and data[pos + 1] == 0x81)
                if not bad and is_map[top] and stack[top] % 2 == 1:  # a key: compare with the previous one
                    if major > 3 or (major >= 2 and arg > <uint64_t>(n - pos)):
                        bad = True
                    else:
                        key_len = pos - start + (<Py_ssize_t>arg if major >= 2 else 0)
                        if prev_len[top] >= 0 and (key_len < prev_len[top] or (
                                key_len == prev_len[top] and
                                memcmp(&data[start], &data[prev_start[top]], key_len) <= 0)):
                            bad = True
                        prev_start[top] = start
                        prev_len[top] = key_len
                if bad:
                    first_bad = start
            remaining = <uint64_t>(n - pos)
            if major == 2 or major == 3:
                if arg > remaining:
                    return TRUNCATED, items, start
                pos += <Py_ssize_t>arg
                continue
            if major == 4:
                if arg > remaining:
                    return TRUNCATED, items, start
            elif major == 5:
                if arg > remaining // 2:
                    return TRUNCATED, items, start
                arg *= 2
            elif major == 6:
                if not _allowed_tag(arg):
                    return TAG, items, start
                arg = 1
            elif major == 7:
                if ai < 20 or ai == 24:
                    return SIMPLE, items, start
                continue
            else:
                continue  # major 0 and 1: integers
            if arg:
                if top >= max_depth:
                    return DEPTH, items, start
                top += 1
                stack[top] = arg
                is_map[top] = major == 5
                prev_len[top] = -1
        if whole and pos != n:
            return TRAILING, items, pos
        if first_bad >= 0:
            return NOT_CANONICAL, items, first_bad
        return OK, items, pos
    finally:
        free(stack)
        free(prev_start)
        free(prev_len)
        free(is_map)
