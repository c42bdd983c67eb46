"""Per-frame head operations of the pipeline on numpy patch features ``[h, w, C]``.

Thin, deterministic numpy/torch implementations (PCA basis with running statistics, mutual
nearest-neighbour matching with a ratio test and RANSAC inliers, TokenCut bipartition into instances,
back-projection and voxel downsampling). ``dinov3_ros.heads`` holds the reference heads; these are the
streaming forms the pipeline keeps per source.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.linalg
import scipy.ndimage


@dataclass
class PCABasis:
    """Running mean/covariance of patch features; projects onto the top-k principal axes."""

    mean: np.ndarray
    cov: np.ndarray
    comps: np.ndarray  # [k, C]
    lo: np.ndarray  # [k] projection range used to map to 0..255
    hi: np.ndarray

    @staticmethod
    def fit(x: np.ndarray, k: int) -> PCABasis:
        x = x.astype(np.float64)
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        b = PCABasis(mean, cov, np.zeros((k, x.shape[1])), np.zeros(k), np.ones(k))
        b._solve(k, None)
        b._range(x)
        return b

    def _solve(self, k: int, prev: np.ndarray | None) -> None:
        C = self.cov.shape[0]
        _w, v = np.linalg.eigh(self.cov)
        comps = v[:, ::-1][:, : min(k, C)].T
        if comps.shape[0] < k:
            comps = np.vstack([comps, np.zeros((k - comps.shape[0], C))])
        # Deterministic signs: follow the previous basis, else make the largest loading positive.
        for i in range(k):
            ref = prev[i] if prev is not None else comps[i]
            idx = int(np.argmax(np.abs(ref)))
            s = np.sign(comps[i] @ prev[i]) if prev is not None else np.sign(comps[i, idx])
            comps[i] *= 1.0 if s == 0 else s
        self.comps = comps

    def _range(self, x: np.ndarray) -> None:
        p = (x.astype(np.float64) - self.mean) @ self.comps.T
        self.lo, self.hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)

    def update(self, x: np.ndarray, momentum: float) -> None:
        x = x.astype(np.float64)
        m = x.mean(0)
        xc = x - m
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        self.mean = momentum * self.mean + (1 - momentum) * m
        self.cov = momentum * self.cov + (1 - momentum) * cov
        self._solve(self.comps.shape[0], self.comps.copy())
        lo, hi = self.lo.copy(), self.hi.copy()
        self._range(x)
        self.lo = momentum * lo + (1 - momentum) * self.lo
        self.hi = momentum * hi + (1 - momentum) * self.hi

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float64) - self.mean) @ self.comps.T).astype(np.float32)

    def to_rgb(self, x: np.ndarray) -> np.ndarray:
        p = (x.astype(np.float64) - self.mean) @ self.comps[:3].T
        span = np.maximum(self.hi[:3] - self.lo[:3], 1e-12)
        return np.clip((p - self.lo[:3]) / span * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _normalise(f: np.ndarray) -> np.ndarray:
    f = f.astype(np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def match_features(
    f0: np.ndarray, f1: np.ndarray, ratio: float, threshold: float, max_matches: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest neighbours (cosine) with a Lowe ratio test on distances.

    ``f0`` [N0, C] reference, ``f1`` [N1, C] current. Returns (idx0, idx1, score), best scores first.
    """
    a, b = _normalise(f0), _normalise(f1)
    sim = b @ a.T  # [N1, N0]
    if sim.shape[1] < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    order = np.argsort(-sim, axis=1, kind="stable")
    j = order[:, 0]
    i1 = np.arange(sim.shape[0])
    best, second = sim[i1, j], sim[i1, order[:, 1]]
    mutual = np.argmax(sim, axis=0)[j] == i1
    d1 = np.sqrt(np.maximum(2 - 2 * best, 0))
    d2 = np.sqrt(np.maximum(2 - 2 * second, 0))
    keep = mutual & (best >= threshold) & (d1 <= ratio * d2 + 1e-12)
    idx1 = i1[keep]
    idx0, score = j[keep], best[keep]
    top = np.argsort(-score, kind="stable")[:max_matches]
    return idx0[top], idx1[top], score[top].astype(np.float32)


def ransac_inliers(uv0: np.ndarray, uv1: np.ndarray, thresh_px: float) -> np.ndarray:
    """Epipolar (fundamental matrix) RANSAC inliers; all True for fewer than 8 matches."""
    n = uv0.shape[0]
    if n < 8:
        return np.ones(n, bool)
    cv2.setRNGSeed(0)
    _F, mask = cv2.findFundamentalMat(
        uv0.astype(np.float64), uv1.astype(np.float64), cv2.FM_RANSAC, float(thresh_px), 0.999, 2000
    )
    if mask is None:
        return np.ones(n, bool)
    return mask.reshape(-1).astype(bool)


def tokencut_instances(
    feats: np.ndarray, tau: float, eps: float, max_objects: int, min_patches: int
) -> tuple[np.ndarray, np.ndarray]:
    """TokenCut on a patch grid -> (labels [h, w] int32 1..K largest first, scores [K]).

    Graph: A_ij = 1 if cos(f_i, f_j) > tau else eps; the second smallest generalised eigenvector of
    (D - A) v = lambda D v splits the grid at its mean; the side holding the largest |v| is foreground.
    Foreground connected components (4-neighbour) become instances, ordered by size.
    """
    h, w, C = feats.shape
    f = _normalise(feats.reshape(-1, C)).astype(np.float64)
    A = f @ f.T
    A = np.where(A > tau, 1.0, eps)
    d = A.sum(1)
    D = np.diag(d)
    _vals, vecs = scipy.linalg.eigh(D - A, D, subset_by_index=[1, 1])
    v = vecs[:, 0]
    fg = v > v.mean()
    if not fg[int(np.argmax(np.abs(v)))]:
        fg = ~fg
    fg = fg.reshape(h, w)
    lab, n = scipy.ndimage.label(fg)
    if n == 0:
        return np.zeros((h, w), np.int32), np.zeros(0, np.float32)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    order = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_patches][:max_objects]
    out = np.zeros((h, w), np.int32)
    scores = []
    vn = np.abs(v - v.mean()).reshape(h, w)
    vmax = max(float(vn.max()), 1e-12)
    for k, lbl in enumerate(order, start=1):
        m = lab == lbl
        out[m] = k
        scores.append(float(vn[m].mean() / vmax))
    return out, np.asarray(scores, np.float32)


def backproject(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Depth [H, W] (metres along Z) + K -> (points [N, 3] float32, pixel index [N] into depth.ravel()).

    Non-finite or non-positive depths are skipped. Optical frame: x right, y down, z forward (REP 103).
    """
    H, W = depth.shape
    vs, us = np.mgrid[0:H:stride, 0:W:stride]
    z = depth[vs, us]
    ok = np.isfinite(z) & (z > 0)
    us, vs, z = us[ok], vs[ok], z[ok]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x = (us - cx) * z / fx
    y = (vs - cy) * z / fy
    pts = np.stack([x, y, z], axis=1).astype(np.float32)
    return pts, (vs * W + us).astype(np.int64)


def voxel_downsample(
    points: np.ndarray, colors: np.ndarray | None, voxel: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Average points (and colours) per ``voxel``-sized cube; output ordered by voxel key."""
    if voxel <= 0 or points.shape[0] == 0:
        return points, colors
    keys = np.floor(points / voxel).astype(np.int64)
    _u, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    n = counts.shape[0]
    out = np.zeros((n, 3), np.float64)
    np.add.at(out, inv, points)
    out /= counts[:, None]
    cols = None
    if colors is not None:
        c = np.zeros((n, 3), np.float64)
        np.add.at(c, inv, colors.astype(np.float64))
        cols = np.clip(c / counts[:, None] + 0.5, 0, 255).astype(np.uint8)
    return out.astype(np.float32), cols


class InstanceTracker:
    """Keeps instance ids stable across frames of one source by greedy IoU on the patch grid."""

    def __init__(self) -> None:
        self.prev: dict[int, np.ndarray] = {}
        self.next_id = 1

    def assign(self, labels: np.ndarray, iou_min: float, max_id: int) -> np.ndarray:
        """Map labels 1..K of this frame to persistent ids (0 stays background)."""
        K = int(labels.max()) if labels.size else 0
        ids = np.zeros(K + 1, np.int64)
        used: set[int] = set()
        cur = {k: labels == k for k in range(1, K + 1)}
        pairs = []
        for k, m in cur.items():
            for pid, pm in self.prev.items():
                inter = np.logical_and(m, pm).sum()
                if inter:
                    pairs.append((inter / np.logical_or(m, pm).sum(), k, pid))
        for iou, k, pid in sorted(pairs, key=lambda t: (-t[0], t[1], t[2])):
            if iou >= iou_min and ids[k] == 0 and pid not in used:
                ids[k] = pid
                used.add(pid)
        for k in range(1, K + 1):
            if ids[k] == 0:
                # Ids cycle within the mask's range; skip ids taken in this frame.
                for _ in range(max_id):
                    cand = self.next_id
                    self.next_id = 1 if self.next_id >= max_id else self.next_id + 1
                    if cand not in used:
                        ids[k] = cand
                        used.add(cand)
                        break
        self.prev = {int(ids[k]): m for k, m in cur.items()}
        return ids
