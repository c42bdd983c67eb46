"""Head-free (feature-level) distillation for teachers without DINO/iBOT heads.

The released DINOv3 checkpoints are backbone-only, so the published head-based recipe
(``training.distill``) cannot use them. This module distils their *features* instead:

- CLS and patch tokens of the student pass through a learned projector (student dim -> teacher dim)
  and are matched to the teacher's with cosine and/or L2 losses;
- the student's patch tokens are matched to the teacher's with per-image Gram matrices
  (``training.losses.gram_loss``), which needs no projector because Gram matrices are ``N x N``.

The student's patch grid is resampled (bilinear/bicubic) to the teacher's when the strides or
resolutions differ, so a ConvNeXt (stride 32) or ViT/16 student can learn from a ViT/14, /16 or /7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FeatureDistillConfig",
    "FeatureDistillObjective",
    "FeatureProjector",
    "TeacherFeatures",
    "align_patch_tokens",
    "feature_distill_loss",
    "patch_grid",
]


def patch_grid(n_tokens: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """Return the ``(h, w)`` grid of ``n_tokens`` patch tokens produced from an ``image_hw`` image.

    The stride is inferred from the token count, so it works for ViTs of any patch size and for
    ConvNeXt stages. Raises ValueError when no integer grid matches.
    """
    H, W = int(image_hw[0]), int(image_hw[1])
    if n_tokens <= 0 or H <= 0 or W <= 0:
        raise ValueError(f"bad patch grid query: {n_tokens} tokens for image {H}x{W}")
    stride = math.sqrt(H * W / n_tokens)
    for s in sorted({math.floor(stride), math.ceil(stride), round(stride)}):
        if s <= 0:
            continue
        for h, w in ((H // s, W // s), (math.ceil(H / s), math.ceil(W / s))):
            if h * w == n_tokens:
                return h, w
    raise ValueError(f"{n_tokens} patch tokens do not form a grid for a {H}x{W} image")


def align_patch_tokens(
    tokens: torch.Tensor,
    src_hw: tuple[int, int],
    dst_hw: tuple[int, int],
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resample patch tokens ``[B, h*w, D]`` from grid ``src_hw`` to ``dst_hw`` -> ``[B, H*W, D]``."""
    if tokens.ndim != 3:
        raise ValueError(f"patch tokens must be [B, N, D], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] != src_hw[0] * src_hw[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not match grid {src_hw}")
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    if mode not in ("bilinear", "bicubic", "nearest", "area"):
        raise ValueError(f"unknown resampling mode {mode!r} (bilinear, bicubic, nearest, area)")
    B, _, D = tokens.shape
    x = tokens.transpose(1, 2).reshape(B, D, src_hw[0], src_hw[1])
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    x = F.interpolate(x.float(), size=tuple(dst_hw), mode=mode, **kw).to(tokens.dtype)
    return x.flatten(2).transpose(1, 2)


class FeatureProjector(nn.Module):
    """Maps student CLS and patch tokens to the teacher's width (separate projectors).

    ``hidden_dim=0`` gives a single Linear per token type; otherwise a 2-layer GELU MLP.
    """

    def __init__(self, student_dim: int, teacher_dim: int, hidden_dim: int = 0) -> None:
        super().__init__()
        self.student_dim = int(student_dim)
        self.teacher_dim = int(teacher_dim)
        self.cls = self._make(student_dim, teacher_dim, hidden_dim)
        self.patch = self._make(student_dim, teacher_dim, hidden_dim)

    @staticmethod
    def _make(din: int, dout: int, hidden: int) -> nn.Module:
        if hidden <= 0:
            return nn.Linear(din, dout)
        return nn.Sequential(nn.Linear(din, hidden), nn.GELU(), nn.Linear(hidden, dout))

    def forward(self, cls: torch.Tensor, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls(cls), self.patch(patch)


@dataclass
class FeatureDistillConfig:
    """Loss weights and grid alignment of head-free distillation."""

    cls_cos: float = 1.0
    patch_cos: float = 1.0
    cls_l2: float = 0.0
    patch_l2: float = 0.0
    gram: float = 1.0
    projector_hidden: int = 0
    align_mode: str = "bicubic"

    @classmethod
    def from_dict(cls, d: dict | None) -> FeatureDistillConfig:
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown feature-distillation keys {bad}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class TeacherFeatures:
    """Teacher targets of one batch: normalised CLS ``[B, Dt]`` and patch tokens ``[B, N, Dt]``."""

    cls: torch.Tensor
    patch: torch.Tensor
    grid: tuple[int, int]


def _gram_loss(student_patch: torch.Tensor, teacher_patch: torch.Tensor) -> torch.Tensor:
    """Per-image Gram MSE of the *raw* student tokens (``training.losses.gram_loss``).

    Gram matrices are ``N x N`` whatever the widths; the narrower side is zero-padded along D, which
    leaves every dot product and norm (hence the Gram matrix) unchanged.
    """
    from training.losses import gram_loss

    ds, dt = student_patch.shape[-1], teacher_patch.shape[-1]
    if ds < dt:
        student_patch = F.pad(student_patch, (0, dt - ds))
    elif dt < ds:
        teacher_patch = F.pad(teacher_patch, (0, ds - dt))
    return gram_loss(student_patch, teacher_patch)


def feature_distill_loss(
    s_cls: torch.Tensor,
    s_patch: torch.Tensor,
    p_cls: torch.Tensor,
    p_patch: torch.Tensor,
    target: TeacherFeatures,
    cfg: FeatureDistillConfig,
) -> dict[str, torch.Tensor]:
    """Loss terms for one student.

    ``s_*`` are the student's own tokens (patch grid already aligned to the teacher's), ``p_*``
    their projections to the teacher width. Returns a dict with ``loss`` (the weighted sum) and
    every non-zero term.
    """
    t_cls = target.cls.float()
    t_patch = target.patch.float()
    if p_patch.shape[:2] != t_patch.shape[:2]:
        raise ValueError(f"student patches {tuple(p_patch.shape)} vs teacher {tuple(t_patch.shape)}")
    out: dict[str, torch.Tensor] = {}
    total = p_cls.new_zeros((), dtype=torch.float32)
    if cfg.cls_cos:
        out["cls_cos"] = (1 - F.cosine_similarity(p_cls.float(), t_cls, dim=-1)).mean()
        total = total + cfg.cls_cos * out["cls_cos"]
    if cfg.patch_cos:
        out["patch_cos"] = (1 - F.cosine_similarity(p_patch.float(), t_patch, dim=-1)).mean()
        total = total + cfg.patch_cos * out["patch_cos"]
    if cfg.cls_l2:
        out["cls_l2"] = F.mse_loss(p_cls.float(), t_cls)
        total = total + cfg.cls_l2 * out["cls_l2"]
    if cfg.patch_l2:
        out["patch_l2"] = F.mse_loss(p_patch.float(), t_patch)
        total = total + cfg.patch_l2 * out["patch_l2"]
    if cfg.gram:
        out["gram"] = _gram_loss(s_patch.float(), t_patch)
        total = total + cfg.gram * out["gram"]
    out["loss"] = total
    return out


class FeatureDistillObjective(nn.Module):
    """Trainable part (the projector) and the loss of head-free distillation for one student."""

    def __init__(self, student_dim: int, teacher_dim: int, cfg: FeatureDistillConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FeatureDistillConfig()
        self.projector = FeatureProjector(student_dim, teacher_dim, self.cfg.projector_hidden)

    @staticmethod
    @torch.no_grad()
    def teacher_targets(teacher: nn.Module, images: torch.Tensor) -> TeacherFeatures:
        """Run the frozen teacher once on ``images`` ``[B, 3, H, W]``."""
        out = teacher.forward_features(images)
        patch = out["x_norm_patchtokens"]
        grid = patch_grid(patch.shape[1], images.shape[-2:])
        return TeacherFeatures(cls=out["x_norm_clstoken"], patch=patch, grid=grid)

    def forward(
        self, student: nn.Module, images: torch.Tensor, target: TeacherFeatures
    ) -> dict[str, torch.Tensor]:
        """Student forward on ``images`` and the loss against ``target`` (same images)."""
        out = student.forward_features(images)
        s_cls, s_patch = out["x_norm_clstoken"], out["x_norm_patchtokens"]
        grid = patch_grid(s_patch.shape[1], images.shape[-2:])
        s_patch = align_patch_tokens(s_patch, grid, target.grid, self.cfg.align_mode)
        p_cls, p_patch = self.projector(s_cls, s_patch)
        return feature_distill_loss(s_cls, s_patch, p_cls, p_patch, target, self.cfg)
