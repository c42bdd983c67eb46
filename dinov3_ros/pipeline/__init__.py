"""dinov3_ros.pipeline."""
