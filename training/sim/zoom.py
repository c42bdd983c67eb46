"""Object-centred crop boxes: zoom the crops of a sample onto one object seen in both of its frames.

Scene-scale crops show each object on a handful of patches, while a user (and the class probe) looks at
objects up close. For a fraction of the samples the two global crops are centred on the same instance
in each of the two frames (a square box ``U(context)`` times the object's larger side, centre jittered by
``jitter`` of the side), so DINO's global term sees two views of one object and the per-patch losses see
it at patch scale; their local crops zoom on it with less context. Samples whose frames share no object
of at least ``min_cells`` ground-truth cells keep their random boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .pool import FramePool

__all__ = ["ZoomSpec", "instance_boxes", "object_boxes", "pick_objects"]


@dataclass(frozen=True)
class ZoomSpec:
    """How often and how tightly crops zoom on an object (``fraction`` 0 = never)."""

    fraction: float = 0.0
    context: tuple[float, float] = (1.2, 2.5)  #: box side / object's larger side, global crops
    local_context: tuple[float, float] = (1.1, 1.6)  #: the same for local crops
    jitter: float = 0.1
    min_cells: int = 6
    min_side: float = 24.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"object zoom fraction must be in [0, 1], got {self.fraction}")
        for name in ("context", "local_context"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"object zoom {name} must satisfy 0 < lo <= hi, got {(lo, hi)}")


def instance_boxes(pool: FramePool, flat: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes ``[N, I, 4]`` (x0, y0, x1, y1 frame pixels, cell extents) and areas ``[N, I]`` (ground-truth
    cells) of every instance id ``0..I-1`` in flat frames ``flat [N]``; absent ids have area 0."""
    s = pool.gt_stride
    inst = pool.instances.flatten(0, 1)[flat].long()  # [N, h, w]
    n_ids = pool.classes.shape[1]
    ids = torch.arange(n_ids, device=inst.device)
    hit = inst[:, None] == ids[None, :, None, None]  # [N, I, h, w]
    area = hit.sum((2, 3))
    h, w = inst.shape[1:]
    big = float(max(h, w) * s + s)
    xs = torch.arange(w, device=inst.device, dtype=torch.float32) * s
    ys = torch.arange(h, device=inst.device, dtype=torch.float32) * s
    col, row = hit.any(2), hit.any(3)  # [N, I, w], [N, I, h]
    x0 = torch.where(col, xs, big).amin(-1)
    x1 = torch.where(col, xs + s, -big).amax(-1)
    y0 = torch.where(row, ys, big).amin(-1)
    y1 = torch.where(row, ys + s, -big).amax(-1)
    return torch.stack([x0, y0, x1, y1], -1), area


def pick_objects(area_a: Tensor, area_b: Tensor, min_cells: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """One object id ``[N]`` per sample, uniform among those visible in both frames (background 0
    excluded), and whether the sample has any."""
    ok = (area_a >= min_cells) & (area_b >= min_cells)
    ok[:, 0] = False
    has = ok.any(1)
    weights = ok.float() + (~has).float()[:, None]  # rows without an object: any id (unused)
    pick = torch.multinomial(weights, 1, generator=g).squeeze(1)
    return pick, has


def object_boxes(
    box: Tensor,
    context: tuple[float, float],
    jitter: float,
    min_side: float,
    frame_hw: tuple[int, int],
    g: torch.Generator,
) -> Tensor:
    """Square crop boxes ``[N, 4]`` (x0, y0, w, h) around object boxes ``[N, 4]`` (x0, y0, x1, y1),
    inside the frame."""
    H, W = frame_hw
    n, dev = box.shape[0], box.device
    u = torch.rand(n, 3, generator=g, device=dev)
    side = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    side = side * (context[0] + (context[1] - context[0]) * u[:, 0])
    side = side.clamp(min=min_side, max=float(min(H, W)))
    cx = (box[:, 0] + box[:, 2]) / 2 + (u[:, 1] - 0.5) * 2 * jitter * side
    cy = (box[:, 1] + box[:, 3]) / 2 + (u[:, 2] - 0.5) * 2 * jitter * side
    x0 = torch.minimum((cx - side / 2).clamp(min=0.0), W - side)
    y0 = torch.minimum((cy - side / 2).clamp(min=0.0), H - side)
    return torch.stack([x0, y0, side, side], 1)
