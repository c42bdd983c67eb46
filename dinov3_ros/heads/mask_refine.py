"""Edge-aligned object masks: patch-sized label maps refined with the image (guided filter).

TokenCut labels patches; at input resolution its masks are blocks of patch size. Each label's soft map
(one channel per object plus one for the background, already resampled bilinearly to the image size)
is filtered with the image as guide - He's guided filter with a radius of about one patch, so edges
move to the image's edges within a patch - and every pixel takes the strongest label. This is the role
the bilateral solver plays after TokenCut in the published saliency variant; the guided filter is
used here because it is a few box filters, in float32, on any device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .upsample import upsample

__all__ = ["REFINE_PATCH_PX", "guided_labels", "refine_labels"]

#: :func:`refine_labels` works at a resolution where a patch spans this many pixels (labels are then
#: taken back to full size by nearest neighbour): edges within a pixel or two, at a quarter of the cost
REFINE_PATCH_PX = 8


def guided_labels(
    soft: np.ndarray,
    guide: np.ndarray,
    radius: int,
    eps: float = 1e-3,
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``soft [H, W, K]`` label maps (float32, e.g. bilinear one-hots) and ``guide [H, W, 3]`` uint8 RGB
    -> ``[H, W]`` int64 index of the strongest filtered map. ``radius`` in pixels (about one patch);
    ``eps`` in guide units (intensities in [0, 1]; smaller = sharper edges); ``device``: where the
    filter runs (float32 only)."""
    soft = np.asarray(soft, np.float32)
    if soft.ndim != 3 or soft.shape[:2] != guide.shape[:2]:
        raise ValueError(f"soft {soft.shape} and guide {guide.shape} must be [H, W, K] and [H, W, 3]")
    r = max(1, int(radius))
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(soft.transpose(2, 0, 1)))[None].to(device)  # [1, K, H, W]
        g = torch.from_numpy(np.ascontiguousarray(guide)).to(device)
        out = upsample(
            x, soft.shape[:2], "guided_filter", guide=g, radius=r, eps=eps, subsample=max(1, r // 4)
        )
        return _argmax0(out[0]).cpu().numpy()


def refine_labels(
    soft: np.ndarray,
    image: np.ndarray,
    patch_px: float,
    keep: np.ndarray | Callable[[], np.ndarray],
    *,
    device: str | torch.device = "cpu",
    values: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`guided_labels` with a one-patch radius (``patch_px``: a patch's size in pixels of
    ``image``), run at most :data:`REFINE_PATCH_PX` pixels per patch -> ``[H, W]`` uint16 indices
    (``values[index]`` with ``values [K]``).

    ``keep [H, W]``: the labels before refinement (patch blocks), or a callable that returns them
    (called only when needed). The refinement moves edges, it never removes an object: a label other
    than 0 (the background) that it leaves without pixels gets its ``keep`` pixels back (a patch or two
    on a flat image lose to the background after smoothing)."""
    import cv2

    H, W = soft.shape[:2]
    K = soft.shape[2]
    f = min(1.0, REFINE_PATCH_PX / float(patch_px))
    if f < 1.0:
        size = (max(1, round(W * f)), max(1, round(H * f)))
        soft = cv2.resize(soft, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    idx = guided_labels(soft, image, round(patch_px * f), device=device).astype(np.uint16)
    # counted and mapped at the working size: a nearest-neighbour enlargement picks every pixel of it
    # (at least once), so the labels present and the values are the full-size map's
    empty = np.flatnonzero(np.bincount(idx.ravel(), minlength=K)[1:] == 0) + 1
    lut = values is not None and values.dtype in (np.uint8, np.uint16)
    out = values[idx] if lut else idx
    if f < 1.0:
        out = cv2.resize(out, (W, H), interpolation=cv2.INTER_NEAREST)
    if values is not None and not lut:
        out = values[out]
    if empty.size:
        blocks = keep() if callable(keep) else keep
        for k in empty:
            out[blocks == k] = k if values is None else values[k]
    return out


def _argmax0(maps: torch.Tensor) -> torch.Tensor:
    """``argmax(maps, 0)`` for a few maps ``[K, H, W]`` as K elementwise passes: on a CPU a reduction
    over the outer dim is far slower (it strides across the maps). No masked assignment: on a GPU that
    would wait for the device."""
    best, idx = maps[0], torch.zeros(maps.shape[1:], dtype=torch.int64, device=maps.device)
    for k in range(1, maps.shape[0]):
        better = maps[k] > best
        idx = torch.where(better, k, idx)
        best = torch.where(better, maps[k], best)
    return idx
