"""dinov3_ros.runtime."""
