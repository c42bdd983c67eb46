"""Evaluation metrics: published definitions, perfect scores for perfect inputs, chance for random ones."""

from __future__ import annotations

import numpy as np
import pytest

from dinov3_ros.eval import metrics as M


def test_depth_metrics_definitions():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 8.0, (40, 50))
    gt[0, :5] = 0.0  # invalid pixels are ignored
    perfect = M.depth_metrics(gt.copy(), gt)
    assert (
        perfect["abs_rel"] == 0 and perfect["rmse"] == 0 and perfect["delta1"] == 1 and perfect["silog"] == 0
    )
    assert perfect["n"] == gt.size - 5
    p = np.where(gt > 0, 1.1 * gt, 0.3)
    m = M.depth_metrics(p, gt)
    v = gt[gt > 0]
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["sq_rel"] == pytest.approx(np.mean(0.01 * v))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((0.1 * v) ** 2)))
    assert m["delta1"] == 1.0
    assert m["silog"] == pytest.approx(0.0, abs=1e-6)  # a global scale error is scale-invariant
    assert m["rmse_log"] == pytest.approx(np.log(1.1))
    assert m["log10"] == pytest.approx(np.log10(1.1))
    m2 = M.depth_metrics(np.where(gt > 0, 1.3 * gt, 1.0), gt)
    assert (m2["delta1"], m2["delta2"], m2["delta3"]) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        M.depth_metrics(np.zeros_like(gt), gt)
    with pytest.raises(ValueError, match="shape"):
        M.depth_metrics(gt[:5], gt)


def test_masks_boxes_corloc():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.zeros_like(a)
    b[4:8, 2:6] = True
    assert M.mask_iou(a, a) == 1.0
    assert M.mask_iou(a, b) == pytest.approx(8 / 24)
    assert M.mask_box(a) == (2, 2, 6, 6) and M.mask_box(np.zeros_like(a)) is None
    assert M.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    # CorLoc: IoU >= 0.5 with ANY GT box; None counts as a miss
    assert M.corloc([(0, 0, 10, 10), None], [[(100, 100, 110, 110), (1, 1, 10, 10)], [(0, 0, 5, 5)]]) == 0.5


def test_correspondence_recall_perfect_and_chance():
    rng = np.random.default_rng(1)
    W, H = 320, 240
    gt = np.stack([rng.uniform(40, W - 40, 200_000), rng.uniform(40, H - 40, 200_000)], 1)
    assert all(v == 1.0 for v in M.correspondence_recall(gt, gt).values())
    rand = np.stack([rng.uniform(-0.5, W - 0.5, len(gt)), rng.uniform(-0.5, H - 0.5, len(gt))], 1)
    rec = M.correspondence_recall(rand, gt, (4.0, 8.0))
    for r in (4.0, 8.0):
        p = M.random_match_chance(W, H, r)
        sigma = np.sqrt(p * (1 - p) / len(gt))
        assert abs(rec[f"recall@{r:g}px"] - p) < 4 * sigma, (r, rec, p)


def test_relative_pose_error_exact_matches():
    from dinov3_ros.synthetic import SceneGenerator, gt_correspondences, relative_pose
    from dinov3_ros.synthetic.correspondence import all_pixels

    gen = SceneGenerator(seed=3, width=96, height=72, frames_per_scene=8)
    a, b = gen.pair(0, 0, 5)
    c = gt_correspondences(a, b, all_pixels(a, stride=3))
    e = M.relative_pose_error(c.pixels_a[c.valid], c.pixels_b[c.valid], a.K, relative_pose(a, b), 0.5)
    assert e["rot_err_deg"] < 0.05 and e["trans_err_deg"] < 0.5, e
    assert (
        M.relative_pose_error(c.pixels_a[:3], c.pixels_b[:3], a.K, relative_pose(a, b))["rot_err_deg"]
        == 180.0
    )
    assert M.rotation_error_deg(np.eye(3), np.eye(3)) == 0.0
    Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert M.rotation_error_deg(np.eye(3), Rz) == pytest.approx(90.0)


def test_probes_perfect_and_at_chance():
    rng = np.random.default_rng(2)
    C = 8
    prior = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    ytr = rng.choice(C, 2000, p=prior)
    yte = rng.choice(C, 4000, p=prior)
    # separable: one-hot + small noise -> perfect
    xtr = np.eye(C)[ytr] + 0.01 * rng.standard_normal((len(ytr), C))
    xte = np.eye(C)[yte] + 0.01 * rng.standard_normal((len(yte), C))
    assert M.accuracy(M.knn_predict(xtr, ytr, xte, k=20, num_classes=C), yte) == 1.0
    assert M.accuracy(M.linear_probe_predict(xtr, ytr, xte, C), yte) == 1.0
    # label-independent features: 1-NN predicts a label drawn like the training labels
    ntr, nte = rng.standard_normal((len(ytr), 32)), rng.standard_normal((len(yte), 32))
    acc = M.accuracy(M.knn_predict(ntr, ytr, nte, k=1, num_classes=C), yte)
    chance = M.prior_chance(ytr, yte, C)
    assert chance == pytest.approx(np.sum(prior**2), abs=0.02)
    assert abs(acc - chance) < 4 * np.sqrt(chance * (1 - chance) / len(yte)), (acc, chance)


def test_ridge_recovers_linear_map():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 10))
    Wt = rng.standard_normal((10, 2))
    y = x @ Wt + np.array([1.0, -2.0])
    W = M.ridge_fit(x, y, lam=1e-9)
    np.testing.assert_allclose(M.ridge_predict(W, x), y, atol=1e-6)
    Wd = M.ridge_fit(x[:5], y[:5], lam=1e-9)  # dual form (N < D) interpolates
    np.testing.assert_allclose(M.ridge_predict(Wd, x[:5]), y[:5], atol=1e-5)
