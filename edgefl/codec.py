"""Canonical CBOR on the wire.

* Encoding is cbor2 with ``canonical=True``: RFC 8949 §4.2 deterministic
  encoding (shortest integer and float forms, definite lengths, map keys
  sorted).  Messages use text keys only, for which cbor2's length-first order
  and §4.2.1's bytewise order coincide.
* numpy arrays travel as RFC 8746 typed arrays (little-endian tags 64..87);
  arrays of other than one dimension are wrapped in tag 40 (row-major
  multi-dimensional array) as ``40([dims, typed array])``.
* Decoding is strict: a structural pre-scan (``ext/cborscan.pyx`` or its
  twin) enforces size, nesting depth and item-count limits before cbor2
  allocates anything, and rejects indefinite lengths, unknown tags and
  unassigned simple values; cbor2 then runs without duplicate keys and with
  only text/byte-string map keys.  ``decode(..., canonical=True)`` has the
  same scan check canonical form on the way, so that exactly the bytes
  ``encode`` would write for the decoded value pass, without re-encoding it.
* Every message type is a frozen dataclass registered with ``@message``: it
  has a type name, a version and a size limit, and decoding checks each field
  against its annotation, naming the offending field in the error.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

import cbor2
import numpy as np

from edgefl import native
from edgefl.errors import EdgeflError

_scan = native.load("cborscan").scan


# --------------------------------------------------------------------------- errors


class CodecError(EdgeflError, ValueError):
    """Base of every decoding or validation failure. ``field`` names where, when known."""

    reason = "malformed"

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None):
        where = field or (f"byte {offset}" if offset is not None else None)
        super().__init__(f"{where}: {message}" if where else message)
        self.field = field
        self.offset = offset


class Malformed(CodecError):
    reason = "malformed"


class Truncated(Malformed):
    reason = "truncated"


class TooLarge(CodecError):
    reason = "too_large"


class TooDeep(CodecError):
    reason = "too_deep"


class TooManyItems(CodecError):
    reason = "too_many_items"


class NotCanonical(CodecError):
    reason = "not_canonical"


class SchemaError(CodecError):
    reason = "schema"


class UnknownType(CodecError):
    reason = "unknown_type"


class UnsupportedVersion(CodecError):
    reason = "unsupported_version"


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """Bounds on one decoded item. Defaults suit control messages; bulk types raise them."""

    max_size: int = 1 << 20
    max_depth: int = 16
    max_items: int = 4096

    def scaled(self, max_size: int) -> "Limits":
        return dataclasses.replace(self, max_size=max_size)


DEFAULT_LIMITS = Limits()

_SCAN_ERRORS = {
    1: (Truncated, "input ends inside an item"),
    2: (Malformed, "trailing bytes after the item"),
    3: (Malformed, "indefinite-length item (not allowed in canonical CBOR)"),
    4: (Malformed, "reserved additional-information value"),
    5: (TooDeep, "nesting deeper than the limit"),
    6: (TooManyItems, "more items than the limit"),
    7: (Malformed, "tag not allowed (only RFC 8746 typed arrays, tags 40 and 64..87)"),
    8: (Malformed, "simple value not allowed"),
}
_NOT_CANONICAL = 9


# --------------------------------------------------------------------------- typed arrays

# RFC 8746 tag = 0b010_f_s_e_ll; edgefl always writes little-endian (e = 1).
_DTYPE_TO_TAG = {
    np.dtype("u1"): 64, np.dtype("<u2"): 69, np.dtype("<u4"): 70, np.dtype("<u8"): 71,
    np.dtype("i1"): 72, np.dtype("<i2"): 77, np.dtype("<i4"): 78, np.dtype("<i8"): 79,
    np.dtype("<f2"): 84, np.dtype("<f4"): 85, np.dtype("<f8"): 86,
}
_TAG_TO_DTYPE: dict[int, np.dtype] = {tag: dt for dt, tag in _DTYPE_TO_TAG.items()}
_TAG_TO_DTYPE[68] = np.dtype("u1")  # uint8, clamped arithmetic
for _dt, _tag in list(_DTYPE_TO_TAG.items()):
    if _dt.itemsize > 1:  # big-endian twins: e bit cleared
        _TAG_TO_DTYPE[_tag - 4] = _dt.newbyteorder(">")


def _encode_default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if isinstance(value, np.ndarray):
        dt = value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
        tag = _DTYPE_TO_TAG.get(np.dtype(dt))
        if tag is None:
            raise cbor2.CBOREncodeTypeError(f"numpy dtype {value.dtype} has no RFC 8746 tag")
        flat = cbor2.CBORTag(tag, np.ascontiguousarray(value, dtype=dt).tobytes())
        encoder.encode(flat if value.ndim == 1 else cbor2.CBORTag(40, [list(value.shape), flat]))
    elif isinstance(value, np.generic):
        encoder.encode(value.item())
    else:
        raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__} as CBOR")


def _typed_array(tag: int):
    dtype = _TAG_TO_DTYPE[tag]

    def decode(value: Any, _immutable: bool) -> np.ndarray:
        if not isinstance(value, bytes):
            raise Malformed(f"typed array tag {tag} must hold a byte string")
        if len(value) % dtype.itemsize:
            raise Malformed(f"typed array tag {tag}: {len(value)} bytes is not a multiple of {dtype.itemsize}")
        arr = np.frombuffer(value, dtype=dtype)
        return arr if dtype.byteorder != ">" else arr.astype(dtype.newbyteorder("<"))

    return decode


def _md_array(value: Any, _immutable: bool) -> np.ndarray:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise Malformed("tag 40 must hold [dimensions, typed array]")
    dims, flat = value
    # flat.ndim == 1: a typed array, not another tag 40 (which would give a second byte form of one array)
    if not (isinstance(flat, np.ndarray) and flat.ndim == 1 and isinstance(dims, (list, tuple))
            and all(type(d) is int and d >= 0 for d in dims)):
        raise Malformed("tag 40 must hold [dimensions, typed array]")
    if math.prod(dims) != flat.size:
        raise Malformed(f"tag 40 dimensions {list(dims)} do not match {flat.size} elements")
    return flat.reshape(dims)


_SEMANTIC = {tag: _typed_array(tag) for tag in _TAG_TO_DTYPE}
_SEMANTIC[40] = _md_array


# --------------------------------------------------------------------------- bytes


def encode(obj: Any) -> bytes:
    """Canonical CBOR of ``obj`` (numpy arrays become RFC 8746 typed arrays)."""
    try:
        return cbor2.dumps(obj, canonical=True, default=_encode_default)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise SchemaError(f"cannot encode: {exc}") from None


def head(major: int, n: int) -> bytes:
    """The canonical (shortest) head of a CBOR item: major type 0-7 and its argument.

    For splicing pre-encoded items into a larger canonical item without
    decoding them again, e.g. byte strings already framed as they arrived.
    """
    if not 0 <= major <= 7 or not 0 <= n < 1 << 64:
        raise ValueError(f"no CBOR head for major type {major} and argument {n}")
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")


def _check_scan(data, limits: Limits, whole: bool, canonical: bool = False) -> tuple[int, int | None]:
    """Enforce the limits; returns (end of the first item, offset of its first non-canonical part or None)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Malformed(f"expected bytes, got {type(data).__name__}")
    if whole and len(data) > limits.max_size:
        raise TooLarge(f"{len(data)} bytes exceeds the limit of {limits.max_size}")
    status, _items, where = _scan(data, limits.max_depth, limits.max_items, whole, canonical)
    if status == _NOT_CANONICAL:  # well formed and within the limits (the scan went on to the end)
        return len(data), where
    if status:
        cls, text = _SCAN_ERRORS[status]
        raise cls(text, offset=where)
    if where > limits.max_size:
        raise TooLarge(f"{where} bytes exceeds the limit of {limits.max_size}")
    return where, None


def _loads(data) -> Any:
    try:
        return cbor2.loads(
            data if isinstance(data, bytes) else bytes(data),
            semantic_decoders=_SEMANTIC,
            max_depth=0x7FFF,  # the scan has enforced the real limit already
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
    except CodecError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, CodecError) else None
        if cause is not None:
            raise cause from None
        raise Malformed(str(exc)) from None


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS, *, canonical: bool = False) -> Any:
    """Strictly decode one CBOR item. ``canonical=True`` also rejects non-canonical bytes.

    The scan checks canonical form on the way (no re-encoding): exactly the
    bytes ``encode`` writes for the decoded value pass.
    """
    _, not_canonical = _check_scan(data, limits, whole=True, canonical=canonical)
    obj = _loads(data)  # a malformed item reports that first
    if not_canonical is not None:
        raise NotCanonical("bytes are not the canonical encoding of their value", offset=not_canonical)
    return obj


def decode_first(data: bytes, limits: Limits = DEFAULT_LIMITS, *, canonical: bool = False) -> tuple[Any, int]:
    """Decode the first item of an RFC 8742 CBOR sequence; returns (item, offset where the rest starts).

    ``canonical=True`` also rejects a first item that is not in canonical form.
    """
    end, _ = _check_scan(data, limits, whole=False)
    first = memoryview(data)[:end]
    if canonical:
        return decode(first, limits, canonical=True), end
    return _loads(first), end


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class MaxLen:
    """Upper bound on len() of a bytes, str, list or dict field."""

    n: int


@dataclass(frozen=True)
class Range:
    lo: float = -math.inf
    hi: float = math.inf


@dataclass(frozen=True)
class Array:
    """Constraints on an ndarray field."""

    dtype: str | None = None
    ndim: int | None = None
    max_elems: int = 1 << 24


INT64_RANGE = (-(1 << 63), (1 << 64) - 1)  # what CBOR major types 0/1 hold without bignum tags


class Message:
    """Base of every wire message type. Subclasses are frozen dataclasses made by ``@message``."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int]
    MAX_SIZE: ClassVar[int]

    def to_wire(self) -> dict[str, Any]:
        out = {}
        for name in _schema(type(self)).names:
            value = getattr(self, name)
            if value is not None:
                out[name] = _to_wire(value)
        return out

    @classmethod
    def from_wire(cls, value: Any, path: str | None = None) -> "Message":
        return _schema(cls).check(value, path or cls.__name__)


def _to_wire(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


REGISTRY: dict[tuple[str, int], type[Message]] = {}


@typing.dataclass_transform(frozen_default=True)  # type checkers see each message's fields as its __init__
def message(type_name: str, *, version: int = 1, max_size: int = 64 * 1024):
    """Class decorator: a frozen dataclass registered as wire message ``type_name`` v``version``."""

    def wrap(cls):
        if not issubclass(cls, Message):
            raise TypeError(f"{cls.__name__} must subclass edgefl.codec.Message")
        cls = dataclass(frozen=True)(cls)
        cls.TYPE, cls.VERSION, cls.MAX_SIZE = type_name, version, max_size
        key = (type_name, version)
        if key in REGISTRY and REGISTRY[key].__qualname__ != cls.__qualname__:
            raise ValueError(f"message type {type_name!r} v{version} registered twice")
        REGISTRY[key] = cls
        return cls

    return wrap


def lookup(type_name: str, version: int) -> type[Message]:
    cls = REGISTRY.get((type_name, version))
    if cls is not None:
        return cls
    if any(t == type_name for t, _ in REGISTRY):
        known = sorted(v for t, v in REGISTRY if t == type_name)
        raise UnsupportedVersion(f"version {version} not supported (known: {known})", field=f"{type_name}.version")
    raise UnknownType(f"unknown message type {type_name!r}", field="type")


# Validators are compiled once per message class from its annotations:
# Check = (value, path) -> value, raising SchemaError(field=path as text).
# A path is text or, below the top, (parent path, part), formatted only for an
# error: a CRL of 8,192 entries would otherwise format 40,000 paths it never needs.
Check = typing.Callable[[Any, Any], Any]


def _where(path: Any) -> str:
    """A path as text: (p, "name") is p.name, (p, 3) is p[3], (p, (key,)) is p[key!r]."""
    parts = []
    while isinstance(path, tuple):
        path, part = path
        parts.append(f"[{part}]" if type(part) is int else f"[{part[0]!r}]" if type(part) is tuple else f".{part}")
    return path + "".join(reversed(parts))


class _Schema:
    def __init__(self, cls: type[Message]):
        hints = typing.get_type_hints(cls, include_extras=True)
        self.cls = cls
        self.names = [f.name for f in dataclasses.fields(cls)]
        self.fields: dict[str, Check] = {}
        self.absent: dict[str, Any] = {}  # value used when the key is missing; _REQUIRED if it may not be
        for f in dataclasses.fields(cls):
            self.fields[f.name] = _compile(hints[f.name])
            if f.default is not dataclasses.MISSING:
                self.absent[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                self.absent[f.name] = _FACTORY
            else:
                self.absent[f.name] = None if _optional(hints[f.name]) else _REQUIRED
        self.fast = _flat_check(cls, {n: hints[n] for n in self.names}, self.absent)

    def check(self, value: Any, path: Any) -> Message:
        if self.fast is not None:
            try:
                return self.fast(value)
            except _Slow:
                pass
        if not isinstance(value, dict):  # the general path, which also names what is wrong
            raise SchemaError(f"expected a map, got {type(value).__name__}", field=_where(path))
        kwargs = {}
        for key, item in value.items():
            check = self.fields.get(key)
            if check is None:
                raise SchemaError(f"unknown field {key!r}", field=_where(path))
            kwargs[key] = check(item, (path, key))
        if len(kwargs) < len(self.fields):
            for name, absent in self.absent.items():
                if name in kwargs or absent is _FACTORY:
                    continue
                if absent is _REQUIRED:
                    raise SchemaError("missing", field=_where((path, name)))
                kwargs[name] = absent
        return self.cls(**kwargs)


class _Slow(Exception):
    """The fast path of a flat message is unsure: take the general one (which names what is wrong)."""


_SLOW = _Slow()


def _flat_check(cls: type[Message], hints: dict, absent: dict) -> typing.Callable[[Any], Message] | None:
    """For a message of scalar fields only (a CRL entry, a status): one generated function that returns the
    message, or raises ``_Slow`` when anything is off (the general path then names it), ~5x faster per item.

    It accepts exactly what the general path accepts with each value of its exact type (an int where a
    float belongs takes the general path); a class with ``__post_init__`` or non-scalar fields has none.
    """
    if hasattr(cls, "__post_init__") or any(a is _FACTORY for a in absent.values()):
        return None
    env: dict[str, Any] = {"new": object.__new__, "cls": cls, "MISSING": _REQUIRED, "SLOW": _SLOW}
    lines = ["def fast(d):", f"    if type(d) is not dict or len(d) > {len(hints)} or not NAMES.issuperset(d):",
             "        raise SLOW"]
    for i, (name, tp) in enumerate(hints.items()):
        constraints: tuple = ()
        if get_origin(tp) is Annotated:
            tp, *constraints = get_args(tp)
        optional = get_origin(tp) in (Union, types.UnionType)
        if optional:
            (tp,) = [a for a in get_args(tp) if a is not type(None)]
            if get_origin(tp) is Annotated:
                tp, *more = get_args(tp)
                constraints = (*constraints, *more)
        if tp not in (int, float, str, bytes, bool) or not all(isinstance(c, (MaxLen, Range)) for c in constraints):
            return None
        env[f"t{i}"], env[f"a{i}"] = tp, absent[name]
        test = [f"type(v{i}) is not t{i}"]
        if tp is int:
            test.append(f"not {INT64_RANGE[0]} <= v{i} <= {INT64_RANGE[1]}")
        for j, c in enumerate(constraints):
            if isinstance(c, MaxLen):
                test.append(f"len(v{i}) > {c.n}")
            else:
                env[f"lo{i}_{j}"], env[f"hi{i}_{j}"] = c.lo, c.hi
                test.append(f"not lo{i}_{j} <= v{i} <= hi{i}_{j}")
        lines.append(f"    v{i} = d.get({name!r}, a{i})")
        check = f"v{i} is MISSING or " if absent[name] is _REQUIRED else ""
        given = f"{name!r} in d and " if absent[name] is not _REQUIRED else ""
        if optional:
            given += f"v{i} is not None and "
        lines += [f"    if {check}{given}({' or '.join(test)}):", "        raise SLOW"]
    env["NAMES"] = frozenset(hints)
    lines += ["    o = new(cls)", "    o.__dict__.update(" + ", ".join(f"{n}=v{i}" for i, n in enumerate(hints)) + ")",
              "    return o"]
    exec("\n".join(lines), env)  # noqa: S102 - generated from the class's own annotations, as dataclasses does
    return env["fast"]


_REQUIRED, _FACTORY = object(), object()


def _schema(cls: type[Message]) -> _Schema:
    schema = cls.__dict__.get("_schema_cache")
    if schema is None:
        schema = _Schema(cls)
        cls._schema_cache = schema
    return schema


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _fail(message: str, path: Any):
    raise SchemaError(message, field=_where(path))


def _compile(tp: Any) -> Check:
    constraints: tuple = ()
    if get_origin(tp) is Annotated:
        tp, *constraints = get_args(tp)
    if get_origin(tp) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        check = _compile(Annotated[(inner, *constraints)] if constraints else inner)
        return lambda v, p: None if v is None else check(v, p)
    base = _compile_base(tp, constraints)
    limits = [c.n for c in constraints if isinstance(c, MaxLen)]
    ranges = [c for c in constraints if isinstance(c, Range)]
    if not (limits or ranges):
        return base
    n = min(limits) if limits else None

    def check(v, p):
        v = base(v, p)
        if n is not None and len(v) > n:
            _fail(f"length {len(v)} exceeds {n}", p)
        for r in ranges:
            if not r.lo <= v <= r.hi:
                _fail(f"{v} outside [{r.lo}, {r.hi}]", p)
        return v

    return check


def _compile_base(tp: Any, constraints: tuple) -> Check:
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Message):
        return lambda v, p: _schema(tp).check(v, p)
    if origin is list:
        (item,) = get_args(tp)
        each = _compile(item)
        flat = isinstance(item, type) and issubclass(item, Message)  # a list of messages: try their fast path

        def check_list(v, p):
            if not isinstance(v, (list, tuple)):
                _fail(f"expected an array, got {type(v).__name__}", p)
            fast = _schema(item).fast if flat else None
            if fast is not None:
                try:
                    return [fast(x) for x in v]
                except _Slow:
                    pass
            return [each(x, (p, i)) for i, x in enumerate(v)]

        return check_list
    if origin is dict:
        kt, vt = get_args(tp)
        key_check, value_check = _compile(kt), _compile(vt)

        def check_dict(v, p):
            if not isinstance(v, dict):
                _fail(f"expected a map, got {type(v).__name__}", p)
            return {key_check(k, (p, "<key>")): value_check(x, (p, (k,))) for k, x in v.items()}

        return check_dict
    if tp is Any:
        return lambda v, p: v
    if tp is np.ndarray:
        arrays = [c for c in constraints if isinstance(c, Array)]
        return lambda v, p: _check_array(v, arrays, p)
    if tp is float:
        def check_float(v, p):
            if type(v) is float:
                return v
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                _fail(f"expected float, got {type(v).__name__}", p)
            return float(v)

        return check_float
    if tp is int:
        lo, hi = INT64_RANGE

        def check_int(v, p):
            if type(v) is not int:
                _fail(f"expected int, got {type(v).__name__}", p)
            if not lo <= v <= hi:
                _fail("integer outside the 64-bit range", p)
            return v

        return check_int
    if tp in (str, bytes, bool):
        name = tp.__name__

        def check_exact(v, p):
            if type(v) is not tp:
                _fail(f"expected {name}, got {type(v).__name__}", p)
            return v

        return check_exact
    raise TypeError(f"unsupported message annotation {tp!r}")


def _check_array(value: Any, constraints: list, path: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        _fail(f"expected a typed array, got {type(value).__name__}", path)
    for c in constraints:
        if c.dtype is not None and value.dtype != np.dtype(c.dtype):
            _fail(f"dtype {value.dtype} is not {c.dtype}", path)
        if c.ndim is not None and value.ndim != c.ndim:
            _fail(f"{value.ndim} dimensions, expected {c.ndim}", path)
        if value.size > c.max_elems:
            _fail(f"{value.size} elements exceeds {c.max_elems}", path)
    return value


def message_to_wire(msg: Message) -> dict[str, Any]:
    """The message as a CBOR-ready map, validated: refuse to send what a receiver would reject."""
    body = msg.to_wire()
    type(msg).from_wire(body)
    return body


def encode_message(msg: Message) -> bytes:
    """Canonical bytes of a message map, validated and size-checked."""
    data = encode(message_to_wire(msg))
    if len(data) > msg.MAX_SIZE:
        raise TooLarge(f"{len(data)} bytes exceeds {msg.MAX_SIZE}", field=type(msg).__name__)
    return data
