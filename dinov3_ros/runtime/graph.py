"""The deployable graph: backbone (+ optional depth head) -> named outputs, shared by torch and export.

``DeployModel(image) -> (patch_tokens [B, h, w, C], cls [B, C][, depth [B, 1, H, W]])``. DINOv3 ViTs
run through :class:`~dinov3_ros.runtime.vit_infer.InferenceViT` (cached fp32 RoPE, folded LayerScale,
export-clean); other backbones (ConvNeXt) go through their ``get_intermediate_layers``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .vit_infer import InferenceViT, is_dinov3_vit_state_dict

__all__ = ["OUTPUT_LAYOUT", "DeployModel", "head_layer_indices"]

#: output name -> layout, written into the ONNX metadata and ``Engine.info``
OUTPUT_LAYOUT = {"patch_tokens": "B,h,w,C", "cls": "B,C", "depth": "B,1,H,W"}


def head_layer_indices(head: nn.Module | None, depth: int) -> tuple[int, ...]:
    """Block indices a dense head consumes.

    ``head.layer_indices`` (set from the head file's ``meta["layers"]`` by the loader) or ``head.layers``;
    a DPT head without them gets ``dinov3_ros.heads.depth.default_layers``; otherwise the last
    ``n_layers`` blocks (default 1).
    """
    if head is None:
        return (depth - 1,)
    for name in ("layer_indices", "layers", "in_layers", "intermediate_layers"):
        val = getattr(head, name, None)
        if isinstance(val, int):
            return tuple(range(depth - val, depth))
        if isinstance(val, Sequence) and val and all(isinstance(v, int) for v in val):
            return tuple(v if v >= 0 else depth + v for v in val)
    if getattr(head, "head_type", None) == "dpt":
        from dinov3_ros.heads.depth import default_layers

        return tuple(default_layers(n_blocks=depth))
    n = getattr(head, "n_layers", None)
    if n is None:
        n = (
            getattr(head, "config", {}).get("n_layers")
            if isinstance(getattr(head, "config", None), dict)
            else None
        )
    if isinstance(n, int) and n > 0:
        return tuple(range(depth - n, depth))
    return (depth - 1,)


class DeployModel(nn.Module):
    """Backbone + optional depth head with a fixed, export-friendly output tuple.

    A ``uint8`` input is taken as ``[B, H, W, 3]`` RGB and normalised inside the graph (the torch
    backend uses this so CUDA graphs cover the preprocessing too); float input is normalised NCHW.
    """

    def __init__(
        self,
        backbone: nn.Module,
        depth_head: nn.Module | None = None,
        *,
        fast: bool = True,
    ) -> None:
        super().__init__()
        sd_keys = backbone.state_dict() if fast else {}
        self.arch = str(getattr(backbone, "arch", "unknown"))
        self.patch_size = int(getattr(backbone, "patch_size", 16))
        self.embed_dim = int(getattr(backbone, "embed_dim", 0) or 0)
        self.norm_mean = tuple(float(v) for v in getattr(backbone, "norm_mean", (0.485, 0.456, 0.406)))
        self.norm_std = tuple(float(v) for v in getattr(backbone, "norm_std", (0.229, 0.224, 0.225)))
        if isinstance(backbone, InferenceViT):
            self.vit: InferenceViT | None = backbone
        elif fast and is_dinov3_vit_state_dict(sd_keys):
            self.vit = InferenceViT.from_backbone(backbone)
        else:
            self.vit = None
        self.backbone = None if self.vit is not None else backbone
        if self.vit is not None:
            self.embed_dim = self.vit.embed_dim
            n_blocks = self.vit.cfg.depth
        else:
            n_blocks = int(getattr(backbone, "n_blocks", 1))
        self.n_blocks = n_blocks
        self.depth_head = depth_head
        self.layer_indices = head_layer_indices(depth_head, n_blocks)
        if self.vit is not None:
            self.vit.layer_indices = self.layer_indices
        self.register_buffer(
            "mean255", torch.tensor(self.norm_mean).view(1, 3, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer("std255", torch.tensor(self.norm_std).view(1, 3, 1, 1) * 255.0, persistent=False)

    @property
    def output_names(self) -> list[str]:
        return ["patch_tokens", "cls"] + (["depth"] if self.depth_head is not None else [])

    def set_dynamic(self, dynamic: bool) -> None:
        """Compute RoPE tables in-graph (dynamic H/W export) instead of baking them as constants."""
        if self.vit is not None:
            self.vit.dynamic_rope = dynamic

    def _features(self, x: torch.Tensor):
        """-> (patch_tokens [B, h, w, C], cls [B, C], [(patches [B, C, h, w], cls [B, C]) per head layer])."""
        if self.vit is not None:
            return self.vit(x)
        idx = sorted(set(self.layer_indices) | {self.n_blocks - 1})
        outs = self.backbone.get_intermediate_layers(
            x, n=idx, reshape=True, return_class_token=True, norm=True
        )
        by_idx = {i: (o[0], o[1]) for i, o in zip(idx, outs)}
        last_p, last_c = by_idx[self.n_blocks - 1]
        return last_p.permute(0, 2, 3, 1), last_c, [by_idx[i] for i in self.layer_indices]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if image.dtype == torch.uint8:
            x = image.permute(0, 3, 1, 2).float()
            x = (x - self.mean255) / self.std255
        else:
            x = image
        if self.vit is not None:
            x = x.to(self.vit.patch_embed.weight.dtype)
        patch, cls, layers = self._features(x)
        if self.depth_head is None:
            return patch, cls
        depth = self._head(layers, cls, x)
        return patch, cls, depth

    def _head(self, layers: list[tuple[torch.Tensor, torch.Tensor]], cls: torch.Tensor, x: torch.Tensor):
        head = self.depth_head
        size = (x.shape[-2], x.shape[-1])
        try:
            out = head(list(layers), output_size=size)
        except TypeError:  # a head without output_size: resized below
            out = head(list(layers))
        if isinstance(out, dict):
            out = out["depth"]
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 3:
            out = out[:, None]
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(
                out.float(), size=(x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=False
            )
        return out
