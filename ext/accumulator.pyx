# cython: language_level=3
"""Multi-exponentiation over GMP for the RSA accumulator's batch checks.

Pure-Python twin: edgefl/_pure/accumulator.py (same API, same results).

multi_exp(bases, exponents, modulus) -> int
    ∏ bases[i]^exponents[i] mod modulus by Straus' method with sliding
    windows; a negative exponent raises the base's inverse.
multi_exp_joint(bases, exponents, modulus, group=8) -> int
    The same product by the joint-bit method (the design's Protocol 3).
window(bits) -> int
    The sliding-window width used for an exponent of ``bits`` bits.
The modulus must be odd and > 1.

Arithmetic is Montgomery multiplication on GMP's mpn layer: mpn_mul_n or
mpn_sqr for the product, then word-by-word REDC with mpn_addmul_1 (what
mpz_powm does inside, and about 25 % cheaper than mpz_mul + mpz_tdiv_r at
2048 bits).  Values stay below R = 2^(limb bits × limbs) and are fully
reduced once at the end.

Numbers cross into GMP as bytes (mpz_import / mpz_export): this module links
the system libgmp while gmpy2 carries its own copy, and GMP objects never
pass from one to the other.  The arithmetic runs without the GIL when the
build links the system libgmp (EDGEFL_GMP_NOGIL), so threads verify in
parallel.
"""
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset

cdef extern from "gmp.h" nogil:
    ctypedef unsigned long mp_bitcnt_t
    ctypedef unsigned long mp_limb_t  # the width is taken from sizeof(), never assumed
    ctypedef long mp_size_t
    ctypedef struct __mpz_struct:
        pass
    ctypedef __mpz_struct *mpz_ptr
    void mpz_init(mpz_ptr)
    void mpz_clear(mpz_ptr)
    void mpz_set_ui(mpz_ptr, unsigned long)
    void mpz_mul_2exp(mpz_ptr, mpz_ptr, mp_bitcnt_t)
    void mpz_tdiv_r(mpz_ptr, mpz_ptr, mpz_ptr)
    int mpz_invert(mpz_ptr, mpz_ptr, mpz_ptr)
    int mpz_cmp_ui(mpz_ptr, unsigned long)
    int mpz_tstbit(mpz_ptr, mp_bitcnt_t)
    size_t mpz_sizeinbase(mpz_ptr, int)
    void mpz_import(mpz_ptr, size_t, int, size_t, int, size_t, const void *)
    void *mpz_export(void *, size_t *, int, size_t, int, size_t, mpz_ptr)
    void mpn_mul_n(mp_limb_t *, const mp_limb_t *, const mp_limb_t *, mp_size_t)
    void mpn_sqr(mp_limb_t *, const mp_limb_t *, mp_size_t)
    mp_limb_t mpn_addmul_1(mp_limb_t *, const mp_limb_t *, mp_size_t, mp_limb_t)
    mp_limb_t mpn_add_n(mp_limb_t *, const mp_limb_t *, const mp_limb_t *, mp_size_t)
    mp_limb_t mpn_sub_n(mp_limb_t *, const mp_limb_t *, const mp_limb_t *, mp_size_t)

cdef extern from *:
    """
    #ifndef EDGEFL_GMP_NOGIL
    #define EDGEFL_GMP_NOGIL 0
    #endif
    """
    int EDGEFL_GMP_NOGIL


def window(Py_ssize_t bits):
    """Width w minimising 2^(w-1) table entries + bits/(w+1) window multiplications."""
    cdef int w, best = 1
    cdef double c, cost = bits / 2.0 + 1
    for w in range(2, 9):
        c = (1 << (w - 1)) + bits / (w + 1.0)
        if c < cost:
            best, cost = w, c
    return best


# --------------------------------------------------------------------------- conversions


cdef void _load(mpz_ptr z, object value):
    """z = value for a non-negative Python int."""
    cdef bytes raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    mpz_import(z, len(raw), 1, 1, 1, 0, <const char *>raw)


cdef object _unload(mpz_ptr z):
    cdef size_t count = (mpz_sizeinbase(z, 2) + 7) // 8, written = 0
    if mpz_cmp_ui(z, 0) == 0:
        return 0
    cdef unsigned char *buf = <unsigned char *>malloc(count)
    if buf == NULL:
        raise MemoryError()
    try:
        mpz_export(buf, &written, 1, 1, 1, 0, z)
        return int.from_bytes(buf[:written], "big")
    finally:
        free(buf)


# --------------------------------------------------------------------------- Montgomery arithmetic


cdef class _Mont:
    """Montgomery context for an odd modulus of n limbs, with scratch space and an mpz workspace."""
    cdef mp_size_t n
    cdef mp_limb_t *mod
    cdef mp_limb_t ninv  # -mod^{-1} mod 2^(limb bits)
    cdef mp_limb_t *wide  # 2n limbs of product scratch
    cdef __mpz_struct zmod, ztmp

    def __cinit__(self, object modulus):
        mpz_init(&self.zmod)
        mpz_init(&self.ztmp)
        _load(&self.zmod, modulus)
        self.n = (modulus.bit_length() + 8 * sizeof(mp_limb_t) - 1) // (8 * sizeof(mp_limb_t))
        self.mod = <mp_limb_t *>calloc(self.n, sizeof(mp_limb_t))
        self.wide = <mp_limb_t *>calloc(2 * self.n, sizeof(mp_limb_t))
        if self.mod == NULL or self.wide == NULL:
            raise MemoryError()
        self.export(self.mod, &self.zmod)
        cdef mp_limb_t inv = self.mod[0]  # Newton: each step doubles the correct low bits (3 -> 96)
        cdef int i
        for i in range(5):
            inv *= 2 - self.mod[0] * inv
        self.ninv = -inv

    def __dealloc__(self):
        mpz_clear(&self.zmod)
        mpz_clear(&self.ztmp)
        free(self.mod)
        free(self.wide)

    cdef void export(self, mp_limb_t *out, mpz_ptr z):
        """out[0:n] = z (z < R), least significant limb first."""
        cdef size_t count = 0
        memset(out, 0, self.n * sizeof(mp_limb_t))
        mpz_export(out, &count, -1, sizeof(mp_limb_t), 0, 0, z)

    cdef int enter(self, mp_limb_t *out, object value, bint invert) except -1:
        """out = value (or its inverse) in Montgomery form: x·R mod N."""
        _load(&self.ztmp, value)
        if invert and not mpz_invert(&self.ztmp, &self.ztmp, &self.zmod):
            return 1
        mpz_mul_2exp(&self.ztmp, &self.ztmp, 8 * sizeof(mp_limb_t) * self.n)
        mpz_tdiv_r(&self.ztmp, &self.ztmp, &self.zmod)
        self.export(out, &self.ztmp)
        return 0

    cdef object leave(self, mp_limb_t *x):
        """The integer x·R^{-1} mod N, fully reduced."""
        memset(self.wide, 0, 2 * self.n * sizeof(mp_limb_t))
        memcpy(self.wide, x, self.n * sizeof(mp_limb_t))
        self.redc(x, self.wide)
        mpz_import(&self.ztmp, self.n, -1, sizeof(mp_limb_t), 0, 0, x)
        mpz_tdiv_r(&self.ztmp, &self.ztmp, &self.zmod)
        return _unload(&self.ztmp)

    cdef inline void redc(self, mp_limb_t *r, mp_limb_t *t) noexcept nogil:
        """r ≡ t·R^{-1} (mod N), r < R, for any t < R² (2n limbs, clobbered): GMP's redc_1 on public calls."""
        cdef mp_size_t i
        cdef mp_limb_t *up = t
        for i in range(self.n):
            up[0] = mpn_addmul_1(up, self.mod, self.n, up[0] * self.ninv)  # clears up[0]; keep the carry there
            up += 1
        if mpn_add_n(r, up, t, self.n):
            mpn_sub_n(r, r, self.mod, self.n)

    cdef inline void mul(self, mp_limb_t *r, mp_limb_t *a, mp_limb_t *b) noexcept nogil:
        if a == b:
            mpn_sqr(self.wide, a, self.n)
        else:
            mpn_mul_n(self.wide, a, b, self.n)
        self.redc(r, self.wide)


cdef object _modulus(object modulus):
    n = int(modulus)
    if n < 3 or n % 2 == 0:
        raise ValueError("modulus must be odd and > 1")
    return n


cdef list _pairs(bases, exponents):
    bases, exponents = list(bases), list(exponents)
    if len(bases) != len(exponents):
        raise ValueError(f"{len(bases)} bases but {len(exponents)} exponents")
    return list(zip(bases, exponents))


# --------------------------------------------------------------------------- Straus


cdef Py_ssize_t _windows(mpz_ptr e, int w, Py_ssize_t *pos, Py_ssize_t *digit) noexcept nogil:
    """Sliding windows of e > 0, most significant first: (bit position, odd digit); returns their number."""
    cdef Py_ssize_t j = <Py_ssize_t>mpz_sizeinbase(e, 2) - 1, lo, q, d, count = 0
    while j >= 0:
        if not mpz_tstbit(e, j):
            j -= 1
            continue
        lo = j - w + 1 if j - w + 1 > 0 else 0
        while not mpz_tstbit(e, lo):
            lo += 1
        d = 0
        for q in range(j, lo - 1, -1):
            d = 2 * d + mpz_tstbit(e, q)
        pos[count] = lo
        digit[count] = d
        count += 1
        j = lo - 1
    return count


cdef bint _straus(_Mont m, mp_limb_t *acc, Py_ssize_t top, Py_ssize_t *start, mp_limb_t **entry) noexcept nogil:
    """The shared squaring chain; bit p's window multiplications are entry[start[p]:start[p + 1]].

    Returns False when nothing was multiplied in (the product is 1).
    """
    cdef Py_ssize_t p, k
    cdef bint started = False
    for p in range(top, -1, -1):
        if started:
            m.mul(acc, acc, acc)
        for k in range(start[p], start[p + 1]):
            if started:
                m.mul(acc, acc, entry[k])
            else:
                memcpy(acc, entry[k], m.n * sizeof(mp_limb_t))
                started = True
    return started


def multi_exp(bases, exponents, modulus):
    cdef Py_ssize_t t, j, k, entries = 0, total_bits = 0, top = -1, count, events = 0, size, offset = 0
    N = _modulus(modulus)
    pairs = []
    for index, (b, e) in enumerate(_pairs(bases, exponents)):
        e = int(e)
        if e:
            pairs.append((int(b) % N, e, index))
    t = len(pairs)
    widths = []
    for b, e, _ in pairs:
        w = window(abs(e).bit_length())
        widths.append(w)
        entries += 1 << (w - 1)
        total_bits += abs(e).bit_length()
        top = max(top, abs(e).bit_length() - 1)
    cdef _Mont m = _Mont(N)
    cdef mp_size_t n = m.n
    cdef __mpz_struct ez
    mpz_init(&ez)
    cdef mp_limb_t *table = <mp_limb_t *>malloc((entries + 2) * n * sizeof(mp_limb_t))
    cdef mp_limb_t *acc = table + entries * n
    cdef mp_limb_t *sq = acc + n
    cdef Py_ssize_t *pos = <Py_ssize_t *>malloc((total_bits or 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *digit = <Py_ssize_t *>malloc((total_bits or 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *owner = <Py_ssize_t *>malloc((total_bits or 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *start = <Py_ssize_t *>calloc(top + 3, sizeof(Py_ssize_t))
    cdef mp_limb_t **entry = <mp_limb_t **>malloc((total_bits or 1) * sizeof(mp_limb_t *))
    cdef bint started
    try:
        if table == NULL or pos == NULL or digit == NULL or owner == NULL or start == NULL or entry == NULL:
            raise MemoryError()
        # Per base: odd powers b, b^3, ..., b^(2^w - 1) and the windows of its exponent.
        for k in range(t):
            b, e, index = pairs[k]
            if m.enter(table + offset * n, b, e < 0):
                raise ValueError(f"base {index} is not invertible modulo the modulus")
            size = 1 << (widths[k] - 1)
            if size > 1:
                m.mul(sq, table + offset * n, table + offset * n)
                for j in range(1, size):
                    m.mul(table + (offset + j) * n, table + (offset + j - 1) * n, sq)
            _load(&ez, abs(e))
            count = _windows(&ez, widths[k], pos + events, digit + events)
            for j in range(events, events + count):
                owner[j] = offset + (digit[j] >> 1)
                start[pos[j] + 1] += 1
            events += count
            offset += size
        # Counting sort by bit position, then the squaring chain.
        for k in range(top + 1):
            start[k + 1] += start[k]
        for j in range(events):
            entry[start[pos[j]]] = table + owner[j] * n
            start[pos[j]] += 1
        for k in range(top + 1, 0, -1):  # the fill moved each start one bucket on: move back
            start[k] = start[k - 1]
        start[0] = 0
        if EDGEFL_GMP_NOGIL:
            with nogil:
                started = _straus(m, acc, top, start, entry)
        else:
            started = _straus(m, acc, top, start, entry)
        return m.leave(acc) if started else 1 % N
    finally:
        mpz_clear(&ez)
        free(table)
        free(pos)
        free(digit)
        free(owner)
        free(start)
        free(entry)


# --------------------------------------------------------------------------- joint bits (Protocol 3)


cdef bint _joint(_Mont m, mp_limb_t *acc, Py_ssize_t bits, Py_ssize_t chunks, int width, unsigned int *masks,
                 mp_limb_t *table) noexcept nogil:
    cdef Py_ssize_t p, c
    cdef unsigned int mask
    cdef bint started = False
    cdef mp_limb_t *entry
    for p in range(bits):
        if started:
            m.mul(acc, acc, acc)
        for c in range(chunks):
            mask = masks[p * chunks + c]
            if mask:
                entry = table + ((c << width) + mask) * m.n
                if started:
                    m.mul(acc, acc, entry)
                else:
                    memcpy(acc, entry, m.n * sizeof(mp_limb_t))
                    started = True
    return started


def multi_exp_joint(bases, exponents, modulus, int group=8):
    N = _modulus(modulus)
    if not 1 <= group <= 16:
        raise ValueError("group must be in [1, 16]")
    pairs = [(int(b) % N, int(e)) for b, e in _pairs(bases, exponents)]
    if any(e < 0 for _, e in pairs):
        raise ValueError("multi_exp_joint needs non-negative exponents")
    cdef Py_ssize_t t = len(pairs), bits = max((e.bit_length() for _, e in pairs), default=0)
    cdef Py_ssize_t chunks = (t + group - 1) // group, c, j, p, mask, low, base
    cdef _Mont m = _Mont(N)
    cdef mp_size_t n = m.n
    cdef __mpz_struct ez
    mpz_init(&ez)
    cdef mp_limb_t *table = <mp_limb_t *>malloc(((chunks << group) + 1) * n * sizeof(mp_limb_t))
    cdef mp_limb_t *acc = table + (chunks << group) * n
    cdef unsigned int *masks = <unsigned int *>calloc((bits * chunks) or 1, sizeof(unsigned int))
    cdef bint started
    try:
        if table == NULL or masks == NULL:
            raise MemoryError()
        for c in range(chunks):
            chunk = pairs[c * group:(c + 1) * group]
            base = c << group
            for mask in range(1, 1 << len(chunk)):  # all 2^k subset products of the chunk's bases
                low = mask & -mask
                j = low.bit_length() - 1
                if mask == low:
                    m.enter(table + (base + mask) * n, chunk[j][0], False)
                else:
                    m.mul(table + (base + mask) * n, table + (base + (mask ^ low)) * n, table + (base + low) * n)
            for j in range(len(chunk)):
                _load(&ez, chunk[j][1])
                for p in range(bits):
                    if mpz_tstbit(&ez, bits - 1 - p):
                        masks[p * chunks + c] |= 1u << j
        if EDGEFL_GMP_NOGIL:
            with nogil:
                started = _joint(m, acc, bits, chunks, group, masks, table)
        else:
            started = _joint(m, acc, bits, chunks, group, masks, table)
        return m.leave(acc) if started else 1 % N
    finally:
        mpz_clear(&ez)
        free(table)
        free(masks)
