"""Ground-truth pixel correspondences between two rendered frames, from depth + poses.

A pixel ``p`` of frame A is back-projected with A's depth, moved to B's camera with
``T_cam_b_world @ T_world_cam_a``, and projected with B's K. It is *valid* when its depth in A is
positive, it lies in front of B's camera, inside B's image, and it is visible in B: B's depth at the
nearest pixel agrees with the reprojected z within ``abs_tol + rel_tol * z`` (occlusion check) and,
when ``check_instance`` is set, B's instance id there equals A's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinov3_ros.synthetic.camera import backproject
from dinov3_ros.synthetic.frame import SynthFrame


@dataclass
class Correspondences:
    """``pixels_a [N,2]`` (as given), ``pixels_b [N,2]`` (sub-pixel, exact), ``valid [N] bool``,
    ``depth_a [N]`` (z in A) and ``z_b [N]`` (z of the point in B's camera)."""

    pixels_a: np.ndarray
    pixels_b: np.ndarray
    valid: np.ndarray
    depth_a: np.ndarray
    z_b: np.ndarray

    def __len__(self) -> int:
        return int(self.pixels_a.shape[0])


def relative_pose(frame_a: SynthFrame, frame_b: SynthFrame) -> np.ndarray:
    """``T_cam_b_cam_a`` (4x4): maps points in A's optical frame to B's optical frame."""
    return np.linalg.inv(frame_b.T_world_cam) @ frame_a.T_world_cam


def all_pixels(frame: SynthFrame, stride: int = 1) -> np.ndarray:
    """Integer pixel grid ``[N,2]`` (u, v) of a frame, every ``stride`` pixels."""
    u, v = np.meshgrid(np.arange(0, frame.width, stride), np.arange(0, frame.height, stride))
    return np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)


def gt_correspondences(
    frame_a: SynthFrame,
    frame_b: SynthFrame,
    pixels: np.ndarray | None = None,
    *,
    abs_tol: float = 0.01,
    rel_tol: float = 0.01,
    check_instance: bool = True,
    subpixel: bool = False,
) -> Correspondences:
    """Map ``pixels`` (``[N,2]`` u, v; default: every pixel) of ``frame_a`` into ``frame_b``.

    A's depth is read at the nearest pixel centre (GT depth is per pixel centre). By default the point
    is that pixel centre's surface point, so ``pixels_b`` is exact; with ``subpixel=True`` the ray
    through the given (fractional) coordinates is used with that depth (exact on fronto-parallel
    surfaces, a sub-pixel approximation elsewhere).
    """
    if pixels is None:
        pixels = all_pixels(frame_a)
    px = np.asarray(pixels, np.float64).reshape(-1, 2)
    H, W = frame_a.depth.shape
    ui = np.rint(px[:, 0]).astype(np.int64)
    vi = np.rint(px[:, 1]).astype(np.int64)
    inside_a = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
    uc, vc = np.clip(ui, 0, W - 1), np.clip(vi, 0, H - 1)
    za = np.where(inside_a, frame_a.depth[vc, uc].astype(np.float64), 0.0)
    centres = px if subpixel else np.stack([uc, vc], 1).astype(np.float64)
    pa = backproject(centres, za, frame_a.K)
    T = relative_pose(frame_a, frame_b)
    pb = np.einsum("ij,nj->ni", T[:3, :3], pa) + T[:3, 3]
    zb = pb[:, 2]
    front = zb > 1e-6
    Kb = frame_b.K
    zs = np.where(front, zb, 1.0)
    ub = Kb[0, 0] * pb[:, 0] / zs + Kb[0, 2]
    vb = Kb[1, 1] * pb[:, 1] / zs + Kb[1, 2]
    Hb, Wb = frame_b.depth.shape
    ubi, vbi = np.rint(ub).astype(np.int64), np.rint(vb).astype(np.int64)
    inside_b = front & (ubi >= 0) & (ubi < Wb) & (vbi >= 0) & (vbi < Hb)
    ubc, vbc = np.clip(ubi, 0, Wb - 1), np.clip(vbi, 0, Hb - 1)
    db = frame_b.depth[vbc, ubc].astype(np.float64)
    visible = (db > 0) & (np.abs(db - zb) <= abs_tol + rel_tol * np.abs(zb))
    valid = inside_a & (za > 0) & inside_b & visible
    if check_instance:
        valid &= frame_a.instances[vc, uc] == frame_b.instances[vbc, ubc]
    return Correspondences(
        pixels_a=px, pixels_b=np.stack([ub, vb], 1), valid=valid, depth_a=za, z_b=np.where(front, zb, 0.0)
    )
