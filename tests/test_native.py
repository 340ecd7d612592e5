"""Compiled modules and their pure-Python twins: same API, identical results."""

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.crypto.hashing import merkle_verify
from tests.conftest import load_twin, twin_modules

leaves_st = st.lists(st.binary(max_size=80), max_size=70)


def rfc6962_root(leaves):
    """Independent recursive definition from RFC 6962 §2.1."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:])).digest()


def test_merkle_root_matches_rfc6962(impl_name):
    h = load_twin("hashing", impl_name)
    for n in list(range(0, 20)) + [31, 32, 33, 100, 257]:
        leaves = [bytes([i % 256]) * (i % 7) for i in range(n)]
        assert h.merkle_root(leaves) == rfc6962_root(leaves), n


def test_tagged_hash_is_bip340(impl_name):
    h = load_twin("hashing", impl_name)
    th = hashlib.sha256(b"BIP0340/challenge").digest()
    assert h.tagged_hash(b"BIP0340/challenge", b"msg") == hashlib.sha256(th + th + b"msg").digest()
    assert h.sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@given(leaves_st, st.data())
@settings(max_examples=150, deadline=None)
def test_hashing_twins_agree_and_paths_verify(leaves, data):
    mods = twin_modules("hashing")
    roots = {name: m.merkle_root(leaves) for name, m in mods.items()}
    assert len(set(roots.values())) == 1
    if leaves:
        i = data.draw(st.integers(0, len(leaves) - 1))
        paths = {name: m.merkle_path(leaves, i) for name, m in mods.items()}
        assert len({tuple(p) for p in paths.values()}) == 1
        path = paths["pure"]
        root = roots["pure"]
        assert merkle_verify(leaves[i], i, len(leaves), path, root)
        assert not merkle_verify(leaves[i] + b"x", i, len(leaves), path, root)
        if len(leaves) > 1:
            j = (i + 1) % len(leaves)
            assert leaves[j] == leaves[i] or not merkle_verify(leaves[i], j, len(leaves), path, root)
    tag = data.draw(st.binary(max_size=40))
    msg = data.draw(st.binary(max_size=300))
    assert len({m.tagged_hash(tag, msg) for m in mods.values()}) == 1


def test_merkle_path_index_errors(impl_name):
    h = load_twin("hashing", impl_name)
    with pytest.raises(IndexError):
        h.merkle_path([b"a"], 1)
    with pytest.raises(IndexError):
        h.merkle_path([], 0)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(cbor_values)
@settings(max_examples=200, deadline=None)
def test_scan_twins_agree_on_valid_cbor(value):
    data = cbor2.dumps(value, canonical=True)
    results = {name: m.scan(data, 64, 10_000) for name, m in twin_modules("cborscan").items()}
    assert len(set(results.values())) == 1
    status, items, end = results["pure"]
    assert status == 0 and end == len(data) and items >= 1


@given(st.binary(max_size=64), st.integers(0, 4), st.integers(0, 20), st.booleans())
@settings(max_examples=400, deadline=None)
def test_scan_twins_agree_on_arbitrary_bytes(data, depth, items, whole):
    results = {name: m.scan(data, depth, items, whole) for name, m in twin_modules("cborscan").items()}
    assert len(set(results.values())) == 1, results


def test_scan_limits(impl_name):
    s = load_twin("cborscan", impl_name)
    nested = cbor2.dumps([[[[1]]]])
    assert s.scan(nested, 4, 100)[0] == 0
    assert s.scan(nested, 3, 100)[0] == 5  # DEPTH
    assert s.scan(cbor2.dumps(list(range(10))), 4, 10)[0] == 6  # ITEMS (11 items)
    assert s.scan(b"\x9f\x01\xff", 4, 10)[0] == 3  # indefinite
    assert s.scan(b"\xc1\x01", 4, 10)[0] == 7  # tag 1 not allowed
    assert s.scan(b"\xf0", 4, 10)[0] == 8  # unassigned simple value
    assert s.scan(b"\x01\x02", 4, 10) == (2, 1, 1)  # trailing
    assert s.scan(b"\x01\x02", 4, 10, False) == (0, 1, 1)  # first item of a sequence
    assert s.scan(b"\x5b" + (2**40).to_bytes(8, "big"), 4, 10)[0] == 1  # truncated, no allocation


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_env_var_forces_twins_and_debug_log_says_so():
    out = _run("""
        import logging; logging.basicConfig(level=logging.DEBUG)
        from edgefl import native
        from edgefl.crypto import hashing
        print(native.implementations())
        """, EDGEFL_NO_EXTENSIONS="1", EDGEFL_REQUIRE_EXTENSIONS="")
    assert out.returncode == 0, out.stderr
    assert "'hashing': 'pure'" in out.stdout
    assert "pure-Python twin (EDGEFL_NO_EXTENSIONS set)" in out.stderr


@pytest.mark.slow
def test_wheel_builds_and_runs_without_a_compiler(tmp_path):
    """`pip wheel .` with no working C compiler: the build succeeds and edgefl runs on its twins."""
    root = tmp_path / "src"  # a clean copy: no compiled modules or build/ left over from this checkout
    shutil.copytree(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), root,
                    ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.so", "*.egg-info",
                                                  "__pycache__", "ext/*.c", ".hypothesis", ".pytest_cache"))
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false", "EDGEFL_NO_EXTENSIONS": ""}
    wheel_dir = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(root)], capture_output=True, text=True, env=env, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheel_dir.glob("edgefl-*.whl")
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    assert not list(target.glob("edgefl/_ext/*.so")), "no compiler, so no compiled module"
    assert (target / "edgefl/_data/broker/mosquitto.conf.tmpl").exists()
    assert (target / "edgefl/_data/firmware_profiles/pi4.toml").exists()
    out = _run(f"""
        import logging, sys; logging.basicConfig(level=logging.DEBUG)
        sys.path.insert(0, {str(target)!r})
        import edgefl
        assert edgefl.__file__.startswith({str(target)!r}), edgefl.__file__
        from edgefl import native
        from edgefl.crypto.hashing import merkle_root
        from edgefl.codec import decode, encode
        assert decode(encode({{"a": [1, 2]}})) == {{"a": [1, 2]}}
        print(native.implementations(), merkle_root([b"a", b"b"]).hex())
        """, EDGEFL_NO_EXTENSIONS="", EDGEFL_REQUIRE_EXTENSIONS="", PYTHONPATH="")
    assert out.returncode == 0, out.stderr
    assert "'hashing': 'pure'" in out.stdout and "'cborscan': 'pure'" in out.stdout
    assert "compiled module not built" in out.stderr


@given(leaves_st)
@settings(max_examples=100, deadline=None)
def test_merkle_frontier_grows_to_the_same_root(leaves):
    from edgefl.crypto.hashing import MerkleFrontier, merkle_root

    frontier = MerkleFrontier()
    assert frontier.root() == rfc6962_root([])
    for i, leaf in enumerate(leaves):
        frontier.append(leaf)
        assert frontier.size == i + 1
        assert frontier.root() == merkle_root(leaves[:i + 1]) == rfc6962_root(leaves[:i + 1])


# --------------------------------------------------------------------------- canonical form in the scan

_keys = st.one_of(st.text(max_size=12), st.binary(max_size=40))
_arrays = st.builds(
    lambda dt, shape, seed: np.random.default_rng(seed).integers(0, 200, size=shape).astype(dt),
    st.sampled_from(["u1", "<u2", ">u4", "<u8", "i1", "<i2", "<i4", ">i8", "<f2", "<f4", ">f8"]),
    st.lists(st.integers(0, 3), max_size=3).map(tuple), st.integers(0, 99))
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64) + 1, 2**64 - 1), st.floats(allow_nan=True),
              st.text(max_size=20), st.binary(max_size=40), _arrays),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=20)


def _reencodes_identically(data: bytes) -> bool | None:
    """The reference meaning of canonical: decoding and encoding again gives the same bytes (None: undecodable)."""
    from edgefl import codec
    try:
        return codec.encode(codec._loads(data)) == data
    except codec.CodecError:
        return None


def _verdicts(data: bytes) -> set:
    return {m.scan(data, 64, 100_000, True, True)[0] for m in twin_modules("cborscan").values()}


def _check_canonical_verdict(data: bytes) -> None:
    if any(m.scan(data, 64, 100_000, True, False)[0] for m in twin_modules("cborscan").values()):
        return  # structurally rejected before canonical form matters
    expected = _reencodes_identically(data)
    verdicts = _verdicts(data)
    assert len(verdicts) == 1, (data.hex(), verdicts)  # the twins agree
    if expected is not None:
        assert verdicts == {0 if expected else 9}, (data.hex(), verdicts)


@given(_values)
@settings(max_examples=400, deadline=None)
def test_scan_canonical_verdict_matches_reencoding(value):
    from edgefl import codec
    for data in (codec.encode(value), cbor2.dumps(value, canonical=False, default=codec._encode_default)):
        _check_canonical_verdict(data)


def _loose(value, rnd) -> bytes:
    """CBOR of ``value`` with randomly chosen head widths, float widths and key order (often not canonical)."""
    import struct

    def head(major, n):
        widths = [w for w, lim in ((0, 24), (1, 1 << 8), (2, 1 << 16), (4, 1 << 32), (8, 1 << 64)) if n < lim]
        w = rnd.choice(widths) if rnd.random() < 0.3 else widths[0]
        return bytes([major << 5 | n]) if w == 0 else bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[w]]) + \
            n.to_bytes(w, "big")

    if isinstance(value, bool) or value is None:
        return cbor2.dumps(value)
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, float):
        fits = [(fmt, b) for fmt, b in ((">e", 0xF9), (">f", 0xFA), (">d", 0xFB))
                if _packs(value, fmt)]
        fmt, b = rnd.choice(fits) if rnd.random() < 0.3 else fits[0]
        return bytes([b]) + struct.pack(fmt, value)
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(_loose(v, rnd) for v in value)
    if isinstance(value, dict):
        items = list(value.items())
        if rnd.random() < 0.5:
            rnd.shuffle(items)
        else:
            items.sort(key=lambda kv: (len(cbor2.dumps(kv[0])), cbor2.dumps(kv[0])))
        return head(5, len(items)) + b"".join(_loose(k, rnd) + _loose(v, rnd) for k, v in items)
    from edgefl import codec
    return codec.encode(value)  # arrays: as the encoder writes them


def _packs(value, fmt) -> bool:
    import math
    import struct
    try:
        return math.isnan(value) or struct.unpack(fmt, struct.pack(fmt, value))[0] == value
    except OverflowError:
        return False


@given(_values, st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_scan_canonical_verdict_on_loosely_encoded_values(value, rnd):
    _check_canonical_verdict(_loose(value, rnd))


@given(st.binary(min_size=1, max_size=30))
@settings(max_examples=400, deadline=None)
def test_scan_canonical_verdict_on_arbitrary_bytes(data):
    _check_canonical_verdict(data)


def test_scan_canonical_verdict_on_every_float_width():
    rng = np.random.default_rng(1)
    samples = [b"\xf9" + h.to_bytes(2, "big") for h in range(1 << 16)]
    samples += [b"\xfa" + int(b).to_bytes(4, "big") for b in rng.integers(0, 1 << 32, 3000, dtype=np.uint64)]
    samples += [b"\xfa" + np.float32(np.float16(v)).tobytes()[::-1] for v in rng.standard_normal(500)]
    samples += [b"\xfb" + np.float64(np.float32(v)).tobytes()[::-1] for v in rng.standard_normal(500) * 1e5]
    samples += [b"\xfb" + int(b).to_bytes(8, "big") for b in rng.integers(0, 1 << 63, 3000, dtype=np.uint64)]
    for data in samples:
        _check_canonical_verdict(data)


def test_scan_canonical_rules_by_example(impl_name):
    s = load_twin("cborscan", impl_name)
    cases = {
        "1805": 9,  # 5 in a one-byte argument
        "05": 0,
        "a2626161026162" + "01": 9,  # keys "aa", "b": the shorter key must come first
        "a2616201626161" + "02": 0,
        "a2616101616102": 9,  # duplicate key
        "fb3ff0000000000000": 9, "f93c00": 0,  # 1.0 fits in float16
        "f97e01": 9, "f97e00": 0,  # NaN only as f97e00
        "d84443010203": 9, "d84043010203": 0,  # uint8-clamped typed array decodes as uint8, written as tag 64
        "d82882810343010203": 9,  # a 1-D array inside tag 40
        "d82882820103d84043010203": 0,  # a 1 x 3 array
    }
    for hexdata, status in cases.items():
        assert s.scan(bytes.fromhex(hexdata), 16, 100, True, True)[0] == status, hexdata
    nested = bytes.fromhex("8118") + b"\x05" + bytes.fromhex("81" * 20 + "00")
    assert s.scan(nested, 16, 100, False, True)[0] == 9  # limits still enforced past a non-canonical item...
    assert s.scan(bytes.fromhex("82" + "1805" + "81" * 20 + "00"), 16, 100, True, True)[0] == 5  # ...so depth wins
