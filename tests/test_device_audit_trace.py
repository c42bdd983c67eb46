"""The float64 kernel check on the Chrome-trace events ``torch.profiler`` writes (CUDA runs on the GPU
machine in tests/test_gpu_no_float64.py; here the trace format it parses, on events of that format)."""

from __future__ import annotations

from dinov3_ros.runtime.device_audit import float64_kernels, trace_kernels

FLOAT_MUL = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::AUnaryFunctor<float, float, float>>"
)
DOUBLE_MUL = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::AUnaryFunctor<double, double, double>>"
)


def _events(*ops: tuple[str, list[str], list, str]) -> list[dict]:
    out: list[dict] = []
    for i, (op, types, dims, kernel) in enumerate(ops):
        out.append(
            {"cat": "cpu_op", "name": op, "args": {"External id": i, "Input type": types, "Input Dims": dims}}
        )
        out.append({"cat": "kernel", "name": kernel, "dur": 1.5, "args": {"External id": i}})
    return out


def test_python_scalar_typed_double_is_not_float64():
    k = trace_kernels(_events(("aten::mul", ["float", "double"], [[96, 96], []], FLOAT_MUL)))
    assert [x.op_input_dims for x in k] == [((96, 96), ())]
    assert float64_kernels(k) == []


def test_float64_tensor_inputs_or_double_kernels_are_flagged():
    k = trace_kernels(
        _events(
            ("aten::mm", ["double", "double"], [[96, 96], [96, 96]], "sm90_xmma_gemm_generic"),  # by the op
            ("aten::mul", ["double", "double"], [[96, 96], []], DOUBLE_MUL),  # by the kernel's name
            ("aten::add", ["float", "float"], [[8], [8]], FLOAT_MUL),
        )
    )
    assert [x.op for x in float64_kernels(k)] == ["aten::mm", "aten::mul"]


def test_without_shapes_a_double_input_counts():
    """Traces recorded without ``record_shapes`` have no dims: the check stays conservative."""
    ev = [
        {"cat": "cpu_op", "name": "aten::mul", "args": {"External id": 0, "Input type": ["float", "double"]}},
        {"cat": "kernel", "name": FLOAT_MUL, "dur": 1.0, "args": {"External id": 0}},
    ]
    assert len(float64_kernels(trace_kernels(ev))) == 1
