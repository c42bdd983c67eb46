"""Pinhole intrinsics, look-at poses in the REP 103 optical frame, and smooth camera trajectories.

Conventions (used everywhere in :mod:`dinov3_ros.synthetic`):

* World frame: z up, metres. The floor is the plane ``z = 0``.
* Camera frame: REP 103 *optical* frame, x right, y down, z forward (along the optical axis).
* ``T_world_cam`` (4x4, float64) maps camera-frame points to the world: ``p_w = T @ p_c``.
* Pixel ``(u, v)`` with integer values is the *centre* of pixel column ``u``, row ``v`` (OpenCV / ROS
  CameraInfo convention): ``u = fx * x / z + cx``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Return a 3x3 K with square pixels, the given horizontal field of view and a centred principal point."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1.0 < hfov_deg < 179.0:
        raise ValueError(f"horizontal field of view must be in (1, 179) degrees, got {hfov_deg}")
    f = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, roll_rad: float = 0.0) -> np.ndarray:
    """``T_world_cam`` of an optical-frame camera at ``eye`` looking at ``target`` (world z up)."""
    eye = np.asarray(eye, np.float64)
    z = np.asarray(target, np.float64) - eye
    n = np.linalg.norm(z)
    if n < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    z /= n
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:  # looking straight up/down: pick any right vector
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    if roll_rad:
        c, s = np.cos(roll_rad), np.sin(roll_rad)
        x, y = c * x + s * y, -s * x + c * y
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


@dataclass(frozen=True)
class OrbitTrajectory:
    """A smooth camera path: an orbit around ``center`` with slowly varying radius, height and target.

    ``pose(tau)`` is C-infinity in ``tau`` (sums of sinusoids); ``tau`` in [0, 1] spans the sequence.
    """

    center: tuple[float, float, float]
    radius: float
    height: float
    angle0: float
    sweep: float  # total azimuth change over tau in [0, 1] (radians)
    radius_amp: float = 0.2
    height_amp: float = 0.2
    target_amp: float = 0.25
    roll_amp: float = 0.05
    phase: float = 0.0

    def pose(self, tau: float) -> np.ndarray:
        """``T_world_cam`` at normalised time ``tau``."""
        p = self.phase
        ang = self.angle0 + self.sweep * tau
        r = self.radius + self.radius_amp * np.sin(2.0 * np.pi * (0.7 * tau) + p)
        h = self.height + self.height_amp * np.sin(2.0 * np.pi * (0.9 * tau) + 1.3 * p)
        c = np.asarray(self.center, np.float64)
        eye = c + np.array([r * np.cos(ang), r * np.sin(ang), 0.0])
        eye[2] = h
        tgt = c + self.target_amp * np.array(
            [np.sin(2 * np.pi * 0.5 * tau + 2.0 * p), np.cos(2 * np.pi * 0.6 * tau + p), 0.0]
        )
        roll = self.roll_amp * np.sin(2.0 * np.pi * 0.8 * tau + 0.5 * p)
        return look_at(eye, tgt, roll)


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Project camera-frame points ``[N,3]`` to pixels ``[N,2]`` (no validity checks)."""
    z = points_cam[:, 2:3]
    return (points_cam[:, :2] / z) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def backproject(pixels: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points ``[N,3]`` of pixels ``[N,2]`` with z-depths ``[N]``."""
    x = (pixels[:, 0] - K[0, 2]) / K[0, 0]
    y = (pixels[:, 1] - K[1, 2]) / K[1, 1]
    return np.stack([x * depth, y * depth, depth], axis=1)
