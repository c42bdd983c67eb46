"""Helpers for tests of code that consumes backbones (random but non-degenerate weights)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_backbone_(
    model: nn.Module, seed: int = 0, *, ls_range: tuple[float, float] = (0.05, 0.3)
) -> nn.Module:
    """Give every parameter a non-trivial random value so every path is exercised.

    LayerScale ``gamma`` ~ U(ls_range) (ViT) or U(0.05, 0.3) (ConvNeXt), all biases ~ N(0, 0.1)
    (including the masked k third of the fused qkv bias, which must have no effect), LayerNorm
    weights ~ 1 + N(0, 0.1), tokens ~ N(0, 0.5). Buffers (``periods``, ``bias_mask``) are kept.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            lo, hi = ls_range
            p.uniform_(lo, hi, generator=g)
        elif name.endswith("bias"):
            p.normal_(0.0, 0.1, generator=g)
        elif "norm" in name and name.endswith("weight"):
            p.normal_(1.0, 0.1, generator=g)
        elif name in ("cls_token", "storage_tokens", "mask_token"):
            p.normal_(0.0, 0.5, generator=g)
        else:
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.normal_(0.0, fan_in**-0.5, generator=g)
    return model


def random_backbone(arch: str, seed: int = 0, **overrides) -> nn.Module:
    """``build_backbone`` without the (slow) default init, then :func:`randomize_backbone_`."""
    from .archs import build_backbone

    model = build_backbone(arch, device="meta", **overrides).to_empty(device="cpu")
    reset_buffers_(model)
    return randomize_backbone_(model, seed).eval()


@torch.no_grad()
def reset_buffers_(model: nn.Module) -> nn.Module:
    """Recompute the deterministic buffers (RoPE ``periods``, qkv ``bias_mask``) after ``to_empty``."""
    for m in model.modules():
        if hasattr(m, "reset_mask"):
            m.reset_mask()
        if m.__class__.__name__ == "RopePositionEmbedding":
            m.reset_parameters()
    return model
