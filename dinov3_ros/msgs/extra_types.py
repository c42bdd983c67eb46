"""Definitions of the standard messages our outputs use that a rosbags typestore may lack.

``vision_msgs`` (4.x, the layout of ROS 2 Humble and later) is not part of rosbags' stores; the bag
tool registers these definitions so ``objects/detections`` can be written with its message definition
and type hash. The node publishes that topic only where the ``vision_msgs`` Python package is installed.
"""

from __future__ import annotations

from typing import Any

VISION_MSGS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"
    ),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox2D bbox\nstring id\n"
    ),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}


def register_extra_types(typestore: Any) -> Any:
    """Add the definitions above that ``typestore`` (rosbags) lacks; returns it."""
    from rosbags.typesys import get_types_from_msg

    types: dict[str, Any] = {}
    for name, text in VISION_MSGS.items():
        if name not in typestore.types:
            types.update(get_types_from_msg(text, name))
    if types:
        typestore.register(types)
    return typestore
