"""Maps between the patch grid, the network canvas and the input image (pixel-centre convention).

Letterboxing (``runtime.preprocess.Geometry``) places the resized image at an offset in the canvas;
these helpers take grid or canvas maps back to input pixels. The maps are cached per geometry and
shared read-only by every frame of that geometry.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from dinov3_ros.runtime.preprocess import Geometry

_REMAP_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def _input_in_patches(geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Each input column's and row's pixel centre in patch units from the canvas's top-left edge."""
    H, W = geom.input_size
    un, _ = geom.input_to_network(np.arange(W, dtype=np.float64), np.zeros(W))
    _, vn = geom.input_to_network(np.zeros(H), np.arange(H, dtype=np.float64))
    p = geom.patch_size
    return (un + 0.5) / p, (vn + 0.5) / p


def _read_only_maps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps ``[H, W]`` from a source column per input column and a row per input row."""
    mx = np.ascontiguousarray(np.broadcast_to(x.astype(np.float32)[None, :], (y.size, x.size)))
    my = np.ascontiguousarray(np.broadcast_to(y.astype(np.float32)[:, None], (y.size, x.size)))
    mx.flags.writeable = my.flags.writeable = False
    return mx, my


@functools.lru_cache(maxsize=16)
def grid_maps(geom: Geometry, gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
    """Input row -> patch row and input column -> patch column (nearest)."""
    xs, ys = _input_in_patches(geom)
    ci = np.clip(np.floor(xs).astype(np.int64), 0, gw - 1)
    ri = np.clip(np.floor(ys).astype(np.int64), 0, gh - 1)
    ri.flags.writeable = ci.flags.writeable = False
    return ri, ci


@functools.lru_cache(maxsize=16)
def _remap_maps(geom: Geometry, gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (x, y) of :func:`grid_maps`: exact integer source coordinates."""
    ri, ci = grid_maps(geom, gh, gw)
    return _read_only_maps(ci, ri)


def grid_to_input(grid: np.ndarray, geom: Geometry) -> np.ndarray:
    """Nearest-neighbour map of a patch-grid array ``[h, w(, c)]`` to input pixels ``[H, W(, c)]``.

    8/16-bit and float32 grids of up to 4 channels go through one ``cv2.remap`` with the cached integer
    maps (the same picks as indexing, without holding the GIL); others use ``np.take``.
    """
    gh, gw = grid.shape[:2]
    c = grid.shape[2] if grid.ndim == 3 else 0
    if grid.dtype in _REMAP_DTYPES and c in (0, 3, 4) and grid.flags.c_contiguous:
        mx, my = _remap_maps(geom, gh, gw)
        return cv2.remap(grid, mx, my, cv2.INTER_NEAREST)
    ri, ci = grid_maps(geom, gh, gw)
    return np.take(np.take(grid, ri, axis=0), ci, axis=1)


@functools.lru_cache(maxsize=16)
def _linear_maps(geom: Geometry, gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (x, y) of each input pixel in patch-grid coordinates (patch centres at
    integers), clipped to the grid."""
    xs, ys = _input_in_patches(geom)
    return _read_only_maps(np.clip(xs - 0.5, 0, gw - 1), np.clip(ys - 0.5, 0, gh - 1))


def grid_to_input_linear(grid: np.ndarray, geom: Geometry) -> np.ndarray:
    """Bilinear map of a float32 patch-grid array ``[h, w, c]`` to input pixels ``[H, W, c]``."""
    gh, gw, c = grid.shape
    mx, my = _linear_maps(geom, gh, gw)
    parts = [
        cv2.remap(np.ascontiguousarray(grid[..., k : k + 4], np.float32), mx, my, cv2.INTER_LINEAR)
        for k in range(0, c, 4)
    ]
    if len(parts) == 1:  # up to 4 channels: the remap's own array
        return parts[0].reshape(*parts[0].shape[:2], -1)
    return np.concatenate([q.reshape(*q.shape[:2], -1) for q in parts], -1)


def valid_patches(geom: Geometry, h: int, w: int) -> np.ndarray:
    """``[h, w]`` bool: patches whose centre lies on image content (not letterbox padding)."""
    x0, y0, x1, y1 = geom.valid_box
    p = geom.patch_size
    cy = (np.arange(h) + 0.5) * p
    cx = (np.arange(w) + 0.5) * p
    return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]


def canvas_to_input(d: np.ndarray, geom: Geometry) -> np.ndarray:
    """Bilinear map of a network-canvas map ``[H, W]`` to input pixels.

    Letterbox case: crop the content and resize (edges replicate content, no padding bleeds in);
    otherwise ``Geometry.to_input``.
    """
    if geom.offset_x >= 0 and geom.offset_y >= 0:
        ox, oy = int(geom.offset_x), int(geom.offset_y)
        rh, rw = geom.resized_size
        H, W = geom.input_size
        return cv2.resize(d[oy : oy + rh, ox : ox + rw], (W, H), interpolation=cv2.INTER_LINEAR)
    return geom.to_input(torch.from_numpy(d)[None])[0].numpy()


def canvas_rgb(image: np.ndarray, geom: Geometry) -> np.ndarray:
    """The input image placed on the network canvas as the network saw it (RGB uint8, zero padding)."""
    H, W = geom.network_size
    rh, rw = geom.resized_size
    interp = cv2.INTER_AREA if rh < image.shape[0] else cv2.INTER_LINEAR
    r = cv2.resize(image, (rw, rh), interpolation=interp) if (rh, rw) != image.shape[:2] else image
    canvas = np.zeros((H, W, 3), np.uint8)
    ox, oy = int(geom.offset_x), int(geom.offset_y)
    sx0, sy0, dx0, dy0 = max(0, -ox), max(0, -oy), max(0, ox), max(0, oy)
    cw, ch = min(rw - sx0, W - dx0), min(rh - sy0, H - dy0)
    canvas[dy0 : dy0 + ch, dx0 : dx0 + cw] = r[sy0 : sy0 + ch, sx0 : sx0 + cw]
    return canvas
