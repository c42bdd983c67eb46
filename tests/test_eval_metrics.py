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


# ------------------------------------------------------------------ hand-computed values on tiny inputs
def test_depth_metrics_hand_computed():
    """Three valid pixels (gt, pred) = (1, 1.2), (2, 2), (4, 2.5) and one gt = 0 pixel (ignored)."""
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])
    pred = np.array([[1.2, 2.0], [2.5, 7.0]])
    m = M.depth_metrics(pred, gt)
    assert m["n"] == 3
    assert m["abs_rel"] == pytest.approx((0.2 / 1 + 0 + 1.5 / 4) / 3)  # 0.191667
    assert m["sq_rel"] == pytest.approx((0.04 / 1 + 0 + 2.25 / 4) / 3)  # 0.200833
    assert m["rmse"] == pytest.approx(np.sqrt((0.04 + 0 + 2.25) / 3))  # 0.873689
    # ratios max(g/p, p/g) = 1.2, 1, 1.6: below 1.25 twice, below 1.25^2 = 1.5625 twice, all below 1.953
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((2 / 3, 2 / 3, 1.0))
    e1, e3 = np.log(1 / 1.2), np.log(4 / 2.5)  # log errors; the middle pixel's is 0
    assert m["rmse_log"] == pytest.approx(np.sqrt((e1**2 + e3**2) / 3))
    assert m["silog"] == pytest.approx(100 * np.sqrt((e1**2 + e3**2) / 3 - ((e1 + e3) / 3) ** 2))
    assert m["log10"] == pytest.approx((abs(np.log10(1 / 1.2)) + abs(np.log10(1.6))) / 3)
    assert m["abs_rel"] == pytest.approx(0.1916667, abs=1e-7) and m["delta1"] != m["delta3"]


def test_correspondence_recall_hand_computed():
    gt = np.zeros((5, 2))
    pred = np.array([[0.0, 0.0], [1.0, 0.0], [0.9, 1.2], [0.0, -3.0], [3.0, 4.0]])  # errors 0, 1, 1.5, 3, 5
    rec = M.correspondence_recall(pred, gt, (1.0, 2.0, 4.0))
    assert rec == {"recall@1px": 2 / 5, "recall@2px": 3 / 5, "recall@4px": 4 / 5}  # thresholds inclusive
    assert M.correspondence_recall(np.zeros((0, 2)), np.zeros((0, 2)), (1.0,)) == {"recall@1px": 0.0}
    assert M.random_match_chance(100, 50, 2.0) == pytest.approx(np.pi * 4 / 5000)


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def test_relative_pose_error_hand_computed():
    """Exact matches of 3-D points seen by two cameras (B = R_y(10 deg) A + t): errors are the rotation /
    direction offsets of the ground truth they are compared with."""
    rng = np.random.default_rng(0)
    K = np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]])
    X = np.c_[rng.uniform(-2, 2, (80, 2)), rng.uniform(4, 8, 80)]
    R, t = _rot("y", 10.0), np.array([0.5, 0.1, 0.0])
    Xb = X @ R.T + t
    pa = (X @ K.T)[:, :2] / X[:, 2:]
    pb = (Xb @ K.T)[:, :2] / Xb[:, 2:]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    e = M.relative_pose_error(pa, pb, K, T, threshold_px=0.5)
    assert e["rot_err_deg"] < 0.01 and e["trans_err_deg"] < 0.1 and e["inliers"] >= 75, e
    T5 = T.copy()
    T5[:3, :3] = _rot("z", 5.0) @ R  # ground truth off by 5 deg about z
    assert M.relative_pose_error(pa, pb, K, T5, 0.5)["rot_err_deg"] == pytest.approx(5.0, abs=0.01)
    Tf = T.copy()
    Tf[:3, 3] = -3 * t  # opposite direction (scale does not matter)
    assert M.relative_pose_error(pa, pb, K, Tf, 0.5)["trans_err_deg"] == pytest.approx(180.0, abs=0.1)
    Tp = T.copy()
    Tp[:3, 3] = [0.1, -0.5, 0.0]  # perpendicular to t
    assert M.relative_pose_error(pa, pb, K, Tp, 0.5)["trans_err_deg"] == pytest.approx(90.0, abs=0.1)
    assert M.rotation_error_deg(_rot("x", 30.0), _rot("x", -15.0)) == pytest.approx(45.0)
    assert M.angle_between_deg([1, 0, 0], [1, 1, 0]) == pytest.approx(45.0)


def test_knn_vote_hand_computed():
    """Test direction 60 deg; neighbours at 65 deg (class 1), 35 and 30 deg (class 0), far ones at 170+.

    k=3, T=0.07: weights exp((s - s_max)/T) = 1 for class 1 vs 0.277 + 0.156 for class 0 -> class 1.
    T=1: 1 vs 0.914 + 0.878 -> class 0 (nearly a majority vote). k=1 -> class 1.
    """

    def unit(deg):
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]

    train = np.array([unit(65), unit(35), unit(30), unit(170), unit(180)])
    train[1] *= 100.0  # cosine similarity: the scale of a feature does not matter
    y = np.array([1, 0, 0, 1, 1])
    test = np.array([unit(60)])
    assert M.knn_predict(train, y, test, k=3, temperature=0.07).tolist() == [1]
    assert M.knn_predict(train, y, test, k=3, temperature=1.0).tolist() == [0]
    assert M.knn_predict(train, y, test, k=1).tolist() == [1]
    # k=5, T=1: class 1 gets 1 + exp(cos 110 - cos 5) + exp(cos 120 - cos 5) = 1.486 < 1.792 -> class 0
    assert M.knn_predict(train, y, test, k=5, temperature=1.0).tolist() == [0]
    w_far = np.exp(np.cos(np.radians(110)) - np.cos(np.radians(5))) + np.exp(
        np.cos(np.radians(120)) - np.cos(np.radians(5))
    )
    assert 1 + w_far == pytest.approx(1.486, abs=1e-3)


def test_probe_ridge_strength_is_chosen_on_the_training_set():
    """As many dimensions as samples, one informative among them: a weak fixed ridge interpolates the
    training set and generalises poorly; cross-validation on the training samples alone picks a stronger
    ridge that does far better on held-out samples."""
    rng = np.random.default_rng(0)

    def draw(n):
        y = rng.integers(0, 2, n)
        x = rng.standard_normal((n, 60))
        x[:, 0] = 2.0 * (2 * y - 1) + rng.standard_normal(n)
        return x, y

    xtr, ytr = draw(60)
    xte, yte = draw(2000)
    lam = M.select_ridge_lambda(xtr, ytr, 2)
    assert lam >= 1.0 and lam == M.select_ridge_lambda(xtr, ytr, 2)  # deterministic
    weak = M.accuracy(M.linear_probe_predict(xtr, ytr, xte, 2, lam=1e-3), yte)
    chosen = M.accuracy(M.linear_probe_predict(xtr, ytr, xte, 2), yte)
    assert chosen > weak + 0.1, (weak, chosen)
    with pytest.raises(ValueError, match="at least 2 training samples"):
        M.select_ridge_lambda(xtr[:1], ytr[:1], 2)


def test_linear_probe_hand_computed():
    """Two classes along the axes; after L2 normalisation the ridge classifier splits at the diagonal."""
    train = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    y = np.array([0, 0, 1, 1])
    test = np.array([[5.0, 1.0], [0.2, 0.9], [1.0, 0.8], [0.7, 1.0]])
    assert M.linear_probe_predict(train, y, test, 2, lam=1e-2).tolist() == [0, 1, 0, 1]
    # ridge with a negligible penalty fits y = 2x + 1 exactly: W = [2], b = 1
    W = M.ridge_fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([1.0, 3.0, 5.0, 7.0]), lam=1e-12)
    np.testing.assert_allclose(W.ravel(), [2.0, 1.0], atol=1e-9)
    assert M.accuracy(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 0.75
    assert M.prior_chance(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2) == pytest.approx(0.5)


def test_scene_bootstrap_ci_resamples_whole_scenes():
    from dinov3_ros.eval.metrics import scene_bootstrap_ci

    # 6 scenes of 8 frames; each scene's frames share one score (fully correlated within a scene)
    scene_scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
    scenes = np.repeat(np.arange(6), 8)
    values = scene_scores[scenes]
    lo, hi = scene_bootstrap_ci(values, scenes, draws=4000)
    assert lo < values.mean() < hi
    # the mean of 6 draws from the scene scores: the interval is that wide, not that of 48 independent
    # values (resampling frames instead of scenes would give about sqrt(8) times narrower)
    per_frame = np.random.default_rng(0).choice(values, (4000, values.size)).mean(1)
    frame_width = np.quantile(per_frame, 0.975) - np.quantile(per_frame, 0.025)
    assert hi - lo > 2.0 * frame_width
    sd = scene_scores.std() / np.sqrt(6)
    assert abs((hi - lo) - 2 * 1.96 * sd) < 0.35 * (hi - lo)
    assert scene_bootstrap_ci([0.5, 0.5], [3, 3]) == [0.5, 0.5]  # one scene: no spread
    with pytest.raises(ValueError, match="one scene per value"):
        scene_bootstrap_ci([0.1, 0.2], [0])
