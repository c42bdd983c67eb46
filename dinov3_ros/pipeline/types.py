"""Data types of the frame -> outputs pipeline: frames, intrinsics, configuration and results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

#: Every output name the pipeline can compute (ARCHITECTURE.md).
OUTPUTS: tuple[str, ...] = ("features", "features_pca", "depth", "points", "matches", "objects", "debug")


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of one image: ``K`` (3x3), size, distortion (ROS ``CameraInfo`` semantics)."""

    K: np.ndarray
    width: int
    height: int
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = "plumb_bob"
    P: np.ndarray | None = None  # 3x4; defaults to [K | 0]

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "D", np.asarray(self.D, dtype=np.float64).reshape(-1))
        P = (
            np.hstack([K, np.zeros((3, 1))])
            if self.P is None
            else np.asarray(self.P, np.float64).reshape(3, 4)
        )
        object.__setattr__(self, "P", P)
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera intrinsics need a positive size, got {self.width}x{self.height}")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise ValueError(f"camera intrinsics need positive focal lengths, got fx={K[0, 0]} fy={K[1, 1]}")

    def resized(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the same view resized to ``width`` x ``height``.

        Resize by (sx, sy) with pixel-centre coordinates (as ``runtime.preprocess.Geometry``):
        fx' = fx*sx, cx' = (cx + 0.5)*sx - 0.5, likewise fy, cy with sy; P is scaled the same way
        (Tx, Ty scale with fx, fy). Distortion is copied unchanged.
        """
        sx, sy = width / self.width, height / self.height
        S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        return CameraIntrinsics(
            S @ self.K, int(width), int(height), self.D.copy(), self.distortion_model, S @ self.P
        )

    @staticmethod
    def from_fov(width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
        """Ideal pinhole with horizontal field of view ``hfov_deg`` and the principal point at the centre."""
        f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
        return CameraIntrinsics(np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]), width, height)


@dataclass
class Frame:
    """One input image. ``image`` is (H, W, 3) uint8 RGB; ``stamp_ns`` and ``frame_id`` come from the header."""

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
                f"(source {self.source!r}, frame_id {self.frame_id!r})"
            )


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


_CHOICES: dict[str, tuple[str, ...]] = {
    "pca_mode": ("fit_once", "update"),
    "keyframe_policy": ("previous", "interval", "min_matches"),
    "depth_resolution": ("input", "network"),
    "mask_encoding": ("mono8", "mono16"),
    "points_color": ("none", "rgb"),
}


@dataclass(frozen=True)
class PipelineConfig:
    """Thresholds and settings of every head (all validated by :meth:`validate`)."""

    resolution: tuple[int, int] = (224, 224)  # network input (H, W), multiples of the patch size
    # features / PCA
    features_k: int = 0  # 0 = all C channels, else PCA-reduced to k channels
    pca_mode: str = "fit_once"  # fit on the first frame of a source, or keep updating
    pca_momentum: float = 0.9  # weight of the old basis statistics in "update" mode
    # depth / points
    depth_resolution: str = "input"  # "input" (H, W of the image) or "network" (resolution)
    depth_scale: float = 1.0  # metres per head unit
    min_depth: float = 0.05
    max_depth: float = 50.0
    points_stride: int = 1  # take every n-th pixel of the network-resolution depth
    points_voxel: float = 0.0  # voxel size in metres, 0 = off
    points_color: str = "rgb"  # "rgb" -> xyzrgb, "none" -> xyz
    default_hfov_deg: float = 70.0  # intrinsics used when a frame has no camera_info
    # matches
    match_ratio: float = 0.9  # Lowe ratio (best / second best distance), 1 = off
    match_threshold: float = 0.3  # minimum cosine similarity
    match_max: int = 512
    keyframe_policy: str = "previous"
    keyframe_interval: int = 10
    keyframe_min_matches: int = 20
    # objects (TokenCut)
    tokencut_tau: float = 0.2
    tokencut_eps: float = 1e-5
    max_objects: int = 1  # 1 = the published TokenCut; each extra object is one more cut (~1 ms, H100)
    min_object_patches: int = 2
    min_object_score: float = 0.1  # objects after the first need a cut with eigenvalue <= 1 - this
    track_iou: float = 0.3
    mask_encoding: str = "mono8"
    # debug overlay
    debug_alpha: float = 0.5
    # run TokenCut in a helper thread, overlapped with the other heads (same results)
    parallel_heads: bool = True

    def validate(self) -> PipelineConfig:
        """Return self, or raise ``ValueError`` naming the first bad setting."""
        h, w = self.resolution
        if h <= 0 or w <= 0 or h % 16 or w % 16:
            raise ValueError(f"resolution must be positive multiples of 16, got {h}x{w}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        checks = {
            "features_k": self.features_k >= 0,
            "pca_momentum": 0.0 <= self.pca_momentum < 1.0,
            "depth_scale": self.depth_scale > 0,
            "min_depth": 0 <= self.min_depth < self.max_depth,
            "points_stride": self.points_stride >= 1,
            "points_voxel": self.points_voxel >= 0,
            "default_hfov_deg": 1.0 <= self.default_hfov_deg <= 179.0,
            "match_ratio": 0.0 < self.match_ratio <= 1.0,
            "match_threshold": -1.0 <= self.match_threshold <= 1.0,
            "match_max": self.match_max >= 1,
            "keyframe_interval": self.keyframe_interval >= 1,
            "keyframe_min_matches": self.keyframe_min_matches >= 0,
            "tokencut_tau": -1.0 <= self.tokencut_tau <= 1.0,
            "tokencut_eps": self.tokencut_eps >= 0,
            "max_objects": 1 <= self.max_objects <= 65535,
            "min_object_patches": self.min_object_patches >= 1,
            "min_object_score": 0.0 <= self.min_object_score <= 1.0,
            "track_iou": 0.0 <= self.track_iou <= 1.0,
            "debug_alpha": 0.0 <= self.debug_alpha <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid pipeline setting {name}={getattr(self, name)!r}")
        if self.mask_encoding == "mono8" and self.max_objects > 255:
            raise ValueError(f"mask_encoding mono8 holds at most 255 objects, max_objects={self.max_objects}")
        return self

    def with_updates(self, **changes: Any) -> PipelineConfig:
        """A validated copy with ``changes`` applied (unknown names raise ``ValueError``)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ValueError(f"unknown pipeline setting(s) {bad}; known: {sorted(known)}")
        if "resolution" in changes:
            changes["resolution"] = tuple(int(v) for v in changes["resolution"])
        return replace(self, **changes).validate()

    @staticmethod
    def field_names() -> list[str]:
        return [f.name for f in fields(PipelineConfig)]
