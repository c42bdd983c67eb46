"""``matches_markers``: the correspondences as one ``visualization_msgs/ImageMarker`` (``matches/markers``).

A ``LINE_LIST`` in the current frame's input pixels from each match's keyframe position to its current
position (inliers green, outliers red): RViz and Foxglove draw it over the input image like flow
vectors. The compact layout with scores and the keyframe stamp stays on ``matches``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinov3_ros.core.frames import MatchResult
from dinov3_ros.msgs.cdr import MARKER_LINE_LIST, image_marker_parts
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic

NS = "dinov3/matches"
INLIER, OUTLIER = (0.0, 1.0, 0.0, 1.0), (1.0, 0.0, 0.0, 1.0)


def _serialize(stamp: int, frame_id: str, value: MatchResult, cfg: Any) -> list:
    n = len(value) if value.ref_stamp_ns is not None else 0
    pts = np.stack([value.uv0[:n], value.uv1[:n]], 1).reshape(-1, 2)
    cols = np.where(np.repeat(value.inlier[:n], 2)[:, None], INLIER, OUTLIER).reshape(-1, 4)
    return image_marker_parts(stamp, frame_id, NS, 0, MARKER_LINE_LIST, pts, cols, scale=1.0)


class MatchesMarkers(Output):
    """The ``matches`` value, published as an image marker."""

    name = "matches_markers"
    order = 55
    requires = ("matches",)
    worker = "pool"
    topics = (Topic("matches/markers", "visualization_msgs/msg/ImageMarker", _serialize),)

    def compute(self, job: FrameJob) -> MatchResult:
        return job.value("matches")
