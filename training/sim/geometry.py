"""Per-patch ground truth of crops taken from pool frames: depth, normals, instances, correspondences.

A crop is a box ``(x0, y0, w, h)`` in frame pixels resized to a ``g x g`` patch grid. Patch ``(r, c)``
covers the frame region ``x0 + [c, c+1) w/g`` (and likewise in y); its centre is frame pixel
``x0 + (c + 0.5) w/g - 0.5`` (pixel centres at integers). Correspondences map every patch centre of one
global crop into the other global crop of the same sample (another frame of the same scene) through
depth and poses, in that crop's patch coordinates (centres at integers), with an occlusion check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .pool import FramePool

__all__ = ["CropTargets", "crop_targets", "patch_sample_points", "reproject"]


@dataclass
class CropTargets:
    """Ground truth of ``N`` crops on a ``g x g`` patch grid (crop-major like the crops)."""

    log_depth: Tensor  #: [N, g, g] mean log z-depth of the patch
    depth_valid: Tensor  #: [N, g, g] bool
    normals: Tensor  #: [N, g, g, 3] unit mean normal (camera frame)
    normal_valid: Tensor  #: [N, g, g] bool
    instance: Tensor  #: [N, g, g] int64 instance id, -1 where the patch is not one instance
    semantic: Tensor  #: [N, g, g] int64 class (background = n_classes), -1 = ignore
    corr_xy: Tensor  #: [N, g*g, 2] patch centre's position in the partner crop (patch units)
    corr_valid: Tensor  #: [N, g*g] bool
    crop_class: Tensor | None = None  #: [N] class of the object a zoomed crop is centred on, -1 = none

    def to(self, device: torch.device | str) -> CropTargets:
        return CropTargets(
            **{k: None if v is None else v.to(device, non_blocking=True) for k, v in self.__dict__.items()}
        )


def patch_sample_points(boxes: Tensor, grid: int, sub: int) -> tuple[Tensor, Tensor]:
    """Frame pixel coordinates ``x, y [N, grid*sub, grid*sub]`` of ``sub x sub`` points per patch."""
    dev = boxes.device
    t = (torch.arange(grid * sub, device=dev, dtype=torch.float32) + 0.5) / (grid * sub)
    x = boxes[:, 0:1] + t[None] * boxes[:, 2:3] - 0.5
    y = boxes[:, 1:2] + t[None] * boxes[:, 3:4] - 0.5
    n = x.shape[1]
    return x[:, None, :].expand(-1, n, -1), y[:, :, None].expand(-1, -1, n)


def _lookup(pool: FramePool, field: Tensor, frame: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Nearest ground-truth entry of ``field [S*F, h, w, ...]`` at frame pixel coords for frames ``[N]``."""
    s = pool.gt_stride
    h, w = field.shape[1], field.shape[2]
    qx = torch.round((x - s // 2) / s).long().clamp_(0, w - 1)
    qy = torch.round((y - s // 2) / s).long().clamp_(0, h - 1)
    idx = frame.view(-1, *([1] * (x.ndim - 1))).expand_as(qx)
    return field[idx, qy, qx]


def _blocks(x: Tensor, grid: int, sub: int) -> Tensor:
    """``[N, grid*sub, grid*sub, ...]`` -> ``[N, grid, grid, sub*sub, ...]``."""
    N = x.shape[0]
    rest = x.shape[3:]
    x = x.reshape(N, grid, sub, grid, sub, *rest).transpose(2, 3)
    return x.reshape(N, grid, grid, sub * sub, *rest)


def reproject(
    pool: FramePool, frame_a: Tensor, frame_b: Tensor, x: Tensor, y: Tensor, depth: Tensor
) -> tuple[Tensor, Tensor]:
    """Pixels ``x, y [N, P]`` of flat frames ``frame_a [N]`` at z-depth ``depth`` -> pixels in
    ``frame_b [N]`` (``[N, P, 2]``) and visibility (in front, inside, not occluded)."""
    K = pool.K.flatten(0, 1)
    T = pool.T_world_cam.flatten(0, 1)
    Ka, Kb, Ta, Tb = K[frame_a], K[frame_b], T[frame_a], T[frame_b]
    xa = (x - Ka[:, 0, 2:3]) / Ka[:, 0, 0:1] * depth
    ya = (y - Ka[:, 1, 2:3]) / Ka[:, 1, 1:2] * depth
    pa = torch.stack([xa, ya, depth], -1)  # [N, P, 3]
    T_ba = torch.linalg.solve(Tb, Ta)  # cam_a -> cam_b
    pb = pa @ T_ba[:, :3, :3].transpose(1, 2) + T_ba[:, None, :3, 3]
    zb = pb[..., 2]
    front = zb > 0.05
    zs = torch.where(front, zb, torch.ones_like(zb))
    ub = Kb[:, 0, 0:1] * pb[..., 0] / zs + Kb[:, 0, 2:3]
    vb = Kb[:, 1, 1:2] * pb[..., 1] / zs + Kb[:, 1, 2:3]
    H, W = pool.image_hw
    inside = front & (ub >= -0.5) & (ub <= W - 0.5) & (vb >= -0.5) & (vb <= H - 0.5)
    db = _lookup(pool, pool.depth.flatten(0, 1), frame_b, ub, vb)
    visible = inside & (db > 0) & ((db - zb).abs() <= 0.02 + 0.03 * zb) & (depth > 0)
    return torch.stack([ub, vb], -1), visible


def crop_targets(
    pool: FramePool,
    frames: Tensor,
    boxes: Tensor,
    grid: int,
    n_classes: int,
    *,
    sub: int = 4,
    purity: float = 0.75,
) -> CropTargets:
    """Targets of crops ``boxes [2B, 4]`` of flat frames ``frames [2B]`` (``scene * F + frame``),
    crop-major: crop ``b`` pairs with crop ``(b + B) % 2B`` for correspondences."""
    n = frames.shape[0]
    if n % 2:
        raise ValueError(f"need an even number of global crops (two per sample), got {n}")
    x, y = patch_sample_points(boxes, grid, sub)
    d = _blocks(_lookup(pool, pool.depth.flatten(0, 1), frames, x, y), grid, sub)
    valid = d > 0
    logd = torch.where(valid, d.clamp_min(1e-6).log(), torch.zeros_like(d))
    cnt = valid.sum(-1)
    log_depth = logd.sum(-1) / cnt.clamp_min(1)
    nrm = _blocks(_lookup(pool, pool.normals.flatten(0, 1), frames, x, y).float(), grid, sub).sum(-2)
    nlen = nrm.norm(dim=-1)
    inst = _blocks(_lookup(pool, pool.instances.flatten(0, 1), frames, x, y).long(), grid, sub)
    centre = inst[..., (sub // 2) * sub + sub // 2]
    pure = (inst == centre[..., None]).float().mean(-1) >= purity
    instance = torch.where(pure, centre, torch.full_like(centre, -1))
    F_ = pool.frames_per_scene
    scene = (frames // F_).view(-1, 1, 1).expand_as(centre)
    cls = pool.classes[scene, centre.clamp(0, pool.classes.shape[1] - 1)]
    cls = torch.where(centre == 0, torch.full_like(cls, n_classes), cls)
    semantic = torch.where(pure & (cls >= 0), cls, torch.full_like(cls, -1))
    corr_xy, corr_valid = _correspondences(pool, frames, boxes, grid)
    return CropTargets(
        log_depth=log_depth,
        depth_valid=cnt * 2 >= sub * sub,
        normals=nrm / nlen.clamp_min(1e-6)[..., None],
        normal_valid=nlen > 1e-3,
        instance=instance,
        semantic=semantic,
        corr_xy=corr_xy,
        corr_valid=corr_valid,
    )


def _correspondences(pool: FramePool, frames: Tensor, boxes: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    n = frames.shape[0]
    partner = (torch.arange(n, device=frames.device) + n // 2) % n
    x, y = patch_sample_points(boxes, grid, 1)
    x, y = x.reshape(n, -1), y.reshape(n, -1)
    depth = _lookup(pool, pool.depth.flatten(0, 1), frames, x, y)
    pb, visible = reproject(pool, frames, frames[partner], x, y, depth)
    bb = boxes[partner]
    cx = (pb[..., 0] + 0.5 - bb[:, 0:1]) / bb[:, 2:3] * grid - 0.5
    cy = (pb[..., 1] + 0.5 - bb[:, 1:2]) / bb[:, 3:4] * grid - 0.5
    inside = (cx >= -0.5) & (cx <= grid - 0.5) & (cy >= -0.5) & (cy <= grid - 0.5)
    return torch.stack([cx, cy], -1), visible & inside
