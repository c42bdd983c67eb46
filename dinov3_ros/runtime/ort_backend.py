"""ONNX Runtime backend: CPU, and the CUDA execution provider (with IO binding) when present."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import Engine, EngineInfo

__all__ = ["OrtEngine", "read_metadata"]

_GRAPH_OPT = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """Our ``metadata_props`` (JSON-decoded where possible) without loading the weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
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


class OrtEngine(Engine):
    """An exported ONNX graph in ONNX Runtime.

    ``device="cuda"`` uses ``CUDAExecutionProvider`` (error if the installed onnxruntime lacks it) and
    binds torch CUDA tensors directly (no host round trip). ``threads`` sets intra-op threads (default:
    all cores); ``optimization`` is ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.
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
        **_ignored: Any,
    ) -> None:
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.onnx_path}")
        avail = ort.get_available_providers()
        dev = torch.device(device) if device is not None else None
        if dev is None:
            dev = torch.device(
                "cuda" if "CUDAExecutionProvider" in avail and torch.cuda.is_available() else "cpu"
            )
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in avail:
                raise RuntimeError(
                    f"onnxruntime has no CUDAExecutionProvider (available: {avail}); "
                    "install onnxruntime-gpu or use device='cpu'"
                )
            providers: list[Any] = [
                ("CUDAExecutionProvider", {"device_id": dev.index or 0}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        self.device = dev
        so = ort.SessionOptions()
        level = _GRAPH_OPT.get(optimization, "ORT_ENABLE_ALL")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if optimized_model_path:
            so.optimized_model_filepath = str(optimized_model_path)
        self.session = ort.InferenceSession(str(self.onnx_path), sess_options=so, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = read_metadata(self.onnx_path)
        in_type = self.session.get_inputs()[0].type
        prec = precision or ("fp16" if "float16" in in_type else "fp32")
        self._in_dtype = np.float16 if "float16" in in_type else np.float32
        self.info = info_from_metadata(meta, "onnxruntime", prec, str(dev))
        self.info.outputs = tuple(self.output_names)
        self.info.extra = {"providers": self.session.get_providers(), "threads": so.intra_op_num_threads}

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
