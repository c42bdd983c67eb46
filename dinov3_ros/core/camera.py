"""Pinhole camera intrinsics, the one formula that moves them to another image size, and the one
policy that picks the intrinsics of an image from a camera_info (live node and bag tool alike).

Pixel centres sit at integer coordinates (ROS ``K``): pixel 0 spans [-0.5, 0.5). Resizing by ``s``
and then shifting by ``o`` (padding > 0, cropping < 0) maps ``u -> (u + 0.5) * s - 0.5 + o``, so
``f' = f * s`` and ``c' = (c + 0.5) * s - 0.5 + o``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


def scale_matrix(K: np.ndarray, sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    """``K`` (3x3, or the 3x3 part of a 3x4 ``P``) of an image resized by ``(sx, sy)`` and shifted by
    ``(ox, oy)`` pixels (see module doc); a new array."""
    K = np.asarray(K, dtype=np.float64)
    out = K.copy()
    out[0, 0] = K[0, 0] * sx
    out[0, 1] = K[0, 1] * sx
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5 + ox
    out[1, 1] = K[1, 1] * sy
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5 + oy
    return out


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of one image: ``K`` (3x3), size, distortion and ``P`` (ROS ``CameraInfo``)."""

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
        if not (np.isfinite(K).all() and np.isfinite(P).all() and np.isfinite(self.D).all()):
            raise ValueError("camera intrinsics hold a non-finite value (NaN or inf in K, P or D)")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise ValueError(f"camera intrinsics need positive focal lengths, got fx={K[0, 0]} fy={K[1, 1]}")

    def transformed(
        self, sx: float, sy: float, ox: float, oy: float, width: int, height: int
    ) -> CameraIntrinsics:
        """The intrinsics after resizing by ``(sx, sy)`` and shifting by ``(ox, oy)`` into a
        ``width`` x ``height`` image. ``P``'s 3x3 part moves like ``K``; its translation column scales
        with the focal lengths. Distortion is copied unchanged."""
        P = self.P
        Pt = np.hstack([scale_matrix(P[:, :3], sx, sy, ox, oy), P[:, 3:] * np.array([[sx], [sy], [1.0]])])
        K = scale_matrix(self.K, sx, sy, ox, oy)
        return CameraIntrinsics(K, int(width), int(height), self.D.copy(), self.distortion_model, Pt)

    def resized(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the same view resized to ``width`` x ``height``."""
        return self.transformed(width / self.width, height / self.height, 0.0, 0.0, width, height)

    @staticmethod
    def from_fov(width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
        """Ideal pinhole with horizontal field of view ``hfov_deg`` and the principal point at the centre."""
        f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
        return CameraIntrinsics(np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]), width, height)


class IntrinsicsSource(str, Enum):
    """Where an image's intrinsics came from (reported to the user: the node's /diagnostics, summaries)."""

    CAMERA_INFO = "camera_info"  # a camera_info of the image's size
    RESCALED = "rescaled"  # a camera_info of another size with the same aspect ratio, rescaled
    MISSING = "missing"  # none received: the pipeline falls back to an ideal pinhole
    INVALID = "invalid"  # unusable (zero/NaN focal lengths, zero size, another aspect ratio): fallback


def intrinsics_for_image(
    info: CameraIntrinsics | None, width: int, height: int, *, aspect_tol: float = 0.01
) -> tuple[CameraIntrinsics | None, IntrinsicsSource]:
    """The one camera_info policy: the intrinsics to use for a ``width`` x ``height`` image.

    A camera_info of the image's size is used as is; one calibrated at another size with the same
    aspect ratio (within ``aspect_tol``) is rescaled with :meth:`CameraIntrinsics.resized`; otherwise
    (none, or another aspect ratio) the result is ``None`` and the pipeline uses its fallback pinhole
    (``PipelineConfig.default_hfov_deg``). Nothing is rejected: only depth back-projection depends on
    the intrinsics, every other output is computed either way.
    """
    if info is None:
        return None, IntrinsicsSource.MISSING
    if (info.width, info.height) == (width, height):
        return info, IntrinsicsSource.CAMERA_INFO
    if abs(info.width * height - info.height * width) <= aspect_tol * info.height * width:
        return info.resized(width, height), IntrinsicsSource.RESCALED
    return None, IntrinsicsSource.INVALID
