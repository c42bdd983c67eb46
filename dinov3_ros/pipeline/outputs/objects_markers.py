"""``objects_markers``: the object boxes as one ``visualization_msgs/ImageMarker`` (``objects/markers``).

A ``LINE_LIST`` in input pixels (4 segments per box, one colour per instance id as in ``debug``) that
RViz's image display and Foxglove's image panel draw over the input image. Each message replaces the
previous one (same ``ns`` and ``id``); a frame without objects sends an empty list.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from dinov3_ros.core.frames import ObjectsResult
from dinov3_ros.msgs.cdr import MARKER_LINE_LIST, image_marker_parts
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic

NS = "dinov3/objects"


@functools.lru_cache(maxsize=1024)
def _colour(oid: int) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in np.random.default_rng(oid).integers(64, 256, 3))
    return r, g, b


def id_colour(oid: int) -> np.ndarray:
    """RGB uint8 colour of an instance id (the one ``debug`` and previews use; drawn once per id)."""
    return np.array(_colour(int(oid)), np.uint8)


def box_segments(boxes: np.ndarray) -> np.ndarray:
    """``[K, 4]`` boxes (x_min, y_min, x_max, y_max; max exclusive) -> ``[8K, 2]`` LINE_LIST points
    through the boxes' outer pixel centres."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2] - 1, b[:, 3] - 1
    corners = [(x0, y0), (x1, y0), (x1, y0), (x1, y1), (x1, y1), (x0, y1), (x0, y1), (x0, y0)]
    return np.stack([np.stack(c, 1) for c in corners], 1).reshape(-1, 2)


def _serialize(stamp: int, frame_id: str, value: ObjectsResult, cfg: Any) -> list:
    pts = box_segments(value.boxes)
    cols = np.repeat([np.append(id_colour(i) / 255.0, 1.0) for i in value.ids], 8, axis=0).reshape(-1, 4)
    return image_marker_parts(stamp, frame_id, NS, 0, MARKER_LINE_LIST, pts, cols, scale=2.0)


class ObjectsMarkers(Output):
    """The ``objects`` value, published as an image marker."""

    name = "objects_markers"
    order = 65
    requires = ("objects",)
    worker = "pool"
    topics = (Topic("objects/markers", "visualization_msgs/msg/ImageMarker", _serialize),)

    def compute(self, job: FrameJob) -> ObjectsResult:
        return job.value("objects")
