"""Seeded random backbones whose every block matters, for tests, benchmarks and the evaluation floor.

The constructors' default init keeps LayerScale at 1e-5 (ViT) or 1e-6 (ConvNeXt), so a fresh model is
the identity plus noise: its blocks barely change the output, and a test comparing two forwards of it
cannot tell a dropped block or a wrong activation from the real thing. :func:`random_backbone` draws
LayerScale and every other parameter so that each block changes the output materially.

Criterion (checked by ``tests/test_models_random.py`` for every architecture, ViTs at up to their full
depth where memory allows): removing any single block, or redrawing its weights, moves the final
normalised patch tokens by more than :data:`MIN_BLOCK_EFFECT` in relative L2 norm
(``||f' - f|| / ||f||``, see :func:`block_effects`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn

#: Default range of the per-channel LayerScale draw.
LS_RANGE = (0.2, 1.0)
#: Smallest relative change of the final patch tokens when one block is removed or redrawn.
MIN_BLOCK_EFFECT = 0.15


@torch.no_grad()
def randomize_backbone_(
    model: nn.Module,
    seed: int = 0,
    *,
    ls_range: tuple[float, float] = LS_RANGE,
    layerscale_init: float | None = None,
) -> nn.Module:
    """Give every parameter of ``model`` (a backbone or one of its blocks) a non-trivial seeded value.

    LayerScale ``gamma`` ~ U(ls_range) per channel, or the constant ``layerscale_init`` when given;
    weights ~ N(0, 1/fan_in); biases ~ N(0, 0.1) (including the masked k third of the fused qkv bias,
    which must have no effect); LayerNorm weights ~ 1 + N(0, 0.1); CLS/storage/mask tokens ~ N(0, 0.5).
    Buffers (RoPE ``periods``, qkv ``bias_mask``) are kept. Independent of the global torch RNG.
    """
    g = torch.Generator().manual_seed(seed)
    ln_weights = {
        f"{mn}.weight" if mn else "weight"
        for mn, m in model.named_modules()
        if isinstance(m, nn.LayerNorm) and m.weight is not None
    }
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            lo, hi = ls_range
            p.uniform_(lo, hi, generator=g)
            if layerscale_init is not None:
                p.fill_(float(layerscale_init))
        elif name.endswith("bias"):
            p.normal_(0.0, 0.1, generator=g)
        elif name in ln_weights:
            p.normal_(1.0, 0.1, generator=g)
        elif name in ("cls_token", "storage_tokens", "mask_token"):
            p.normal_(0.0, 0.5, generator=g)
        else:
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.normal_(0.0, fan_in**-0.5, generator=g)
    return model


def random_backbone(
    arch: str, seed: int = 0, *, layerscale_init: float | None = None, **overrides
) -> nn.Module:
    """``build_backbone(arch, **overrides)`` in eval mode with :func:`randomize_backbone_` weights.

    Built on the meta device first (no slow default init), so large architectures are quick to draw.
    ``layerscale_init`` sets every LayerScale to that constant (e.g. ``1.0``) instead of the U(0.2, 1)
    draw. The same ``(arch, seed, layerscale_init, overrides)`` always gives the same weights.
    """
    from .archs import build_backbone

    model = build_backbone(arch, device="meta", **overrides).to_empty(device="cpu")
    reset_buffers_(model)
    return randomize_backbone_(model, seed, layerscale_init=layerscale_init).eval()


@torch.no_grad()
def reset_buffers_(model: nn.Module) -> nn.Module:
    """Recompute the deterministic buffers (RoPE ``periods``, qkv ``bias_mask``) after ``to_empty``."""
    for m in model.modules():
        if hasattr(m, "reset_mask"):
            m.reset_mask()
        if m.__class__.__name__ == "RopePositionEmbedding":
            m.reset_parameters()
    return model


class _Skip(nn.Module):
    """A removed block: returns its input (ViT blocks also take a RoPE argument)."""

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return x


def _block_slots(model: nn.Module) -> Iterator[tuple[nn.ModuleList | nn.Sequential, int]]:
    """``(container, index)`` of every block: ViT ``blocks[i]`` or ConvNeXt ``stages[s][j]``."""
    if hasattr(model, "blocks"):
        for i in range(len(model.blocks)):
            yield model.blocks, i
    else:
        for stage in model.stages:
            for j in range(len(stage)):
                yield stage, j


@torch.no_grad()
def block_effects(model: nn.Module, x: Tensor, how: str = "drop", seed: int = 1000) -> list[float]:
    """Relative change ``||f' - f|| / ||f||`` of the final patch tokens when each block in turn is
    removed (``how="drop"``) or redrawn with :func:`randomize_backbone_` (``how="redraw"``).

    The model is restored after each block; one value per block, in forward order.
    """
    if how not in ("drop", "redraw"):
        raise ValueError(f"how must be 'drop' or 'redraw', got {how!r}")
    ref = model.forward_features(x)["x_norm_patchtokens"].float()
    effects = []
    for k, (container, i) in enumerate(_block_slots(model)):
        block = container[i]
        if how == "drop":
            container[i] = _Skip()
        else:
            container[i] = randomize_backbone_(copy.deepcopy(block), seed + k)
        try:
            out = model.forward_features(x)["x_norm_patchtokens"].float()
        finally:
            container[i] = block
        effects.append(float((out - ref).norm() / ref.norm()))
    return effects
