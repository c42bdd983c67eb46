"""Frame -> FrameOutputs: one implementation shared by the live node and the offline tool.

Public API::

    from dinov3_ros.pipeline import Frame, CameraIntrinsics, PipelineConfig, Pipeline, load_model
    model = load_model("random:vitt16", backend="torch", device="cpu")
    pipe = Pipeline.from_model(model, PipelineConfig(resolution=(224, 224)))
    outs = pipe.process([Frame(rgb, stamp_ns, "cam_optical", intrinsics, source="cam0")], {"depth", "points"})

Imports are lazy so ``import dinov3_ros.pipeline`` stays light (no torch until used).
"""

from __future__ import annotations

from typing import Any

from dinov3_ros.pipeline.types import (
    OUTPUTS,
    CameraIntrinsics,
    Frame,
    FrameOutputs,
    MatchResult,
    ObjectsResult,
    PipelineConfig,
)

__all__ = [
    "OUTPUTS",
    "CameraIntrinsics",
    "Frame",
    "FrameOutputs",
    "InferHandle",
    "LoadedModel",
    "MatchResult",
    "ModelLoadError",
    "ObjectsResult",
    "Pipeline",
    "PipelineConfig",
    "load_model",
]

_LAZY = {
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
