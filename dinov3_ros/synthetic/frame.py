"""`SynthFrame`: one rendered view with all of its ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dinov3_ros.synthetic.shapes import CLASS_NAMES

#: instance id of everything that is not an object (floor, walls, ceiling, empty space)
BACKGROUND_ID = 0


@dataclass
class SynthFrame:
    """A rendered view.

    * ``rgb``: ``[H,W,3] uint8`` RGB.
    * ``depth``: ``[H,W] float32`` metric z-depth along the optical axis (REP 103 optical frame);
      ``0`` where the ray hits nothing (never happens inside a closed room).
    * ``instances``: ``[H,W] int32``; ``0`` = background (floor, walls, ceiling), objects are ``1..N``.
    * ``normals``: ``[H,W,3] float32`` unit surface normals in the camera optical frame, facing the camera.
    * ``K``: ``3x3 float64`` intrinsics (pixel centres at integer coordinates).
    * ``T_world_cam``: ``4x4 float64`` camera (optical frame) to world (z up) transform.
    * ``instance_classes``: ``[N+1] int32`` class id (index into :data:`CLASS_NAMES`) of each instance
      id; entry 0 (background) is ``-1``.
    """

    rgb: np.ndarray
    depth: np.ndarray
    instances: np.ndarray
    normals: np.ndarray
    K: np.ndarray
    T_world_cam: np.ndarray
    stamp_ns: int = 0
    instance_classes: np.ndarray = field(default_factory=lambda: np.full(1, -1, np.int32))
    scene_index: int = 0
    frame_index: int = 0
    frame_id: str = "camera_optical_frame"

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def semantic(self) -> np.ndarray:
        """``[H,W] int32`` class id per pixel, ``-1`` on background."""
        return self.instance_classes[self.instances]

    def instance_areas(self) -> dict[int, int]:
        """Visible pixel count of every object instance present in the frame (background excluded)."""
        ids, counts = np.unique(self.instances, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts) if i != BACKGROUND_ID}

    def instance_box(self, instance: int) -> tuple[int, int, int, int]:
        """Tight box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of an instance's visible pixels."""
        ys, xs = np.nonzero(self.instances == instance)
        if xs.size == 0:
            raise ValueError(f"instance {instance} is not visible in this frame")
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def as_dict(self) -> dict[str, np.ndarray | int]:
        """Plain-array dict (what a DataLoader collates): rgb, depth, instances, normals, K, pose, ..."""
        return {
            "rgb": self.rgb,
            "depth": self.depth,
            "instances": self.instances,
            "semantic": self.semantic(),
            "normals": self.normals,
            "K": self.K,
            "T_world_cam": self.T_world_cam,
            "stamp_ns": self.stamp_ns,
            "scene_index": self.scene_index,
            "frame_index": self.frame_index,
        }
