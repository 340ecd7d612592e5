"""Pure-Python twin of ext/cborscan.pyx: same API, same results.

Walks CBOR item heads only, so depth and item-count limits hold before any
object is allocated.

scan(data, max_depth, max_items, whole=True, canonical=False) -> (status, items, offset)
    status 0: the first item holds ``items`` data items and ends at ``offset``;
    with ``whole`` it must also end the input.  Otherwise ``status`` is an
    error code and ``offset`` where the offending item starts.  With
    ``canonical``, status 9 (NOT_CANONICAL) says the item is well formed
    within the limits but not in the form edgefl's encoder writes (shortest
    heads and floats, NaN as f97e00, map keys by encoded length then bytes,
    only the typed-array tags the encoder writes, tag 40 only around arrays of
    other than one dimension); ``offset`` points at the first such item.
"""

import math
import struct

OK, TRUNCATED, TRAILING, INDEFINITE, RESERVED, DEPTH, ITEMS, TAG, SIMPLE, NOT_CANONICAL = range(10)
_WRITTEN_TAGS = frozenset({40, 64, 69, 70, 71, 72, 77, 78, 79, 84, 85, 86})
_SHORTEST = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}


def _allowed_tag(tag: int) -> bool:
    # RFC 8746: 40 = row-major multi-dimensional array, 64..87 = typed arrays.
    return tag == 40 or 64 <= tag <= 87


def _fits(value: float, fmt: str) -> bool:
    try:
        return struct.unpack(fmt, struct.pack(fmt, value))[0] == value
    except OverflowError:
        return False


def _float_canonical(raw: bytes, ai: int) -> bool:
    value = struct.unpack({25: ">e", 26: ">f", 27: ">d"}[ai], raw)[0]
    if math.isnan(value):
        return raw == b"\x7e\x00"
    if ai == 25:
        return True
    if ai == 26:
        return not _fits(value, ">e")
    return not math.isinf(value) and not _fits(value, ">f")


def scan(data: bytes, max_depth: int, max_items: int, whole: bool = True,
         canonical: bool = False) -> tuple[int, int, int]:
    data = memoryview(data).cast("B")
    n = len(data)
    pos = items = 0
    first_bad = -1
    stack = [1]  # items still to read in each open container; the top level holds one
    maps = [False]  # whether each open container is a map
    prev_key: list = [None]  # each open map's previous key bytes
    while stack:
        if stack[-1] == 0:
            stack.pop()
            maps.pop()
            prev_key.pop()
            continue
        stack[-1] -= 1
        start = pos
        if pos >= n:
            return TRUNCATED, items, start
        ib = data[pos]
        pos += 1
        major, ai = ib >> 5, ib & 31
        if ai < 24:
            arg = ai
        elif ai <= 27:
            size = 1 << (ai - 24)
            if size > n - pos:
                return TRUNCATED, items, start
            arg = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        elif ai == 31:
            return INDEFINITE, items, start
        else:
            return RESERVED, items, start
        items += 1
        if items > max_items:
            return ITEMS, items, start
        if canonical and first_bad < 0:
            if major == 7:
                bad = ai >= 25 and not _float_canonical(bytes(data[start + 1:pos]), ai)
            else:
                bad = ai >= 24 and arg < _SHORTEST[ai]
            if not bad and major == 6:
                bad = arg not in _WRITTEN_TAGS or (arg == 40 and pos + 1 < n and data[pos + 1] == 0x81)
            if not bad and maps[-1] and stack[-1] % 2 == 1:  # a key: compare with the previous one
                if major > 3 or (major >= 2 and arg > n - pos):
                    bad = True
                else:
                    key = bytes(data[start:pos + (arg if major >= 2 else 0)])
                    prev = prev_key[-1]
                    bad = prev is not None and (len(key), key) <= (len(prev), prev)
                    prev_key[-1] = key
            if bad:
                first_bad = start
        remaining = n - pos
        if major in (2, 3):
            if arg > remaining:
                return TRUNCATED, items, start
            pos += arg
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
            if len(stack) - 1 >= max_depth:
                return DEPTH, items, start
            stack.append(arg)
            maps.append(major == 5)
            prev_key.append(None)
    if whole and pos != n:
        return TRAILING, items, pos
    if first_bad >= 0:
        return NOT_CANONICAL, items, first_bad
    return OK, items, pos
