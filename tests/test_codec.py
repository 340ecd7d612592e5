"""Canonical CBOR, typed arrays, strict limits and message schemas."""

from typing import Annotated

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefl import codec
from edgefl.codec import Array, Limits, MaxLen, Message, Range, message

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
           | st.text(max_size=20) | st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=25)
DTYPES = ["u1", "i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"]
arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))


@given(values)
@settings(max_examples=300, deadline=None)
def test_round_trip_and_canonical_bytes_are_stable(value):
    data = codec.encode(value)
    back = codec.decode(data, canonical=True)
    assert back == value
    assert codec.encode(back) == data


@given(st.dictionaries(st.text(max_size=6), st.integers(), min_size=2, max_size=8), st.randoms())
@settings(max_examples=100, deadline=None)
def test_map_key_order_does_not_change_bytes(d, rnd):
    items = list(d.items())
    rnd.shuffle(items)
    assert codec.encode(dict(items)) == codec.encode(d)


@pytest.mark.parametrize("value, hex_", [
    # RFC 8949 Appendix A (preferred serialization)
    (0, "00"), (24, "1818"), (1000000, "1a000f4240"), (-1000, "3903e7"), (1.5, "f93e00"),
    (100000.0, "fa47c35000"), (1.1, "fb3ff199999999999a"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"), ("\u00fc", "62c3bc"), (b"\x01\x02\x03\x04", "4401020304"),
])
def test_rfc8949_examples(value, hex_):
    assert codec.encode(value).hex() == hex_
    assert codec.decode(bytes.fromhex(hex_)) == value


@given(arrays)
@settings(max_examples=200, deadline=None)
def test_numpy_arrays_round_trip_as_rfc8746(arr):
    data = codec.encode({"x": arr})
    back = codec.decode(data)["x"]
    assert back.dtype == arr.dtype.newbyteorder("<") and back.shape == arr.shape
    assert back.tobytes() == arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def test_typed_array_tags():
    one_d = codec.encode(np.arange(3, dtype="<f4"))
    assert one_d[:2] == bytes([0xd8, 85])  # tag 85: float32 little endian, no tag 40 for one dimension
    two_d = codec.encode(np.zeros((2, 3), dtype="<i2"))
    assert two_d[:2] == bytes([0xd8, 40])
    big_endian = cbor2.dumps(cbor2.CBORTag(82, np.array([1.5, -2.0], ">f8").tobytes()))  # float64 BE
    assert codec.decode(big_endian).tolist() == [1.5, -2.0]
    assert codec.encode(np.array([1.5], ">f8")) == codec.encode(np.array([1.5], "<f8"))


@pytest.mark.parametrize("data, error", [
    (cbor2.dumps(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(85, b"\0" * 12)])), codec.Malformed),  # 3 != 4
    (cbor2.dumps(cbor2.CBORTag(85, b"\0" * 5)), codec.Malformed),  # not a multiple of 4
    (cbor2.dumps(cbor2.CBORTag(85, "text")), codec.Malformed),
    (cbor2.dumps(cbor2.CBORTag(1, 0)), codec.Malformed),  # epoch date: tag not allowed
    (cbor2.dumps(2**70), codec.Malformed),  # bignum tag
    (b"\xa2\x61a\x01\x61a\x02", codec.Malformed),  # duplicate key
    (b"\xa1\x01\x02", codec.Malformed),  # integer map key
    (b"\x62\xff\xfe", codec.Malformed),  # invalid UTF-8
    (b"\x9f\x01\xff", codec.Malformed),  # indefinite length
    (b"\x83\x01\x02", codec.Truncated),
    (b"\x01\x02", codec.Malformed),  # trailing bytes
    (b"", codec.Truncated),
    (b"\xf8\x20", codec.Malformed),  # simple value 32
])
def test_malformed_input_is_rejected_with_typed_errors(data, error):
    with pytest.raises(error):
        codec.decode(data)


def test_limits_are_enforced():
    lim = Limits(max_size=100, max_depth=3, max_items=10)
    with pytest.raises(codec.TooLarge):
        codec.decode(codec.encode(b"x" * 200), lim)
    with pytest.raises(codec.TooDeep) as exc:
        codec.decode(codec.encode([[[[1]]]]), lim)
    assert exc.value.offset == 3 and "byte 3" in str(exc.value)
    codec.decode(codec.encode([[[1]]]), lim)
    with pytest.raises(codec.TooManyItems):
        codec.decode(codec.encode(list(range(10))), lim)
    codec.decode(codec.encode(list(range(9))), lim)
    with pytest.raises(codec.NotCanonical):
        codec.decode(bytes.fromhex("1900ff"), canonical=True)  # 255 in three bytes
    with pytest.raises(codec.NotCanonical):
        codec.decode(bytes.fromhex("a2616201616102"), canonical=True)  # keys out of order


def test_decode_first_of_a_sequence():
    seq = codec.encode([1, "a"]) + codec.encode({"k": 2})
    first, end = codec.decode_first(seq)
    assert first == [1, "a"] and codec.decode(seq[end:]) == {"k": 2}


@message("test.sample", version=2, max_size=256)
class Sample(Message):
    name: Annotated[str, MaxLen(8)]
    count: Annotated[int, Range(0, 100)]
    weights: Annotated[np.ndarray, Array(dtype="float32", ndim=1, max_elems=4)]
    tags: list[str]
    note: str | None = None


@message("test.outer")
class Outer(Message):
    inner: Sample
    extra: dict[str, int]


def sample(**kw):
    base = dict(name="a", count=1, weights=np.zeros(2, "f4"), tags=["x"])
    return Sample(**{**base, **kw})


def test_message_round_trip_and_registry():
    msg = Outer(inner=sample(note="hi"), extra={"k": 1})
    back = Outer.from_wire(codec.decode(codec.encode_message(msg)))
    assert back.inner.name == "a" and back.inner.note == "hi" and back.extra == {"k": 1}
    assert codec.lookup("test.sample", 2) is Sample
    with pytest.raises(codec.UnsupportedVersion) as exc:
        codec.lookup("test.sample", 1)
    assert exc.value.field == "test.sample.version"
    with pytest.raises(codec.UnknownType):
        codec.lookup("no.such", 1)


@pytest.mark.parametrize("wire, field", [
    ({"name": "a" * 9, "count": 1, "weights": np.zeros(2, "f4"), "tags": []}, "Sample.name"),
    ({"name": "a", "count": 101, "weights": np.zeros(2, "f4"), "tags": []}, "Sample.count"),
    ({"name": "a", "count": True, "weights": np.zeros(2, "f4"), "tags": []}, "Sample.count"),
    ({"name": "a", "count": 1, "weights": np.zeros(2, "f8"), "tags": []}, "Sample.weights"),
    ({"name": "a", "count": 1, "weights": np.zeros(5, "f4"), "tags": []}, "Sample.weights"),
    ({"name": "a", "count": 1, "weights": np.zeros((1, 2), "f4"), "tags": []}, "Sample.weights"),
    ({"name": "a", "count": 1, "weights": np.zeros(2, "f4"), "tags": [1]}, "Sample.tags[0]"),
    ({"name": "a", "count": 1, "tags": []}, "Sample.weights"),
    ({"name": "a", "count": 1, "weights": np.zeros(2, "f4"), "tags": [], "bogus": 1}, "Sample"),
    ({"name": "a", "count": 2**64, "weights": np.zeros(2, "f4"), "tags": []}, "Sample.count"),
])
def test_schema_errors_name_the_field(wire, field):
    with pytest.raises(codec.SchemaError) as exc:
        Sample.from_wire(wire)
    assert exc.value.field == field
    assert str(exc.value).startswith(field + ":")


def test_nested_field_paths_and_size_limit():
    with pytest.raises(codec.SchemaError) as exc:
        Outer.from_wire({"inner": {"name": 5}, "extra": {}})
    assert exc.value.field == "Outer.inner.name"
    with pytest.raises(codec.SchemaError) as exc:
        Outer.from_wire({"inner": sample().to_wire(), "extra": {"k": "v"}})
    assert exc.value.field == "Outer.extra['k']"
    with pytest.raises(codec.TooLarge):
        codec.encode_message(sample(tags=["y" * 50] * 10))
    with pytest.raises(codec.SchemaError):  # refused on the way out, too
        codec.encode_message(sample(name="too long a name"))


def test_a_tag_40_array_inside_a_tag_40_array_is_refused():
    """40([dims, 40([dims, typed array])]) decoded to the same array as the canonical form: two byte forms
    of one model."""
    arr = np.arange(4, dtype="<f4").reshape(2, 2)
    canonical = codec.encode(arr)
    inner = codec.encode(arr)
    nested = bytes([0xD8, 0x28, 0x82]) + codec.encode([2, 2]) + inner
    assert (codec.decode(canonical, canonical=True) == arr).all()
    for strict in (False, True):
        with pytest.raises(codec.CodecError):
            codec.decode(nested, canonical=strict)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
                     st.text(max_size=40), st.binary(max_size=80))


def _flat_classes():
    import edgefl.crypto.pki  # noqa: F401 - registers the PKI's message types
    import edgefl.transport.messages  # noqa: F401

    return [cls for cls in codec.REGISTRY.values() if codec._schema(cls).fast is not None]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_fast_path_of_flat_messages_agrees_with_the_general_one(data):
    """A message of scalar fields has a generated fast path; on any input it returns what the general path
    returns, or steps aside (never accepts what the general path refuses)."""
    classes = _flat_classes()
    assert len(classes) >= 4
    cls = data.draw(st.sampled_from(classes))
    schema = codec._schema(cls)
    keys = st.sampled_from([*schema.names, "extra"])
    value = data.draw(st.one_of(st.dictionaries(keys, _SCALARS, max_size=len(schema.names) + 1), _SCALARS))
    try:
        general = _general(schema, value)
    except codec.SchemaError:
        general = None
    try:
        fast = schema.fast(value)
    except codec._Slow:
        return
    assert general is not None and fast == general and type(fast) is cls


def _general(schema, value):
    fast, schema.fast = schema.fast, None
    try:
        return schema.check(value, schema.cls.__name__)
    finally:
        schema.fast = fast
