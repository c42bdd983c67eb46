"""dinov3_ros: DINOv3 dense perception for robots and video.

The core sub-packages (models, heads, runtime, pipeline, msgs, offline, synthetic, eval) import no
rclpy; only :mod:`dinov3_ros.ros` does.
"""

__version__ = "0.1.0"
