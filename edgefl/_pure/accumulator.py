"""Pure-Python twin of ext/accumulator.pyx: multi-exponentiation over gmpy2, same API, same results.

multi_exp(bases, exponents, modulus) -> int
    ∏ bases[i]^exponents[i] mod modulus by Straus' method with sliding
    windows: one squaring chain shared by all bases, a table of odd powers
    per base, window width chosen per exponent length.  A negative exponent
    raises the base's inverse (ValueError when the base is not invertible).
multi_exp_joint(bases, exponents, modulus, group=8) -> int
    The same product by the joint-bit method (the design's Protocol 3): the
    2^k products of each group of k ≤ ``group`` bases precomputed, then one
    squaring chain over the bits of all exponents and one multiplication per
    group per bit.  Exponents must be non-negative.
window(bits) -> int
    The sliding-window width used for an exponent of ``bits`` bits.
The modulus must be odd and > 1.
"""

from __future__ import annotations

from gmpy2 import invert, mpz


def window(bits: int) -> int:
    """Width w minimising 2^(w-1) table entries + bits/(w+1) window multiplications."""
    best, cost = 1, bits / 2 + 1
    for w in range(2, 9):
        c = (1 << (w - 1)) + bits / (w + 1)
        if c < cost:
            best, cost = w, c
    return best


def _modulus(modulus) -> mpz:
    n = mpz(modulus)
    if n < 3 or n % 2 == 0:
        raise ValueError("modulus must be odd and > 1")
    return n


def _pairs(bases, exponents) -> list:
    bases, exponents = list(bases), list(exponents)
    if len(bases) != len(exponents):
        raise ValueError(f"{len(bases)} bases but {len(exponents)} exponents")
    return list(zip(bases, exponents))


def _windows(e: int, w: int):
    """(bit position, odd digit) of each sliding window of e, most significant first."""
    s = format(e, "b")
    top = len(s) - 1
    i = s.find("1")
    while i != -1:
        chunk = s[i:i + w].rstrip("0")
        yield top - (i + len(chunk) - 1), int(chunk, 2)
        i = s.find("1", i + len(chunk))


def multi_exp(bases, exponents, modulus) -> int:
    n = _modulus(modulus)
    schedule: list[list] = []  # schedule[pos]: table entries to multiply in after squaring at bit pos
    for i, (b, e) in enumerate(_pairs(bases, exponents)):
        b, e = mpz(b) % n, int(e)
        if e == 0:
            continue
        if e < 0:
            try:
                b = invert(b, n)
            except ZeroDivisionError:
                raise ValueError(f"base {i} is not invertible modulo the modulus") from None
            e = -e
        w = window(e.bit_length())
        table = [b]
        if w > 1:
            b2 = b * b % n
            for _ in range((1 << (w - 1)) - 1):
                table.append(table[-1] * b2 % n)
        if len(schedule) < e.bit_length():
            schedule.extend([] for _ in range(e.bit_length() - len(schedule)))
        for pos, digit in _windows(e, w):
            schedule[pos].append(table[digit >> 1])
    acc = mpz(1)
    for entries in reversed(schedule):
        if acc != 1:
            acc = acc * acc % n
        for t in entries:
            acc = acc * t % n
    return int(acc % n)


def multi_exp_joint(bases, exponents, modulus, group: int = 8) -> int:
    n = _modulus(modulus)
    if not 1 <= group <= 16:
        raise ValueError("group must be in [1, 16]")
    pairs = [(mpz(b) % n, int(e)) for b, e in _pairs(bases, exponents)]
    if any(e < 0 for _, e in pairs):
        raise ValueError("multi_exp_joint needs non-negative exponents")
    bits = max((e.bit_length() for _, e in pairs), default=0)
    chunks = []  # (table of 2^k subset products, per-bit masks from the top bit down)
    for start in range(0, len(pairs), group):
        chunk = pairs[start:start + group]
        table = [mpz(1)] * (1 << len(chunk))
        for mask in range(1, len(table)):
            low = mask & -mask
            base = chunk[low.bit_length() - 1][0]
            table[mask] = base if mask == low else table[mask ^ low] * base % n
        columns = [format(e, f"0{bits}b") if bits else "" for _, e in chunk]
        masks = [sum(1 << j for j, col in enumerate(columns) if col[p] == "1") for p in range(bits)]
        chunks.append((table, masks))
    acc = mpz(1)
    for p in range(bits):
        if acc != 1:
            acc = acc * acc % n
        for table, masks in chunks:
            if masks[p]:
                acc = acc * table[masks[p]] % n
    return int(acc % n)
