"""Multi-view multi-crop batches from a :class:`FramePool`, built entirely on the pool's device.

Each sample is one scene: global crop 1 comes from one of its frames and global crop 2 from another
(multi-view positives: the DINO global term and the correspondence loss see two camera poses), local
crops alternate between the two frames. With ``ViewSpec.zoom`` a fraction of the samples zoom all their
crops onto one object seen in both frames (:mod:`training.sim.zoom`). Photometric augmentation follows
DINOv3 (global 1 blur p=1, global 2 blur p=0.1 + solarize p=0.2, locals blur p=0.5, colour jitter p=0.8,
grayscale p=0.2). iBOT masks are drawn on the CPU exactly as the CPU loader does. Every draw comes from
the batch seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from training.data.dataset import sample_seed
from training.data.gpu_augment import normalize, photometric, random_boxes, resized_crops
from training.data.masking import MaskingGenerator, sample_masks

from .geometry import CropTargets, crop_targets
from .pool import FramePool
from .zoom import ZoomSpec, instance_boxes, object_boxes, pick_objects

__all__ = ["ViewSpec", "sample_views"]


@dataclass
class ViewSpec:
    """Crop sizes/scales, masking and the class count of the sim targets."""

    global_size: int = 224
    local_size: int = 96
    local_number: int = 4
    global_scale: tuple[float, float] = (0.5, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    patch_size: int = 16
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    n_classes: int = 8
    photometric: bool = True
    zoom: ZoomSpec = field(default_factory=ZoomSpec)  #: object-centred crops (training.sim.zoom)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    _masker: MaskingGenerator | None = field(default=None, repr=False)

    @property
    def grid(self) -> int:
        return self.global_size // self.patch_size


def _pick_frames(pool: FramePool, B: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flat frame indices ``[B]`` of two distinct frames of ``B`` random filled scenes."""
    if pool.filled < 1:
        raise ValueError("the frame pool has no rendered scene yet")
    dev, F_ = pool.device, pool.frames_per_scene
    scene = torch.randint(0, pool.filled, (B,), generator=g, device=dev)
    fa = torch.randint(0, F_, (B,), generator=g, device=dev)
    if F_ > 1:
        fb = (fa + torch.randint(1, F_, (B,), generator=g, device=dev)) % F_
    else:
        fb = fa
    return scene * F_ + fa, scene * F_ + fb


def _frames_float(pool: FramePool, flat: Tensor) -> Tensor:
    return pool.rgb.flatten(0, 1)[flat].permute(0, 3, 1, 2).float().div_(255.0)


def _masks(spec: ViewSpec, n: int, seed: int) -> Tensor:
    grid = (spec.grid, spec.grid)
    if spec._masker is None or (spec._masker.height, spec._masker.width) != grid:
        spec._masker = MaskingGenerator(grid)
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    return sample_masks(n, grid, gen, spec.mask_probability, tuple(spec.mask_ratio), spec._masker)


@dataclass
class _Zoom:
    """The samples that zoom on an object (``use [B]``) and that object's box in each frame."""

    use: Tensor
    box_a: Tensor
    box_b: Tensor
    cls: Tensor  #: [B] class of the object (valid where ``use``)


def _zoom(pool: FramePool, fa: Tensor, fb: Tensor, spec: ViewSpec, g: torch.Generator) -> _Zoom | None:
    z = spec.zoom
    if z.fraction <= 0:
        return None
    boxes_a, area_a = instance_boxes(pool, fa)
    boxes_b, area_b = instance_boxes(pool, fb)
    pick, has = pick_objects(area_a, area_b, z.min_cells, g)
    use = has & (torch.rand(fa.shape[0], generator=g, device=fa.device) < z.fraction)
    rows = torch.arange(fa.shape[0], device=fa.device)
    cls = pool.classes[fa // pool.frames_per_scene, pick]
    return _Zoom(use, boxes_a[rows, pick], boxes_b[rows, pick], cls)


def _zoomed(
    boxes: Tensor,
    zoom: _Zoom | None,
    obj: Tensor,
    ctx: tuple[float, float],
    spec: ViewSpec,
    g: torch.Generator,
    frame_hw: tuple[int, int],
) -> Tensor:
    """``boxes [k*B, 4]`` (crop-major) with the zooming samples' boxes replaced by object boxes."""
    if zoom is None:
        return boxes
    k = boxes.shape[0] // obj.shape[0]
    z = spec.zoom
    near = object_boxes(obj.repeat(k, 1), ctx, z.jitter, z.min_side, frame_hw, g)
    return torch.where(zoom.use.repeat(k)[:, None], near, boxes)


def _locals(
    spec: ViewSpec,
    frames_a: Tensor,
    frames_b: Tensor,
    g: torch.Generator,
    frame_hw: tuple[int, int],
    zoom: _Zoom | None = None,
) -> Tensor | None:
    L = spec.local_number
    if L <= 0:
        return None
    B, dev, size = frames_a.shape[0], frames_a.device, (spec.local_size, spec.local_size)
    la, lb = (L + 1) // 2, L // 2
    parts = []
    ctx = spec.zoom.local_context
    for imgs, k, obj in ((frames_a, la, zoom and zoom.box_a), (frames_b, lb, zoom and zoom.box_b)):
        if k:
            boxes = random_boxes(k * B, *frame_hw, tuple(spec.local_scale), g, dev)
            boxes = _zoomed(boxes, zoom, obj, ctx, spec, g, frame_hw)
            parts.append(resized_crops(imgs, boxes, size, per_image=k))
    crops = torch.cat(parts)  # crop-major: L crops of all B samples
    if spec.photometric:
        crops = photometric(crops, g, blur_p=0.5)
    return normalize(crops, spec.mean, spec.std)


def sample_views(
    pool: FramePool, batch_size: int, spec: ViewSpec, seed: int, iteration: int
) -> dict[str, Any]:
    """One batch: the keys of :class:`training.data.MultiCropCollate` (``global_crops``, ``local_crops``,
    ``masks``, ``mask_indices``, ``masks_weight``, ``n_global_crops``) plus ``sim`` (:class:`CropTargets`
    of the global crops). A pure function of ``(pool contents, seed, iteration)``."""
    bseed = sample_seed(seed, iteration)
    dev = pool.device
    g = torch.Generator(device=dev).manual_seed(bseed)
    B = int(batch_size)
    fa, fb = _pick_frames(pool, B, g)
    H, W = pool.image_hw
    imgs_a, imgs_b = _frames_float(pool, fa), _frames_float(pool, fb)
    size = (spec.global_size, spec.global_size)
    boxes = random_boxes(2 * B, H, W, tuple(spec.global_scale), g, dev)
    zoom = _zoom(pool, fa, fb, spec, g)
    if zoom is not None:
        ctx = spec.zoom.context
        boxes = torch.cat(
            [
                _zoomed(boxes[:B], zoom, zoom.box_a, ctx, spec, g, (H, W)),
                _zoomed(boxes[B:], zoom, zoom.box_b, ctx, spec, g, (H, W)),
            ]
        )
    ga = resized_crops(imgs_a, boxes[:B], size)
    gb = resized_crops(imgs_b, boxes[B:], size)
    if spec.photometric:
        ga = photometric(ga, g, blur_p=1.0)
        gb = photometric(gb, g, blur_p=0.1, solarize_p=0.2)
    global_crops = normalize(torch.cat([ga, gb]), spec.mean, spec.std)
    local_crops = _locals(spec, imgs_a, imgs_b, g, (H, W), zoom)
    frames = torch.cat([fa, fb])
    targets: CropTargets = crop_targets(pool, frames, boxes, spec.grid, spec.n_classes)
    if zoom is not None:
        label = torch.where(zoom.use & (zoom.cls >= 0), zoom.cls, torch.full_like(zoom.cls, -1))
        targets.crop_class = torch.cat([label, label])
    masks = _masks(spec, 2 * B, bseed)  # on the CPU: no device sync for the indices
    weight = (1.0 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    out: dict[str, Any] = {
        "global_crops": global_crops,
        "n_global_crops": 2,
        "masks": masks.to(dev, non_blocking=True),
        "mask_indices": masks.flatten().nonzero().flatten().to(dev, non_blocking=True),
        "masks_weight": weight.to(dev, non_blocking=True),
        "n_masked_patches": int(masks.sum()),
        "sim": targets,
        "batch_seed": bseed,
    }
    if local_crops is not None:
        out["local_crops"] = local_crops
    return out
