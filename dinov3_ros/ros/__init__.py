"""dinov3_ros.ros."""
