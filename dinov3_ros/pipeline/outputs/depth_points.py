"""``depth_points``: the organized point cloud of the depth image (``depth/points``), the
``depth_image_proc`` convention: one point per depth pixel (``height`` x ``width`` = the depth image's),
same geometry and intrinsics as ``depth/image`` + ``depth/camera_info``, NaN where the depth is invalid,
so consumers can index it by pixel. ``points_color: rgb`` adds the input's colour (``rgb`` field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dinov3_ros.core.frames import DepthImage
from dinov3_ros.msgs.cdr import point_cloud_parts
from dinov3_ros.msgs.layouts import XYZ_FIELDS, XYZRGB_FIELDS, rgb_bits, structured_dtype
from dinov3_ros.pipeline.grid import canvas_rgb
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic


@dataclass
class OrganizedCloud:
    """``rows [H, W, 3|4]`` float32 (x y z [rgb bits]) metres in the optical frame, NaN = invalid."""

    rows: np.ndarray
    dense: bool

    @property
    def xyz(self) -> np.ndarray:
        return self.rows[..., :3]


def _serialize(stamp: int, frame_id: str, value: OrganizedCloud, cfg: Any) -> list:
    h, w, c = value.rows.shape
    fields = XYZ_FIELDS if c == 3 else XYZRGB_FIELDS
    arr = np.ascontiguousarray(value.rows).view(structured_dtype(fields, 4 * c)).reshape(h * w)
    return point_cloud_parts(stamp, frame_id, fields, arr, value.dense, height=h)


def organized_cloud(depth: DepthImage, rgb: np.ndarray | None = None) -> OrganizedCloud:
    """Back-project every pixel of ``depth`` with its intrinsics (pixel centres at integers).

    Each field is computed as a plane and interleaved by one ``cv2.merge``; the colour is the bytes
    ``rgb_bits`` of each pixel (``0x00RRGGBB``)."""
    d = np.asarray(depth.image, np.float32)
    h, w = d.shape
    K = depth.info.K
    ok = (d > 0) & (d < np.inf)  # finite and positive (NaN compares false)
    dense = bool(ok.all())
    z = d if dense else np.where(ok, d, np.float32(np.nan))
    u = (np.arange(w, dtype=np.float32) - np.float32(K[0, 2])) / np.float32(K[0, 0])
    v = (np.arange(h, dtype=np.float32) - np.float32(K[1, 2])) / np.float32(K[1, 1])
    planes = [u[None, :] * z, v[:, None] * z, z]
    if rgb is not None:
        planes.append(rgb_bits(np.asarray(rgb).reshape(h, w, 3)))
    return OrganizedCloud(cv2.merge(planes), dense)


class DepthPoints(Output):
    """:class:`OrganizedCloud` of the ``depth`` output's image."""

    name = "depth_points"
    order = 35
    requires = ("depth",)
    needs_intrinsics = True
    worker = "pool"
    topics = (Topic("depth/points", "sensor_msgs/msg/PointCloud2", _serialize),)

    def compute(self, job: FrameJob) -> OrganizedCloud:
        depth: DepthImage = job.value("depth")
        rgb = None
        if job.cfg.points_color == "rgb":
            h, w = depth.image.shape
            img = job.frame.image
            if (h, w) != img.shape[:2]:  # depth on the network canvas
                img = canvas_rgb(img, job.geom)
                if (h, w) != img.shape[:2]:
                    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            rgb = img
        return organized_cloud(depth, rgb)
