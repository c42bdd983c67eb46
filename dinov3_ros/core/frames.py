"""A frame in, its outputs out: the data the pipeline, the node, the bag tool and the message layouts share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics


@dataclass
class Frame:
    """One input image. ``image`` is (H, W, 3) uint8 RGB; ``stamp_ns`` and ``frame_id`` come from the
    header; ``source`` keys the per-camera state (PCA basis, keyframe, object tracks)."""

    image: np.ndarray
    stamp_ns: int
    frame_id: str
    camera_info: CameraIntrinsics | None = None
    source: str = "camera"

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            desc = f"{img.shape} {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"Frame.image must be (H, W, 3) uint8 RGB, got {desc}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"Frame.image has zero size {img.shape}")
        ci = self.camera_info
        if ci is not None and (ci.width, ci.height) != (img.shape[1], img.shape[0]):
            raise ValueError(
                f"camera_info size {ci.width}x{ci.height} does not match image {img.shape[1]}x{img.shape[0]} "
                f"(source {self.source!r}, frame_id {self.frame_id!r}); see core.camera.intrinsics_for_image"
            )


@dataclass
class DepthImage:
    """Metric depth (metres along the optical axis, NaN = none) and the intrinsics of that image."""

    image: np.ndarray  # [Hd, Wd] float32
    info: CameraIntrinsics


@dataclass
class PointCloud:
    """Points in the camera's optical frame. ``packed`` holds the same rows as a PointCloud2 lays them
    out (``[N, 3|4]`` float32: x y z [rgb bits]) when they were packed on the device; ``dense`` = all
    points finite."""

    xyz: np.ndarray  # [N, 3] float32 metres
    rgb: np.ndarray | None = None  # [N, 3] uint8
    packed: np.ndarray | None = None
    dense: bool | None = None


@dataclass
class MatchResult:
    """Correspondences from the reference keyframe (0) to the current frame (1), in input pixels."""

    uv0: np.ndarray  # [N, 2] float32, reference-frame pixels (x, y)
    uv1: np.ndarray  # [N, 2] float32, current-frame pixels
    score: np.ndarray  # [N] float32 cosine similarity
    inlier: np.ndarray  # [N] bool
    ref_stamp_ns: int | None  # None: no keyframe yet (first frame of a source)
    ref_frame_id: str = ""

    def __len__(self) -> int:
        return int(self.uv0.shape[0])


@dataclass
class ObjectsResult:
    """TokenCut instances: ``mask`` (H, W) uint16 instance ids at input resolution (0 = background)."""

    mask: np.ndarray
    ids: np.ndarray  # [K] uint32, the pixel values in ``mask``
    boxes: np.ndarray  # [K, 4] float32 x_min, y_min, x_max, y_max in input pixels (max exclusive)
    scores: np.ndarray  # [K] float32
    areas: np.ndarray  # [K] uint32 pixel counts


@dataclass
class FrameOutputs:
    """What was computed for one frame: ``values[output name]`` (only the requested outputs), the
    input's header and size, and per-stage timings. Value types are documented by each output
    (``dinov3_ros.pipeline.outputs``)."""

    stamp_ns: int
    frame_id: str
    source: str
    width: int
    height: int
    values: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)
