"""Data types of the frame -> outputs pipeline: frames, intrinsics, configuration and results."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics
from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import Frame, MatchResult, ObjectsResult

__all__ = [
    "OUTPUTS",
    "CameraIntrinsics",
    "Frame",
    "FrameOutputs",
    "MatchResult",
    "ObjectsResult",
    "PipelineConfig",
]

#: Every output name the pipeline can compute (ARCHITECTURE.md).
OUTPUTS: tuple[str, ...] = ("features", "features_pca", "depth", "points", "matches", "objects", "debug")


@dataclass
class FrameOutputs:
    """Everything computed for one frame; fields of outputs that were not requested stay ``None``."""

    stamp_ns: int
    frame_id: str
    source: str
    width: int
    height: int
    features: np.ndarray | None = None  # [h, w, C] float32 on the patch grid (C = k if PCA-reduced)
    features_pca: np.ndarray | None = None  # [h, w, 3] uint8 on the patch grid
    depth: np.ndarray | None = None  # [Hd, Wd] float32 metres along optical Z
    depth_info: CameraIntrinsics | None = None  # intrinsics scaled to the depth image
    points: np.ndarray | None = None  # [N, 3] float32 metres, camera optical frame
    points_rgb: np.ndarray | None = None  # [N, 3] uint8
    #: the ~/points rows as computed on the device ([N, 3|4] float32: x y z [rgb bits]); points is a view
    points_packed: np.ndarray | None = None
    points_dense: bool | None = None  # all points finite (PointCloud2 is_dense), with points_packed
    matches: MatchResult | None = None
    objects: ObjectsResult | None = None
    debug: np.ndarray | None = None  # [H, W, 3] uint8 overlay at input resolution
    timings_ms: dict[str, float] = field(default_factory=dict)
