"""``create_engine(backend, ...)``: one inference interface over torch, ONNX Runtime and TensorRT.

The interface (:class:`~dinov3_ros.runtime.base.Engine`, ``EngineInfo``) lives in ``runtime.base``;
the backends implement it and this module picks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import BACKENDS, PRECISIONS, Engine, EngineInfo
from .weights import load_backbone, load_depth_head

__all__ = ["BACKENDS", "PRECISIONS", "Engine", "EngineInfo", "create_engine"]


def create_engine(backend: str, **kwargs: Any) -> Engine:
    """Build an engine.

    - ``"torch"``: :class:`~dinov3_ros.runtime.torch_backend.TorchEngine` (``model=`` nn.Module or
      ``arch=``/``weights=``; ``precision``, ``device``, ``compile``, ``cuda_graphs``, ``depth_head``).
    - ``"onnxruntime"``: :class:`~dinov3_ros.runtime.ort_backend.OrtEngine` (``onnx_path=``, ``device``,
      ``threads``, ``optimization``, ``spin``; on CPU the fused CPU form by default, ``fuse_attention``;
      ``precision="int8"`` quantizes an fp32 export for CPU).
    - ``"tensorrt"``: :class:`~dinov3_ros.runtime.trt_backend.TrtEngine` (``engine_path=`` a serialized
      plan, or ``onnx_path=`` built and cached; ``precision``, ``cache_dir``, shape profile).
    For onnxruntime/tensorrt, ``model=`` or ``arch=``/``weights=`` instead of ``onnx_path`` exports first
    (into ``cache_dir``) at ``input_size``.
    """
    b = backend.lower().replace("-", "").replace("_", "")
    if b in ("torch", "pytorch"):
        from .torch_backend import TorchEngine

        return TorchEngine(**kwargs)
    if b in ("onnxruntime", "ort", "onnx"):
        from .ort_backend import OrtEngine

        _ensure_onnx(kwargs)
        return OrtEngine(**kwargs)
    if b in ("tensorrt", "trt"):
        from .trt_backend import TrtEngine

        if not kwargs.get("engine_path"):  # a serialized plan needs no ONNX
            _ensure_onnx(kwargs)
        return TrtEngine(**kwargs)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _ensure_onnx(kwargs: dict[str, Any]) -> None:
    """Export an ONNX from ``model``/``arch``+``weights`` when no ``onnx_path`` was given."""
    if kwargs.get("onnx_path"):
        for k in ("model", "arch", "weights", "depth_head"):
            kwargs.pop(k, None)
        return
    model = kwargs.pop("model", None)
    arch = kwargs.pop("arch", None)
    weights = kwargs.pop("weights", None)
    depth_head = kwargs.pop("depth_head", None)
    if model is None and arch is None and weights is None:
        raise ValueError("give onnx_path=, or model= / arch= / weights= to export one")
    from .export import export_onnx  # needs onnx, which a GPU-only deployment may lack

    backbone = model if model is not None else load_backbone(arch, weights)
    depth_head = load_depth_head(depth_head)
    size = kwargs.get("input_size")
    cache = Path(kwargs.get("cache_dir") or Path.home() / ".cache" / "dinov3_ros")
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"{getattr(backbone, 'arch', 'model')}_{'dynamic' if size is None else f'{size[0]}x{size[1]}'}"
    out = cache / f"{tag}{'_depth' if depth_head is not None else ''}.onnx"  # TRT keys on its sha256
    export_onnx(backbone, out, resolution=size, depth_head=depth_head, check=False)
    kwargs["onnx_path"] = str(out)
