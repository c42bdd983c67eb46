"""``odometry``: the camera's rigid motion from the matches and the depth (``nav_msgs/Odometry``).

Each frame's inlier matches (``matches``) are lifted to 3-D with the keyframe's and the current depth
(``depth``) and the intrinsics; a RANSAC rigid fit (``heads.correspondence.estimate_rigid``, inlier
distance ``odom_ransac_threshold``) gives the motion from the keyframe to the current frame, chained
onto the keyframe's pose. The pose is the camera optical frame's in the odometry frame (the first
frame of the camera, REP 103 optical axes): ``header.frame_id`` = ``odom_frame`` (default
``<camera frame_id>_odom``), ``child_frame_id`` = the camera frame_id, stamp = the input's. With fewer
than ``odom_min_inliers`` 3-D inliers the pose is held and its covariance grows.

Covariance (a heuristic, from the inlier count ``n`` and the inlier distance ``r``): translation
variance ``3 r^2 / n`` per axis, rotation variance that divided by the squared median depth; a frame's
covariance adds to the keyframe's. Twist: the keyframe-to-frame motion over their stamp difference,
in the camera frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinov3_ros.core.frames import DepthImage, MatchResult
from dinov3_ros.heads.correspondence import estimate_rigid, lift_to_3d
from dinov3_ros.msgs.cdr import odometry_parts
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic

HELD_VARIANCE = 1.0  # added per frame whose motion could not be estimated (m^2, rad^2)


@dataclass
class Motion:
    """A relative motion estimate: ``T`` maps keyframe camera points to current camera points."""

    T: np.ndarray  # 4x4
    inliers: int
    median_depth: float


def estimate_motion(
    uv0: np.ndarray,
    uv1: np.ndarray,
    depth0: np.ndarray,
    K0: np.ndarray,
    depth1: np.ndarray,
    K1: np.ndarray,
    *,
    threshold: float,
    min_inliers: int,
) -> Motion | None:
    """Rigid motion ``X1 = R X0 + t`` from pixel correspondences ``uv0 -> uv1`` (pixel centres at
    integers) and each frame's depth image + intrinsics; None with fewer than ``min_inliers`` inliers."""
    if len(uv0) < max(3, min_inliers):
        return None
    X0, ok0 = lift_to_3d(np.asarray(uv0, np.float64), depth0, K0)
    X1, ok1 = lift_to_3d(np.asarray(uv1, np.float64), depth1, K1)
    ok = ok0 & ok1
    if int(ok.sum()) < max(3, min_inliers):
        return None
    R, t, inl = estimate_rigid(X0[ok], X1[ok], threshold=threshold, iterations=300)
    if int(inl.sum()) < min_inliers:
        return None
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return Motion(T, int(inl.sum()), float(np.median(X0[ok][inl][:, 2])))


def quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (x, y, z, w), w >= 0."""
    m = np.asarray(R, np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i], q[j], q[k] = 0.25 * s, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def rotation_vector(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis * angle (radians)."""
    c = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(c))
    if angle < 1e-9:
        return np.zeros(3)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return v / (2.0 * np.sin(angle)) * angle if angle < np.pi - 1e-6 else _axis_pi(R) * angle


def _axis_pi(R: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((R + R.T) / 2.0)
    return v[:, int(np.argmax(w))]


@dataclass
class OdomRef:
    """A frame later frames may be matched against: its pose, covariance, depth and intrinsics."""

    stamp_ns: int
    pose: np.ndarray  # 4x4 T_odom_cam
    cov: np.ndarray  # 6x6
    depth: np.ndarray  # [H, W] float32 metres
    K: np.ndarray  # 3x3 of that depth image


@dataclass
class OdomState:
    refs: list[OdomRef] = field(default_factory=list)


@dataclass
class Odometry:
    """The pose of the camera in the odometry frame and its motion since the keyframe."""

    pose: np.ndarray  # 4x4 T_odom_cam
    pose_cov: np.ndarray  # 6x6 (x y z rx ry rz)
    linear: np.ndarray  # m/s, camera frame
    angular: np.ndarray  # rad/s, camera frame
    twist_cov: np.ndarray  # 6x6
    inliers: int  # 3-D inliers of this frame's estimate (0 = pose held / first frame)
    odom_frame: str


def _serialize(stamp: int, frame_id: str, value: Odometry, cfg: Any) -> list:
    return odometry_parts(
        stamp,
        value.odom_frame,
        frame_id,
        value.pose[:3, 3],
        quaternion(value.pose[:3, :3]),
        value.pose_cov,
        value.linear,
        value.angular,
        value.twist_cov,
    )


def _relative_cov(m: Motion, threshold: float) -> np.ndarray:
    var_t = 3.0 * threshold**2 / max(m.inliers, 1)
    var_r = var_t / max(m.median_depth, 1e-3) ** 2
    return np.diag([var_t] * 3 + [var_r] * 3)


class OdometryOutput(Output):
    """:class:`Odometry` per frame (identity on a camera's first frame)."""

    name = "odometry"
    order = 57
    requires = ("matches", "depth")
    needs_intrinsics = True
    worker = "own"
    state_types = (OdomState, OdomRef)
    topics = (Topic("odometry", "nav_msgs/msg/Odometry", _serialize),)

    def new_state(self) -> OdomState:
        return OdomState()

    def compute(self, job: FrameJob) -> Odometry:
        cfg, st, frame = job.cfg, job.state, job.frame
        m: MatchResult = job.value("matches")
        d: DepthImage = job.value("depth")
        depth = np.asarray(d.image, np.float32)
        uv0, uv1 = self._in_depth_pixels(job, m, depth.shape)
        ref = next((r for r in st.refs if r.stamp_ns == m.ref_stamp_ns), None)
        zero = np.zeros(3)
        if ref is None:  # first frame of the camera (or its reference is gone): a new origin
            pose, cov, motion = np.eye(4), np.zeros((6, 6)), None
        else:
            motion = estimate_motion(
                uv0, uv1, ref.depth, ref.K, depth, d.info.K,
                threshold=cfg.odom_ransac_threshold, min_inliers=cfg.odom_min_inliers,
            )  # fmt: skip
            if motion is None:
                pose, cov = ref.pose, ref.cov + np.eye(6) * HELD_VARIANCE
            else:
                pose = ref.pose @ np.linalg.inv(motion.T)
                cov = ref.cov + _relative_cov(motion, cfg.odom_ransac_threshold)
        lin, ang, tcov = zero, zero, np.eye(6) * HELD_VARIANCE
        if motion is not None and ref is not None and frame.stamp_ns > ref.stamp_ns:
            dt = (frame.stamp_ns - ref.stamp_ns) / 1e9
            lin = -motion.T[:3, 3] / dt
            ang = rotation_vector(motion.T[:3, :3].T) / dt
            tcov = _relative_cov(motion, cfg.odom_ransac_threshold) / dt**2
        keep = [r for r in st.refs if r is ref]
        st.refs = [*keep, OdomRef(frame.stamp_ns, pose, cov, depth, d.info.K)]
        frame_name = cfg.odom_frame or f"{frame.frame_id}_odom"
        return Odometry(pose, cov, lin, ang, tcov, motion.inliers if motion else 0, frame_name)

    @staticmethod
    def _in_depth_pixels(
        job: FrameJob, m: MatchResult, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The inlier matches in the depth image's pixels (input pixels, or the network canvas)."""
        sel = m.inlier if len(m) else np.zeros(0, bool)
        uv0, uv1 = m.uv0[sel].astype(np.float64), m.uv1[sel].astype(np.float64)
        if shape == job.frame.image.shape[:2]:
            return uv0, uv1
        g = job.geom
        a, b = (np.stack(g.input_to_network(p[:, 0], p[:, 1]), 1) for p in (uv0, uv1))
        return a, b
