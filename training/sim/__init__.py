"""The simulator as a second teacher: GPU multi-view batches from rendered scenes and per-patch losses
from their ground truth (depth, normals, classes, instances, correspondences).

Our addition to the DINOv3 recipe, off unless a config enables ``sim``; the paper configs never do.
"""

from __future__ import annotations

from .geometry import CropTargets, crop_targets, reproject
from .loader import SimBatches, view_spec
from .losses import SimLossConfig, SimObjective, correspondence_loss, instance_contrast_loss
from .pool import FramePool
from .views import ViewSpec, sample_views

__all__ = [
    "CropTargets",
    "FramePool",
    "SimBatches",
    "SimLossConfig",
    "SimObjective",
    "ViewSpec",
    "correspondence_loss",
    "crop_targets",
    "instance_contrast_loss",
    "reproject",
    "sample_views",
    "view_spec",
]
