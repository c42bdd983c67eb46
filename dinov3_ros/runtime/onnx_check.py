"""Static TensorRT-compatibility checker for ONNX graphs (no TensorRT needed).

Walks every node (including subgraphs) and reports what TensorRT's ONNX parser does not support or
handles badly, as :class:`Finding` records. ``error`` findings make ``dinov3-ros export`` fail unless
``--force``; ``warning`` findings are printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

__all__ = ["TRT_SUPPORTED_OPS", "Finding", "check_tensorrt_compat", "format_findings"]

#: Standard-domain ops the TensorRT 10 ONNX parser imports (onnx-tensorrt operator list).
TRT_SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu CenterCropPad Clip Concat Constant ConstantOfShape Conv ConvTranspose
    Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout DynamicQuantizeLinear Einsum Elu Equal
    Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid
    HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
    Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
    Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
    SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
    Upsample Where Xor
    """.split()
)

_BAD_DTYPES = {
    TensorProto.DOUBLE: "float64 (TensorRT has no double)",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
    TensorProto.STRING: "string",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
}

MIN_OPSET = 17


@dataclass(frozen=True)
class Finding:
    """One compatibility problem. ``severity`` is ``"error"``, ``"warning"`` or ``"info"``."""

    severity: str
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.op} '{self.node}'" if self.node else self.op
        return f"[{self.severity.upper()}] {where}: {self.message}"


def _walk(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[onnx.NodeProto, str]]:
    for node in graph.node:
        yield node, prefix
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from _walk(sub, f"{prefix}{node.name or node.op_type}/")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _decomposed_layernorms(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div: LayerNorm split into primitives."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def follow(n: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
        for c in consumers.get(n.output[0], []) if n.output else []:
            if c.op_type == op:
                return c
        return None

    hits = []
    for n in graph.node:
        if n.op_type != "ReduceMean":
            continue
        chain = [n]
        for op in ("Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div"):
            nxt = follow(chain[-1], op)
            if nxt is None:
                break
            chain.append(nxt)
        if len(chain) == 7:
            hits.append(n)
    return hits


def check_tensorrt_compat(
    model_path: str | Path | onnx.ModelProto, *, isaac_ros: bool = True
) -> list[Finding]:
    """Every TensorRT-parser problem in the model, worst first. ``isaac_ros`` warns on dynamic non-batch dims."""
    model = model_path if isinstance(model_path, onnx.ModelProto) else onnx.load(str(model_path))
    graph = model.graph
    findings = [
        *_check_opset(model),
        *_check_inputs(graph, isaac_ros),
        *_check_dtypes(model),
    ]
    for node, prefix in _walk(graph):
        findings += _check_node(node, prefix + (node.name or ""))
    findings += _check_layernorms(graph)
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order.get(f.severity, 3))
    return findings


def _check_opset(model: onnx.ModelProto) -> list[Finding]:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return []
    return [
        Finding(
            "error",
            "",
            "opset",
            f"opset {opset} < {MIN_OPSET}: LayerNorm is decomposed into primitives (FP16 overflow risk "
            "in TensorRT); export with opset 17 or 18",
        )
    ]


def _check_inputs(graph: onnx.GraphProto, isaac_ros: bool) -> list[Finding]:
    """Mask inputs (a hub ``forward`` exported as is) and dynamic non-batch dims."""
    findings = []
    for inp in graph.input:
        if "mask" in inp.name.lower():
            findings.append(
                Finding("error", inp.name, "input", "graph has a mask input; export a masks-free wrapper")
            )
    init_names = {i.name for i in graph.initializer}
    for inp in (i for i in graph.input if i.name not in init_names):
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            dynamic = d.HasField("dim_param") or not d.HasField("dim_value") or d.dim_value <= 0
            if dynamic and k > 0:
                findings.append(
                    Finding(
                        "warning" if isaac_ros else "info",
                        inp.name,
                        "input",
                        f"dim {k} is dynamic ({d.dim_param or '?'}): Isaac ROS TensorRT allows only dim 0 dynamic; "
                        "TensorRT needs min/opt/max profiles",
                    )
                )
    return findings


def _check_dtypes(model: onnx.ModelProto) -> list[Finding]:
    """Tensor dtypes TensorRT lacks (inputs, outputs, initializers, inferred intermediates)."""
    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        value_infos = list(inferred.value_info)
    except Exception:  # noqa: BLE001 - inference is best effort (huge or odd graphs)
        value_infos = list(graph.value_info)
    findings = []
    for vi in [*graph.input, *graph.output, *value_infos]:
        dt = vi.type.tensor_type.elem_type
        if dt in _BAD_DTYPES:
            findings.append(Finding("error", vi.name, "tensor", f"dtype {_BAD_DTYPES[dt]} is not supported"))
    for init in graph.initializer:
        if init.data_type in _BAD_DTYPES:
            findings.append(
                Finding(
                    "error", init.name, "initializer", f"dtype {_BAD_DTYPES[init.data_type]} is not supported"
                )
            )
    n_int64 = sum(1 for i in graph.initializer if i.data_type == TensorProto.INT64)
    if n_int64:
        findings.append(
            Finding("info", "", "initializer", f"{n_int64} INT64 initializers (TensorRT casts them to INT32)")
        )
    return findings


def _check_node(node: onnx.NodeProto, name: str) -> list[Finding]:
    """What TensorRT's parser makes of one node."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return [
            Finding("error", name, f"{node.domain}::{op}", "custom-domain op: TensorRT needs a plugin for it")
        ]
    if op in ("If", "Loop", "Scan"):
        return [
            Finding(
                "error",
                name,
                op,
                "control flow: TensorRT 10.3 (JetPack 6) rejects the RoPE tile() If node; make the graph "
                "static (constant RoPE tables, cat instead of tile)",
            )
        ]
    if op not in TRT_SUPPORTED_OPS:
        return [Finding("error", name, op, "not in TensorRT's ONNX parser operator list")]
    if op == "Resize":
        return _check_resize(node, name)
    if op == "NonZero":
        return [Finding("warning", name, op, "data-dependent output shape (slow in TensorRT)")]
    if op == "Range":
        return [
            Finding(
                "warning",
                name,
                op,
                "shape arithmetic in the graph (Range on dynamic sizes); use a fixed-size export for "
                "TensorRT 10.3 (JetPack 6) and Isaac ROS",
            )
        ]
    if op == "Cast" and _attr(node, "to") == TensorProto.DOUBLE:
        return [Finding("error", name, op, "cast to float64")]
    return []


def _check_resize(node: onnx.NodeProto, name: str) -> list[Finding]:
    findings = []
    if _attr(node, "antialias", 0):
        findings.append(Finding("error", name, "Resize", "antialias=1 is not handled by TensorRT's Resize"))
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "cubic":
        findings.append(
            Finding(
                "warning",
                name,
                "Resize",
                "cubic Resize: TensorRT maps it only when all but the last two scales are 1, and it "
                "differs numerically from PyTorch; precompute it for fixed shapes",
            )
        )
    return findings


def _check_layernorms(graph: onnx.GraphProto) -> list[Finding]:
    return [
        Finding(
            "error",
            n.name,
            "LayerNorm(decomposed)",
            "LayerNorm written as ReduceMean/Sub/Pow/Sqrt/Div: use opset >= 17 LayerNormalization "
            "(TensorRT keeps it in FP32-safe INormalizationLayer)",
        )
        for n in _decomposed_layernorms(graph)
    ]


def format_findings(findings: list[Finding]) -> str:
    """Human-readable report; one line per finding plus a count line."""
    if not findings:
        return "TensorRT compatibility: no findings"
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    lines = [str(f) for f in findings]
    lines.append(
        f"TensorRT compatibility: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
    )
    return "\n".join(lines)
