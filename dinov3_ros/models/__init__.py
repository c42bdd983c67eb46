"""dinov3_ros.models."""
