"""``PipelineConfig``: every setting of the pipeline's heads, each with its description and valid range.

The node declares one ``pipeline.<name>`` parameter per field (description and range from here), the
bag tool takes them as ``--set name=value``; both validate through :meth:`PipelineConfig.validate`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any


def setting(
    default: Any,
    description: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its description and valid range (``lo``/``hi`` inclusive unless open)."""
    meta = {"description": description, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    meta["choices"] = choices
    return field(default=default, metadata=meta)


def _check(name: str, value: Any, meta: dict[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    bad = not math.isfinite(float(value))
    if lo is not None:
        bad |= value <= lo if meta.get("lo_open") else value < lo
    if hi is not None:
        bad |= value >= hi if meta.get("hi_open") else value > hi
    if bad:
        left = "(" if meta.get("lo_open") else "["
        right = ")" if meta.get("hi_open") else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"invalid pipeline setting {name}={value!r}: must be finite and in {rng}")


def parse_settings(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (the tools' ``--set``) -> settings; each value is read as YAML (numbers,
    booleans, lists). Names are checked by :meth:`PipelineConfig.with_updates`."""
    import yaml

    out: dict[str, Any] = {}
    for kv in pairs:
        if "=" not in kv:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


@dataclass(frozen=True)
class PipelineConfig:
    """Thresholds and settings of every head (validated by :meth:`validate`)."""

    resolution: tuple[int, int] = setting((224, 224), "network input (H, W), multiples of 16 (letterboxed)")
    # features / PCA
    features_k: int = setting(0, "0 = all C channels on ~/features, else the first k PCA components", lo=0)
    pca_mode: str = setting(
        "fit_once",
        "PCA basis per camera: fitted on its first frame, or EMA-updated",
        choices=("fit_once", "update"),
    )
    pca_momentum: float = setting(
        0.9, "weight of the old PCA statistics in 'update' mode", lo=0.0, hi=1.0, hi_open=True
    )
    pca_space: str = setting(
        "auto",
        "what ~/features/pca colours: the patch features, or the objects head's embedding (objects apart "
        "from surfaces); auto = objects when an objects head is loaded",
        choices=("auto", "features", "objects"),
    )
    # depth / points
    depth_resolution: str = setting(
        "input", "depth image size: the input image's, or the network canvas's", choices=("input", "network")
    )
    depth_encoding: str = setting(
        "32FC1",
        "depth image encoding (REP 118): 32FC1 metres (NaN = no depth) or 16UC1 millimetres (0 = no depth)",
        choices=("32FC1", "16UC1"),
    )
    depth_scale: float = setting(1.0, "metres per depth-head unit", lo=0.0, lo_open=True)
    min_depth: float = setting(0.05, "depth is clipped to [min_depth, max_depth] metres", lo=0.0)
    max_depth: float = setting(
        50.0, "depth is clipped to [min_depth, max_depth] metres", lo=0.0, lo_open=True
    )
    points_stride: int = setting(1, "back-project every n-th pixel of the network-resolution depth", lo=1)
    points_voxel: float = setting(0.0, "voxel size of the point cloud in metres, 0 = off", lo=0.0)
    points_color: str = setting("rgb", "'rgb' -> xyzrgb points, 'none' -> xyz", choices=("none", "rgb"))
    default_hfov_deg: float = setting(
        70.0,
        "horizontal field of view of the fallback pinhole used without a usable camera_info",
        lo=1.0,
        hi=179.0,
    )
    # matches
    match_ratio: float = setting(
        0.9, "Lowe ratio (best / second best distance), 1 = off", lo=0.0, hi=1.0, lo_open=True
    )
    match_threshold: float = setting(0.3, "minimum cosine similarity of a match", lo=-1.0, hi=1.0)
    match_max: int = setting(512, "most matches per frame", lo=1)
    match_refine: str = setting(
        "image",
        "sub-pixel refinement of the matches: NCC in the grey images, or the feature similarities only",
        choices=("image", "features"),
    )
    match_unrefined: str = setting(
        "drop",
        "with match_refine 'image': matches the images could not refine (no clear NCC peak >= 0.6 within"
        " 0.75 patch; only patch-precise) are kept, or dropped together with refinements the search back"
        " into the first image does not confirm (within 1.5 px)",
        choices=("keep", "drop"),
    )
    keyframe_policy: str = setting(
        "previous", "when the matching reference is renewed", choices=("previous", "interval", "min_matches")
    )
    keyframe_interval: int = setting(10, "frames between keyframes with keyframe_policy 'interval'", lo=1)
    keyframe_min_matches: int = setting(20, "inliers below which 'min_matches' renews the keyframe", lo=0)
    # odometry (matches + depth)
    odom_frame: str = setting("", "frame_id of ~/odometry; empty = '<camera frame_id>_odom'")
    odom_min_inliers: int = setting(
        8, "fewest 3-D inliers for a motion estimate (else the pose is held)", lo=3
    )
    odom_ransac_threshold: float = setting(
        0.15, "3-D RANSAC inlier distance of the odometry, metres", lo=0.0, lo_open=True
    )
    # objects (TokenCut)
    tokencut_tau: float = setting(0.2, "TokenCut affinity threshold", lo=-1.0, hi=1.0)
    tokencut_eps: float = setting(1e-5, "TokenCut weight of affinities below tau", lo=0.0)
    max_objects: int = setting(1, "objects per frame (each after the first is one more cut)", lo=1, hi=65535)
    min_object_patches: int = setting(2, "smallest object after the first, in patches", lo=1)
    min_object_score: float = setting(
        0.1, "objects after the first need a cut eigenvalue <= 1 - this", lo=0.0, hi=1.0
    )
    track_iou: float = setting(0.3, "mask IoU that keeps an object's identity across frames", lo=0.0, hi=1.0)
    mask_encoding: str = setting("mono8", "encoding of ~/objects/mask", choices=("mono8", "mono16"))
    mask_refine: str = setting(
        "guided",
        "object mask edges: guided = moved to the image's edges (guided filter, one-patch radius), "
        "none = patch-sized blocks",
        choices=("none", "guided"),
    )
    # debug overlay
    debug_alpha: float = setting(0.5, "weight of the PCA colours in ~/debug", lo=0.0, hi=1.0)
    jpeg_quality: int = setting(85, "JPEG quality of the compressed debug image", lo=1, hi=100)
    parallel_heads: bool = setting(True, "run the heads in their own threads, overlapped (same results)")

    def validate(self) -> PipelineConfig:
        """Return self, or raise ``ValueError`` naming the first bad setting."""
        h, w = self.resolution
        if h <= 0 or w <= 0 or h % 16 or w % 16:
            raise ValueError(f"resolution must be positive multiples of 16, got {h}x{w}")
        for f in fields(self):
            if f.name != "resolution":
                _check(f.name, getattr(self, f.name), f.metadata)
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth {self.min_depth} must be below max_depth {self.max_depth}")
        if self.mask_encoding == "mono8" and self.max_objects > 255:
            raise ValueError(f"mask_encoding mono8 holds at most 255 objects, max_objects={self.max_objects}")
        return self

    def match_args(self) -> dict[str, Any]:
        """The match settings as ``heads.correspondence.match`` arguments (ratio 1 = no ratio test): one
        mapping for the node's matches and the eval that scores them."""
        return {
            "ratio": self.match_ratio if self.match_ratio < 1.0 else None,
            "min_score": self.match_threshold,
            "max_matches": self.match_max,
            "image_refine_drop": self.match_unrefined == "drop",
        }

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

    @staticmethod
    def describe(name: str) -> dict[str, Any]:
        """Description and range of setting ``name`` (for parameter descriptors and help texts)."""
        for f in fields(PipelineConfig):
            if f.name == name:
                return {"default": f.default, **f.metadata}
        raise KeyError(name)
