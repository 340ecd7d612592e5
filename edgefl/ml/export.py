"""Export the extractor as ONNX and as TFLite from one set of weights, and check models by hash.

Both formats take NHWC float32 images with a dynamic batch dimension,
``images: (batch, 28, 28, 1)``, and give ``features: (batch, 3920)`` flattened
in H, W, C order.  No ML framework is involved: ONNX is written with
``onnx.helper`` and TFLite as a flatbuffer with the schema's object API
(``ai_edge_litert.schema_py_generated``).  Exports are deterministic, so the
same weights and version always give the same bytes and the same hash.

Every model carries its version (ONNX ``model_version`` and metadata; TFLite
description and an ``edgefl`` metadata buffer) and the digest of its weights.
``model_hash`` over the exported bytes is what the cloud publishes on the
ledger (``ModelRelease``); a device calls ``ModelRelease.check`` (or
``verify_model``) and refuses a model whose hash does not match.
"""

from __future__ import annotations

import hmac
import importlib
import os
from pathlib import Path
from typing import Annotated

import numpy as np

from edgefl import __version__, codec
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import tagged_hash
from edgefl.errors import EdgeflError
from edgefl.ml.extractor import FEATURES, IMAGE_SHAPE, ExtractorWeights

MODEL_TAG = b"edgefl/model/v1"
FORMATS = ("onnx", "tflite")
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
MAX_MODEL_BYTES = 64 << 20
ONNX_OPSET = 13
INPUT, OUTPUT = "images", "features"


class ModelError(EdgeflError, ValueError):
    reason = "model"

    """A model file is unreadable, too large or of an unknown format."""


class ModelHashMismatch(ModelError):
    """The model's bytes do not hash to the published value: the device refuses it."""

    def __init__(self, expected: bytes, actual: bytes):
        super().__init__(f"model hash {actual.hex()} does not match the published {expected.hex()}")
        self.expected = expected
        self.actual = actual


def model_hash(data: bytes) -> bytes:
    """The 32-byte hash the cloud publishes for an exported model: tagged SHA-256 of its exact bytes."""
    return tagged_hash(MODEL_TAG, bytes(data))


def verify_model(data: bytes, expected: bytes) -> bytes:
    """Return ``data`` if it hashes to ``expected``; raise ``ModelHashMismatch`` otherwise."""
    actual = model_hash(data)
    if not hmac.compare_digest(actual, bytes(expected)):
        raise ModelHashMismatch(bytes(expected), actual)
    return data


def detect_format(data: bytes) -> str:
    # TFLite flatbuffers carry the file identifier "TFL3" at offset 4; ONNX is a protobuf.
    if len(data) >= 8 and data[4:8] == b"TFL3":
        return "tflite"
    if data[:1] == b"\x08":  # field 1 (ir_version), varint: how every ModelProto starts
        return "onnx"
    raise ModelError("neither an ONNX nor a TFLite model")


def read_model(path: str | os.PathLike, *, max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ModelError(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        detect_format(data)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return data


@message("model_release")
class ModelRelease(Message):
    """What the cloud publishes for one exported model: a device accepts exactly these bytes."""

    name: Annotated[str, MaxLen(64)]
    version: Annotated[int, Range(1, (1 << 31) - 1)]
    format: Annotated[str, MaxLen(16)]
    hash: Annotated[bytes, MaxLen(32)]
    size: Annotated[int, Range(1, MAX_MODEL_BYTES)]
    weights: Annotated[bytes, MaxLen(32)] = b""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise codec.SchemaError(f"{self.format!r} is not one of {', '.join(FORMATS)}", field="model_release.format")
        if len(self.hash) != 32:
            raise codec.SchemaError("must be 32 bytes", field="model_release.hash")

    @classmethod
    def of(cls, data: bytes, weights: ExtractorWeights, fmt: str, name: str = "extractor") -> "ModelRelease":
        return cls(name=name, version=weights.version, format=fmt, hash=model_hash(data), size=len(data),
                   weights=weights.digest())

    def check(self, data: bytes) -> bytes:
        """The device side: the model's bytes, or ``ModelHashMismatch``."""
        if len(data) != self.size:
            raise ModelHashMismatch(self.hash, model_hash(data))
        verify_model(data, self.hash)
        if detect_format(data) != self.format:
            raise ModelError(f"model is {detect_format(data)}, the release says {self.format}")
        return data


_EXPORTERS_NEED = {"onnx": ("onnx",), "tflite": ("flatbuffers", "ai_edge_litert.schema_py_generated")}


def export_problem(fmt: str) -> str | None:
    """Why ``fmt`` cannot be exported here (a package missing), or None: checked before a cloud starts."""
    for module in _EXPORTERS_NEED.get(fmt, ()):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"exporting {fmt} needs {module.partition('.')[0]} ({exc}): pip install 'edgefl[ml]'"
    return None


def export(weights: ExtractorWeights, fmt: str) -> bytes:
    if fmt == "onnx":
        return export_onnx(weights)
    if fmt == "tflite":
        return export_tflite(weights)
    raise ModelError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- ONNX


def export_onnx(weights: ExtractorWeights) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def init(name: str, arr: np.ndarray):
        return numpy_helper.from_array(np.ascontiguousarray(arr), name)

    oihw = {k: w.transpose(3, 2, 0, 1) for k, w in (("conv1_w", weights.conv1_w), ("conv2_w", weights.conv2_w))}
    initializers = [init("conv1_w", oihw["conv1_w"]), init("conv1_b", weights.conv1_b),
                    init("conv2_w", oihw["conv2_w"]), init("conv2_b", weights.conv2_b),
                    init("flat_shape", np.array([-1, FEATURES], np.int64))]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Transpose", [INPUT], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv1_w", "conv1_b"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], **pool),
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], **pool),
        helper.make_node("Transpose", ["p2"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["nhwc", "flat_shape"], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, "edgefl_extractor",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *IMAGE_SHAPE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", FEATURES])],
        initializers)
    model = helper.make_model(graph, producer_name="edgefl", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 8  # understood by onnxruntime >= 1.14 (Raspberry Pi OS wheels)
    model.model_version = weights.version
    model.doc_string = f"edgefl feature extractor v{weights.version}"
    helper.set_model_props(model, {"edgefl.version": str(weights.version), "edgefl.weights": weights.digest().hex()})
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


# --------------------------------------------------------------------------- TFLite


def export_tflite(weights: ExtractorWeights) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    class AlignedBuffer(tfl.BufferT):
        """Constant data aligned to 16 bytes, as the TFLite converter writes it."""

        def Pack(self, builder):
            data = None
            if self.data is not None:
                raw = bytes(self.data)
                builder.StartVector(1, len(raw), 16)
                builder.head = builder.head - len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            tfl.BufferStart(builder)
            if data is not None:
                tfl.BufferAddData(builder, data)
            return tfl.BufferEnd(builder)

    buffers: list = [AlignedBuffer()]  # buffer 0: the empty sentinel for activations
    tensors: list = []

    def tensor(name: str, shape, data: np.ndarray | None = None, dtype=tfl.TensorType.FLOAT32) -> int:
        t = tfl.TensorT()
        t.name, t.type = name, dtype
        t.shape = [1 if d < 0 else d for d in shape]
        if any(d < 0 for d in shape):
            t.shapeSignature = list(shape)
        t.buffer = 0
        if data is not None:
            b = AlignedBuffer()
            b.data = np.ascontiguousarray(data).tobytes()
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    codes = [tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOperator.MAX_POOL_2D, tfl.BuiltinOperator.RESHAPE]
    operator_codes = []
    for code in codes:
        oc = tfl.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, code, 1
        operator_codes.append(oc)

    def op(code, inputs, outputs, options_type, options):
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes.index(code), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    def conv_options():
        c = tfl.Conv2DOptionsT()
        c.padding, c.strideW, c.strideH = tfl.Padding.SAME, 1, 1
        c.dilationWFactor, c.dilationHFactor = 1, 1
        c.fusedActivationFunction = tfl.ActivationFunctionType.RELU
        return c

    def pool_options():
        p = tfl.Pool2DOptionsT()
        p.padding, p.strideW, p.strideH, p.filterWidth, p.filterHeight = tfl.Padding.VALID, 2, 2, 2, 2
        p.fusedActivationFunction = tfl.ActivationFunctionType.NONE
        return p

    ohwi = lambda w: w.transpose(3, 0, 1, 2)  # noqa: E731 - HWIO → TFLite's OHWI
    f1, f2 = weights.conv1_w.shape[3], weights.conv2_w.shape[3]
    x = tensor(INPUT, [-1, *IMAGE_SHAPE])
    w1, b1 = tensor("conv1_w", ohwi(weights.conv1_w).shape, ohwi(weights.conv1_w)), tensor("conv1_b", [f1], weights.conv1_b)
    c1 = tensor("c1", [-1, 28, 28, f1])
    p1 = tensor("p1", [-1, 14, 14, f1])
    w2, b2 = tensor("conv2_w", ohwi(weights.conv2_w).shape, ohwi(weights.conv2_w)), tensor("conv2_b", [f2], weights.conv2_b)
    c2 = tensor("c2", [-1, 14, 14, f2])
    p2 = tensor("p2", [-1, 7, 7, f2])
    shape = tensor("flat_shape", [2], np.array([-1, FEATURES], np.int32), tfl.TensorType.INT32)
    y = tensor(OUTPUT, [-1, FEATURES])
    reshape = tfl.ReshapeOptionsT()
    reshape.newShape = [-1, FEATURES]
    BO = tfl.BuiltinOptions
    operators = [
        op(tfl.BuiltinOperator.CONV_2D, [x, w1, b1], [c1], BO.Conv2DOptions, conv_options()),
        op(tfl.BuiltinOperator.MAX_POOL_2D, [c1], [p1], BO.Pool2DOptions, pool_options()),
        op(tfl.BuiltinOperator.CONV_2D, [p1, w2, b2], [c2], BO.Conv2DOptions, conv_options()),
        op(tfl.BuiltinOperator.MAX_POOL_2D, [c2], [p2], BO.Pool2DOptions, pool_options()),
        op(tfl.BuiltinOperator.RESHAPE, [p2, shape], [y], BO.ReshapeOptions, reshape),
    ]
    subgraph = tfl.SubGraphT()
    subgraph.name, subgraph.tensors, subgraph.operators = "main", tensors, operators
    subgraph.inputs, subgraph.outputs = [x], [y]

    meta_buffer = AlignedBuffer()
    meta_buffer.data = codec.encode({"version": weights.version, "weights": weights.digest(), "producer": __version__})
    buffers.append(meta_buffer)
    meta = tfl.MetadataT()
    meta.name, meta.buffer = "edgefl", len(buffers) - 1

    model = tfl.ModelT()
    model.version = 3  # the TFLite schema version
    model.operatorCodes, model.subgraphs, model.buffers = operator_codes, [subgraph], buffers
    model.description = f"edgefl feature extractor v{weights.version}"
    model.metadata = [meta]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def model_version(data: bytes) -> int:
    """The edgefl version recorded inside an exported model."""
    fmt = detect_format(data)
    if fmt == "onnx":
        import onnx

        try:
            return int(onnx.load_from_string(data).model_version)
        except Exception as exc:  # protobuf raises its own DecodeError
            raise ModelError(f"not a valid ONNX model: {exc}") from None
    from ai_edge_litert import schema_py_generated as tfl

    try:
        m = tfl.Model.GetRootAs(data, 0)
        for i in range(m.MetadataLength()):
            if m.Metadata(i).Name() == b"edgefl":
                raw = m.Buffers(m.Metadata(i).Buffer()).DataAsNumpy().tobytes()
                return int(codec.decode(raw)["version"])
    except (codec.CodecError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"TFLite model has corrupt edgefl metadata: {exc}") from None
    raise ModelError("TFLite model carries no edgefl metadata")
