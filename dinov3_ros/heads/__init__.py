"""dinov3_ros.heads."""
