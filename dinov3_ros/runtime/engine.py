"""One inference interface over torch, ONNX Runtime and TensorRT.

``create_engine(backend, ...) -> Engine``; ``engine.run(batch [B, 3, H, W] normalised float) -> {
"patch_tokens": [B, h, w, C], "cls": [B, C], "depth": [B, 1, H, W] (when a depth head is attached)}``.
Outputs are torch tensors on ``engine.device`` (CPU tensors share memory with ONNX Runtime's arrays).
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .preprocess import Preprocessor, Target

__all__ = ["BACKENDS", "Engine", "EngineInfo", "create_engine"]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class EngineInfo:
    """What an engine runs and how."""

    backend: str
    precision: str
    device: str
    arch: str
    input_size: tuple[int, int] | None  # fixed network (H, W); None when dynamic
    patch_size: int = 16
    embed_dim: int = 0
    norm_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    norm_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    outputs: tuple[str, ...] = ("patch_tokens", "cls")
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(abc.ABC):
    """Backbone (+ heads) on one backend. Subclasses implement :meth:`_run`."""

    info: EngineInfo
    device: torch.device

    def run(self, batch: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Run a normalised ``[B, 3, H, W]`` batch; returns the named outputs."""
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"batch must be [B, 3, H, W], got {tuple(batch.shape)}")
        p = self.info.patch_size
        H, W = int(batch.shape[2]), int(batch.shape[3])
        if H % p or W % p:
            raise ValueError(f"batch size {H}x{W} is not a multiple of the patch size {p}")
        if self.info.input_size is not None and (H, W) != tuple(self.info.input_size):
            raise ValueError(
                f"engine was built for {self.info.input_size[0]}x{self.info.input_size[1]}, got {H}x{W}"
            )
        return self._run(batch)

    @abc.abstractmethod
    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def preprocessor(self, target: Target | str | None = None, *, fit: str = "pad") -> Preprocessor:
        """A :class:`Preprocessor` with this engine's constants, on its device (fixed size by default)."""
        if target is None:
            if self.info.input_size is None:
                raise ValueError("dynamic engine: pass a target (short side or HxW)")
            target = tuple(self.info.input_size)
        return Preprocessor(
            target, self.info.patch_size, self.info.norm_mean, self.info.norm_std, self.device, fit=fit
        )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""

    def __repr__(self) -> str:
        i = self.info
        size = "dynamic" if i.input_size is None else f"{i.input_size[0]}x{i.input_size[1]}"
        return f"<{type(self).__name__} {i.backend} {i.precision} {i.device} {i.arch} {size}>"


def create_engine(backend: str, **kwargs: Any) -> Engine:
    """Build an engine.

    - ``"torch"``: :class:`~dinov3_ros.runtime.torch_backend.TorchEngine` (``model=`` nn.Module or
      ``arch=``/``weights=``; ``precision``, ``device``, ``compile``, ``cuda_graphs``, ``depth_head``).
    - ``"onnxruntime"``: :class:`~dinov3_ros.runtime.ort_backend.OrtEngine` (``onnx_path=``, ``device``,
      ``threads``, ``optimization``, ``spin``; on CPU the fused CPU form by default, ``fuse_attention``;
      ``precision="int8"`` quantizes an fp32 export for CPU).
    - ``"tensorrt"``: :class:`~dinov3_ros.runtime.trt_backend.TrtEngine` (``onnx_path=``, ``precision``,
      ``cache_dir``, shape profile).
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
    from .export import export_onnx, load_model
    from .torch_backend import load_depth_head

    backbone = model if model is not None else load_model(arch, weights)
    depth_head = load_depth_head(depth_head)
    size = kwargs.get("input_size")
    cache = Path(kwargs.get("cache_dir") or Path.home() / ".cache" / "dinov3_ros")
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"{getattr(backbone, 'arch', 'model')}_{'dynamic' if size is None else f'{size[0]}x{size[1]}'}"
    out = cache / f"{tag}{'_depth' if depth_head is not None else ''}.onnx"  # TRT keys on its sha256
    export_onnx(backbone, out, resolution=size, depth_head=depth_head, check=False)
    kwargs["onnx_path"] = str(out)
