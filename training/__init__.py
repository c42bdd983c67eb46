"""DINOv3 pretraining and distillation on top of the ``dinov3_ros`` core (never ROS)."""
