"""Image-guided sub-pixel refinement of matches (NCC template matching): exact sub-pixel shifts are
recovered, weak / ambiguous / out-of-reach peaks leave the points alone, rendered frames with ground truth,
input validation, and no float64 on the device path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from dinov3_ros.heads.correspondence import match
from dinov3_ros.heads.subpixel import GreyPyramid, refine, refine_matches
from dinov3_ros.runtime.device_audit import OpAudit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 120, 160
SHIFT = np.array([2.37, -1.61])  # (x, y): image1(p + SHIFT) = image0(p)


def texture(seed: int = 0, sigma: float = 1.5, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """Smooth random texture in 0..255 (float64), with a margin so shifted crops stay inside."""
    n = ndimage.gaussian_filter(
        np.random.default_rng(seed).standard_normal((size[0] + 32, size[1] + 32)), sigma
    )
    return (n - n.min()) / (n.max() - n.min()) * 255.0


def shifted_pair(shift: np.ndarray = SHIFT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image0, image1)``: image1 is image0 translated by ``shift`` pixels (exact Fourier shift)."""
    big = texture(seed)
    moved = np.real(np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(big), (shift[1], shift[0]))))
    return big[16 : 16 + H, 16 : 16 + W], moved[16 : 16 + H, 16 : 16 + W]


def coarse_points(n: int, radius: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pts0, truth, pts1)``: random interior points, their true targets, targets off by up to
    ``0.8 radius`` per axis."""
    rng = np.random.default_rng(seed)
    m = 6 + radius
    pts0 = np.stack([rng.uniform(m, W - m, n), rng.uniform(m, H - m, n)], 1)
    truth = pts0 + SHIFT
    return pts0, truth, truth + rng.uniform(-0.8 * radius, 0.8 * radius, (n, 2))


def test_a_prepared_pyramid_refines_as_the_images_do():
    """GreyPyramid in place of the images (its levels made once, kept for the next call): the same
    results, forward-backward check included."""
    img0, img1 = shifted_pair(seed=3)
    pts0, _, pts1 = coarse_points(60, radius=24.0, seed=5)
    want = refine(img0, img1, pts0, pts1, radius=24.0, max_back_error=1.5)
    p0, p1 = GreyPyramid(img0), GreyPyramid(img1)
    for im1 in (p1, p1, img1):
        got = refine(p0, im1, pts0, pts1, radius=24.0, max_back_error=1.5)
        for k in ("pts1", "ncc", "accepted", "consistent"):
            np.testing.assert_array_equal(getattr(got, k), getattr(want, k), err_msg=k)


def test_a_large_radius_searches_coarse_to_fine(monkeypatch):
    """Radius 24 (above PYRAMID_RADIUS): a half-resolution search, then ±2 px at full resolution, about
    as accurate as one full-resolution search over the whole radius."""
    import dinov3_ros.heads.subpixel as sp

    img0, img1 = shifted_pair(seed=3)
    pts0, truth, pts1 = coarse_points(200, radius=24.0, seed=5)
    out, _ = refine_matches(img0, img1, pts0, pts1, radius=24.0)
    err = np.linalg.norm(out - truth, axis=1)
    assert np.median(err) < 0.2 and (err < 1.0).mean() >= 0.9, (np.median(err), (err < 1.0).mean())
    monkeypatch.setattr(sp, "PYRAMID_RADIUS", 64)
    single, _ = refine_matches(img0, img1, pts0, pts1, radius=24.0)
    err1 = np.linalg.norm(single - truth, axis=1)
    assert (err1 < 1.0).mean() >= 0.9 and np.median(err) <= np.median(err1) + 0.05
    monkeypatch.setattr(sp, "PYRAMID_RADIUS", 12)
    calls = []
    real = sp._search
    monkeypatch.setattr(sp, "_search", lambda *a: calls.append(a[4]) or real(*a))
    refine_matches(img0, img1, pts0, pts1, radius=24.0)
    assert calls == [12, 2]  # the half-resolution search, then the full-resolution one


@pytest.mark.parametrize("kind", ["float", "uint8-rgb", "torch"])
def test_recovers_a_known_subpixel_shift(kind):
    img0, img1 = shifted_pair()
    if kind == "uint8-rgb":  # quantised, grey converted inside
        img0, img1 = (np.repeat(np.rint(i)[..., None], 3, 2).astype(np.uint8) for i in (img0, img1))
    elif kind == "torch":
        img0, img1 = torch.from_numpy(img0.astype(np.float32)), torch.from_numpy(img1.astype(np.float32))
    pts0, truth, pts1 = coarse_points(300, radius=8.0)
    before = [np.array(x, copy=True) for x in (pts0, pts1)]
    out, ncc = refine_matches(img0, img1, pts0, pts1, radius=8.0)
    assert (
        out.shape == (300, 2) and out.dtype == np.float32 and ncc.shape == (300,) and ncc.dtype == np.float32
    )
    err = np.linalg.norm(out - truth, axis=1)
    assert np.median(err) < 0.2 and (err < 1.0).mean() >= 0.95, (np.median(err), (err < 1.0).mean())
    assert np.median(ncc) > 0.95
    assert np.array_equal(pts0, before[0]) and np.array_equal(pts1, before[1])  # inputs untouched
    coarse = np.linalg.norm(pts1 - truth, axis=1)
    assert (coarse < 1.0).mean() < 0.05  # the coarse points were far off


def test_flat_image_leaves_points_unchanged():
    flat = np.full((H, W), 128, np.uint8)
    pts0, _, pts1 = coarse_points(50, radius=8.0)
    out, ncc = refine_matches(flat, flat, pts0, pts1, radius=8.0)
    assert np.array_equal(out, pts1.astype(np.float32)) and np.isnan(ncc).all()


def test_faint_texture_is_refined_and_flat_rejected():
    """A texture of about one grey level of standard deviation (a rendered wall at 640x480) is aligned
    at the default ``min_texture`` (0.5 grey levels); the same texture below it is left alone."""
    img0, img1 = shifted_pair()
    faint = [128.0 + (i - i.mean()) * (1.0 / i.std()) for i in (img0, img1)]
    pts0, truth, pts1 = coarse_points(200, radius=8.0)
    out, _ = refine_matches(*faint, pts0, pts1, radius=8.0)
    err = np.linalg.norm(out - truth, axis=1)
    assert (err < 0.5).mean() >= 0.9, (err < 0.5).mean()
    out, _ = refine_matches(*faint, pts0, pts1, radius=8.0, min_texture=2.0)
    assert np.array_equal(out, pts1.astype(np.float32))


def test_unrelated_noise_gives_low_ncc_and_unchanged_points():
    img0, _ = shifted_pair()
    noise = np.random.default_rng(5).integers(0, 256, (H, W), dtype=np.uint8)
    pts0, _, pts1 = coarse_points(200, radius=8.0)
    out, ncc = refine_matches(img0, noise, pts0, pts1, radius=8.0)
    assert np.nanmax(ncc) < 0.6, np.nanmax(ncc)
    assert np.array_equal(out, pts1.astype(np.float32))


def blob(centre: tuple[float, float], sigma: float = 8.0) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    return 40 + 200 * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("away", [5.0, 12.0])
def test_a_match_beyond_the_radius_stays_unchanged(away):
    """A single smooth blob moved by ``away`` px: within the radius (8) it is found to sub-pixel
    precision; beyond it the NCC keeps rising to the border of the search: no real peak, no move."""
    c = (80.3, 60.6)
    img0, img1 = blob(c), blob((c[0] + away, c[1]))
    pts0 = np.array([c])
    pts1 = np.array([c])  # the coarse target: where the blob was
    out, ncc = refine_matches(img0, img1, pts0, pts1, radius=8.0)
    if away < 8:
        assert np.abs(out[0] - (c[0] + away, c[1])).max() < 0.2 and ncc[0] > 0.95
    else:
        assert np.array_equal(out, pts1.astype(np.float32))
        # not for a low NCC: accepting any NCC, the border peak is still refused
        out, _ = refine_matches(img0, img1, pts0, pts1, radius=8.0, min_ncc=-1.0)
        assert np.array_equal(out, pts1.astype(np.float32))
        out, _ = refine_matches(img0, img1, pts0, pts1, radius=14.0, min_ncc=-1.0)  # within reach now
        assert np.abs(out[0] - (c[0] + away, c[1])).max() < 0.2


def periodic(shift: tuple[float, float] = (0.0, 0.0), period: float = 8.0) -> np.ndarray:
    """A texture repeating every ``period`` px in x and y, translated by ``shift``."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    w = 2 * np.pi / period
    return 128 + 50 * np.cos(w * (xx - shift[0])) + 50 * np.cos(w * (yy - shift[1]) + 0.7)


def test_repetitive_texture_takes_the_nearest_copy_or_nothing():
    """On a periodic texture a coarse target near one copy is pulled onto it; one halfway between two
    copies is ambiguous (ratio test) and stays where it was."""
    img0, img1 = periodic(), periodic(tuple(SHIFT))
    pts0, truth, _ = coarse_points(40, radius=8.0)
    near = truth + np.array([1.2, -0.7])
    out, _ = refine_matches(img0, img1, pts0, near, radius=8.0)
    assert np.abs(out - truth).max() < 0.1
    halfway = truth + np.array([4.0, 0.0])
    out, ncc = refine_matches(img0, img1, pts0, halfway, radius=8.0)
    assert np.array_equal(out, halfway.astype(np.float32)) and np.nanmin(ncc) > 0.9


def test_windows_leaving_the_images():
    img0, img1 = shifted_pair()
    # template leaves image 0: unchanged, NaN; search region partly outside image 1: still refined
    pts0 = np.array([[2.0, 60.0], [W - 12.0, 60.0]])
    truth = pts0 + SHIFT
    pts1 = truth + np.array([[0.0, 0.0], [4.0, -3.0]])
    out, ncc = refine_matches(img0, img1, pts0, pts1, radius=8.0)
    assert np.array_equal(out[0], pts1[0].astype(np.float32)) and np.isnan(ncc[0])
    assert np.abs(out[1] - truth[1]).max() < 0.2


def test_empty_and_invalid_inputs():
    img0, img1 = shifted_pair()
    out, ncc = refine_matches(img0, img1, np.zeros((0, 2)), np.zeros((0, 2)), radius=4.0)
    assert out.shape == (0, 2) and out.dtype == np.float32 and ncc.shape == (0,)
    p = np.full((3, 2), 50.0)
    for kwargs, msg in (
        ({"radius": 0.0}, "radius"),
        ({"radius": float("nan")}, "radius"),
        ({"radius": 4.0, "half_window": 0}, "half_window"),
        ({"radius": 4.0, "ratio": 0.0}, "ratio"),
        ({"radius": 4.0, "min_ncc": 2.0}, "min_ncc"),
        ({"radius": 4.0, "max_back_error": 0.0}, "max_back_error"),
        ({"radius": 4.0, "max_back_error": float("inf")}, "max_back_error"),
    ):
        with pytest.raises(ValueError, match=msg):
            refine_matches(img0, img1, p, p, **kwargs)
    with pytest.raises(ValueError, match="different numbers"):
        refine_matches(img0, img1, p, p[:2], radius=4.0)
    with pytest.raises(ValueError, match=r"pts1: expected \[N, 2\]"):
        refine_matches(img0, img1, p, p.reshape(2, 3), radius=4.0)
    with pytest.raises(ValueError, match="image1: expected an HxW or HxWx3"):
        refine_matches(img0, np.zeros((H, W, 4)), p, p, radius=4.0)


def test_device_path_has_no_float64():
    img0, img1 = shifted_pair()
    t0 = torch.from_numpy(np.rint(img0).astype(np.uint8))
    t1 = torch.from_numpy(np.repeat(img1[..., None], 3, 2).astype(np.float32))
    pts0, truth, pts1 = coarse_points(100, radius=8.0)  # float64 numpy points: cast on the host
    f = torch.randn(6, 8, 16, generator=torch.Generator().manual_seed(0))
    with OpAudit() as audit:
        out, _ = refine_matches(t0, t1, pts0, pts1, radius=8.0)
        m = match(f, f, patch_size=16.0, image0=t0, image1=t1, image_refine_radius=6.0)
        refine_matches(img0, img1, pts0, pts1, radius=8.0)  # float64 numpy images: cast on the host
    assert audit.records and not audit.with_dtypes(), sorted({r.name for r in audit.with_dtypes()})
    assert np.median(np.linalg.norm(out - truth, axis=1)) < 0.3 and m.ncc is not None
    # negative control: a float64 image tensor is cast on its device, and the audit sees it
    with OpAudit() as audit:
        refine_matches(torch.from_numpy(img0), t1, pts0, pts1, radius=8.0)
    assert audit.with_dtypes()


def test_rendered_frames_with_ground_truth():
    """Two consecutive rendered frames (perspective, shading, occlusions): ground-truth targets pushed
    by up to 8 px are pulled back to within 2 px on the textured, co-visible points."""
    from dinov3_ros.synthetic.correspondence import gt_correspondences
    from dinov3_ros.synthetic.generator import SceneGenerator

    hw, R = 5, 12
    got, coarse_ok = [], []
    for seed in (1, 4):
        gen = SceneGenerator(seed=seed, width=W, height=H, frames_per_scene=8)
        a, b = gen.frame(0, 0), gen.frame(0, 1)
        u, v = np.meshgrid(np.arange(hw, W - hw, 3), np.arange(hw, H - hw, 3))
        px = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
        gt = gt_correspondences(a, b, px)
        # textured (grey std >= 10 over the template) and co-visible over the whole template; the
        # target's search region inside frame b
        covis = ndimage.minimum_filter(gt_correspondences(a, b).valid.reshape(H, W), size=2 * hw + 1)
        grey = a.rgb @ np.array([0.299, 0.587, 0.114])
        var = ndimage.uniform_filter(grey**2, 2 * hw + 1) - ndimage.uniform_filter(grey, 2 * hw + 1) ** 2
        xi, yi = px[:, 0].astype(int), px[:, 1].astype(int)
        tb = gt.pixels_b
        m = hw + R
        inside = (tb[:, 0] >= m) & (tb[:, 0] <= W - 1 - m) & (tb[:, 1] >= m) & (tb[:, 1] <= H - 1 - m)
        keep = gt.valid & covis[yi, xi] & (var[yi, xi] >= 100) & inside
        rng = np.random.default_rng(seed)
        coarse = tb[keep] + rng.uniform(-8, 8, (int(keep.sum()), 2))
        out, _ = refine_matches(a.rgb, b.rgb, px[keep], coarse, radius=R)
        got.append(np.linalg.norm(out - tb[keep], axis=1) <= 2.0)
        coarse_ok.append(np.linalg.norm(coarse - tb[keep], axis=1) <= 2.0)
    recall, before = np.concatenate(got).mean(), np.concatenate(coarse_ok).mean()
    assert len(np.concatenate(got)) > 300
    assert recall >= 0.8 and before < 0.1, (recall, before)


def test_back_check_confirms_true_refinements_and_rejects_one_way_peaks():
    """``max_back_error``: on a true shift the search back from the refined points lands on ``pts0``
    (consistent = accepted). A one-way peak: image 0 holds a noisy version of a window beside an exact
    copy of it 11 px away, image 1 the window once. The forward search accepts the noisy template's
    best match (NCC ~0.75); the search back from it finds the exact copy, not ``pts0``, so the check
    rejects it (negative control: without the check those matches count as consistent)."""
    img0, img1 = shifted_pair()
    pts0, truth, pts1 = coarse_points(40, 8.0)
    r = refine(img0, img1, pts0, pts1, radius=8.0, max_back_error=1.5)
    assert r.accepted.mean() > 0.9 and np.array_equal(r.consistent, r.accepted)
    np.testing.assert_allclose(r.pts1[r.consistent], truth[r.consistent], atol=0.5)
    rng = np.random.default_rng(3)
    a, b = texture(4)[:H, :W].copy(), texture(5)[:H, :W].copy()
    src, dst = np.array([[40, 50], [90, 60], [60, 90]]), np.array([[70, 40], [30, 80], [120, 70]])
    for (x, y), (u, v) in zip(src, dst):
        w = texture(int(x))[20:31, 20:31]
        b[v - 5 : v + 6, u - 5 : u + 6] = w
        a[y - 5 : y + 6, x + 6 : x + 17] = w  # the exact copy, 11 px right of pts0
        a[y - 5 : y + 6, x - 5 : x + 6] = w + rng.normal(0, 0.9 * w.std(), w.shape)
    q1 = dst + np.array([1.7, -1.2])
    checked = refine(a, b, src, q1, radius=12.0, max_back_error=1.5)
    plain = refine(a, b, src, q1, radius=12.0)
    assert checked.accepted.all() and not checked.consistent.any()
    np.testing.assert_allclose(checked.pts1, dst, atol=0.5)
    assert np.array_equal(plain.consistent, plain.accepted) and plain.consistent.all()
