"""The odometry output as a TF transform (``/tf``, ``tf2_msgs/TFMessage``), for ``publish_tf``.

``tf2_msgs`` ships with every ROS 2 distribution but not with the PyPI ROS packages; where it is absent
the node says so once and ``~/odometry`` carries the same pose.
"""

from __future__ import annotations

from typing import Any

from rclpy.serialization import deserialize_message


def tf_message_type() -> Any | None:
    """``tf2_msgs.msg.TFMessage``, or None where tf2_msgs is not installed."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return None
    return TFMessage


def odometry_transform(odom: Any) -> Any:
    """A ``geometry_msgs/TransformStamped`` of an ``nav_msgs/Odometry`` (message or serialized bytes):
    parent = ``header.frame_id`` (the odometry frame), child = ``child_frame_id``, same stamp and pose."""
    from geometry_msgs.msg import TransformStamped
    from nav_msgs.msg import Odometry

    if isinstance(odom, (bytes, bytearray, memoryview)):
        odom = deserialize_message(bytes(odom), Odometry)
    t = TransformStamped()
    t.header = odom.header
    t.child_frame_id = odom.child_frame_id
    p, q = odom.pose.pose.position, odom.pose.pose.orientation
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = p.x, p.y, p.z
    t.transform.rotation = q
    return t
