"""``detections``: the objects as ``vision_msgs/Detection2DArray`` (``objects/detections``).

One ``Detection2D`` per instance: ``id`` = the instance id as text (the pixel value in ``objects/mask``),
one hypothesis (``class_id`` ``"object"``, score = the cut's score), ``bbox`` = centre + size in input
pixels (pixel centres at integers). The node publishes it where the ``vision_msgs`` Python package is
installed (every ROS 2 distribution ships it); the bag tool always writes it.
"""

from __future__ import annotations

from typing import Any

from dinov3_ros.core.frames import ObjectsResult
from dinov3_ros.msgs.cdr import detection2d_array_parts
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic


def _serialize(stamp: int, frame_id: str, value: ObjectsResult, cfg: Any) -> list:
    return detection2d_array_parts(stamp, frame_id, value.ids, value.boxes, value.scores)


class Detections(Output):
    """The ``objects`` value, published as standard detections."""

    name = "detections"
    order = 62
    requires = ("objects",)
    worker = "pool"
    topics = (Topic("objects/detections", "vision_msgs/msg/Detection2DArray", _serialize),)

    def compute(self, job: FrameJob) -> ObjectsResult:
        return job.value("objects")
