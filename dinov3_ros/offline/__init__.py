"""dinov3_ros.offline."""
