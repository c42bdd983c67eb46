"""Evaluation metrics as plain numpy functions, with the published definitions.

Depth (``dinov3/eval/depth/metrics.py``; valid = ``gt > 0``): RMSE, AbsRel, SqRel, delta_k, RMSE-log,
SILog, log10. Objects: mask IoU, box IoU and CorLoc (LOST protocol: correct when IoU >= 0.5).
Correspondences: recall within pixel thresholds (fraction of predicted matches whose target lies within
``r`` px of the ground truth, as in Probe3D) and relative-pose error from the essential matrix.
Probes: k-NN (cosine, temperature-weighted vote as in DINO), ridge (closed-form linear) probes, chance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# --------------------------------------------------------------------------------------------
# depth
# --------------------------------------------------------------------------------------------
def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Depth metrics over pixels with ``gt > 0`` (and ``valid`` if given); ``pred`` must be > 0 there.

    Returns ``abs_rel, sq_rel, rmse, rmse_log, delta1, delta2, delta3, silog, log10`` and ``n``.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    m = gt > 0
    if valid is not None:
        m &= np.asarray(valid, bool)
    if not m.any():
        raise ValueError("no valid ground-truth depth pixels")
    p, g = pred[m], gt[m]
    if np.any(~np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("predicted depth must be finite and > 0 on valid pixels (clamp it first)")
    ratio = np.maximum(g / p, p / g)
    e = np.log(g) - np.log(p)
    return {
        "abs_rel": float(np.mean(np.abs(g - p) / g)),
        "sq_rel": float(np.mean((g - p) ** 2 / g)),
        "rmse": float(np.sqrt(np.mean((g - p) ** 2))),
        "rmse_log": float(np.sqrt(np.mean(e**2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
        "silog": float(100.0 * np.sqrt(max(np.mean(e**2) - np.mean(e) ** 2, 0.0))),
        "log10": float(np.mean(np.abs(np.log10(g) - np.log10(p)))),
        "n": int(m.sum()),
    }


def mean_metrics(items: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-key mean of a list of metric dicts (``n`` is summed)."""
    if not items:
        return {}
    out = {}
    for k in items[0]:
        vals = [float(d[k]) for d in items]
        out[k] = float(np.sum(vals)) if k == "n" else float(np.mean(vals))
    return out


# --------------------------------------------------------------------------------------------
# masks and boxes
# --------------------------------------------------------------------------------------------
def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` (exclusive max) of a mask, ``None`` when empty."""
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes ``(x0, y0, x1, y1)`` with exclusive max corners (pixel-area convention)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area) if area > 0 else 0.0


def corloc(pred_boxes: Sequence, gt_boxes: Sequence[Sequence], thr: float = 0.5) -> float:
    """CorLoc: fraction of images whose single predicted box has IoU >= ``thr`` with *any* GT box.

    ``pred_boxes[i]`` is a box or ``None`` (counts as wrong); ``gt_boxes[i]`` is a list of boxes.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError("one predicted box per image is required")
    if not pred_boxes:
        raise ValueError("no images")
    return float(np.mean(corloc_hits(pred_boxes, gt_boxes, thr)))


def corloc_hits(pred_boxes: Sequence, gt_boxes: Sequence[Sequence], thr: float = 0.5) -> np.ndarray:
    """Per image: whether its predicted box has IoU >= ``thr`` with any of its GT boxes (see :func:`corloc`)."""
    return np.array(
        [p is not None and any(box_iou(p, g) >= thr for g in gts) for p, gts in zip(pred_boxes, gt_boxes)],
        bool,
    )


# --------------------------------------------------------------------------------------------
# correspondences and relative pose
# --------------------------------------------------------------------------------------------
def correspondence_recall(
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = (1.0, 2.0, 4.0)
) -> dict[str, float]:
    """Fraction of matches whose predicted target pixel is within each threshold (px) of the GT target."""
    pred, gt = np.asarray(pred, np.float64).reshape(-1, 2), np.asarray(gt, np.float64).reshape(-1, 2)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must match")
    if pred.shape[0] == 0:
        return {f"recall@{t:g}px": 0.0 for t in thresholds}
    err = np.linalg.norm(pred - gt, axis=1)
    return {f"recall@{t:g}px": float(np.mean(err <= t)) for t in thresholds}


def random_match_chance(width: int, height: int, radius: float) -> float:
    """Probability that a uniformly random target pixel lies within ``radius`` of a given pixel
    (disc area over image area, ignoring borders): the chance level of correspondence recall."""
    return float(min(1.0, np.pi * radius**2 / (width * height)))


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees."""
    c = (np.trace(np.asarray(R, np.float64)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Geodesic angle between two rotations, degrees."""
    return rotation_angle_deg(np.asarray(R_est).T @ np.asarray(R_gt))


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two vectors (degrees); 0..180."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 180.0
    return float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0))))


def relative_pose_error(
    pts_a: np.ndarray, pts_b: np.ndarray, K: np.ndarray, T_b_a: np.ndarray, threshold_px: float = 1.0
) -> dict[str, float]:
    """Estimate ``R, t`` from matches (5-point RANSAC essential matrix + cheirality, OpenCV) and compare
    with the GT transform ``T_b_a`` (A camera -> B camera). Fails (errors 180 deg) with < 5 matches.

    Returns ``rot_err_deg``, ``trans_err_deg`` (angle between translation directions) and ``inliers``.
    """
    import cv2

    pa = np.ascontiguousarray(pts_a, np.float64).reshape(-1, 2)
    pb = np.ascontiguousarray(pts_b, np.float64).reshape(-1, 2)
    fail = {"rot_err_deg": 180.0, "trans_err_deg": 180.0, "inliers": 0}
    if pa.shape[0] < 5:
        return fail
    E, mask = cv2.findEssentialMat(pa, pb, K, method=cv2.RANSAC, prob=0.999, threshold=threshold_px)
    if E is None or E.shape != (3, 3):
        if E is None or E.shape[0] < 3:
            return fail
        E = E[:3]
    n, R, t, _ = cv2.recoverPose(E, pa, pb, K, mask=mask)
    return {
        "rot_err_deg": rotation_error_deg(R, T_b_a[:3, :3]),
        "trans_err_deg": angle_between_deg(t, T_b_a[:3, 3]),
        "inliers": int(n),
    }


# --------------------------------------------------------------------------------------------
# probes
# --------------------------------------------------------------------------------------------
def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> np.ndarray:
    """Weighted k-NN on cosine similarity (DINO's vote: weights ``exp(sim / T)``)."""
    train_y = np.asarray(train_y, np.int64)
    C = int(num_classes if num_classes is not None else train_y.max() + 1)
    k = max(1, min(int(k), train_x.shape[0]))
    sim = _l2n(test_x) @ _l2n(train_x).T
    idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(sim, idx, 1)
    w = np.exp((s - s.max(1, keepdims=True)) / temperature)
    votes = np.zeros((test_x.shape[0], C))
    np.add.at(votes, (np.repeat(np.arange(test_x.shape[0]), k), train_y[idx].ravel()), w.ravel())
    return votes.argmax(1)


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float = 1e-2) -> np.ndarray:
    """Closed-form ridge regression with bias: returns ``W [D+1, T]`` (last row = bias).

    ``lam`` is relative to the mean feature energy (scale-free). ``y`` is ``[N]`` or ``[N, T]``.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    y2 = y[:, None] if y.ndim == 1 else y
    mu = x.mean(0)
    xc = x - mu
    D = x.shape[1]
    scale = float(np.mean(np.sum(xc**2, 1))) / max(D, 1) + 1e-12
    if x.shape[0] >= D:
        A = xc.T @ xc + lam * scale * x.shape[0] * np.eye(D)
        W = np.linalg.solve(A, xc.T @ (y2 - y2.mean(0)))
    else:  # dual form
        G = xc @ xc.T + lam * scale * x.shape[0] * np.eye(x.shape[0])
        W = xc.T @ np.linalg.solve(G, y2 - y2.mean(0))
    b = y2.mean(0) - mu @ W
    return np.vstack([W, b[None]])


def ridge_predict(W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply :func:`ridge_fit` weights."""
    return np.asarray(x, np.float64) @ W[:-1] + W[-1]


#: ridge strengths the class probe chooses from (relative to the feature energy, see :func:`ridge_fit`)
PROBE_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def select_ridge_lambda(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    lambdas: tuple[float, ...] = PROBE_LAMBDAS,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """The ridge strength with the best ``folds``-fold cross-validated accuracy on the training set alone
    (ties go to the stronger one), as linear-probe protocols tune their regularisation: with fewer crops
    than feature dimensions a fixed weak ridge interpolates the training set."""
    x, y = _l2n(np.asarray(train_x)), np.asarray(train_y, np.int64)
    k = min(int(folds), len(y))
    if k < 2:
        raise ValueError(
            f"choosing the probe's ridge strength needs at least 2 training samples, got {len(y)}"
        )
    parts = np.array_split(np.random.default_rng(seed).permutation(len(y)), k)
    splits = [(np.setdiff1d(np.arange(len(y)), part), part) for part in parts]
    Y = np.eye(num_classes)[y]
    best_acc, best_lam = -1.0, float(lambdas[0])
    for lam in sorted(lambdas):
        hits = 0
        for rest, part in splits:
            hits += int((ridge_predict(ridge_fit(x[rest], Y[rest], lam), x[part]).argmax(1) == y[part]).sum())
        if hits / len(y) >= best_acc:
            best_acc, best_lam = hits / len(y), float(lam)
    return best_lam


def linear_probe_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, lam: float | None = None
) -> np.ndarray:
    """Ridge classifier on L2-normalised features (one-hot targets); returns predicted classes. ``lam``
    None: chosen on the training set by :func:`select_ridge_lambda`."""
    if lam is None:
        lam = select_ridge_lambda(train_x, train_y, num_classes)
    Y = np.eye(num_classes)[np.asarray(train_y, np.int64)]
    W = ridge_fit(_l2n(train_x), Y, lam)
    return ridge_predict(W, _l2n(test_x)).argmax(1)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy."""
    pred, y = np.asarray(pred), np.asarray(y)
    if pred.shape != y.shape or y.size == 0:
        raise ValueError("accuracy needs equal-length, non-empty label arrays")
    return float(np.mean(pred == y))


def prior_chance(train_y: np.ndarray, test_y: np.ndarray, num_classes: int) -> float:
    """Chance accuracy of a classifier whose output is independent of the input and distributed like the
    training labels (e.g. 1-NN on label-independent features): ``sum_c p_train(c) * p_test(c)``."""
    pt = np.bincount(np.asarray(train_y, np.int64), minlength=num_classes) / max(len(train_y), 1)
    pe = np.bincount(np.asarray(test_y, np.int64), minlength=num_classes) / max(len(test_y), 1)
    return float(pt @ pe)


# --------------------------------------------------------------------------------------------
# uncertainty
# --------------------------------------------------------------------------------------------
def scene_bootstrap_ci(
    values: Sequence[float], scenes: Sequence[int], draws: int = 2000, level: float = 0.95, seed: int = 0
) -> list[float]:
    """Percentile interval ``[lo, hi]`` of the mean of ``values`` with whole scenes resampled.

    The frames of one scene share room, objects and textures, so their scores are correlated:
    resampling scenes (all of a scene's values together) instead of single values keeps that in the
    interval's width. One scene gives a zero-width interval.
    """
    v = np.asarray(values, np.float64)
    s = np.asarray(scenes)
    if v.size == 0 or v.shape != s.shape:
        raise ValueError("scene_bootstrap_ci needs one scene per value and at least one value")
    _, group = np.unique(s, return_inverse=True)
    sums = np.bincount(group, weights=v)
    counts = np.bincount(group).astype(np.float64)
    pick = np.random.default_rng(seed).integers(0, sums.size, (draws, sums.size))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    tail = (1.0 - level) / 2.0
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))]
