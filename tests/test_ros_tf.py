"""``publish_tf``: the odometry output as a TF transform (``tf2_msgs`` is absent from the PyPI ROS packages,
so the broadcast itself runs only in a ROS install; the conversion and the fallback run here)."""

from __future__ import annotations

import math

from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from rclpy.serialization import serialize_message

from dinov3_ros.ros.tf import odometry_transform, tf_message_type


def _odom() -> Odometry:
    m = Odometry()
    m.header.frame_id, m.child_frame_id = "cam_odom", "cam"
    m.header.stamp.sec, m.header.stamp.nanosec = 12, 345
    m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z = 0.1, -0.2, 0.3
    s = math.sin(0.25)
    m.pose.pose.orientation.x, m.pose.pose.orientation.w = s, math.cos(0.25)
    return m


def test_transform_carries_frames_stamp_and_pose_from_message_or_bytes():
    for odom in (_odom(), serialize_message(_odom())):
        t = odometry_transform(odom)
        assert isinstance(t, TransformStamped)
        assert (t.header.frame_id, t.child_frame_id) == ("cam_odom", "cam")
        assert (t.header.stamp.sec, t.header.stamp.nanosec) == (12, 345)
        tr, q = t.transform.translation, t.transform.rotation
        assert (tr.x, tr.y, tr.z) == (0.1, -0.2, 0.3)
        assert (q.x, q.y, q.z, q.w) == (math.sin(0.25), 0.0, 0.0, math.cos(0.25))


def test_tf2_msgs_absence_is_reported_not_raised():
    try:
        import tf2_msgs  # noqa: F401
    except ImportError:
        assert tf_message_type() is None
    else:
        assert tf_message_type().__name__ == "TFMessage"
