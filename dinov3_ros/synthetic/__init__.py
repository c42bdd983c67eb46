"""Exact ray-cast synthetic scenes with ground-truth depth, instances, normals, poses and correspondences.

Main API (see docs in each module)::

    from dinov3_ros.synthetic import SceneGenerator, SceneConfig, gt_correspondences
    gen = SceneGenerator(seed=0, width=224, height=224)       # picklable, deterministic
    frame = gen[0]                                            # SynthFrame (rgb, depth, instances, ...)
    for frame in gen.stream(worker_id, num_workers): ...      # infinite, disjoint scenes per worker
    a, b = gen.pair(scene_index, 0, 5)
    corr = gt_correspondences(a, b, pixels)                   # occlusion-checked GT matches

PyTorch: ``dinov3_ros.synthetic.dataset.SyntheticStream`` (infinite IterableDataset, sharded over
DataLoader workers and ranks) and ``SyntheticFrames`` (map-style), both yielding tensor dicts.
"""

from __future__ import annotations

from dinov3_ros.synthetic.camera import OrbitTrajectory, backproject, intrinsics, look_at, project
from dinov3_ros.synthetic.correspondence import Correspondences, all_pixels, gt_correspondences, relative_pose
from dinov3_ros.synthetic.frame import BACKGROUND_ID, SynthFrame
from dinov3_ros.synthetic.generator import SceneConfig, SceneGenerator, SceneSpec, sample_scene
from dinov3_ros.synthetic.scene import Scene, SceneObject, quad
from dinov3_ros.synthetic.shapes import CLASS_NAMES

__all__ = [
    "BACKGROUND_ID",
    "CLASS_NAMES",
    "Correspondences",
    "OrbitTrajectory",
    "Scene",
    "SceneConfig",
    "SceneGenerator",
    "SceneObject",
    "SceneSpec",
    "SynthFrame",
    "all_pixels",
    "backproject",
    "gt_correspondences",
    "intrinsics",
    "look_at",
    "project",
    "quad",
    "relative_pose",
    "sample_scene",
]
