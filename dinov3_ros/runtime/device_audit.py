"""What a piece of code asks of the device: ATen ops by dtype (any device) and CUDA kernels (profiler).

Two views, used by the tests that keep float64 off the device and by ``benchmarks/jetson_budget.py``:

- :class:`OpAudit`, a ``TorchDispatchMode``: every ATen op that runs inside it, with the dtypes and
  devices of its tensor inputs and outputs, its FLOPs (``torch.utils.flop_counter``'s formulas for
  matmuls, convolutions and attention) and the bytes of its tensors. It sees ops on any device, so CI
  runs a head's device code path on the CPU and checks it for float64; it does not see the kernels of a
  replayed CUDA graph (nothing is dispatched then).
- :func:`trace_kernels`, on a ``torch.profiler`` trace with ``record_shapes=True``: every CUDA kernel
  (graph replays included) with its duration, and the dtypes of the op that launched it where known;
  :func:`float64_kernels` picks those that compute in float64 (by kernel name or launching op).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "FLOAT64_DTYPES",
    "KernelRecord",
    "OpAudit",
    "OpRecord",
    "float64_kernels",
    "host_syncs",
    "trace_events",
    "trace_kernels",
]

FLOAT64_DTYPES = frozenset({torch.float64, torch.complex128})

#: kernel names that compute in float64: templates over ``double``, cuBLAS/cuSOLVER ``d``/``z`` routines,
#: CUTLASS/xmma ``f64`` tiles
_FLOAT64_NAME = re.compile(
    r"\bdouble\b|complex<double>|f64|fp64|\b[dz](gemm|gemv|syrk|trsm|potrf|getrf|geqrf|sytrd|syevd|"
    r"syevj|ormtr|orgqr|dot|axpy|scal|nrm2)",
    re.IGNORECASE,
)


@dataclass
class OpRecord:
    """One ATen op run under :class:`OpAudit`."""

    name: str
    dtypes: frozenset  #: dtypes of its tensor inputs and outputs
    devices: frozenset  #: device types of those tensors ("cpu", "cuda")
    out_dtype: torch.dtype | None  #: dtype of its first tensor output
    flops: int = 0  #: matmul/convolution/attention FLOPs (0 for other ops)
    bytes: int = 0  #: bytes of its tensor inputs and outputs (an upper bound on its memory traffic)


def _composite_flops(name: str, args: tuple, outs: list[torch.Tensor]) -> int:
    """FLOPs of composite ops that reach the mode undecomposed (under ``inference_mode``), which
    ``torch.utils.flop_counter`` has no formula for; 0 for others."""
    if not outs:
        return 0
    out = outs[0]
    if name in ("linear", "matmul") and isinstance(args[0], torch.Tensor):
        return 2 * out.numel() * int(args[0].shape[-1])
    if name == "conv2d" and isinstance(args[1], torch.Tensor):
        w = args[1]  # [Cout, Cin / groups, kh, kw]
        return 2 * out.numel() * int(w.shape[1] * w.shape[2] * w.shape[3])
    if name == "scaled_dot_product_attention":
        q, k, v = args[:3]
        rows = q.numel() // q.shape[-1]  # B * heads * Lq
        return 2 * rows * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1]))
    return 0


class OpAudit(TorchDispatchMode):
    """Record every ATen op dispatched inside the ``with`` block (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[OpRecord] = []
        from torch.utils.flop_counter import flop_registry

        self._flops = flop_registry

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        tensors = ins + outs
        fn = self._flops.get(func._overloadpacket)
        name = str(func.overloadpacket.__name__)
        if fn is not None:
            flops = int(fn(*args, **kwargs, out_val=out))
        else:
            flops = _composite_flops(name, args, outs)
        self.records.append(
            OpRecord(
                name=name,
                dtypes=frozenset(t.dtype for t in tensors),
                devices=frozenset(t.device.type for t in tensors),
                out_dtype=outs[0].dtype if outs else None,
                flops=flops,
                bytes=sum(t.numel() * t.element_size() for t in tensors),
            )
        )
        return out

    def with_dtypes(self, dtypes: frozenset = FLOAT64_DTYPES) -> list[OpRecord]:
        """Ops that read or write a tensor of one of ``dtypes``."""
        return [r for r in self.records if r.dtypes & dtypes]

    def summary(self) -> dict[str, Any]:
        """Op count, FLOPs by output dtype, bytes, and the ops touching float64 (names with counts)."""
        flops: Counter[str] = Counter()
        for r in self.records:
            if r.flops:
                flops[str(r.out_dtype).replace("torch.", "")] += r.flops
        return {
            "ops": len(self.records),
            "flops_by_dtype": dict(flops),
            "bytes": sum(r.bytes for r in self.records),
            "float64_ops": dict(Counter(r.name for r in self.with_dtypes())),
        }


@dataclass
class KernelRecord:
    """One CUDA kernel in a profiler trace."""

    name: str
    dur_us: float
    op: str = ""  #: the CPU op that launched it ("" for a graph replay or a library's own launch)
    op_input_types: tuple[str, ...] = field(default_factory=tuple)
    #: shapes of those inputs (``[]`` for a Python scalar, which the profiler also types as ``double``)
    op_input_dims: tuple[tuple[int, ...], ...] = field(default_factory=tuple)

    @property
    def float64(self) -> bool:
        """Computes in float64: by the kernel's name, or a float64 tensor input of at least one dimension
        (a Python scalar such as ``x * 0.5`` is recorded as ``double`` but computed in the tensor's dtype)."""
        if _FLOAT64_NAME.search(self.name):
            return True
        dims = self.op_input_dims or ((1,),) * len(self.op_input_types)
        return any("double" in t and len(d) > 0 for t, d in zip(self.op_input_types, dims))


def trace_events(prof: Any) -> list[dict[str, Any]]:
    """The Chrome-trace events of a finished ``torch.profiler.profile`` (via a temporary file)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    finally:
        os.unlink(path)
    return data["traceEvents"] if isinstance(data, dict) else data


def _dims(d: Any) -> tuple[int, ...]:
    """One ``Input Dims`` entry: a tensor's shape, ``()`` for a scalar or a non-tensor argument."""
    if isinstance(d, list) and all(isinstance(v, int) for v in d):
        return tuple(d)
    return ()


def trace_kernels(events: list[dict[str, Any]]) -> list[KernelRecord]:
    """CUDA kernels of a trace, each with the op that launched it (matched by the trace's external id)."""
    ops: dict[Any, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") == "cpu_op":
            ext = (e.get("args") or {}).get("External id")
            if ext is not None:
                ops[ext] = e
    out = []
    for e in events:
        if e.get("cat") != "kernel":
            continue
        args = e.get("args") or {}
        op = ops.get(args.get("External id"))
        types: tuple[str, ...] = ()
        dims: tuple[tuple[int, ...], ...] = ()
        if op is not None:
            op_args = op.get("args") or {}
            types = tuple(str(t) for t in op_args.get("Input type") or [])
            dims = tuple(_dims(d) for d in op_args.get("Input Dims") or [])
        name, dur = str(e.get("name", "")), float(e.get("dur", 0.0))
        out.append(KernelRecord(name, dur, op["name"] if op else "", types, dims))
    return out


def float64_kernels(kernels: list[KernelRecord]) -> list[KernelRecord]:
    """Kernels that compute in float64 (by name, or by the input types of the op that launched them)."""
    return [k for k in kernels if k.float64]


def host_syncs(events: list[dict[str, Any]]) -> int:
    """CUDA runtime calls in a trace after which the host waits for the device: stream/device/event
    synchronisations and blocking copies (device-to-host copies wait for the stream)."""
    n = 0
    for e in events:
        if e.get("cat") != "cuda_runtime":
            continue
        name = str(e.get("name", ""))
        if "Synchronize" in name:
            n += 1
        elif name == "cudaMemcpy":  # synchronous copy
            n += 1
    return n
