"""Correspondence evaluation: dense-feature matching vs generator ground truth, and relative pose.

Three matchers: ``heads`` (default, the pipeline's matcher) runs ``dinov3_ros.heads.correspondence.match``
on the two patch grids with the pipeline's default settings (mutual nearest neighbours, ratio test,
minimum similarity, soft-argmax refinement) and refines the matches with the two images (NCC template
matching, ``heads.subpixel``), as the pipeline does;
``heads-features`` is the same without the images, so the features' own precision stays measurable. Both
score every returned match whose source has a co-visible GT match. ``dense`` (Probe3D-style, adapted to
pixels): source pixels are the points of a stride-4 grid of frame A that have a valid (co-visible,
occlusion-checked) ground-truth match in B; up to ``n_sources`` of them are drawn (seeded). Each source
descriptor is sampled bilinearly from A's patch features; its nearest B patch (cosine) is refined to a
pixel by searching B's features bilinearly upsampled to a stride-2 grid within +-1 patch, with a
parabolic sub-pixel fit. Matches are ranked by the soft ratio weight ``1 - d1/d2`` (L2 distances of
normalised features) and the top ``keep`` are scored: recall@r = fraction of kept matches within ``r``
px of the GT. The relative pose comes from the kept matches (5-point RANSAC essential matrix, OpenCV)
and is compared with the GT pose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dinov3_ros.eval.metrics import (
    correspondence_recall,
    random_match_chance,
    relative_pose_error,
    scene_bootstrap_ci,
)
from dinov3_ros.synthetic.correspondence import gt_correspondences, relative_pose
from dinov3_ros.synthetic.frame import SynthFrame

THRESHOLDS = (1.0, 2.0, 4.0)

#: matcher(frame_a, frame_b, source_pixels [N,2]) -> (kept source pixels [M,2], predicted targets [M,2])
Matcher = Callable[[SynthFrame, SynthFrame, np.ndarray], tuple[np.ndarray, np.ndarray]]


def source_pixels(
    a: SynthFrame, b: SynthFrame, n: int, rng: np.random.Generator, stride: int = 4
) -> np.ndarray:
    """Up to ``n`` stride-``stride`` grid pixels of A with a valid GT match in B (random, seeded)."""
    u, v = np.meshgrid(np.arange(stride // 2, a.width, stride), np.arange(stride // 2, a.height, stride))
    px = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
    c = gt_correspondences(a, b, px)
    px = px[c.valid]
    if px.shape[0] > n:
        px = px[np.sort(rng.choice(px.shape[0], n, replace=False))]
    return px


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _bilinear(feat: np.ndarray, xy_patch: np.ndarray) -> np.ndarray:
    """Sample ``feat [h,w,C]`` at continuous patch coordinates ``[N,2]`` (x, y; centres at integers)."""
    h, w, _ = feat.shape
    x = np.clip(xy_patch[:, 0], 0, w - 1)
    y = np.clip(xy_patch[:, 1], 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return (
        feat[y0, x0] * (1 - fx) * (1 - fy)
        + feat[y0, x1] * fx * (1 - fy)
        + feat[y1, x0] * (1 - fx) * fy
        + feat[y1, x1] * fx * fy
    )


def match_features(
    fa: np.ndarray, fb: np.ndarray, src: np.ndarray, image_hw: tuple[int, int], keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Match source pixels of A (``[N,2]``) into B with patch features ``fa, fb [h,w,C]``.

    Returns the ``keep`` best (by ratio weight) source pixels and their predicted pixels in B.
    """
    H, W = image_hw
    h, w, C = fb.shape
    p = H / h
    da = _l2n(_bilinear(fa, (src + 0.5) / p - 0.5))
    fbn = _l2n(fb.reshape(-1, C))
    sim = da @ fbn.T
    top2 = np.argpartition(-sim, 1, axis=1)[:, :2]
    s2 = np.take_along_axis(sim, top2, 1)
    order = np.argsort(-s2, axis=1)
    s2 = np.take_along_axis(s2, order, 1)
    best = np.take_along_axis(top2, order, 1)[:, 0]
    d1 = np.sqrt(np.maximum(2 - 2 * s2[:, 0], 0))
    d2 = np.sqrt(np.maximum(2 - 2 * s2[:, 1], 1e-12))
    weight = 1.0 - d1 / d2
    # refine on a stride-2 grid of bilinearly upsampled B features, within +-1 patch of the best patch
    up = _upsample(fb, (H // 2, W // 2))
    up = _l2n(up)
    pred = np.concatenate(
        [_refine(up, da[i : i + 256], best[i : i + 256], w, p) for i in range(0, len(best), 256)]
    )
    sel = np.argsort(-weight, kind="stable")[: min(keep, len(weight))]
    return src[sel], pred[sel]


def _upsample(feat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``feat [h, w, C]`` to ``size`` (h, w), half-pixel centres, any channel count
    (OpenCV's resize refuses arrays of many channels)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(feat, np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _parabola(sm: np.ndarray, s0: np.ndarray, sp: np.ndarray) -> np.ndarray:
    den = sm - 2 * s0 + sp
    safe = np.where(np.abs(den) > 1e-9, den, 1.0)
    return np.where(np.abs(den) > 1e-9, 0.5 * (sm - sp) / safe, 0.0).clip(-0.5, 0.5)


def _refine(up: np.ndarray, da: np.ndarray, best: np.ndarray, w: int, p: float) -> np.ndarray:
    """Best stride-2 grid cell within +-1 patch of the best patch, with parabolic sub-cell offsets."""
    gh, gw = up.shape[:2]
    r = int(np.ceil(p / 2)) + 1  # cells: +-(p/2 + 1) * 2 px covers +-1 patch
    offs = np.arange(-r, r + 1)
    k = offs.size
    by, bx = best // w, best % w
    # grid cell g is centred on pixel 2g + 0.5; the best patch on pixel (b + 0.5) p - 0.5
    cy = np.rint(((by + 0.5) * p - 1.0) / 2).astype(int)
    cx = np.rint(((bx + 0.5) * p - 1.0) / 2).astype(int)
    gy = np.clip(cy[:, None] + offs[None, :], 0, gh - 1)  # [N,k]
    gx = np.clip(cx[:, None] + offs[None, :], 0, gw - 1)
    win = up[gy[:, :, None], gx[:, None, :]]  # [N,k,k,C]
    s = np.einsum("nijc,nc->nij", win, da)
    flat = s.reshape(s.shape[0], -1).argmax(1)
    iy, ix = flat // k, flat % k
    n = np.arange(s.shape[0])
    ym, yp = np.maximum(iy - 1, 0), np.minimum(iy + 1, k - 1)
    xm, xp = np.maximum(ix - 1, 0), np.minimum(ix + 1, k - 1)
    dy = np.where((iy > 0) & (iy < k - 1), _parabola(s[n, ym, ix], s[n, iy, ix], s[n, yp, ix]), 0.0)
    dx = np.where((ix > 0) & (ix < k - 1), _parabola(s[n, iy, xm], s[n, iy, ix], s[n, iy, xp]), 0.0)
    return np.stack([2.0 * (gx[n, ix] + dx) + 0.5, 2.0 * (gy[n, iy] + dy) + 0.5], 1)


def evaluate_matching(
    pairs: Sequence[tuple[SynthFrame, SynthFrame]],
    matcher: Matcher,
    n_sources: int = 2000,
    seed: int = 0,
    ransac_px: float = 2.0,
) -> dict:
    """Recall@1/2/4 px (mean over pairs, with 95% scene-bootstrap intervals), median relative-pose
    errors, and chance levels.

    The matcher gets GT-co-visible source pixels (it may ignore them and return its own sources, e.g.
    patch centres); recall is over the returned matches whose source has a valid GT match (GT for
    fractional sources via ``gt_correspondences(..., subpixel=True)``); the pose uses all of them.
    """
    rng = np.random.default_rng(seed)
    rec: list[dict] = []
    rot, trans, nm, scenes = [], [], [], []
    for a, b in pairs:
        src = source_pixels(a, b, n_sources, rng)
        if src.shape[0] < 8:
            continue
        scenes.append(a.scene_index)
        pa, pb = matcher(a, b, src)
        if len(pa) == 0:
            rec.append({f"recall@{t:g}px": 0.0 for t in THRESHOLDS})
            nm.append(0)
            rot.append(180.0)
            trans.append(180.0)
            continue
        gt = gt_correspondences(a, b, pa, subpixel=True)
        rec.append(correspondence_recall(pb[gt.valid], gt.pixels_b[gt.valid], THRESHOLDS))
        nm.append(int(gt.valid.sum()))
        pe = relative_pose_error(pa, pb, a.K, relative_pose(a, b), threshold_px=ransac_px)
        rot.append(pe["rot_err_deg"])
        trans.append(pe["trans_err_deg"])
    if not rec:
        raise ValueError("no usable frame pairs for the correspondence evaluation")
    out = {k: float(np.mean([r[k] for r in rec])) for k in rec[0]}
    H, W = pairs[0][0].depth.shape
    out.update(
        {
            "rot_err_deg_median": float(np.median(rot)),
            "trans_err_deg_median": float(np.median(trans)),
            "rot_err_deg_mean": float(np.mean(rot)),
            "pose_acc@5deg": float(np.mean(np.maximum(rot, trans) <= 5.0)),
            "pairs": len(rec),
            "matches_per_pair": float(np.mean(nm)),
            "chance": {f"recall@{t:g}px": random_match_chance(W, H, t) for t in THRESHOLDS},
            "scenes": len(set(scenes)),
            "ci95": {k: scene_bootstrap_ci([r[k] for r in rec], scenes) for k in rec[0]},
        }
    )
    return out


def heads_match(
    fa: np.ndarray,
    fb: np.ndarray,
    patch_size: int,
    image_a: np.ndarray | None = None,
    image_b: np.ndarray | None = None,
    inliers_only: bool = False,
    unrefined: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Matches of ``dinov3_ros.heads.correspondence.match`` with the pipeline's default settings
    (``PipelineConfig``: mutual NN, ratio test, minimum similarity, most matches; soft-argmax refine),
    refined with the frames' images (``image_a``, ``image_b``: ``SynthFrame.rgb``) when both are given:
    the matches the node publishes for these frames. ``inliers_only``: only those its geometric
    verification flags as inliers (``inlier`` field of the message: a RANSAC fundamental matrix with a
    threshold of one patch, as the ``matches`` output runs it on frames at network resolution).
    ``unrefined``: ``match_unrefined`` (``keep``: also the matches the images could not refine, at their
    patch-precise positions; ``drop``: only those the images refined and the search back confirmed);
    ``None``: the pipeline's default.

    The heads put patch centres at ``(c + 0.5) p`` (pixel k spans [k, k+1)); the generator's K puts
    pixel centres at integers, hence ``offset=-0.5``.
    """
    from dinov3_ros.core.config import PipelineConfig
    from dinov3_ros.heads.correspondence import match

    m = match(
        fa,
        fb,
        patch_size=float(patch_size),
        mutual=True,
        **(PipelineConfig(match_unrefined=unrefined) if unrefined else PipelineConfig()).match_args(),
        refine=True,
        offset=(-0.5, -0.5),
        image0=image_a,
        image1=image_b,
        verify_with="fundamental" if inliers_only else None,
        ransac_threshold=float(patch_size),
    )
    keep = np.asarray(m.inliers, bool) if inliers_only else slice(None)
    return np.asarray(m.pts0, np.float64)[keep], np.asarray(m.pts1, np.float64)[keep]


def oracle_matcher(a: SynthFrame, b: SynthFrame, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth matches (upper bound)."""
    return src, gt_correspondences(a, b, src).pixels_b


def uniform_random_matcher(seed: int = 0) -> Matcher:
    """Uniformly random target pixels (chance level)."""
    rng = np.random.default_rng(seed)

    def m(a: SynthFrame, b: SynthFrame, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return src, np.stack(
            [rng.uniform(-0.5, b.width - 0.5, len(src)), rng.uniform(-0.5, b.height - 0.5, len(src))], 1
        )

    return m
