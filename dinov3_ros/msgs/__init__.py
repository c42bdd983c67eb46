"""ROS message layouts: one serialiser and one decoder for the node and the bag tool.

- ``cdr``: the dense messages (``Image``, ``CameraInfo``, ``PointCloud2``) serialized to CDR parts
  without copying their data, and ``Image``/``CompressedImage``/``CameraInfo`` parsed from CDR.
- ``layouts``: field layouts of points, matches and boxes (docs/MESSAGES.md), image encodings.
- ``decode``: the input decoder (images, camera_info) and readers of the output layouts.
- ``builders``: message *objects* through a type provider (rclpy classes or rosbags dataclasses), for
  ``/diagnostics``, synthetic bags and references; ``provider``: those providers.
- ``image_codec``: raw/compressed pixel decoding with clear ``ImageDecodeError`` messages.
"""

from __future__ import annotations

from dinov3_ros.msgs import builders, cdr, decode, layouts
from dinov3_ros.msgs.decode import Boxes, decode_boxes, decode_matches
from dinov3_ros.msgs.image_codec import ImageDecodeError
from dinov3_ros.msgs.provider import TypeProvider, rosbags_types

__all__ = [
    "Boxes",
    "ImageDecodeError",
    "TypeProvider",
    "builders",
    "cdr",
    "decode",
    "decode_boxes",
    "decode_matches",
    "layouts",
    "rosbags_types",
]
