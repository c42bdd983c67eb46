"""dinov3_ros.msgs."""
