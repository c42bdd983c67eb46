"""``points``: the depth back-projected into a compact (unorganized) point cloud in the camera's optical
frame. ``depth/points`` (``depth_points``) is the organized cloud of the depth image.

Computed from the network-canvas depth with the canvas intrinsics (letterbox padding excluded),
every ``points_stride``-th pixel, optionally voxel-averaged; with ``points_color: rgb`` each point
carries the input's colour. The rows are packed on the engine's device as ``~/points`` lays them out,
so the host only copies them; on a CPU engine numpy computes and packs them in one pass (same bytes).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from dinov3_ros.core.frames import PointCloud
from dinov3_ros.heads._common import to_host
from dinov3_ros.heads.pointcloud import backproject
from dinov3_ros.msgs.cdr import point_cloud_parts
from dinov3_ros.msgs.layouts import points_array, rgb_bits
from dinov3_ros.pipeline.grid import canvas_rgb
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic
from dinov3_ros.pipeline.voxel import voxel_downsample


def _serialize(stamp: int, frame_id: str, value: PointCloud, cfg: Any) -> list:
    fields, arr, dense = points_array(value.xyz, value.rgb, value.packed, value.dense)
    return point_cloud_parts(stamp, frame_id, fields, arr, dense)


class Points(Output):
    """:class:`~dinov3_ros.core.frames.PointCloud` (metres, optical frame)."""

    name = "points"
    order = 40
    needs_depth = True
    needs_intrinsics = True
    worker = "pool"
    topics = (Topic("points", "sensor_msgs/msg/PointCloud2", _serialize),)

    def compute(self, job: FrameJob) -> PointCloud:
        cfg, geom = job.cfg, job.geom
        Kn, _ = geom.scale_intrinsics(job.intrinsics().K, geom.network_size)
        d_dev = job.batch.depth_net[job.i]
        # the valid box from its first sampled pixel (a multiple of the stride): the canvas samples a
        # NaN-padded canvas would give, with the canvas's pixel coordinates (``origin``)
        s = cfg.points_stride
        x0, y0, x1, y1 = geom.valid_box
        x0, y0 = -(-x0 // s) * s, -(-y0 // s) * s
        dc = d_dev[y0:y1, x0:x1]
        rgb_np = canvas_rgb(job.frame.image, geom)[y0:y1, x0:x1] if cfg.points_color == "rgb" else None
        if dc.device.type == "cpu" and dc.dtype == torch.float32 and cfg.points_voxel <= 0:
            cloud = _grid_cloud(dc.numpy(), Kn, rgb_np, s, (x0, y0))
            if cloud is not None:
                return cloud
        cols = cols_t = None
        if rgb_np is not None:
            rgb_c = torch.from_numpy(rgb_np).to(dc.device)
            pts_t, cols_t = backproject(dc, Kn, rgb_c, stride=s, origin=(x0, y0))
            cols = to_host(cols_t, sync=False)
        else:
            pts_t = backproject(dc, Kn, stride=s, origin=(x0, y0))
        pts_t = pts_t.to(torch.float32)
        if cfg.points_voxel > 0:
            xyz, rgb = voxel_downsample(to_host(pts_t), cols, cfg.points_voxel)
            return PointCloud(xyz, rgb)
        if pts_t.device.type == "cpu":
            return _host_cloud(pts_t.numpy(), cols)
        packed_t = pts_t
        if cols_t is not None:  # rgb as 0x00RRGGBB bits in a float32 column
            c = cols_t.to(torch.int32)
            rgbf = ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(torch.float32)
            packed_t = torch.cat([pts_t, rgbf[:, None]], 1)
        flag = to_host(torch.isfinite(pts_t).all().reshape(1), sync=False)
        packed = to_host(packed_t.contiguous())
        return PointCloud(packed[:, :3], cols, packed, bool(flag[0]))


def _grid_cloud(
    d: np.ndarray, K: np.ndarray, rgb: np.ndarray | None, stride: int, origin: tuple[int, int]
) -> PointCloud | None:
    """CPU engine, every sample valid (finite, > 0): :func:`backproject` and the packing in one go, the
    same float32 operations per point (``(u - cx) * (z / fx)``, the scalars as float32, as torch casts
    them), x, y, z and the colour bits merged into the rows at once. None if a sample is invalid."""
    z = np.ascontiguousarray(d[::stride, ::stride])
    if not (np.isfinite(z) & (z > 0)).all():
        return None
    h, w = z.shape
    fx, fy, cx, cy = (np.float32(K[0, 0]), np.float32(K[1, 1]), np.float32(K[0, 2]), np.float32(K[1, 2]))
    u = (np.arange(w) * stride + origin[0]).astype(np.float32)
    v = (np.arange(h) * stride + origin[1]).astype(np.float32)
    planes = [(u - cx)[None, :] * (z / fx), (v - cy)[:, None] * (z / fy), z]
    dense = bool(np.isfinite(planes[0]).all() and np.isfinite(planes[1]).all())
    cols = None
    if rgb is not None:
        c = np.ascontiguousarray(rgb[::stride, ::stride], dtype=np.uint8)
        cols = c.reshape(-1, 3)
        planes.append(rgb_bits(c))
    packed = (cv2.merge(planes) if z.size else np.empty((h, w, len(planes)), np.float32)).reshape(
        -1, len(planes)
    )
    return PointCloud(packed[:, :3], cols, packed, dense)


def _host_cloud(pts: np.ndarray, cols: np.ndarray | None) -> PointCloud:
    """The device path's packing done in numpy (CPU engine): the same rows, bit for bit."""
    if cols is None:
        packed = np.ascontiguousarray(pts)
    else:
        packed = np.empty((pts.shape[0], 4), np.float32)
        packed[:, :3] = pts
        packed[:, 3] = rgb_bits(cols)
    return PointCloud(packed[:, :3], cols, packed, bool(np.isfinite(pts).all()))
