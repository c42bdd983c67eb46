"""DINOv3 backbones (ViT + ConvNeXt) with the official state_dict layout, loading and conversion.

Public API: ``build_backbone``, ``load_backbone``, ``ARCHS``; see docs/ARCHITECTURE.md and models/README.md.
"""

from __future__ import annotations

from .archs import ARCHS, ArchSpec, build_backbone, count_params, resolve_arch
from .convert import (
    convnext_hf_to_official,
    convnext_official_to_hf,
    detect_format,
    hf_to_official,
    hf_to_timm,
    official_to_hf,
    official_to_timm,
    timm_to_hf,
    timm_to_official,
    to_official,
)
from .convnext import ConvNeXtBackbone
from .loading import (
    ArchMismatchError,
    CheckpointError,
    CheckpointInfo,
    HashMismatchError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
    inspect_checkpoint,
    load_backbone,
)
from .vit import DinoVisionTransformer

__all__ = [
    "ARCHS",
    "ArchMismatchError",
    "ArchSpec",
    "CheckpointError",
    "CheckpointInfo",
    "ConvNeXtBackbone",
    "DinoVisionTransformer",
    "HashMismatchError",
    "TruncatedCheckpointError",
    "UnsafeCheckpointError",
    "build_backbone",
    "convnext_hf_to_official",
    "convnext_official_to_hf",
    "count_params",
    "detect_format",
    "hf_to_official",
    "hf_to_timm",
    "inspect_checkpoint",
    "load_backbone",
    "official_to_hf",
    "official_to_timm",
    "resolve_arch",
    "timm_to_hf",
    "timm_to_official",
    "to_official",
]
