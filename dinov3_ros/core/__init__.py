"""Shared types of every layer: camera intrinsics, frames and their outputs, pipeline settings, model spec.

A leaf layer: it imports numpy and the standard library only, so the message layouts (``msgs``), the
pipeline, the node and the bag tool can all depend on it without depending on each other.
"""

from __future__ import annotations

from dinov3_ros.core.camera import CameraIntrinsics, IntrinsicsSource, intrinsics_for_image, scale_matrix
from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import (
    DepthImage,
    Frame,
    FrameOutputs,
    MatchResult,
    ObjectsResult,
    PointCloud,
)
from dinov3_ros.core.spec import BACKENDS, PRECISIONS, ModelSpec, WeightsSpec, parse_resolution

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "CameraIntrinsics",
    "DepthImage",
    "Frame",
    "FrameOutputs",
    "IntrinsicsSource",
    "MatchResult",
    "ModelSpec",
    "ObjectsResult",
    "PipelineConfig",
    "PointCloud",
    "WeightsSpec",
    "intrinsics_for_image",
    "parse_resolution",
    "scale_matrix",
]
