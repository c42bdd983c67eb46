"""``features_info``: a camera_info describing the feature grid (``features/camera_info``).

``width`` x ``height`` = the patch grid of ``features`` / ``features/pca``; ``K`` and ``P`` = the input
intrinsics carried through the letterbox onto the grid (a grid cell is one pixel, its centre at integer
coordinates), all zero without a usable camera_info (ROS: uncalibrated); ``roi`` = the cells on image
content (letterbox padding excluded: ``x_offset``, ``y_offset``, ``width``, ``height``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics
from dinov3_ros.msgs.cdr import camera_info_parts
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic
from dinov3_ros.pipeline.outputs.depth import network_intrinsics


@dataclass
class GridInfo:
    """The feature grid's size, intrinsics (None: uncalibrated) and valid region (x, y, width, height)."""

    width: int
    height: int
    intrinsics: CameraIntrinsics | None
    roi: tuple[int, int, int, int]


def _serialize(stamp: int, frame_id: str, value: GridInfo, cfg: Any) -> list:
    x, y, w, h = value.roi
    return camera_info_parts(
        stamp, frame_id, value.intrinsics, roi=(x, y, h, w, False), size=(value.width, value.height)
    )


class FeaturesInfo(Output):
    """:class:`GridInfo` of the frame (cheap: geometry only)."""

    name = "features_info"
    order = 15
    worker = "pool"
    topics = (Topic("features/camera_info", "sensor_msgs/msg/CameraInfo", _serialize),)

    def compute(self, job: FrameJob) -> GridInfo:
        h, w = (int(n) for n in job.batch.tokens.shape[1:3])
        rows, cols = np.nonzero(job.valid())
        roi = (
            int(cols.min()),
            int(rows.min()),
            int(cols.max() - cols.min() + 1),
            int(rows.max() - rows.min() + 1),
        )
        intr = None
        if job.calibrated():
            p = float(job.geom.patch_size)
            intr = network_intrinsics(job.frame.camera_info, job.geom).transformed(
                1 / p, 1 / p, 0.0, 0.0, w, h
            )
        return GridInfo(w, h, intr, roi)
