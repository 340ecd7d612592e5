"""The short form of ``scripts/fuzz``: every decoder, hypothesis-driven mutations of valid encodings, the kept
corpus and crashers, and the compiled CBOR scan against its pure twin on every input (the long form compares
whole verdicts across the two implementations in separate processes)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefl import codec, fuzz
from tests.conftest import twin_modules

TARGETS = sorted(fuzz.targets())
SCANS = twin_modules("cborscan")


@pytest.fixture(scope="module")
def seeds():
    return {name: fuzz.targets()[name].seeds() for name in TARGETS}


def test_every_decoder_has_a_target():
    assert {"envelope", "messages", "inbound", "chunks", "transactions", "blocks", "proofs", "certificates", "crls",
            "accumulator", "consensus", "state", "privacy", "votes", "seq", "key", "pub", "blob",
            "profiles"} <= set(TARGETS)


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_are_valid_and_the_corpus_and_crashers_are_handled(name, seeds):
    """Valid encodings decode (the target is not refusing everything), and every kept input still gets a
    typed verdict: the corpus of past distinct verdicts and every crasher found so far, fixed since."""
    target = fuzz.targets()[name]
    verdicts = [fuzz.verdict(target, s) for s in seeds[name]]
    assert any(v.startswith("ok:") for v in verdicts), verdicts
    kept = fuzz.corpus_inputs(name) + [p.read_bytes() for p in sorted((fuzz.FUZZ_DIR / "crashers").glob(f"{name}-*.bin"))]
    for data in kept:
        fuzz.verdict(target, data)  # raises Crash


def _scan_agrees(data: bytes) -> None:
    if len(SCANS) < 2:
        return
    for depth, items, whole, canonical in ((16, 1 << 16, True, False), (3, 64, True, True), (16, 4096, False, True)):
        results = {k: m.scan(data, depth, items, whole, canonical) for k, m in SCANS.items()}
        assert results["native"] == results["pure"], (data.hex()[:200], results)


@pytest.mark.parametrize("name", TARGETS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_encodings_get_typed_verdicts_and_both_scans_agree(name, seeds, data):
    target = fuzz.targets()[name]
    raw = fuzz.mutate(seeds[name], fuzz.DataSource(data))
    verdict = fuzz.verdict(target, raw)  # raises Crash
    assert verdict.startswith("ok:") or ":" in verdict
    _scan_agrees(raw)


@pytest.mark.parametrize("name", ["envelope", "messages", "blocks", "proofs", "crls"])
def test_the_same_inputs_get_the_same_verdicts_with_the_other_scan(name, seeds, monkeypatch):
    """The compiled scan and its twin give every decoder the same verdict, input by input."""
    if len(SCANS) < 2:
        pytest.skip("compiled edgefl._ext.cborscan not built")
    target = fuzz.targets()[name]
    inputs = [raw for _, raw in fuzz.inputs_of(target, seeds[name], 0, 0, 150)]
    by_impl = {}
    for impl, mod in SCANS.items():
        monkeypatch.setattr(codec, "_scan", mod.scan)
        by_impl[impl] = [fuzz.verdict(target, raw) for raw in inputs]
    assert by_impl["native"] == by_impl["pure"]


# --------------------------------------------------------------------------- the mutations do what they say


ITEM = codec.encode({"a": [1, 2, {"b": b"xyz"}], "cc": 300})


def _mutations(op, n=200):
    return [op(ITEM, fuzz.RandomSource(f"{op.__name__}/{i}"), ITEM) for i in range(n)]


def _errors(outputs, **kw):
    found = set()
    for out in outputs:
        try:
            codec.decode(out, **kw)
            found.add("ok")
        except codec.CodecError as exc:
            found.add(type(exc).__name__)
    return found


def test_non_canonical_integers_keep_the_value_and_lose_the_form():
    outs = [o for o in _mutations(fuzz.non_canonical_int) if o != ITEM]
    assert outs and all(codec.decode(o) == codec.decode(ITEM) for o in outs)
    assert _errors(outs, canonical=True) == {"NotCanonical"}


def test_duplicate_keys_indefinite_lengths_unknown_tags_and_huge_lengths_are_what_they_claim():
    assert "Malformed" in _errors(_mutations(fuzz.duplicate_key))  # cbor2: duplicate key
    assert _errors(_mutations(fuzz.indefinite)) <= {"Malformed", "Truncated"}
    assert "Malformed" in _errors(_mutations(fuzz.unknown_tag))
    assert _errors(_mutations(fuzz.huge_length)) <= {"Truncated", "Malformed", "TooManyItems"}
    assert "TooDeep" in _errors(_mutations(fuzz.deep_nesting))


def test_heads_walk_the_items_of_an_encoding():
    items = fuzz.heads(ITEM)
    assert [major for _, _, major, _, _ in items] == [5, 3, 4, 0, 0, 5, 3, 2, 3, 0]
    assert fuzz.heads(b"\x5b" + b"\xff" * 8) == [(0, 9, 2, 27, (1 << 64) - 1)]  # a huge string: no more items
