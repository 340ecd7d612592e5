# cython: language_level=3
"""SHA-256 helpers over OpenSSL's libcrypto: tagged hashes and RFC 6962 Merkle trees.

Pure-Python twin: edgefl/_pure/hashing.py (same API, same bytes).
The gain over hashlib is per-call overhead: one C loop hashes every node of a
Merkle tree, and a tag's midstate is copied instead of re-hashed.
"""
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free

cdef extern from "openssl/sha.h" nogil:
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t len)
    int SHA256_Final(unsigned char *md, SHA256_CTX *c)

DEF DIGEST = 32

cdef dict _midstates = {}


def sha256(const unsigned char[::1] data not None):
    cdef SHA256_CTX ctx
    cdef unsigned char out[DIGEST]
    with nogil:
        SHA256_Init(&ctx)
        if data.shape[0]:
            SHA256_Update(&ctx, &data[0], data.shape[0])
        SHA256_Final(out, &ctx)
    return out[:DIGEST]


cdef bytes _midstate(bytes tag):
    cdef SHA256_CTX ctx
    cdef unsigned char th[DIGEST]
    cached = _midstates.get(tag)
    if cached is not None:
        return cached
    SHA256_Init(&ctx)
    SHA256_Update(&ctx, <const char *>tag, len(tag))
    SHA256_Final(th, &ctx)
    SHA256_Init(&ctx)
    SHA256_Update(&ctx, th, DIGEST)
    SHA256_Update(&ctx, th, DIGEST)
    state = (<unsigned char *>&ctx)[:sizeof(SHA256_CTX)]
    if len(_midstates) < 256:  # tags are program constants; bound the cache anyway
        _midstates[tag] = state
    return state


def tagged_hash(bytes tag not None, const unsigned char[::1] data not None):
    """BIP-340 tagged hash: SHA256(SHA256(tag) || SHA256(tag) || data)."""
    cdef SHA256_CTX ctx
    cdef unsigned char out[DIGEST]
    cdef bytes state = _midstate(tag)
    memcpy(&ctx, <const char *>state, sizeof(SHA256_CTX))
    with nogil:
        if data.shape[0]:
            SHA256_Update(&ctx, &data[0], data.shape[0])
        SHA256_Final(out, &ctx)
    return out[:DIGEST]


cdef unsigned char *_leaf_level(list leaves) except NULL:
    """Hash every leaf as H(0x00 || leaf) into a fresh n*32 byte buffer."""
    cdef Py_ssize_t n = len(leaves), i
    cdef unsigned char prefix = 0
    cdef const unsigned char[::1] leaf
    cdef SHA256_CTX ctx
    cdef unsigned char *buf = <unsigned char *>malloc(n * DIGEST)
    if buf == NULL:
        raise MemoryError()
    for i in range(n):
        leaf = leaves[i]
        SHA256_Init(&ctx)
        SHA256_Update(&ctx, &prefix, 1)
        if leaf.shape[0]:
            SHA256_Update(&ctx, &leaf[0], leaf.shape[0])
        SHA256_Final(buf + i * DIGEST, &ctx)
    return buf


cdef Py_ssize_t _reduce(unsigned char *buf, Py_ssize_t n) nogil:
    """One tree level in place: H(0x01 || left || right); an odd last node moves up unchanged."""
    cdef Py_ssize_t i, half = n // 2
    cdef unsigned char prefix = 1
    cdef SHA256_CTX ctx
    for i in range(half):
        SHA256_Init(&ctx)
        SHA256_Update(&ctx, &prefix, 1)
        SHA256_Update(&ctx, buf + 2 * i * DIGEST, 2 * DIGEST)
        SHA256_Final(buf + i * DIGEST, &ctx)
    if n % 2:
        memcpy(buf + half * DIGEST, buf + (n - 1) * DIGEST, DIGEST)
        return half + 1
    return half


def merkle_root(leaves):
    """RFC 6962 Merkle tree hash of a sequence of byte strings."""
    cdef list items = list(leaves)
    cdef Py_ssize_t n = len(items)
    if n == 0:
        return sha256(b"")
    cdef unsigned char *buf = _leaf_level(items)
    try:
        with nogil:
            while n > 1:
                n = _reduce(buf, n)
        return buf[:DIGEST]
    finally:
        free(buf)


def merkle_path(leaves, Py_ssize_t index):
    """Audit path (sibling hashes, leaf level first) for leaf ``index``."""
    cdef list items = list(leaves)
    cdef Py_ssize_t n = len(items)
    if not 0 <= index < n:
        raise IndexError(f"leaf index {index} out of range for {n} leaves")
    cdef unsigned char *buf = _leaf_level(items)
    cdef list path = []
    try:
        while n > 1:
            if index % 2:
                path.append(buf[(index - 1) * DIGEST:index * DIGEST])
            elif index + 1 < n:
                path.append(buf[(index + 1) * DIGEST:(index + 2) * DIGEST])
            n = _reduce(buf, n)
            index //= 2
        return path
    finally:
        free(buf)
