"""``debug``: the input blended with the PCA view, with object boxes and match lines drawn on it."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from dinov3_ros.msgs.cdr import image_parts
from dinov3_ros.pipeline.grid import grid_to_input
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic
from dinov3_ros.pipeline.outputs.objects_markers import id_colour


def _serialize(stamp: int, frame_id: str, value: np.ndarray, cfg: Any) -> list:
    return image_parts(stamp, frame_id, value, "rgb8")


def draw(dbg: np.ndarray, objects: Any, matches: Any) -> np.ndarray:
    """Object boxes (one colour per id) and match lines (outliers red, inliers green on top)."""
    if objects is not None:
        for (x0, y0, x1, y1), oid in zip(objects.boxes, objects.ids):
            col = tuple(int(c) for c in id_colour(oid))
            cv2.rectangle(dbg, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), col, 2)
    if matches is not None and len(matches):
        seg = np.stack([matches.uv0, matches.uv1], 1).astype(np.int32)  # [N, 2 points, (u, v)]
        for sel, col in ((~matches.inlier, (255, 0, 0)), (matches.inlier, (0, 255, 0))):
            if sel.any():
                cv2.polylines(dbg, list(seg[sel]), False, col, 1)  # one call for all segments
    return dbg


class Debug(Output):
    """``[H, W, 3]`` uint8 at input resolution. The blend is made as soon as the PCA view is final;
    boxes and lines once objects and matches (when requested) are."""

    name = "debug"
    order = 90
    requires = ("features_pca",)
    uses = ("objects", "matches")
    worker = "own"
    topics = (Topic("debug", "sensor_msgs/msg/Image", _serialize),)

    def compute(self, job: FrameJob) -> np.ndarray:
        pca_in = np.ascontiguousarray(grid_to_input(job.value("features_pca"), job.geom))
        a = job.cfg.debug_alpha
        base = cv2.addWeighted(job.frame.image, 1.0 - a, pca_in, a, 0.0)
        return draw(base, job.value("objects"), job.value("matches"))
