"""Point clouds from metric depth: back-projection with pinhole intrinsics and open3d clean-up.

Optical frame convention (REP 103 ``*_optical_frame``): z forward, x right, y down. Pixel ``(u, v)``
is the centre of column ``u``, row ``v`` (OpenCV convention), so
``X = (u − cx) Z / fx``, ``Y = (v − cy) Z / fy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._common import ArrayLike, as_numpy, float_tensor, like_input

__all__ = ["Cloud", "backproject", "clean_cloud", "scale_intrinsics", "to_open3d"]


def _check_intrinsics(K: ArrayLike) -> np.ndarray:
    """``K`` as a host float64 3x3 array (validated)."""
    k = np.asarray(as_numpy(K), dtype=np.float64)
    if k.shape != (3, 3):
        raise ValueError(f"K: expected a 3x3 intrinsics matrix, got shape {tuple(k.shape)}")
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise ValueError(f"K: focal lengths must be > 0, got fx={float(k[0, 0])}, fy={float(k[1, 1])}")
    return k


def backproject(
    depth: ArrayLike,
    K: ArrayLike,
    rgb: ArrayLike | None = None,
    *,
    stride: int = 1,
    min_depth: float = 0.0,
    max_depth: float = float("inf"),
    origin: tuple[int, int] = (0, 0),
):
    """Metric depth ``[H, W]`` (or ``[1, H, W]``/``[1, 1, H, W]``) -> points ``[N, 3]`` in the optical frame.

    Invalid depths (``<= min_depth`` (0 by default), NaN, inf, ``> max_depth``) are dropped. With
    ``rgb [H, W, 3]`` returns ``(points, colors [N, 3])`` (colours keep the rgb dtype). Output type
    follows ``depth`` (numpy or torch on the same device); points are float32 (float64 if depth is).
    ``origin=(x0, y0)``: the pixel of ``K``'s image that ``depth[0, 0]`` is (a crop of that image).
    """
    d = float_tensor(depth, name="depth")
    while d.ndim > 2 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ValueError(
            f"depth: expected [H, W], got shape {tuple(float_tensor(depth, name='depth').shape)}"
        )
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    k = _check_intrinsics(K)  # host float64; the device computes in the depth's dtype (float32)
    fx, fy, cx, cy = (float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    H, W = d.shape
    z = d[::stride, ::stride]
    valid = _valid_depth(z, min_depth, max_depth)
    if bool(valid.all()):  # every sample (one host sync on a GPU): the grid as it is, no gathers
        pts, rows, cols = _grid_points(z, stride, origin, (fx, fy, cx, cy)), None, None
    else:
        rows, cols = torch.nonzero(valid).unbind(1)  # one compaction (one host sync on a GPU)
        z = z[rows, cols]
        if stride > 1:
            rows, cols = rows * stride, cols * stride
        u, v = (cols + origin[0]).to(d.dtype), (rows + origin[1]).to(d.dtype)  # exact integers
        x = (u - cx) * (z / fx)
        y = (v - cy) * (z / fy)
        pts = torch.stack([x, y, z], 1)
    pts_out = like_input(pts, depth)
    if rgb is None:
        return pts_out
    c = rgb if isinstance(rgb, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rgb))
    if tuple(c.shape[:2]) != (H, W) or c.ndim != 3:
        raise ValueError(f"rgb: expected [{H}, {W}, 3] to match depth, got {tuple(c.shape)}")
    c = c.to(d.device)
    colours = c[::stride, ::stride].reshape(-1, c.shape[2]) if rows is None else c[rows, cols]
    return pts_out, like_input(colours, depth)


def _valid_depth(z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``isfinite(z) & (z > lo) & (z <= hi)``; on the CPU in numpy (faster there), the bounds cast to
    ``z``'s dtype as torch compares them."""
    if z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64):
        return torch.isfinite(z) & (z > lo) & (z <= hi)
    zn = z.detach().numpy()
    lo_, hi_ = np.asarray(lo, zn.dtype), np.asarray(hi, zn.dtype)
    return torch.from_numpy(np.isfinite(zn) & (zn > lo_) & (zn <= hi_))


def _grid_points(
    z: torch.Tensor, stride: int, origin: tuple[int, int], fc: tuple[float, float, float, float]
) -> torch.Tensor:
    """``[h*w, 3]`` points of a depth grid whose every sample is valid, row by row: the same float
    arithmetic per point as the compacted path (the pixel's ``u - cx`` times ``z / fx``), broadcast."""
    fx, fy, cx, cy = fc
    h, w = z.shape
    u = (torch.arange(w, device=z.device) * stride + origin[0]).to(z.dtype)
    v = (torch.arange(h, device=z.device) * stride + origin[1]).to(z.dtype)
    x = (u - cx)[None, :] * (z / fx)
    y = (v - cy)[:, None] * (z / fy)
    return torch.stack([x, y, z], 2).reshape(-1, 3)


def scale_intrinsics(
    K: ArrayLike, sx: float, sy: float | None = None, crop: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Intrinsics after cropping at ``crop=(x0, y0)`` and then resizing by ``(sx, sy)``.

    Pixel-centre exact: ``u' + 0.5 = (u + 0.5 − x0) · sx``, so ``fx' = fx·sx`` and
    ``cx' = (cx + 0.5 − x0)·sx − 0.5`` (same for y).
    """
    k = np.asarray(as_numpy(K), dtype=np.float64).copy()
    if k.shape != (3, 3):
        raise ValueError(f"K: expected 3x3, got {k.shape}")
    sy = sx if sy is None else sy
    x0, y0 = crop
    out = k.copy()
    out[0, 0], out[0, 1] = k[0, 0] * sx, k[0, 1] * sx
    out[1, 1] = k[1, 1] * sy
    out[0, 2] = (k[0, 2] + 0.5 - x0) * sx - 0.5
    out[1, 2] = (k[1, 2] + 0.5 - y0) * sy - 0.5
    return out


@dataclass
class Cloud:
    """A cleaned point cloud (numpy)."""

    points: np.ndarray  #: [N, 3] float64
    colors: np.ndarray | None = None  #: [N, 3] float64 in [0, 1]
    normals: np.ndarray | None = None  #: [N, 3] float64 unit normals, oriented towards the camera


def to_open3d(points: ArrayLike, colors: ArrayLike | None = None):
    """``open3d.geometry.PointCloud`` from ``[N, 3]`` points (and uint8 or [0, 1] float colours)."""
    import open3d as o3d

    p = np.asarray(as_numpy(points), dtype=np.float64).reshape(-1, 3)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    if colors is not None:
        c = np.asarray(as_numpy(colors))
        c = c.astype(np.float64) / 255.0 if c.dtype == np.uint8 else c.astype(np.float64)
        if c.shape != p.shape:
            raise ValueError(f"colors: expected {p.shape}, got {c.shape}")
        pc.colors = o3d.utility.Vector3dVector(c)
    return pc


def clean_cloud(
    points: ArrayLike,
    colors: ArrayLike | None = None,
    *,
    voxel_size: float | None = None,
    outlier_neighbors: int | None = 20,
    outlier_std: float = 2.0,
    normals: bool = False,
    normal_radius: float | None = None,
    normal_max_nn: int = 30,
) -> Cloud:
    """open3d clean-up: voxel downsampling, statistical outlier removal, optional normals.

    ``voxel_size=None`` skips downsampling; ``outlier_neighbors=None`` skips outlier removal. Normals
    use a hybrid KD-tree search (radius defaults to ``3 × voxel_size`` or 0.05 m) and are oriented
    towards the camera origin.
    """
    import open3d as o3d

    pc = to_open3d(points, colors)
    if voxel_size is not None:
        if voxel_size <= 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        pc = pc.voxel_down_sample(voxel_size)
    if outlier_neighbors is not None and len(pc.points) > outlier_neighbors:
        pc, _ = pc.remove_statistical_outlier(nb_neighbors=outlier_neighbors, std_ratio=outlier_std)
    nrm = None
    if normals and len(pc.points) >= 3:
        radius = normal_radius or (3.0 * voxel_size if voxel_size else 0.05)
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=normal_max_nn))
        pc.orient_normals_towards_camera_location(np.zeros(3))
        nrm = np.asarray(pc.normals).copy()
    return Cloud(
        points=np.asarray(pc.points).copy(),
        colors=np.asarray(pc.colors).copy() if pc.has_colors() else None,
        normals=nrm,
    )
