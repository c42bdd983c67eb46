"""Frame -> FrameOutputs: one implementation shared by the live node and the bag tool.

Public API::

    from dinov3_ros.pipeline import Frame, CameraIntrinsics, PipelineConfig, Pipeline, load_model
    model = load_model("random:vitt16", backend="torch", device="cpu", resolution=(224, 224))
    pipe = Pipeline.from_model(model, PipelineConfig(resolution=(224, 224)))
    outs = pipe.process([Frame(rgb, stamp_ns, "cam_optical", intrinsics, source="cam0")], {"depth", "points"})
    outs[0]["depth"].image   # values by output name (pipeline.outputs)

Imports are lazy so ``import dinov3_ros.pipeline`` stays light (no torch until used).
"""

from __future__ import annotations

from typing import Any

from dinov3_ros.core import (
    CameraIntrinsics,
    DepthImage,
    Frame,
    FrameOutputs,
    MatchResult,
    ObjectsResult,
    PipelineConfig,
    PointCloud,
)

__all__ = [
    "OUTPUTS",
    "CameraIntrinsics",
    "DepthImage",
    "Frame",
    "FrameOutputs",
    "InferHandle",
    "LoadedModel",
    "MatchResult",
    "ModelLoadError",
    "ObjectsResult",
    "Pipeline",
    "PipelineConfig",
    "PointCloud",
    "load_model",
]

_LAZY = {
    "OUTPUTS": "dinov3_ros.pipeline.outputs",
    "Pipeline": "dinov3_ros.pipeline.pipeline",
    "InferHandle": "dinov3_ros.pipeline.pipeline",
    "load_model": "dinov3_ros.pipeline.model",
    "LoadedModel": "dinov3_ros.pipeline.model",
    "ModelLoadError": "dinov3_ros.pipeline.model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dinov3_ros.pipeline' has no attribute {name!r}")
