"""dinov3_ros.synthetic."""
