"""Model selection for the pipeline: ``weights`` + ``backend`` + ``device`` + ``precision`` -> Engine.

``weights`` is a checkpoint/engine path, ``default`` (the shipped model from ``models/registry.yaml``),
or ``random:<arch>`` (random initialisation with a fixed seed; for tests and benchmarks). The engine
comes from ``dinov3_ros.runtime.engine.create_engine`` when that module provides it; for the torch
backend a direct wrapper over the backbone (``forward_features`` contract) is used otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # int8: onnxruntime only


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


class TorchEngine:
    """``Engine`` over a torch backbone: ``run(batch) -> {patch_tokens [B,h,w,C], cls [B,C]}``."""

    def __init__(self, backbone: nn.Module, device: str, precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.model = backbone.to(self.device).eval()
        self.patch_size = int(getattr(backbone, "patch_size", 16))
        self.info = {
            "backend": "torch",
            "precision": precision,
            "arch": str(getattr(backbone, "arch", type(backbone).__name__)),
            "device": str(self.device),
        }

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = batch.to(self.device, non_blocking=True)
        B, _, H, W = x.shape
        use_amp = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=use_amp):
            out = self.model.forward_features(x)
        p = self.patch_size
        tok = out["x_norm_patchtokens"].float().reshape(B, H // p, W // p, -1)
        return {"patch_tokens": tok, "cls": out["x_norm_clstoken"].float()}


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


def _models() -> Any | None:
    try:
        mod = importlib.import_module("dinov3_ros.models")
    except ImportError:
        return None
    return mod if hasattr(mod, "build_backbone") else None


def _runtime_engine() -> Any | None:
    try:
        mod = importlib.import_module("dinov3_ros.runtime.engine")
    except ImportError:
        return None
    return getattr(mod, "create_engine", None)


def registry_weights(name: str) -> str:
    """Shipped weights of registry entry ``name`` (``default`` = our model); ModelLoadError if absent."""
    try:
        reg = importlib.import_module("dinov3_ros.models.registry")
    except ImportError as exc:
        raise ModelLoadError(f"weights {name!r}: the model registry is not available ({exc})") from exc
    try:
        fn = getattr(reg, "default_weights_path", None)
        if name == "default" and fn is not None:
            return str(fn())
        return str(reg.get_entry(name).weights_path())
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ModelLoadError(f"weights {name!r}: {exc}") from exc


def registry_depth_head(name: str) -> str | None:
    """Shipped depth head of registry entry ``name`` (None when it ships none)."""
    try:
        reg = importlib.import_module("dinov3_ros.models.registry")
        path = reg.get_entry(name).depth_head_path()
    except (ImportError, AttributeError):
        return None
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ModelLoadError(f"weights {name!r}: {exc}") from exc
    return None if path is None else str(path)


def build_random_backbone(arch: str, seed: int = 0) -> nn.Module:
    """Random-init backbone ``arch`` with a fixed seed (via ``dinov3_ros.models.build_backbone``)."""
    models = _models()
    if models is None:
        raise ModelLoadError("random weights need dinov3_ros.models.build_backbone, which is not available")
    archs = getattr(models, "ARCHS", None)
    if archs is not None and arch not in archs:
        raise ModelLoadError(f"unknown arch {arch!r} in 'random:{arch}'; known: {sorted(archs)}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return models.build_backbone(arch)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"cannot build random:{arch}: {exc}") from exc
    finally:
        torch.random.set_rng_state(state)


def load_model(
    weights: str,
    backend: str = "torch",
    device: str = "cpu",
    precision: str = "fp32",
    resolution: tuple[int, int] | None = None,
    depth_head: str | None = "auto",
    cuda_graphs: bool = False,
) -> LoadedModel:
    """Load ``weights`` into an engine for ``backend``; raises :class:`ModelLoadError` with a clear message.

    ``depth_head``: a head file (``dinov3_ros.heads.depth``) attached to the torch engine; ``"auto"`` uses
    the registry entry's shipped head (``default`` ships one), ``None``/``""``/``"none"`` attaches none.
    ``random:<arch>`` also gets a :class:`RandomDepthHead` so depth and point clouds can be exercised.
    ``cuda_graphs``: replay the torch engine as CUDA graphs when ``device`` is CUDA (ignored otherwise).
    """
    if backend not in BACKENDS:
        raise ModelLoadError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ModelLoadError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and backend != "onnxruntime":
        raise ModelLoadError(f"precision int8 needs backend 'onnxruntime' (INT8 CPU path), got {backend!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    if not weights:
        raise ModelLoadError("weights is empty: give a path, 'default' or 'random:<arch>'")
    head_path = None if depth_head in (None, "", "none", "auto") else str(depth_head)
    if weights == "default" or (
        "/" not in weights and not weights.startswith("random:") and not Path(weights).suffix
    ):
        if depth_head == "auto":
            head_path = registry_depth_head(weights)
        weights = registry_weights(weights)
    if head_path is not None and not Path(head_path).is_file():
        raise ModelLoadError(f"depth head file not found: {head_path}")
    create = _runtime_engine()
    size = tuple(int(v) for v in resolution) if resolution is not None else None
    depth_head = None
    kwargs: dict[str, Any] = {"device": device, "precision": precision}
    if cuda_graphs and backend == "torch" and device.startswith("cuda"):
        kwargs["cuda_graphs"] = True
    if weights.startswith("random:"):
        if backend != "torch":
            raise ModelLoadError(f"random:<arch> weights need backend 'torch', got {backend!r}")
        backbone = build_random_backbone(weights.split(":", 1)[1])
        depth_head = RandomDepthHead(int(backbone.embed_dim)).to(device)
        kwargs["model"] = backbone
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"weights file not found: {path}")
        if backend == "torch":
            kwargs["weights"] = str(path)
            if head_path is not None:
                kwargs["depth_head"] = head_path
        elif path.suffix == ".onnx":
            kwargs["onnx_path"] = str(path)
        else:
            kwargs["engine_path"] = str(path)
    if create is None:
        if "model" not in kwargs:
            raise ModelLoadError(f"backend {backend!r} needs dinov3_ros.runtime.engine.create_engine")
        engine: Any = TorchEngine(kwargs["model"], device, precision)
        patch, mean, std = engine.patch_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        arch = engine.info["arch"]
    else:
        if size is not None and backend != "torch":
            kwargs["input_size"] = size
        try:
            engine = create(backend, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {weights!r} on {backend}: {type(exc).__name__}: {exc}"
            ) from exc
        ei = engine.info
        patch, mean, std, arch = int(ei.patch_size), tuple(ei.norm_mean), tuple(ei.norm_std), str(ei.arch)
    info = {
        "backend": backend,
        "model": weights,
        "arch": arch,
        "device": device,
        "precision": precision,
        "depth_head": head_path
        or ("random" if depth_head is not None and weights.startswith("random:") else "none"),
    }
    return LoadedModel(engine, depth_head, patch, mean, std, info)  # type: ignore[arg-type]


def as_numpy(x: Any) -> np.ndarray:
    """Engine output (torch tensor or numpy array) -> float32 numpy."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)
