"""``~/odometry`` against the synthetic scenes' ground-truth poses.

Exact features (ground-truth correspondences and depth) must recover the true frame-to-frame motion
(a plausible convention bug, the inverse motion, must not); the output chains motions into the
trajectory and holds the pose (with growing covariance) when it cannot estimate; the shipped model
through the whole pipeline must do better than assuming no motion. Median errors are printed (the
figures in docs/NODE.md).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dinov3_ros.core import CameraIntrinsics, DepthImage, Frame, FrameOutputs, MatchResult, PipelineConfig
from dinov3_ros.pipeline.outputs.base import BatchContext, FrameJob
from dinov3_ros.pipeline.outputs.odometry import OdometryOutput, estimate_motion
from dinov3_ros.synthetic.correspondence import gt_correspondences, relative_pose
from dinov3_ros.synthetic.generator import SceneGenerator

W, H, N = 160, 120, 12


@pytest.fixture(scope="module")
def frames():
    gen = SceneGenerator(seed=3, width=W, height=H, frames_per_scene=N)
    return [gen[k] for k in range(N)]


def errors(T: np.ndarray, G: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, translation error in metres) of ``T`` against ``G``."""
    R = T[:3, :3].T @ G[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))), float(
        np.linalg.norm(T[:3, 3] - G[:3, 3])
    )


def _gt_matches(a, b) -> tuple[np.ndarray, np.ndarray]:
    px = np.stack(np.meshgrid(np.arange(4, W, 8), np.arange(4, H, 8)), -1).reshape(-1, 2).astype(float)
    c = gt_correspondences(a, b, px)
    return c.pixels_a[c.valid], c.pixels_b[c.valid]


def test_exact_features_recover_the_true_motion(frames):
    rot, trans, inv_trans = [], [], []
    for a, b in itertools.pairwise(frames):
        uv0, uv1 = _gt_matches(a, b)
        m = estimate_motion(uv0, uv1, a.depth, a.K, b.depth, b.K, threshold=0.05, min_inliers=8)
        G = relative_pose(a, b)
        r, t = errors(m.T, G)
        rot.append(r)
        trans.append(t)
        inv_trans.append(errors(np.linalg.inv(m.T), G)[1])
    print(
        f"exact features: median rotation error {np.median(rot):.4f} deg, translation {1e3 * np.median(trans):.2f} mm"
    )
    assert np.median(rot) < 0.02 and np.median(trans) < 2e-3
    assert np.median(inv_trans) > 0.05  # negative control: the inverse motion is far off


def _job(frame: Frame, values: dict, state, cfg: PipelineConfig) -> FrameJob:
    out = FrameOutputs(frame.stamp_ns, frame.frame_id, frame.source, W, H)
    batch = BatchContext([frame], [None], None, None, frozenset(values), cfg, [out], [{}])
    return FrameJob(batch, 0, state, lambda name: values.get(name))


def test_output_chains_the_trajectory_and_holds_without_matches(frames):
    head, cfg = OdometryOutput(), PipelineConfig(odom_ransac_threshold=0.05)
    st = head.new_state()
    outs = []
    for k, f in enumerate(frames):
        uv0 = uv1 = np.zeros((0, 2))
        if k:
            uv0, uv1 = _gt_matches(frames[k - 1], f)
        if k == 5:  # a frame without usable matches: the pose is held, its covariance grows
            uv0, uv1 = uv0[:2], uv1[:2]
        m = MatchResult(uv0.astype(np.float32), uv1.astype(np.float32), np.ones(len(uv0), np.float32),
                        np.ones(len(uv0), bool), 1000 + k - 1 if k else None, "cam")  # fmt: skip
        intr = CameraIntrinsics(f.K, W, H)
        frame = Frame(f.rgb, 1000 + k, "cam", intr, "c")
        outs.append(head.compute(_job(frame, {"matches": m, "depth": DepthImage(f.depth, intr)}, st, cfg)))

    def gt(k: int) -> np.ndarray:
        return np.linalg.inv(frames[0].T_world_cam) @ frames[k].T_world_cam

    assert np.allclose(outs[0].pose, np.eye(4)) and outs[0].odom_frame == "cam_odom"
    r, t = errors(outs[4].pose, gt(4))
    assert r < 0.05 and t < 5e-3, (r, t)  # four chained exact motions
    assert outs[5].inliers == 0 and np.allclose(outs[5].pose, outs[4].pose)  # held
    assert outs[5].pose_cov[0, 0] >= outs[4].pose_cov[0, 0] + 1.0
    assert errors(outs[6].pose, gt(6))[1] > 0.05  # the missed motion stays missed (negative control)
    assert outs[-1].inliers > 8 and np.isfinite(outs[-1].linear).all()
    assert np.linalg.norm(outs[-1].linear) == pytest.approx(
        np.linalg.norm(relative_pose(frames[-2], frames[-1])[:3, 3]) / 1e-9, rel=0.05
    )


def test_shipped_model_beats_no_motion(frames):
    """The default model through the pipeline (matches + depth head): median frame-to-frame errors
    below the true motion's size (what a node reporting no motion would score)."""
    from dinov3_ros.pipeline import load_model
    from dinov3_ros.pipeline.pipeline import Pipeline

    torch.set_num_threads(1)
    gen = SceneGenerator(seed=3, width=320, height=240, frames_per_scene=N)
    res = (240, 320)
    pipe = Pipeline.from_model(load_model("default", resolution=res), PipelineConfig(resolution=res))
    rot, trans, gt_rot, gt_trans = [], [], [], []
    prev = None
    for k in range(N):
        f = gen[k]
        o = pipe.process([Frame(f.rgb, 1000 + k, "cam", CameraIntrinsics(f.K, 320, 240), "c")], {"odometry"})[
            0
        ]
        pose = o["odometry"].pose
        if prev is not None:
            G = relative_pose(prev[1], f)
            r, t = errors(np.linalg.inv(pose) @ prev[0], G)
            rot.append(r)
            trans.append(t)
            gr, gt = errors(np.eye(4), G)
            gt_rot.append(gr)
            gt_trans.append(gt)
        prev = (pose, f)
    pipe.close()
    print(
        f"shipped model (default, 240x320): median rotation error {np.median(rot):.2f} deg, translation "
        f"{100 * np.median(trans):.1f} cm; true motion per frame {np.median(gt_rot):.2f} deg, {100 * np.median(gt_trans):.1f} cm"
    )
    assert np.median(trans) < np.median(gt_trans) and np.median(rot) < np.median(gt_rot)
