"""The simulator as a second teacher: per-patch losses from ray-cast ground truth.

All act on the backbone's final-norm patch tokens of the two global crops (crop-major ``[2B, P, D]``):

* **depth**: a linear head regresses the patch's mean log z-depth (L1);
* **normals**: a linear head regresses the patch's mean camera-frame normal (1 - cosine);
* **semantic**: a linear head classifies the patch's object class (background = its own class);
* **instance contrast** on the L2-normalised tokens themselves, over both views of a scene: patches of
  one instance are pulled above cosine ``pos_margin``, patches of different instances pushed below
  ``neg_margin`` (squared hinges), so TokenCut's cosine graph separates objects;
* **object class** (``object_class`` weight, 0 = off and no head): a linear head on the CLS token of a
  crop zoomed on one object (``training.sim.zoom``) classifies that object, so the image-level token
  learns what the object is;
* **correspondence**: for every patch centre of one view visible in the other, a softmax over the other
  view's patches (cosine / ``temperature``) is trained towards the bilinear weights of the true
  sub-patch position (dense InfoNCE with soft labels), so nearest-neighbour matching plus a window
  soft-argmax at the same temperature lands on the true position.

Losses are computed in float32 with autocast off.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import CropTargets

__all__ = ["SimLossConfig", "SimObjective", "correspondence_loss", "instance_contrast_loss"]


@dataclass
class SimLossConfig:
    """Loss weights (0 disables a term) and the shape of the contrastive terms."""

    depth: float = 1.0
    normals: float = 0.5
    semantic: float = 0.5
    instance: float = 1.0
    correspondence: float = 0.5
    object_class: float = 0.0
    pos_margin: float = 0.5
    neg_margin: float = 0.0
    temperature: float = 0.05
    n_classes: int = 8

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SimLossConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown sim loss key(s) {bad}; valid: {sorted(known)}")
        return cls(**d)


def instance_contrast_loss(
    feats: Tensor, instance: Tensor, pos_margin: float = 0.5, neg_margin: float = 0.0
) -> Tensor:
    """Squared-hinge instance contrast within each group: ``feats [G, P, D]`` (normalised here),
    ``instance [G, P]`` ids (``-1`` ignored). Positive and negative pair terms are averaged separately."""
    f = F.normalize(feats.float(), dim=-1)
    cos = f @ f.transpose(1, 2)
    ok = instance >= 0
    both = ok[:, :, None] & ok[:, None, :]
    same = (instance[:, :, None] == instance[:, None, :]) & both
    eye = torch.eye(f.shape[1], dtype=torch.bool, device=f.device)[None]
    same &= ~eye
    diff = both & ~same & ~eye
    pos = (F.relu(pos_margin - cos) ** 2 * same).sum() / same.sum().clamp_min(1)
    neg = (F.relu(cos - neg_margin) ** 2 * diff).sum() / diff.sum().clamp_min(1)
    return pos + neg


def _bilinear_targets(xy: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """Four neighbour patch indices ``[..., 4]`` and bilinear weights ``[..., 4]`` of positions ``xy``."""
    x = xy[..., 0].clamp(0, grid - 1)
    y = xy[..., 1].clamp(0, grid - 1)
    x0, y0 = x.floor().clamp(max=grid - 2), y.floor().clamp(max=grid - 2)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    idx = torch.stack(
        [y0 * grid + x0, y0 * grid + x0 + 1, (y0 + 1) * grid + x0, (y0 + 1) * grid + x0 + 1], -1
    )
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    return idx, w


def correspondence_loss(
    feats: Tensor, partner: Tensor, xy: Tensor, valid: Tensor, grid: int, temperature: float = 0.05
) -> Tensor:
    """Soft-label dense InfoNCE: ``feats [N, P, D]`` sources, ``partner [N, P, D]`` targets, true
    positions ``xy [N, P, 2]`` in the partner's patch coordinates, ``valid [N, P]``."""
    if grid < 2:
        raise ValueError(f"the correspondence loss needs a patch grid of at least 2x2, got {grid}")
    a = F.normalize(feats.float(), dim=-1)
    b = F.normalize(partner.float(), dim=-1)
    logp = torch.log_softmax(a @ b.transpose(1, 2) / temperature, dim=-1)  # [N, P, P]
    idx, w = _bilinear_targets(xy, grid)
    ce = -(logp.gather(-1, idx) * w).sum(-1)
    v = valid.float()
    return (ce * v).sum() / v.sum().clamp_min(1)


class SimObjective(nn.Module):
    """Linear heads plus the simulator losses; ``forward`` returns ``{name: loss}`` (weighted sum in
    ``"sim"``)."""

    def __init__(self, dim: int, cfg: SimLossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.depth_head = nn.Linear(dim, 1)
        self.normal_head = nn.Linear(dim, 3)
        self.semantic_head = nn.Linear(dim, cfg.n_classes + 1)
        # only when used: checkpoints of runs without it keep their keys
        self.class_head = nn.Linear(dim, cfg.n_classes) if cfg.object_class > 0 else None

    def forward(
        self,
        patch_tokens: Tensor,
        t: CropTargets,
        masked_crops: Tensor | None = None,
        cls_tokens: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``patch_tokens [2B, g*g, D]`` and ``cls_tokens [2B, D]`` of the global crops (crop-major);
        ``masked_crops [2B]`` marks crops with iBOT-masked patches (never used as correspondence
        targets)."""
        with torch.autocast(patch_tokens.device.type, enabled=False):
            out = self._losses(patch_tokens.float(), t, masked_crops)
            if self.class_head is not None:
                out["sim_object_class"] = self._object_class(cls_tokens, t)
                out["sim"] = out["sim"] + self.cfg.object_class * out["sim_object_class"]
            return out

    def _object_class(self, cls_tokens: Tensor | None, t: CropTargets) -> Tensor:
        """Cross-entropy of the zoomed crops' object class from their CLS token (0 without zoomed crops)."""
        if cls_tokens is None:
            raise ValueError("sim.losses.object_class > 0 needs the CLS tokens of the global crops")
        assert self.class_head is not None
        logits = self.class_head(cls_tokens.float())
        if t.crop_class is None:
            return logits.sum() * 0
        y = t.crop_class.long()
        n = (y >= 0).sum().clamp_min(1)
        return F.cross_entropy(logits, y.clamp_min(0), reduction="none").mul((y >= 0).float()).sum() / n

    def _losses(self, x: Tensor, t: CropTargets, masked_crops: Tensor | None) -> dict[str, Tensor]:
        c = self.cfg
        N, P, _ = x.shape
        g = t.log_depth.shape[-1]
        if P != g * g:
            raise ValueError(f"patch tokens ({P}) do not match the target grid {g}x{g}")
        out: dict[str, Tensor] = {}
        dv = t.depth_valid.reshape(N, P).float()
        d = self.depth_head(x).squeeze(-1)
        out["sim_depth"] = ((d - t.log_depth.reshape(N, P)).abs() * dv).sum() / dv.sum().clamp_min(1)
        nv = t.normal_valid.reshape(N, P).float()
        cosn = F.cosine_similarity(self.normal_head(x), t.normals.reshape(N, P, 3), dim=-1)
        out["sim_normals"] = ((1 - cosn) * nv).sum() / nv.sum().clamp_min(1)
        sem = t.semantic.reshape(N * P)
        logits = self.semantic_head(x).reshape(N * P, -1)
        out["sim_semantic"] = (
            F.cross_entropy(logits, sem, ignore_index=-1) if bool((sem >= 0).any()) else logits.sum() * 0
        )
        B = N // 2
        pairs = x.reshape(2, B, P, -1).transpose(0, 1).reshape(B, 2 * P, -1)
        inst = t.instance.reshape(2, B, P).transpose(0, 1).reshape(B, 2 * P)
        out["sim_instance"] = instance_contrast_loss(pairs, inst, c.pos_margin, c.neg_margin)
        partner = torch.cat([x[B:], x[:B]])
        valid = t.corr_valid
        if masked_crops is not None:
            partner_masked = torch.cat([masked_crops[B:], masked_crops[:B]])
            valid = valid & ~partner_masked[:, None]
        out["sim_correspondence"] = correspondence_loss(x, partner, t.corr_xy, valid, g, c.temperature)
        out["sim"] = (
            c.depth * out["sim_depth"]
            + c.normals * out["sim_normals"]
            + c.semantic * out["sim_semantic"]
            + c.instance * out["sim_instance"]
            + c.correspondence * out["sim_correspondence"]
        )
        return out
