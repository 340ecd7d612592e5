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

Numbers cross into GMP as big-endian bytes (mpz_import / mpz_export): this
module links the system libgmp, gmpy2 carries its own copy, and GMP objects
must never pass from one to the other.  The arithmetic runs without the GIL
when the build links the system libgmp (EDGEFL_GMP_NOGIL), so worker threads
can verify in parallel.
"""
from libc.stdlib cimport malloc, calloc, free

cdef extern from "gmp.h" nogil:
    ctypedef unsigned long mp_bitcnt_t
    ctypedef struct __mpz_struct:
        pass
    ctypedef __mpz_struct *mpz_ptr
    void mpz_init(mpz_ptr)
    void mpz_init2(mpz_ptr, mp_bitcnt_t)
    void mpz_clear(mpz_ptr)
    void mpz_set(mpz_ptr, mpz_ptr)
    void mpz_set_ui(mpz_ptr, unsigned long)
    void mpz_mul(mpz_ptr, mpz_ptr, mpz_ptr)
    void mpz_tdiv_r(mpz_ptr, mpz_ptr, mpz_ptr)
    int mpz_invert(mpz_ptr, mpz_ptr, mpz_ptr)
    int mpz_cmp_ui(mpz_ptr, unsigned long)
    int mpz_tstbit(mpz_ptr, mp_bitcnt_t)
    size_t mpz_sizeinbase(mpz_ptr, int)
    void mpz_import(mpz_ptr, size_t, int, size_t, int, size_t, const void *)
    void *mpz_export(void *, size_t *, int, size_t, int, size_t, mpz_ptr)

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


cdef void _load(mpz_ptr z, object value):
    """z = value for a non-negative Python int."""
    cdef bytes raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    mpz_import(z, len(raw), 1, 1, 1, 0, <const char *>raw)


cdef object _unload(mpz_ptr z):
    cdef size_t count = (mpz_sizeinbase(z, 2) + 7) // 8
    cdef size_t written = 0
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


cdef class _Numbers:
    """An owned array of initialised mpz values, cleared on release."""
    cdef __mpz_struct *z
    cdef Py_ssize_t n

    def __cinit__(self, Py_ssize_t n, mp_bitcnt_t bits):
        self.z = <__mpz_struct *>calloc(n if n > 0 else 1, sizeof(__mpz_struct))
        if self.z == NULL:
            raise MemoryError()
        self.n = n
        for i in range(n):
            mpz_init2(&self.z[i], bits)

    def __dealloc__(self):
        if self.z != NULL:
            for i in range(self.n):
                mpz_clear(&self.z[i])
            free(self.z)


cdef object _modulus(object modulus):
    n = int(modulus)
    if n < 2:
        raise ValueError("modulus must be > 1")
    return n


cdef list _pairs(bases, exponents):
    bases, exponents = list(bases), list(exponents)
    if len(bases) != len(exponents):
        raise ValueError(f"{len(bases)} bases but {len(exponents)} exponents")
    return list(zip(bases, exponents))


cdef void _mulmod(mpz_ptr acc, mpz_ptr x, mpz_ptr n, mpz_ptr tmp) noexcept nogil:
    mpz_mul(tmp, acc, x)
    mpz_tdiv_r(acc, tmp, n)


cdef void _straus(mpz_ptr acc, Py_ssize_t top, Py_ssize_t *start, __mpz_struct **entry, mpz_ptr n,
                  mpz_ptr tmp) noexcept nogil:
    """The shared squaring chain; bit p's window multiplications are entry[start[p]:start[p + 1]]."""
    cdef Py_ssize_t p, k
    cdef bint one = True
    for p in range(top, -1, -1):
        if not one:
            _mulmod(acc, acc, n, tmp)
        for k in range(start[p], start[p + 1]):
            _mulmod(acc, entry[k], n, tmp)
            one = False


cdef Py_ssize_t _windows(mpz_ptr e, int w, Py_ssize_t *pos, Py_ssize_t *digit) noexcept nogil:
    """Sliding windows of e, most significant first: (bit position, odd digit); returns their number."""
    cdef Py_ssize_t j = <Py_ssize_t>mpz_sizeinbase(e, 2) - 1, lo, q, d, count = 0
    if mpz_cmp_ui(e, 0) == 0:
        return 0
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


def multi_exp(bases, exponents, modulus):
    cdef Py_ssize_t t, j, k, entries = 0, total_bits = 0, top = -1, count, events = 0, size, offset
    N = _modulus(modulus)
    pairs = []
    for index, (b, e) in enumerate(_pairs(bases, exponents)):
        e = int(e)
        if e:
            pairs.append((int(b) % N, e, index))
    t = len(pairs)
    cdef mp_bitcnt_t nbits = N.bit_length()
    widths = []
    for b, e, _ in pairs:
        w = window(abs(e).bit_length())
        widths.append(w)
        entries += 1 << (w - 1)
        total_bits += abs(e).bit_length()
        top = max(top, abs(e).bit_length() - 1)
    cdef _Numbers work = _Numbers(4, 2 * nbits + 64)  # modulus, accumulator, scratch, exponent
    cdef _Numbers table = _Numbers(entries, 2 * nbits + 64)
    cdef mpz_ptr n = &work.z[0]
    cdef mpz_ptr acc = &work.z[1]
    cdef mpz_ptr tmp = &work.z[2]
    cdef mpz_ptr ez = &work.z[3]
    _load(n, N)
    cdef Py_ssize_t *pos = <Py_ssize_t *>malloc((total_bits or 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *digit = <Py_ssize_t *>malloc((total_bits or 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *owner = <Py_ssize_t *>malloc((total_bits or 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *start = <Py_ssize_t *>calloc(top + 3, sizeof(Py_ssize_t))
    cdef __mpz_struct **entry = <__mpz_struct **>malloc((total_bits or 1) * sizeof(__mpz_struct *))
    try:
        if pos == NULL or digit == NULL or owner == NULL or start == NULL or entry == NULL:
            raise MemoryError()
        # Per base: odd powers b, b^3, ..., b^(2^w - 1) and the windows of its exponent.
        offset = 0
        for k in range(t):
            b, e, index = pairs[k]
            _load(&table.z[offset], b)
            if e < 0:
                if not mpz_invert(&table.z[offset], &table.z[offset], n):
                    raise ValueError(f"base {index} is not invertible modulo the modulus")
                e = -e
            size = 1 << (widths[k] - 1)
            if size > 1:
                mpz_mul(tmp, &table.z[offset], &table.z[offset])
                mpz_tdiv_r(acc, tmp, n)
                for j in range(1, size):
                    mpz_mul(tmp, &table.z[offset + j - 1], acc)
                    mpz_tdiv_r(&table.z[offset + j], tmp, n)
            _load(ez, e)
            count = _windows(ez, widths[k], pos + events, digit + events)
            for j in range(events, events + count):
                owner[j] = offset + (digit[j] >> 1)
                start[pos[j] + 1] += 1
            events += count
            offset += size
        # Counting sort by bit position, then the squaring chain.
        for k in range(top + 1):
            start[k + 1] += start[k]
        for j in range(events):
            entry[start[pos[j]]] = &table.z[owner[j]]
            start[pos[j]] += 1
        for k in range(top + 1, 0, -1):  # undo the fill shift: start[p] is bit p's first entry again
            start[k] = start[k - 1]
        start[0] = 0
        mpz_set_ui(acc, 1)
        if EDGEFL_GMP_NOGIL:
            with nogil:
                _straus(acc, top, start, entry, n, tmp)
        else:
            _straus(acc, top, start, entry, n, tmp)
        mpz_tdiv_r(acc, acc, n)
        return _unload(acc)
    finally:
        free(pos)
        free(digit)
        free(owner)
        free(start)
        free(entry)


cdef void _joint(mpz_ptr acc, Py_ssize_t bits, Py_ssize_t chunks, Py_ssize_t width, unsigned int *masks,
                 __mpz_struct *table, mpz_ptr n, mpz_ptr tmp) noexcept nogil:
    cdef Py_ssize_t p, c
    cdef unsigned int m
    cdef bint one = True
    for p in range(bits):
        if not one:
            _mulmod(acc, acc, n, tmp)
        for c in range(chunks):
            m = masks[p * chunks + c]
            if m:
                _mulmod(acc, &table[(c << width) + m], n, tmp)
                one = False


def multi_exp_joint(bases, exponents, modulus, int group=8):
    N = _modulus(modulus)
    if not 1 <= group <= 16:
        raise ValueError("group must be in [1, 16]")
    pairs = [(int(b) % N, int(e)) for b, e in _pairs(bases, exponents)]
    if any(e < 0 for _, e in pairs):
        raise ValueError("multi_exp_joint needs non-negative exponents")
    cdef Py_ssize_t t = len(pairs), bits = max((e.bit_length() for _, e in pairs), default=0)
    cdef Py_ssize_t chunks = (t + group - 1) // group, c, j, p, k, mask, low
    cdef mp_bitcnt_t nbits = N.bit_length()
    cdef _Numbers work = _Numbers(4, 2 * nbits + 64)
    cdef _Numbers table = _Numbers(chunks << group, 2 * nbits + 64)
    cdef mpz_ptr n = &work.z[0]
    cdef mpz_ptr acc = &work.z[1]
    cdef mpz_ptr tmp = &work.z[2]
    cdef mpz_ptr ez = &work.z[3]
    _load(n, N)
    mpz_set_ui(acc, 1)
    cdef unsigned int *masks = <unsigned int *>calloc((bits * chunks) or 1, sizeof(unsigned int))
    if masks == NULL:
        raise MemoryError()
    try:
        for c in range(chunks):
            chunk = pairs[c * group:(c + 1) * group]
            base = c << group
            mpz_set_ui(&table.z[base], 1)
            for mask in range(1, 1 << len(chunk)):
                low = mask & -mask
                j = low.bit_length() - 1
                if mask == low:
                    _load(&table.z[base + mask], chunk[j][0])
                else:
                    mpz_mul(tmp, &table.z[base + (mask ^ low)], &table.z[base + low])
                    mpz_tdiv_r(&table.z[base + mask], tmp, n)
            for j in range(len(chunk)):
                _load(ez, chunk[j][1])
                for p in range(bits):
                    if mpz_tstbit(ez, bits - 1 - p):
                        masks[p * chunks + c] |= 1u << j
        if EDGEFL_GMP_NOGIL:
            with nogil:
                _joint(acc, bits, chunks, group, masks, table.z, n, tmp)
        else:
            _joint(acc, bits, chunks, group, masks, table.z, n, tmp)
        mpz_tdiv_r(acc, acc, n)
        return _unload(acc)
    finally:
        free(masks)
