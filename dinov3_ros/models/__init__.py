"""DINOv3 backbones (ViT + ConvNeXt) with the official state_dict layout, loading and conversion.

Public API: ``build_backbone``, ``load_backbone``, ``ARCHS``; see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from .archs import ARCHS, ArchSpec, build_backbone, count_params, resolve_arch
from .convnext import ConvNeXtBackbone
from .vit import DinoVisionTransformer

__all__ = [
    "ARCHS",
    "ArchSpec",
    "ConvNeXtBackbone",
    "DinoVisionTransformer",
    "build_backbone",
    "count_params",
    "resolve_arch",
]
