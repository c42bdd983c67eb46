"""AdamW parameter groups: layer-wise LR decay, patch-embed multiplier, no weight decay on biases/norms/gamma."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

__all__ = ["build_param_groups", "lr_multiplier", "wd_multiplier"]

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_STAGE_RE = re.compile(r"(?:^|\.)(?:stages|downsample_layers)\.(\d+)\.")
_EMBED_NAMES = ("patch_embed", "cls_token", "storage_tokens", "mask_token")


def lr_multiplier(name: str, n_blocks: int, layer_decay: float, patch_embed_lr_mult: float) -> float:
    """LR factor of a backbone parameter: block ``i`` -> ``decay^(L-i)``; patch embedding and the
    CLS/storage/mask tokens -> ``decay^(L+1)`` (patch embedding additionally × ``patch_embed_lr_mult``);
    everything else (final norm, RoPE) -> 1. ConvNeXt stages count as layers."""
    m = _BLOCK_RE.search(name) or _STAGE_RE.search(name)
    if m:
        return layer_decay ** (n_blocks - int(m.group(1)))
    if any(name.startswith(e) or f".{e}" in name for e in _EMBED_NAMES) or name.startswith(
        "downsample_layers.0"
    ):
        mult = layer_decay ** (n_blocks + 1)
        if "patch_embed" in name:
            mult *= patch_embed_lr_mult
        return mult
    return 1.0


def wd_multiplier(name: str) -> float:
    """0 for biases, norms and LayerScale gamma; 1 otherwise (tokens keep weight decay)."""
    return 0.0 if name.endswith("bias") or "norm" in name or "gamma" in name else 1.0


def build_param_groups(
    student: nn.ModuleDict,
    layer_decay: float = 0.98,
    patch_embed_lr_mult: float = 0.2,
) -> list[dict[str, Any]]:
    """Groups for ``student`` = ModuleDict(backbone, dino_head, ibot_head), fused by
    ``(module, lr_multiplier, wd_multiplier, is_last_layer)``. Each group carries those keys; the
    trainer sets ``lr = base·lr_multiplier`` (× last-layer freeze) and ``weight_decay = wd·wd_multiplier``."""
    groups: dict[tuple, dict[str, Any]] = {}
    for mod_name, module in student.items():
        n_blocks = int(getattr(module, "n_blocks", 0) or len(getattr(module, "blocks", [])) or 4)
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if mod_name == "backbone":
                lr_m = lr_multiplier(name, n_blocks, layer_decay, patch_embed_lr_mult)
            else:
                lr_m = 1.0
            wd_m = wd_multiplier(name)
            last = "last_layer" in name
            key = (mod_name, lr_m, wd_m, last)
            g = groups.setdefault(
                key,
                {
                    "params": [],
                    "names": [],
                    "module": mod_name,
                    "lr_multiplier": lr_m,
                    "wd_multiplier": wd_m,
                    "is_last_layer": last,
                },
            )
            g["params"].append(p)
            g["names"].append(f"{mod_name}.{name}")
    return list(groups.values())
