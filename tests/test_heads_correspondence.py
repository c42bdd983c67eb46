"""Correspondences: matcher on real photos with known motion, OpenCV verification, 3-D rigid motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data as sd
import torch
from scipy import ndimage

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.heads import correspondence
from dinov3_ros.heads.correspondence import (
    Matches,
    estimate_rigid,
    kabsch,
    lift_to_3d,
    match,
    match_tensors,
    ransac_trials,
    ransac_triples,
    verify,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- deterministic dense descriptor (stands in for a backbone so the matcher itself is tested)


def grid_descriptor(img: np.ndarray, patch: int = 16, bins: int = 8, context: int = 2) -> np.ndarray:
    """SIFT-like dense descriptor on the patch grid: ``[h, w, C]`` float32.

    Per 8x8 cell: magnitude-weighted gradient-orientation histogram (``bins``) at two blur scales plus
    mean colour; a patch's descriptor concatenates the cells of a ``(2·context+1)·2`` square window
    centred on it (so neighbouring patches differ), sqrt-normalised (RootSIFT style).
    """
    g = img.astype(np.float64) / 255.0
    gray = g @ np.array([0.299, 0.587, 0.114])
    H, W = gray.shape
    h, w = H // patch, W // patch
    cell = patch // 2
    feats = []
    for sigma in (1.0, 2.5):
        s = ndimage.gaussian_filter(gray, sigma)
        gy, gx = np.gradient(s)
        mag = np.hypot(gx, gy)
        ang = (np.arctan2(gy, gx) % (2 * np.pi)) / (2 * np.pi) * bins
        b0 = np.floor(ang).astype(int) % bins
        frac = ang - np.floor(ang)
        hist = np.zeros((H, W, bins))
        np.put_along_axis(hist, b0[..., None], (mag * (1 - frac))[..., None], axis=2)
        b1 = (b0 + 1) % bins
        hist += np.eye(bins)[b1] * (mag * frac)[..., None]
        feats.append(hist)
    feats.append(ndimage.gaussian_filter(g, (2, 2, 0)) * 0.5)
    pix = np.concatenate(feats, axis=2)[: h * patch, : w * patch]
    cells = pix.reshape(2 * h, cell, 2 * w, cell, -1).mean((1, 3))  # [2h, 2w, D]
    r = context
    pad = np.pad(cells, ((2 * r, 2 * r), (2 * r, 2 * r), (0, 0)), mode="edge")
    parts = []
    for dy in range(-2 * r, 2 * r + 2):
        for dx in range(-2 * r, 2 * r + 2):
            parts.append(pad[2 * r + dy : 2 * r + dy + 2 * h : 2, 2 * r + dx : 2 * r + dx + 2 * w : 2])
    d = np.sqrt(np.concatenate(parts, axis=2))
    d = d - d.mean(axis=(0, 1), keepdims=True)
    return d.astype(np.float32)


def shift_pair(img: np.ndarray, dx: int, dy: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two crops of ``img``: the second is the first moved by ``(dx, dy)``: p1 = p0 - (dx, dy)."""
    H, W = size
    a = img[40 : 40 + H, 40 : 40 + W]
    b = img[40 + dy : 40 + dy + H, 40 + dx : 40 + dx + W]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


PHOTOS = ["astronaut", "coffee", "chelsea"]
SIZE = (256, 320)  # H, W -> 16 x 20 patches


def _inside(p: np.ndarray) -> np.ndarray:
    return (p[:, 0] >= 0) & (p[:, 1] >= 0) & (p[:, 0] < SIZE[1]) & (p[:, 1] < SIZE[0])


def _homography() -> np.ndarray:
    a = 0.08
    return np.array(
        [[1.05 * np.cos(a), -np.sin(a), 12.0], [np.sin(a), 1.05 * np.cos(a), -8.0], [2e-5, 1e-5, 1.0]]
    )


def _apply_h(H: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.c_[p, np.ones(len(p))] @ H.T
    return q[:, :2] / q[:, 2:]


@pytest.mark.parametrize("name", PHOTOS)
def test_shift_matches_within_one_patch(name):
    img = getattr(sd, name)()
    dx, dy = 37, 21  # not a multiple of the patch size
    a, b = shift_pair(img, dx, dy, SIZE)
    m = match(grid_descriptor(a), grid_descriptor(b), mutual=True)
    truth = m.pts0 - np.array([dx, dy], dtype=np.float32)
    keep = _inside(truth)  # patches whose true match left the image have no correct answer
    assert keep.sum() >= 120
    err = np.linalg.norm(m.pts1[keep] - truth[keep], axis=1)
    assert (err < 16).mean() >= 0.90
    # every returned match is mutual: nn(0->1) of idx0 is idx1 and vice versa
    da, db = grid_descriptor(a), grid_descriptor(b)
    fa = torch.nn.functional.normalize(torch.from_numpy(da).reshape(-1, da.shape[-1]), dim=1)
    fb = torch.nn.functional.normalize(torch.from_numpy(db).reshape(-1, db.shape[-1]), dim=1)
    S = fa @ fb.T
    assert np.array_equal(S.argmax(1).numpy()[m.idx0], m.idx1)
    assert np.array_equal(S.argmax(0).numpy()[m.idx1], m.idx0)


@pytest.mark.parametrize("name", PHOTOS)
def test_homography_matches_and_verification(name):
    img = getattr(sd, name)()
    src = np.ascontiguousarray(img[40 : 40 + SIZE[0], 40 : 40 + SIZE[1]])
    H = _homography()
    dst = cv2.warpPerspective(src, H, (SIZE[1], SIZE[0]))
    m = match(grid_descriptor(src), grid_descriptor(dst), verify_with="homography", ransac_threshold=8.0)
    truth = _apply_h(H, m.pts0.astype(np.float64))
    keep = _inside(truth)
    err = np.linalg.norm(m.pts1[keep] - truth[keep], axis=1)
    assert (err < 16).mean() >= 0.90
    # the verified homography maps the whole image grid to within a few pixels of the truth
    yy, xx = np.mgrid[8 : SIZE[0] : 16, 8 : SIZE[1] : 16]
    grid = np.c_[xx.ravel(), yy.ravel()].astype(np.float64)
    gerr = np.linalg.norm(_apply_h(H, grid) - _apply_h(m.model, grid), axis=1)
    assert gerr.mean() < 8.0 and gerr.max() < 16.0
    assert m.inliers.mean() > 0.6
    assert np.all(err[m.inliers[keep]] < 16)  # inliers are correct matches


def test_image_refinement_makes_matches_subpixel(monkeypatch):
    """With the two images, matches are refined to the pixel-exact shift (a photo's crops moved by a
    known amount) before verification; the NCC scores follow ``subset``."""
    img = sd.chelsea()  # fur: textured nearly everywhere
    dx, dy = 37, 21
    a, b = shift_pair(img, dx, dy, SIZE)
    fa, fb = grid_descriptor(a), grid_descriptor(b)
    kw = {"offset": (-0.5, -0.5), "verify_with": "fundamental"}  # pixel centres at integers
    feat = match(fa, fb, **kw)
    verified = []
    real_verify = correspondence.verify
    monkeypatch.setattr(
        correspondence,
        "verify",
        lambda m, *args, **kwargs: verified.append(m.pts1.copy()) or real_verify(m, *args, **kwargs),
    )
    ref = match(fa, fb, image0=a, image1=b, **kw)
    assert len(verified) == 1 and np.array_equal(verified[0], ref.pts1)  # verified: the refined points
    assert feat.ncc is None and np.array_equal(feat.pts0, ref.pts0) and np.array_equal(feat.idx1, ref.idx1)
    truth = ref.pts0 - np.array([dx, dy], dtype=np.float32)
    m = 17  # template half-width 5 + search radius 12: the truth is within reach of the search
    keep = np.all((truth >= m) & (truth <= np.array([SIZE[1], SIZE[0]]) - 1 - m), 1)
    e_feat = np.linalg.norm(feat.pts1 - truth, axis=1)[keep]
    e_ref = np.linalg.norm(ref.pts1 - truth, axis=1)[keep]
    assert keep.sum() > 100
    assert np.median(e_ref) < 0.2 and (e_ref < 1.0).mean() >= 0.9, (np.median(e_ref), (e_ref < 1).mean())
    assert np.median(e_feat) > 2.0
    assert ref.ncc.shape == (len(ref),) and ref.ncc.dtype == np.float32
    sub = ref.subset(ref.inliers)
    assert np.array_equal(sub.ncc, ref.ncc[ref.inliers], equal_nan=True)
    # the default search radius is 3/4 of a patch in input pixels, from the mapping
    assert correspondence._image_radius(16.0, None, None, None) == 12.0
    assert correspondence._image_radius(16.0, (2.0, 1.0), (5.0, 0.0), None) == 24.0
    assert correspondence._image_radius(16.0, None, None, lambda p: p * 0.5) == 6.0
    with pytest.raises(ValueError, match="both image0 and image1"):
        match(fa, fb, image0=a)


def test_image_refine_drop_keeps_only_refined_matches():
    """``image_refine_drop``: the matches the images could not refine (here: image 1's right half made
    flat, so nothing there correlates) are dropped, the refined ones that pass the forward-backward
    check (on this true shift: nearly all) are kept as they were; without it (negative control) the
    unrefined matches stay at their patch-precise positions."""
    a, b = shift_pair(sd.chelsea(), 37, 21, SIZE)
    fa, fb = grid_descriptor(a), grid_descriptor(b)  # the features see the whole image ...
    flat = b.copy()
    flat[:, SIZE[1] // 2 :] = 128  # ... the refinement a flat right half
    kw = {"offset": (-0.5, -0.5)}
    feat = match(fa, fb, **kw)
    kept = match(fa, fb, image0=a, image1=flat, **kw)
    dropped = match(fa, fb, image0=a, image1=flat, image_refine_drop=True, **kw)
    moved = np.any(kept.pts1 != feat.pts1, 1)
    assert 20 < moved.sum() < len(kept) - 20  # both kinds present
    assert len(kept) == len(feat) and 0.9 * moved.sum() <= len(dropped) <= moved.sum()
    pos = {int(i): k for k, i in enumerate(kept.idx0)}
    rows = np.array([pos[int(i)] for i in dropped.idx0])
    assert moved[rows].all() and np.array_equal(dropped.pts1, kept.pts1[rows])
    assert np.all(dropped.pts1[:, 0] < SIZE[1] // 2 + 17)  # none from the flat half
    assert PipelineConfig(match_unrefined="keep").match_args()["image_refine_drop"] is False
    assert PipelineConfig().match_args()["image_refine_drop"] is True  # the default: drop


def test_ratio_threshold_and_coordinates():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((6, 7, 32)).astype(np.float32)
    m = match(f, f, ratio=None, refine=False)  # identical maps: identity matching, exact centres
    assert len(m) == 42
    assert np.array_equal(m.idx0, m.idx1)
    np.testing.assert_allclose(m.pts0, m.pts1)
    np.testing.assert_allclose(m.pts0[8], [(8 % 7 + 0.5) * 16, (8 // 7 + 0.5) * 16])
    # input-pixel mapping: scale then offset
    m2 = match(f, f, ratio=None, refine=False, scale=(0.5, 0.25), offset=(3.0, 4.0))
    np.testing.assert_allclose(m2.pts0, m.pts0 * [0.5, 0.25] + [3.0, 4.0], rtol=1e-6)
    # a duplicated descriptor in frame 1 makes the match ambiguous: the ratio test drops it
    g = f.copy()
    g[0, 1] = f[0, 0]
    t = match_tensors(f, g, ratio=0.9, refine=False)
    assert 0 not in t["idx0"].tolist()
    t_all = match_tensors(f, f, min_score=1.1)  # nothing reaches similarity 1.1
    assert t_all["idx0"].numel() == 0


def test_subpatch_refinement_interpolates():
    # a smooth feature field sampled at half-patch offsets: the soft-argmax lands between patches
    h, w = 12, 12
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    centres = np.stack([xx, yy], -1).reshape(-1, 2)
    anchors = np.random.default_rng(1).uniform(0, 12, size=(64, 2))

    def field(pos):
        d2 = ((pos[:, None, :] - anchors[None]) ** 2).sum(-1)
        return np.exp(-d2 / 8.0)

    f0 = field(centres).reshape(h, w, -1).astype(np.float32)
    f1 = field(centres + 0.5).reshape(h, w, -1).astype(np.float32)  # frame 1 sampled half a patch further
    raw = match(f0, f1, refine=False, ratio=None)
    ref = match(f0, f1, refine=True, ratio=None, window=3, temperature=0.002)
    inner = (raw.pts0[:, 0] > 40) & (raw.pts0[:, 0] < 150) & (raw.pts0[:, 1] > 40) & (raw.pts0[:, 1] < 150)
    truth = ref.pts0 - 8.0  # p1 = p0 - half a patch
    e_raw = np.linalg.norm(raw.pts1 - truth, axis=1)[inner].mean()
    e_ref = np.linalg.norm(ref.pts1 - truth, axis=1)[inner].mean()
    assert e_ref < 0.75 * e_raw


def test_essential_matrix_recovers_pose():
    rng = np.random.default_rng(2)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    X = np.c_[rng.uniform(-2, 2, 200), rng.uniform(-1.5, 1.5, 200), rng.uniform(2, 6, 200)]
    ang = np.deg2rad(5.0)
    R = cv2.Rodrigues(np.array([0.2, 1.0, 0.1]) / np.linalg.norm([0.2, 1.0, 0.1]) * ang)[0]
    t = np.array([0.5, 0.05, 0.1])

    def proj(P):
        q = P @ K.T
        return q[:, :2] / q[:, 2:]

    p0 = proj(X) + rng.normal(0, 0.3, (200, 2))
    p1 = proj(X @ R.T + t) + rng.normal(0, 0.3, (200, 2))
    p1[:30] = rng.uniform(0, 640, (30, 2))  # 15% gross outliers
    m = Matches(
        pts0=p0.astype(np.float32),
        pts1=p1.astype(np.float32),
        scores=np.ones(200, np.float32),
        idx0=np.arange(200),
        idx1=np.arange(200),
        inliers=np.ones(200, bool),
    )
    verify(m, "essential", K=K, threshold=1.5)
    rot_err = np.degrees(np.arccos(np.clip((np.trace(m.R.T @ R) - 1) / 2, -1, 1)))
    t_err = np.degrees(np.arccos(np.clip(m.t @ t / np.linalg.norm(t), -1, 1)))
    assert rot_err < 0.5 and t_err < 3.0
    assert m.inliers[:30].mean() < 0.2 and m.inliers[30:].mean() > 0.9
    # fundamental matrix: inliers satisfy the epipolar constraint
    verify(m, "fundamental", threshold=1.5)
    x0, x1 = np.c_[p0, np.ones(200)], np.c_[p1, np.ones(200)]
    lines = x0 @ m.model.T
    dist = np.abs((x1 * lines).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)
    assert np.median(dist[m.inliers]) < 1.5
    with pytest.raises(ValueError, match="intrinsics"):
        verify(m, "essential")


def _random_motion(rng):
    R = cv2.Rodrigues(rng.normal(size=3) * 0.3)[0]
    return R, rng.normal(size=3)


def test_kabsch_exact_and_ransac_with_outliers():
    rng = np.random.default_rng(3)
    R, t = _random_motion(rng)
    X0 = rng.uniform(-2, 2, (100, 3))
    X1 = X0 @ R.T + t
    Re, te = kabsch(X0, X1)
    np.testing.assert_allclose(Re, R, atol=1e-10)
    np.testing.assert_allclose(te, t, atol=1e-10)
    assert abs(np.linalg.det(Re) - 1) < 1e-10
    X1o = X1.copy()
    out = rng.choice(100, 35, replace=False)
    X1o[out] += rng.uniform(-3, 3, (35, 3)) + 0.5
    for method in ("kabsch", "open3d"):
        Rr, tr, inl = estimate_rigid(X0, X1o, threshold=0.05, method=method)
        np.testing.assert_allclose(Rr, R, atol=1e-8)
        np.testing.assert_allclose(tr, t, atol=1e-8)
        truth = np.ones(100, bool)
        truth[out] = False
        assert np.array_equal(inl, truth)


def _ransac_all_at_once(a, b, threshold, iterations, seed):
    """The RANSAC stage as one batch of every hypothesis, scored by the plain norm (the reference of the
    chunked, early-stopping one)."""
    Rs, ts = correspondence._rigid_hypotheses(a, b, ransac_triples(len(a), iterations, seed))
    r = np.linalg.norm(np.einsum("ikl,nl->ink", Rs, a) + ts[:, None] - b[None], axis=2)
    best = int(np.argmax((r < threshold).sum(1)))
    return Rs[best], ts[best]


def test_ransac_stops_once_confident_and_scores_all_without_confidence(monkeypatch):
    rng = np.random.default_rng(4)
    R, t = _random_motion(rng)
    X0 = rng.uniform(-2, 2, (300, 3))
    X1 = X0 @ R.T + t + rng.normal(size=(300, 3)) * 0.005
    out = rng.choice(300, 105, replace=False)  # 35% outliers
    X1[out] += rng.uniform(-3, 3, (105, 3)) + 0.5
    scored = []
    real = correspondence._inlier_counts
    monkeypatch.setattr(
        correspondence, "_inlier_counts", lambda Rs, *a, **k: scored.append(len(Rs)) or real(Rs, *a, **k)
    )
    # no confidence: every hypothesis is scored, and the chosen one is the all-at-once argmax, bit for bit
    Rr, tr = correspondence._ransac_kabsch(X0, X1, 0.05, 1000, 0, None)
    assert sum(scored) == 1000
    Rw, tw = _ransac_all_at_once(X0, X1, 0.05, 1000, 0)
    assert Rr.tobytes() == Rw.tobytes() and tr.tobytes() == tw.tobytes()
    # with confidence (the default) one chunk of 64 is enough at 65% inliers, and the motion is the same
    scored.clear()
    Rc, tc, inl = estimate_rigid(X0, X1, threshold=0.05)
    assert sum(scored) == 64
    np.testing.assert_allclose(Rc, R, atol=2e-3)
    np.testing.assert_allclose(tc, t, atol=5e-3)
    truth = np.ones(300, bool)
    truth[out] = False
    assert np.array_equal(inl, truth)
    # control: pure outliers never reach confidence, so every hypothesis is scored
    scored.clear()
    estimate_rigid(X0, rng.uniform(-3, 3, (300, 3)), threshold=0.05)
    assert sum(scored) == 1000


def test_ransac_trials():
    assert ransac_trials(1.0, 0.999) == 1.0 and ransac_trials(0.0, 0.999) == float("inf")
    assert abs(ransac_trials(0.5, 0.999) - np.log(0.001) / np.log(1 - 0.125)) < 1e-12  # ~51.7
    assert ransac_trials(0.5, 0.99) < ransac_trials(0.5, 0.999) < ransac_trials(0.4, 0.999)


@pytest.mark.parametrize("n", [4, 5, 6, 7, 13, 64, 255, 256, 1000, 10001, 2**20])
def test_ransac_triples_are_the_generator_choices(n):
    # the RANSAC samples drawn at once are exactly the per-sample Generator.choice calls (small n:
    # many repeats in Floyd's sampling and every shuffle case)
    for seed in range(6):
        for iterations in (1, 2, 9, 300):
            ref = correspondence._triples_loop(n, iterations, seed)
            got = ransac_triples(n, iterations, seed)
            assert got.dtype == ref.dtype and np.array_equal(got, ref), (n, seed, iterations)
            rng = np.random.default_rng(seed)
            assert np.array_equal(ref[0], rng.choice(n, 3, replace=False))
    with pytest.raises(ValueError, match="n > 3"):
        ransac_triples(3, 5, 0)


def test_ransac_residuals_are_the_norm_bit_for_bit():
    # the RANSAC scores decide which hypothesis wins: the fast layout must give the very same bits
    rng = np.random.default_rng(5)
    for (n_hyp, n), scale in zip(
        [(300, 400), (1, 3), (300, 17), (64, 1000), (7, 1)], [3.0, 1e-3, 1e3, 1.0, 5.0]
    ):
        Rs, ts = rng.normal(size=(n_hyp, 3, 3)), rng.normal(size=(n_hyp, 3)) * scale
        a = rng.normal(size=(n, 3)) * scale
        b = a @ Rs[0].T + rng.normal(size=(n, 3)) * 0.01 * scale
        ref = np.linalg.norm(np.einsum("ikl,nl->ink", Rs, a) + ts[:, None] - b[None], axis=2)
        assert correspondence._residuals(Rs, ts, a, b).tobytes() == ref.tobytes()


def test_ransac_counts_compared_squared_are_the_counts_of_the_roots():
    # counting ``s < bound`` instead of ``sqrt(s) < threshold``: the same counts, thresholds on and next
    # to the residuals included
    rng = np.random.default_rng(6)
    Rs, ts = rng.normal(size=(70, 3, 3)), rng.normal(size=(70, 3))
    a = rng.normal(size=(90, 3))
    b = a @ Rs[0].T + rng.normal(size=(90, 3)) * 0.05
    r = correspondence._residuals(Rs, ts, a, b)
    ths = [0.15, 1e-300, 1e200, 0.0, -1.0, np.inf, np.nan, 3.0]
    for v in r.reshape(-1)[::97]:
        ths += [float(v), np.nextafter(v, 0), np.nextafter(v, np.inf)]
    for th in ths:
        ref = (r < th).sum(1)
        assert np.array_equal(correspondence._inlier_counts(Rs, ts, a, b, th, chunk=16), ref), th


def test_lift_and_match_with_depth_recovers_motion():
    # a fronto-parallel textured plane at 3 m seen by two cameras related by a pure x translation
    K = np.array([[200.0, 0, 159.5], [0, 200.0, 127.5], [0, 0, 1]])
    depth = np.full(SIZE, 3.0)
    pts = np.array([[10.0, 20.0], [100.5, 50.25]])
    X, ok = lift_to_3d(pts, depth, K)
    assert ok.all()
    np.testing.assert_allclose(
        X,
        [
            [(10 - 159.5) * 3 / 200, (20 - 127.5) * 3 / 200, 3],
            [(100.5 - 159.5) * 3 / 200, (50.25 - 127.5) * 3 / 200, 3],
        ],
    )
    img = sd.astronaut()
    shift = 32  # px == 0.48 m at 3 m: camera 1 moved +0.48 m in x (scene moves -x)
    a, b = shift_pair(img, shift, 0, SIZE)
    m = match(grid_descriptor(a), grid_descriptor(b), K=K, depth0=depth, depth1=depth, rigid_threshold=0.1)
    assert m.R is not None and m.inliers.mean() > 0.8
    np.testing.assert_allclose(m.R, np.eye(3), atol=2e-2)
    np.testing.assert_allclose(m.t, [-shift * 3.0 / 200, 0, 0], atol=0.03)
    bad = depth.copy()
    bad[:, :] = np.nan
    _, ok = lift_to_3d(pts, bad, K)
    assert not ok.any()


def test_match_input_validation():
    f = np.zeros((4, 5, 8), np.float32)
    with pytest.raises(ValueError, match=r"\[h, w, C\]"):
        match(np.zeros((20, 8), np.float32), f)
    with pytest.raises(ValueError, match="channel"):
        match(f, np.zeros((4, 5, 9), np.float32))
    with pytest.raises(ValueError, match="window"):
        match(f + 1, f + 1, window=4)
