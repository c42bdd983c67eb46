"""Model selection for the pipeline: a :class:`~dinov3_ros.core.spec.ModelSpec` -> an engine.

``weights`` is a checkpoint/engine file, a registry name (``default``: the shipped model) or
``random:<arch>`` (fixed-seed random weights, with a random linear depth head, for tests and
benchmarks); see ``core.spec``. Every failure is a :class:`ModelLoadError` naming the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinov3_ros.core.spec import BACKENDS, PRECISIONS, ModelSpec, WeightsSpec
from dinov3_ros.runtime.base import resolution_mismatch

__all__ = ["BACKENDS", "PRECISIONS", "LoadedModel", "ModelLoadError", "RandomDepthHead", "load_model"]


class ModelLoadError(RuntimeError):
    """The requested model/engine cannot be loaded; the message says why."""


@dataclass
class LoadedModel:
    """An engine plus what the pipeline needs to know about it."""

    engine: Any
    depth_head: Any | None
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    info: dict[str, str] = field(default_factory=dict)
    #: network input (H, W) the model runs at: the size a fixed-size engine was built for, else the
    #: requested resolution; None when neither fixes it (the engine takes any size)
    input_size: tuple[int, int] | None = None
    #: TokenCut's learned token projection (:class:`~dinov3_ros.heads.objects_head.ObjectsHead`), or None
    objects_head: Any | None = None


class RandomDepthHead(nn.Module):
    """Linear depth from patch tokens with a fixed random init (test/benchmark stand-in).

    ``forward(tokens [B, C, h, w]) -> depth [B, 1, h, w]`` in metres, positive (softplus + 0.5).
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Conv2d(dim, 1, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g) / dim**0.5)
            self.proj.bias.fill_(1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.proj(tokens)) + 0.5


def _engine_kwargs(spec: ModelSpec, ws: WeightsSpec, head: Any) -> dict[str, Any]:
    """``create_engine`` arguments of ``spec`` (the weights file is resolved here)."""
    kw: dict[str, Any] = {"device": spec.device, "precision": spec.precision}
    if spec.resolution is not None and spec.backend == "torch":  # an export's size is checked after loading
        kw["input_size"] = tuple(spec.resolution)
    if spec.cuda_graphs and spec.backend == "torch" and spec.device.startswith("cuda"):
        kw["cuda_graphs"] = True
    if ws.kind == "random":
        if spec.backend != "torch":
            raise ModelLoadError(f"random:<arch> weights need backend 'torch', got {spec.backend!r}")
        from dinov3_ros.runtime.weights import random_backbone

        kw["model"] = random_backbone(ws.value)
        return kw
    path = ws.path()
    _check_file_backend(path, spec.backend, head)
    if spec.backend == "torch":
        kw["weights"] = str(path)
        if head is not None:
            kw["depth_head"] = str(head)
    elif path.suffix == ".onnx":
        kw["onnx_path"] = str(path)
    else:  # a plan's precision is the one it was built with; only a non-default request is passed on
        kw["engine_path"] = str(path)
        if spec.precision == "fp32":
            kw.pop("precision")
    return kw


#: file suffixes that only one kind of backend can run
_PLAN_SUFFIXES = (".plan", ".engine", ".trt")


def _check_file_backend(path: Any, backend: str, head: Any) -> None:
    """A file the backend cannot run (a plan on torch, an ONNX on torch, a checkpoint on TensorRT) or a
    depth head file beside an export is a ``ValueError`` that says what to use instead."""
    suffix = path.suffix.lower()
    if suffix in _PLAN_SUFFIXES and backend != "tensorrt":
        raise ValueError(f"{path} is a TensorRT plan: use backend 'tensorrt' (got {backend!r})")
    if suffix == ".onnx" and backend == "torch":
        raise ValueError(f"{path} is an ONNX model: use backend 'onnxruntime' or 'tensorrt'")
    export = "export one first (dinov3-ros export --format onnx ...)"
    if backend == "onnxruntime" and suffix != ".onnx":
        raise ValueError(f"backend 'onnxruntime' runs an .onnx export, got {path}: {export}")
    if backend == "tensorrt" and suffix not in (*_PLAN_SUFFIXES, ".onnx"):
        raise ValueError(
            f"backend 'tensorrt' runs a plan (.plan/.engine) or an .onnx export, got {path}: {export}"
        )
    if backend != "torch" and isinstance(head, Path):
        raise ValueError(
            f"depth_head {head} applies to the torch backend; an ONNX/plan carries the depth head it was "
            "exported with (set depth_head to 'none' or 'auto')"
        )


def load_model(
    weights: str | ModelSpec,
    backend: str = "torch",
    device: str = "cpu",
    precision: str = "fp32",
    resolution: tuple[int, int] | None = None,
    depth_head: str | None = "auto",
    cuda_graphs: bool = False,
    objects_head: str | None = "auto",
) -> LoadedModel:
    """Load a model (a :class:`ModelSpec`, or its fields) into an engine; :class:`ModelLoadError` on failure.

    ``resolution`` is the network input size for every backend: torch runs at it (and refuses other
    sizes); an engine built for a fixed size (ONNX, TensorRT plan) must match it, else
    :class:`ModelLoadError`; left None, a fixed-size engine's own size is used (``LoadedModel.input_size``).
    ``depth_head``: ``auto`` (the registry model's shipped head), ``none`` or a file (torch only).
    ``objects_head``: ``auto`` (the registry model's shipped head), ``none`` or a file (any backend: it
    maps the engine's tokens before TokenCut).
    """
    spec = (
        weights
        if isinstance(weights, ModelSpec)
        else ModelSpec(
            str(weights),
            backend,
            device,
            precision,
            resolution,
            depth_head or "none",
            cuda_graphs,
            objects_head or "none",
        )
    )
    try:
        spec.validate()
        ws = spec.weights_spec
        head = ws.depth_head(spec.depth_head)
        obj_path = ws.objects_head(spec.objects_head)
    except (ValueError, FileNotFoundError) as exc:
        raise ModelLoadError(str(exc)) from None
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {spec.device!r} requested but CUDA is not available")
    try:
        kw = _engine_kwargs(spec, ws, head if head != "random" else None)
    except (FileNotFoundError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from None
    from dinov3_ros.runtime.engine import create_engine

    try:
        engine = create_engine(spec.backend, **kw)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {spec.weights!r} on {spec.backend}: {type(exc).__name__}: {exc}"
        ) from exc
    ei = engine.info
    built = tuple(ei.input_size) if ei.input_size is not None else None
    if built is not None and spec.resolution is not None and built != tuple(spec.resolution):
        raise ModelLoadError(resolution_mismatch(spec.weights, built, tuple(spec.resolution)))
    module = RandomDepthHead(int(ei.embed_dim)).to(spec.device) if head == "random" else None
    objects = _load_objects_head(obj_path, int(ei.embed_dim))
    info = {
        "backend": spec.backend,
        "model": str(ws),
        "arch": str(ei.arch),
        "device": spec.device,
        "precision": spec.precision if spec.backend == "torch" else str(ei.precision),
        "depth_head": "random" if head == "random" else str(head or "none"),
        "objects_head": str(obj_path or "none"),
    }
    size = built or (tuple(spec.resolution) if spec.resolution is not None else None)
    return LoadedModel(
        engine, module, int(ei.patch_size), tuple(ei.norm_mean), tuple(ei.norm_std), info, size, objects
    )


def _load_objects_head(path: Path | None, embed_dim: int) -> Any | None:
    """The objects head file at ``path`` checked against the engine's token width (None: no head)."""
    if path is None:
        return None
    from dinov3_ros.heads.objects_head import load_objects_head

    try:
        return load_objects_head(path, expect_embed_dim=embed_dim)
    except (ValueError, FileNotFoundError) as exc:
        raise ModelLoadError(str(exc)) from None
