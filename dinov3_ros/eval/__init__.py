"""dinov3_ros.eval."""
