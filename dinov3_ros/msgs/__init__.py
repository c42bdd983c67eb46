"""numpy <-> ROS message layouts, written against a type provider (rclpy classes or rosbags dataclasses).

- ``provider.rosbags_types(typestore)``; ``dinov3_ros.ros.types.ros_types()`` for rclpy.
- ``builders``: ``header``, ``image`` (rgb8, mono8/16, 32FC<C>), ``compressed_image``, ``camera_info``,
  ``points`` (xyz / xyzrgb), ``matches``, ``boxes``, ``mask``, ``diagnostics`` and
  ``frame_messages(tp, FrameOutputs)`` -> ``{topic suffix: msg}``.
- ``decode``: ``image_to_rgb``, ``compressed_to_rgb``, ``image_to_array``, ``camera_info_to_intrinsics``,
  ``decode_points``, ``decode_matches``, ``decode_boxes``.
- ``image_codec``: raw/compressed decoding with clear ``ImageDecodeError`` messages.
Layouts: docs/MESSAGES.md.
"""

from __future__ import annotations

from dinov3_ros.msgs import builders, decode
from dinov3_ros.msgs.builders import TOPIC_TYPES, TOPICS, frame_messages
from dinov3_ros.msgs.decode import Boxes, decode_boxes, decode_matches
from dinov3_ros.msgs.image_codec import ImageDecodeError
from dinov3_ros.msgs.provider import TypeProvider, rosbags_types

__all__ = [
    "TOPICS",
    "TOPIC_TYPES",
    "Boxes",
    "ImageDecodeError",
    "TypeProvider",
    "builders",
    "decode",
    "decode_boxes",
    "decode_matches",
    "frame_messages",
    "rosbags_types",
]
