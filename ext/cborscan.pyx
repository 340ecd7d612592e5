# cython: language_level=3
"""Structural pre-scan of a CBOR item before cbor2 decodes it.

Pure-Python twin: edgefl/_pure/cborscan.py (same API, same results).
Walks item heads only, so limits on depth and item count are enforced before
any Python object is allocated.

scan(data, max_depth, max_items, whole=True) -> (status, items, offset)
    status 0: the first item holds ``items`` data items and ends at ``offset``;
    with ``whole`` it must also end the input.  Otherwise ``status`` is an
    error code and ``offset`` where the offending item starts.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free

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


cdef inline bint _allowed_tag(uint64_t tag) nogil:
    # RFC 8746: 40 = row-major multi-dimensional array, 64..87 = typed arrays.
    return tag == 40 or (64 <= tag <= 87)


def scan(const unsigned char[::1] data not None, Py_ssize_t max_depth, Py_ssize_t max_items, bint whole=True):
    cdef Py_ssize_t n = data.shape[0], pos = 0, items = 0, top = 0, start, size, k
    cdef uint64_t arg, remaining
    cdef unsigned char ib, major, ai
    cdef uint64_t *stack = <uint64_t *>malloc((max_depth + 2) * sizeof(uint64_t))
    if stack == NULL:
        raise MemoryError()
    try:
        stack[0] = 1
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
        if whole and pos != n:
            return TRAILING, items, pos
        return OK, items, pos
    finally:
        free(stack)
