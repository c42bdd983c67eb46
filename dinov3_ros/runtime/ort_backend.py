"""ONNX Runtime backend: CPU, and the CUDA execution provider (with IO binding) when present."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Engine, EngineInfo

__all__ = ["OrtEngine", "cpu_variant", "fuse_mha", "quantize_int8", "read_metadata"]

_GRAPH_OPT = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """Our ``metadata_props`` (JSON-decoded where possible) without loading the weights."""
    import onnx

    return _decoded_metadata(onnx.load(str(onnx_path), load_external_data=False))


def _decoded_metadata(model) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except (ValueError, TypeError):
            out[p.key] = p.value
    return out


def info_from_metadata(meta: dict[str, Any], backend: str, precision: str, device: str) -> EngineInfo:
    """EngineInfo from the export metadata (defaults when a key is missing)."""
    size = meta.get("input_size")
    return EngineInfo(
        backend=backend,
        precision=precision,
        device=device,
        arch=str(meta.get("arch", "unknown")),
        input_size=tuple(size) if isinstance(size, list) else None,
        patch_size=int(meta.get("patch_size", 16)),
        embed_dim=int(meta.get("embed_dim", 0)),
        norm_mean=tuple(meta.get("norm_mean", (0.485, 0.456, 0.406))),
        norm_std=tuple(meta.get("norm_std", (0.229, 0.224, 0.225))),
        outputs=tuple(meta.get("outputs", ("patch_tokens", "cls"))),
    )


def _perm(node) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def fuse_mha(model, num_heads: int, head_dim: int):
    """Replace exported SDPA subgraphs with ``com.microsoft.MultiHeadAttention`` (ONNX Runtime only).

    The TorchScript SDPA symbolic gives ``Transpose(q) * s``, ``Transpose(k) * s`` -> MatMul -> Softmax ->
    MatMul(``Transpose(v)``) -> Transpose; ORT's fused kernel avoids materialising the N x N scores in
    separate passes. Returns ``(model, n_fused)``; the model is changed in place. Not for TensorRT.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    shape3, shape4 = "ort_mha_shape_bsd", "ort_mha_shape_bsnh"
    remove: set[int] = set()
    new_nodes = []
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        mm1 = prod.get(sm.input[0])
        after = cons.get(sm.output[0], [])
        if mm1 is None or mm1.op_type != "MatMul" or len(after) != 1 or after[0].op_type != "MatMul":
            continue
        mm2 = after[0]
        mq, mk = prod.get(mm1.input[0]), prod.get(mm1.input[1])
        if mq is None or mk is None or mq.op_type != "Mul" or mk.op_type != "Mul":
            continue
        tq, tk, tv = prod.get(mq.input[0]), prod.get(mk.input[0]), prod.get(mm2.input[1])
        if not all(t is not None and t.op_type == "Transpose" for t in (tq, tk, tv)):
            continue
        if (_perm(tq), _perm(tk), _perm(tv)) != ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]):
            continue
        tail = cons.get(mm2.output[0], [])
        if len(tail) != 1 or tail[0].op_type != "Transpose" or _perm(tail[0]) != [0, 2, 1, 3]:
            continue
        if len(cons.get(mm1.output[0], [])) != 1:
            continue
        k = f"ort_mha_{len(remove) // 4}"
        new_nodes += [
            helper.make_node("Reshape", [tq.input[0], shape3], [k + "_q"], name=k + "_rq"),
            helper.make_node("Reshape", [tk.input[0], shape3], [k + "_k"], name=k + "_rk"),
            helper.make_node("Reshape", [tv.input[0], shape3], [k + "_v"], name=k + "_rv"),
            helper.make_node(
                "MultiHeadAttention",
                [k + "_q", k + "_k", k + "_v"],
                [k + "_o"],
                name=k,
                domain="com.microsoft",
                num_heads=num_heads,
            ),
            helper.make_node("Reshape", [k + "_o", shape4], [tail[0].output[0]], name=k + "_ro"),
        ]
        remove |= {id(sm), id(mm1), id(mm2), id(tail[0])}
    n_fused = len(remove) // 4
    if not n_fused:
        return model, 0
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), shape3),
            numpy_helper.from_array(np.array([0, 0, num_heads, head_dim], np.int64), shape4),
        ]
    )
    _replace_nodes(model, [n for n in g.node if id(n) not in remove], new_nodes)
    return model, n_fused


def _up(prod: dict[str, Any], name: str, ops: tuple[str, ...]) -> Any:
    """The producer of ``name``, skipping ``Cast`` nodes; None unless its op is in ``ops``."""
    n = prod.get(name)
    while n is not None and n.op_type == "Cast":
        n = prod.get(n.input[0])
    return n if n is not None and n.op_type in ops else None


def _gather_index(node, consts: dict[str, np.ndarray]) -> int | None:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    idx = consts.get(node.input[1])
    return int(idx.reshape(-1)[0]) if axis == 2 and idx is not None and idx.size == 1 else None


def fuse_rope(model, num_heads: int, head_dim: int):
    """Rewrite each fused attention's q/k RoPE to ``com.microsoft.RotaryEmbedding`` (ONNX Runtime only).

    Runs after :func:`fuse_mha` on fixed-size exports. The exported RoPE (reshape to ``[B, N, 3, H, Dh]``,
    slice q/k, rotate-half by two slices + concat, ``* cos + rot * sin``, gather q, k, v) becomes
    ``Split`` of the qkv projection + one ``RotaryEmbedding`` for q and one for k, feeding
    ``MultiHeadAttention`` in ``[B, N, D]`` directly. The cos/sin tables are read by evaluating the
    graph once and are checked to be the rotate-half form (``cos = [c, c]``, ``sin = [-s, s]``); any
    mismatch leaves the graph unchanged. Returns ``(model, n_rewritten)``.
    """
    from onnx import numpy_helper

    g = model.graph
    consts = _graph_constants(g)
    prod = {o: n for n in g.node for o in n.output}
    mhas = [n for n in g.node if n.domain == "com.microsoft" and n.op_type == "MultiHeadAttention"]
    sites = [site for site in (_rope_site(m, prod, consts) for m in mhas) if site is not None]
    dims = g.input[0].type.tensor_type.shape.dim
    if not sites or len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[2:]):
        return model, 0  # nothing to do, or dynamic H/W (the tables depend on the input size)
    vals = _evaluate(model, sorted({t for s in sites for t in s[2:]}))
    tables = _rope_tables(sites, vals, head_dim)
    if tables is None:
        return model, 0
    for (cos_t, sin_t), (c, s_) in tables.values():
        g.initializer.extend([numpy_helper.from_array(c, cos_t), numpy_helper.from_array(s_, sin_t)])
    g.initializer.extend(
        [
            numpy_helper.from_array(np.zeros(1, np.int64), "ort_rope_pos0"),
            numpy_helper.from_array(np.full(3, num_heads * head_dim, np.int64), "ort_rope_split"),
        ]
    )
    names = {key: pair for key, (pair, _) in tables.items()}
    _replace_nodes(model, list(g.node), _rope_nodes(sites, names, num_heads))
    return model, len(sites)


def _graph_constants(g) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs by name."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _rope_site(mha, prod: dict[str, Any], consts: dict[str, np.ndarray]) -> tuple | None:
    """``(mha, qkv, cos, sin)`` tensor names when ``mha``'s q/k come from the exported RoPE pattern."""
    if len(mha.input) < 3:
        return None
    gathers = [_up(prod, t, ("Reshape",)) for t in mha.input[:3]]
    if any(r is None for r in gathers):
        return None
    gathers = [prod.get(r.input[0]) for r in gathers]
    if any(gn is None or gn.op_type != "Gather" for gn in gathers):
        return None
    if [_gather_index(gn, consts) for gn in gathers] != [0, 1, 2]:
        return None
    gq, gk, gv = gathers
    if gq.input[0] != gk.input[0]:
        return None
    add = _up(prod, gq.input[0], ("Add",))
    five = prod.get(gv.input[0])
    if add is None or five is None or five.op_type != "Reshape":
        return None
    muls = [prod.get(i) for i in add.input]
    if any(m is None or m.op_type != "Mul" for m in muls):
        return None
    m_cos = next((m for m in muls if _up(prod, m.input[0], ("Slice",)) is not None), None)
    m_sin = next((m for m in muls if m is not m_cos), None)
    if m_cos is None or m_sin is None or _up(prod, m_sin.input[0], ("Concat",)) is None:
        return None
    return mha, five.input[0], m_cos.input[1], m_sin.input[1]


def _evaluate(model, names: list[str]) -> dict[str, np.ndarray]:
    """The values of tensors ``names`` (constant in a fixed-size export) from one CPU run on zeros."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend([helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    return dict(zip(names, sess.run(names, {inp.name: np.zeros(shape, np.float32)})))


def _rope_tables(
    sites: list[tuple], vals: dict[str, np.ndarray], head_dim: int
) -> dict[tuple[str, str], tuple[tuple[str, str], tuple[np.ndarray, np.ndarray]]] | None:
    """(cos, sin) tensor names -> (new initializer names, half tables); None unless every table has the
    rotate-half form."""
    half = head_dim // 2
    tables: dict[tuple[str, str], tuple[tuple[str, str], tuple[np.ndarray, np.ndarray]]] = {}
    for _, _, cname, sname in sites:
        if (cname, sname) in tables:
            continue
        c, s_ = vals[cname], vals[sname]
        if c.ndim != 4 or c.shape[1:3] != (1, 1) or c.shape[-1] != head_dim or s_.shape != c.shape:
            return None
        c, s_ = c[:, 0, 0], s_[:, 0, 0]
        if not (
            np.array_equal(c[:, :half], c[:, half:]) and np.allclose(-s_[:, :half], s_[:, half:], atol=0)
        ):
            return None
        k = f"ort_rope_{len(tables)}"
        halves = (np.ascontiguousarray(c[:, :half]), np.ascontiguousarray(s_[:, half:]))
        tables[(cname, sname)] = ((k + "_cos", k + "_sin"), halves)
    return tables


def _rope_nodes(sites: list[tuple], tables: dict[tuple[str, str], tuple[str, str]], num_heads: int) -> list:
    """Split + two RotaryEmbedding nodes per site; rewires each ``MultiHeadAttention``'s q/k/v."""
    from onnx import helper

    new_nodes = []
    for i, (mha, qkv, cname, sname) in enumerate(sites):
        cos_t, sin_t = tables[(cname, sname)]
        k = f"ort_rope_b{i}"
        new_nodes += [
            helper.make_node(
                "Split", [qkv, "ort_rope_split"], [k + "_q", k + "_k", k + "_v"], name=k, axis=-1
            ),
            *[
                helper.make_node(
                    "RotaryEmbedding",
                    [k + "_" + t, "ort_rope_pos0", cos_t, sin_t],
                    [k + "_" + t + "r"],
                    name=k + "_" + t + "r",
                    domain="com.microsoft",
                    num_heads=num_heads,
                    interleaved=0,
                )
                for t in ("q", "k")
            ],
        ]
        mha.input[0], mha.input[1], mha.input[2] = k + "_qr", k + "_kr", k + "_v"
    return new_nodes


def _replace_nodes(model, kept: list, new_nodes: list) -> None:
    """Set the graph's nodes to ``kept + new_nodes``, dropping dead nodes, in topological order."""
    g = model.graph
    outs = {o.name for o in g.output}
    while True:
        used = {i for n in kept + new_nodes for i in n.input} | outs
        alive = [n for n in kept if any(o in used for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    avail = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = kept + new_nodes, []
    while pending:
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                ordered.append(n)
                avail |= set(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("graph is not a DAG after rewriting")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    used = {i for n in ordered for i in n.input}
    dead = [i for i in g.initializer if i.name not in used]
    for i in dead:
        g.initializer.remove(i)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        from onnx import helper

        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _set_metadata(model, **entries: Any) -> None:
    """Overwrite/add ``metadata_props`` entries (JSON-encoded unless str)."""
    props = {p.key: p.value for p in model.metadata_props}
    for k, v in entries.items():
        props[k] = v if isinstance(v, str) else json.dumps(v)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _heads_of(model) -> tuple[int, int]:
    """(num_heads, head_dim) from our export metadata; (0, 0) when the file does not say."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        D = int(json.loads(meta.get("embed_dim", "0")))
        n = int(json.loads(meta.get("num_heads", "0")))
    except (ValueError, TypeError):
        return 0, 0
    if D <= 0 or n <= 0 or D % n:
        return 0, 0
    return n, D // n


def cpu_variant(model, *, rope: bool = True):
    """The ONNX Runtime CPU form of a standard (TensorRT-safe) fp32 export: fused ``MultiHeadAttention``.

    Returns ``(model, n_fused)``; ``model`` is changed in place and tagged ``target=cpu``. The result uses
    ``com.microsoft`` ops, so it is for ONNX Runtime only.
    """
    n_heads, head_dim = _heads_of(model)
    if not n_heads:  # not our export (no embed_dim/num_heads metadata): leave the graph as it is
        return model, 0
    model, n = fuse_mha(model, n_heads, head_dim)
    n_rope = fuse_rope(model, n_heads, head_dim)[1] if n and rope else 0
    _set_metadata(model, target="cpu", fused_attention=n, fused_rope=n_rope)
    return model, n


def _cpu_has_vnni() -> bool:
    """True when this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI), or when the CPU is not x86/unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), None)
    except OSError:
        return True
    if flags is None or not {"sse2", "avx2"} & set(flags):
        return True
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def quantize_int8(model, *, per_channel: bool = True, reduce_range: bool | None = None):
    """INT8 weights for ONNX Runtime on CPU (dynamic quantization); returns a new ``ModelProto``.

    Every ``MatMul`` with a constant weight becomes ``DynamicQuantizeMatMul`` (s8 weights, per output
    channel by default; u8 activations quantized per tensor at run time; MLAS runs the u8 x s8 GEMM on
    VNNI/AMX where the CPU has them). Attention is fused first and stays fp32 (``MultiHeadAttention``), as
    do the patch-embedding ``Conv``, LayerNorms, GELU and RoPE. ``model`` is a standard fp32 export (or
    its CPU variant); it is not modified. ONNX Runtime CPU only; not for TensorRT. ``reduce_range``
    (7-bit weights) avoids u8 x s8 saturation on x86 CPUs without VNNI; None = on exactly there.
    """
    import tempfile

    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("precision", '"fp32"').strip('"') != "fp32":
        raise ValueError(f"int8 quantization needs an fp32 ONNX, this one is {meta.get('precision')}")
    src = onnx.ModelProto()
    src.CopyFrom(model)
    if not any(n.domain == "com.microsoft" and n.op_type == "MultiHeadAttention" for n in src.graph.node):
        src, _ = cpu_variant(src)
    if reduce_range is None:
        reduce_range = not _cpu_has_vnni()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "run pre-processing" hint on the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="dinov3_ros_int8_") as td:
            out = Path(td) / "int8.onnx"
            quantize_dynamic(
                src,
                out,
                op_types_to_quantize=["MatMul"],
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": TensorProto.FLOAT, "MatMulConstBOnly": True},
            )
            q = onnx.load(str(out))
    finally:
        root.setLevel(level)
    n_q = sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in q.graph.node)
    if not n_q:
        raise RuntimeError("int8 quantization found no MatMul with constant weights to quantize")
    _set_metadata(
        q,
        precision="int8",
        target="cpu",
        quantization={
            "method": "dynamic",
            "weights": "s7" if reduce_range else "s8",
            "per_channel": per_channel,
            "matmuls": n_q,
        },
    )
    return q


def _device_providers(device: str | torch.device | None, avail: list[str]) -> tuple[torch.device, list[Any]]:
    """The device (default: CUDA when both onnxruntime and torch have it) and its execution providers."""
    dev = torch.device(device) if device is not None else None
    if dev is None:
        dev = torch.device(
            "cuda" if "CUDAExecutionProvider" in avail and torch.cuda.is_available() else "cpu"
        )
    if dev.type != "cuda":
        return dev, ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in avail:
        raise RuntimeError(
            f"onnxruntime has no CUDAExecutionProvider (available: {avail}); "
            "install onnxruntime-gpu or use device='cpu'"
        )
    return dev, [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


def _session_options(
    ort: Any, optimization: str, threads: int | None, spin: bool, optimized_model_path: str | Path | None
) -> Any:
    so = ort.SessionOptions()
    level = _GRAPH_OPT.get(optimization, "ORT_ENABLE_ALL")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle worker threads spinning after a run steal cores from the rest of a robot's stack
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if optimized_model_path:
        so.optimized_model_filepath = str(optimized_model_path)
    return so


class OrtEngine(Engine):
    """An exported ONNX graph in ONNX Runtime.

    ``device="cuda"`` uses ``CUDAExecutionProvider`` (error if the installed onnxruntime lacks it) and
    binds torch CUDA tensors directly (no host round trip). ``threads`` sets intra-op threads (default:
    all cores); ``optimization`` is ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.
    ``spin=False`` stops idle worker threads from busy-waiting between runs (they would steal
    cores from other nodes). ``fuse_attention`` rewrites the attention subgraphs to ORT's fused
    ``MultiHeadAttention`` in memory (:func:`cpu_variant`; the file on disk stays TensorRT-clean); the
    default (None) does it on CPU. ``precision="int8"`` quantizes an fp32 export in memory
    (:func:`quantize_int8`, CPU only; an ONNX exported with ``--quantize int8`` is used as is).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        device: str | torch.device | None = None,
        threads: int | None = None,
        optimization: str = "all",
        precision: str | None = None,
        optimized_model_path: str | Path | None = None,
        fuse_attention: bool | None = None,
        spin: bool = False,
        **_ignored: Any,
    ) -> None:
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.onnx_path}")
        dev, providers = _device_providers(device, ort.get_available_providers())
        self.device = dev
        so = _session_options(ort, optimization, threads, spin, optimized_model_path)
        source, meta, prec = self._graph(read_metadata(self.onnx_path), precision, fuse_attention)
        self.n_fused_attention = int(meta.get("fused_attention", 0) or 0)
        self.n_fused_rope = int(meta.get("fused_rope", 0) or 0)
        self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        in_type = self.session.get_inputs()[0].type
        prec = prec or ("fp16" if "float16" in in_type else "fp32")
        self._in_dtype = np.float16 if "float16" in in_type else np.float32
        self.info = info_from_metadata(meta, "onnxruntime", prec, str(dev))
        self.info.outputs = tuple(self.output_names)
        self.info.extra = {
            "providers": self.session.get_providers(),
            "threads": so.intra_op_num_threads,
            "fused_attention": self.n_fused_attention,
            "fused_rope": self.n_fused_rope,
        }

    def _graph(
        self, meta: dict[str, Any], precision: str | None, fuse_attention: bool | None
    ) -> tuple[str | bytes, dict[str, Any], str | None]:
        """``(session source, metadata, "int8" or None)``: the file as it is, or its CPU form / INT8
        quantization built in memory."""
        file_prec = str(meta.get("precision", "fp32"))
        if precision not in (None, "fp32", "fp16", "int8"):
            raise ValueError(f"onnxruntime precision must be fp32, fp16 or int8, got {precision!r}")
        # otherwise the file's precision wins (an int8 or fp16 export runs as such; info.precision says so)
        quantize = precision == "int8" and file_prec != "int8"
        if quantize and file_prec != "fp32":
            raise ValueError(f"int8 needs an fp32 export, {self.onnx_path.name} is {file_prec}")
        if quantize and self.device.type != "cpu":
            raise ValueError("onnxruntime int8 (dynamic quantization) runs on CPU only; use device='cpu'")
        cpu_form = meta.get("target") == "cpu"  # exported with --target cpu / --quantize int8
        if fuse_attention is None:
            fuse_attention = self.device.type == "cpu" and file_prec == "fp32"
        int8 = "int8" if (quantize or file_prec == "int8") else None
        if not ((fuse_attention and not cpu_form) or quantize):
            return str(self.onnx_path), meta, int8
        import onnx

        proto = onnx.load(str(self.onnx_path))
        if not cpu_form:
            proto, _ = cpu_variant(proto)
        if quantize:
            proto = quantize_int8(proto)
        return proto.SerializeToString(), {**meta, **_decoded_metadata(proto)}, int8

    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            return self._run_cuda(batch)
        x = batch.detach().cpu().numpy().astype(self._in_dtype, copy=False)
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(x)})
        return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)}

    def _run_cuda(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        tdtype = torch.float16 if self._in_dtype == np.float16 else torch.float32
        x = batch.to(self.device, tdtype).contiguous()
        binding = self.session.io_binding()
        binding.bind_input(
            self.input_name, "cuda", self.device.index or 0, self._in_dtype, tuple(x.shape), x.data_ptr()
        )
        for n in self.output_names:
            binding.bind_output(n, "cuda", self.device.index or 0)
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        result = {}
        for n, o in zip(self.output_names, outs):
            # DLPack keeps the data on the GPU; fall back to a host copy on old onnxruntime.
            try:
                result[n] = torch.from_dlpack(o.to_dlpack())
            except (AttributeError, RuntimeError):
                result[n] = torch.from_numpy(o.numpy()).to(self.device)
        return result
