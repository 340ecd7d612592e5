"""Pure-Python twin of ext/cborscan.pyx: same API, same results.

Walks CBOR item heads only, so depth and item-count limits hold before any
object is allocated.

scan(data, max_depth, max_items, whole=True) -> (status, items, offset)
    status 0: the first item holds ``items`` data items and ends at ``offset``;
    with ``whole`` it must also end the input.  Otherwise ``status`` is an
    error code and ``offset`` where the offending item starts.
"""

OK, TRUNCATED, TRAILING, INDEFINITE, RESERVED, DEPTH, ITEMS, TAG, SIMPLE = range(9)


def _allowed_tag(tag: int) -> bool:
    # RFC 8746: 40 = row-major multi-dimensional array, 64..87 = typed arrays.
    return tag == 40 or 64 <= tag <= 87


def scan(data: bytes, max_depth: int, max_items: int, whole: bool = True) -> tuple[int, int, int]:
    data = memoryview(data).cast("B")
    n = len(data)
    pos = items = 0
    stack = [1]  # items still to read in each open container; the top level holds one
    while stack:
        if stack[-1] == 0:
            stack.pop()
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
    if whole and pos != n:
        return TRAILING, items, pos
    return OK, items, pos
