"""PCA view stability/sign alignment and feature upsampling against exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.heads.pca import PCAView
from dinov3_ros.heads.upsample import upsample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scene(h=12, w=16, C=32, seed=0):
    """Foreground blob (3 strong directions) on a background cluster."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((C, C)))[0]
    yy, xx = np.mgrid[0:h, 0:w]
    fg = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2
    z = rng.standard_normal((h, w, C)) * 0.1
    z[..., :3] += rng.standard_normal((h, w, 3)) * np.array([3.0, 2.0, 1.5])
    feats = z @ basis.T
    feats[~fg] = basis[:, 5] * 6 + rng.standard_normal(((~fg).sum(), C)) * 0.2
    return feats.astype(np.float32), fg, basis


def test_pca_rgb_shape_and_foreground():
    feats, fg, _ = _scene()
    view = PCAView(fg_threshold=0.5)
    rgb = view(feats, size=(96, 128))
    assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
    fg_pred = view.foreground(feats).numpy()
    assert (fg_pred == fg).mean() > 0.95  # PC1 threshold separates the planted foreground
    small = view.transform(feats)
    assert (small[~fg_pred] == 0).all()  # background painted black
    assert small[fg_pred].std() > 20  # foreground is coloured
    # batch in -> batch out, torch accepted; deterministic
    rgb_b = PCAView(fg_threshold=0.5)(torch.from_numpy(np.stack([feats, feats])), size=(96, 128))
    assert rgb_b.shape == (2, 96, 128, 3)
    assert np.array_equal(rgb_b[0], PCAView(fg_threshold=0.5)(feats, size=(96, 128)))


@pytest.mark.parametrize("momentum", [0.0, 0.3, 1.0])
def test_pca_colours_stable_between_nearly_identical_frames(momentum):
    feats, _, _ = _scene()
    rng = np.random.default_rng(1)
    view = PCAView(momentum=momentum)
    c0 = view(feats).astype(int)
    for _ in range(3):
        nxt = feats + rng.normal(0, 1e-3, feats.shape).astype(np.float32)
        c1 = view(nxt).astype(int)
        assert np.abs(c1 - c0).max() <= 2


def test_pca_sign_alignment_prevents_flip():
    feats, _, _ = _scene()
    view = PCAView(momentum=1.0)
    view.fit(feats)
    view.components = -view.components  # previous frame ended up with the opposite signs
    prev = view.transform(feats).astype(int)
    fresh = PCAView().fit(feats).transform(feats).astype(int)
    assert np.abs(fresh - prev).max() > 100  # an unaligned refit would flip every colour
    cur = view(feats).astype(int)  # EMA refit on the same frame, aligned to the previous basis
    assert np.abs(cur - prev).max() <= 1


def test_pca_alignment_follows_component_swap():
    # variances of two components swap order between frames: colours must follow the directions
    rng = np.random.default_rng(2)
    C = 16
    basis = np.linalg.qr(rng.standard_normal((C, C)))[0]
    raw = rng.standard_normal((400, C))
    z = np.linalg.qr(raw - raw.mean(0))[0] * np.sqrt(400)  # zero-mean, exactly uncorrelated, unit variance
    a = z * np.r_[4.0, 3.0, 2.0, np.full(C - 3, 0.05)]
    b = z * np.r_[3.0, 4.0, 2.0, np.full(C - 3, 0.05)]
    fa, fb = (a @ basis.T).reshape(20, 20, C), (b @ basis.T).reshape(20, 20, C)
    view = PCAView(momentum=1.0, whiten=True)
    view.fit(fa)
    c_a = view.transform(fa).astype(int)
    c_b = view(fb).astype(int)  # whitened: the same points get the same colours
    assert np.abs(c_b - c_a).max() <= 2
    unaligned = PCAView(whiten=True).fit(fb).transform(fb).astype(int)
    assert np.abs(unaligned - c_a).max() > 50  # without alignment red/green would swap


def test_pca_input_validation():
    view = PCAView()
    with pytest.raises(RuntimeError, match="fit"):
        view.transform(np.zeros((4, 4, 8), np.float32))
    with pytest.raises(ValueError, match=r"\[h, w, C\]"):
        view.fit(np.zeros((16, 8), np.float32))
    view.fit(np.random.default_rng(0).standard_normal((4, 4, 8)))
    with pytest.raises(ValueError, match="channels"):
        view.transform(np.zeros((4, 4, 9), np.float32))


def _disk_scene(H=96, W=128, h=6, w=8):
    yy, xx = np.mgrid[:H, :W]
    obj = (xx - 50) ** 2 + (yy - 45) ** 2 < 30**2
    img = np.zeros((H, W, 3), np.uint8)
    img[obj] = [220, 60, 40]
    img[~obj] = [30, 90, 200]
    hi = np.where(obj[..., None], 1.0, -1.0) * np.array([1.0, 0.5, -2.0, 0.25])
    lo = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(hi).permute(2, 0, 1)[None], (h, w))
    return img, hi, lo[0].permute(1, 2, 0).numpy()


def test_upsample_edge_aware_beats_bilinear():
    img, hi, lo = _disk_scene()
    err = {
        m: np.abs(upsample(lo, (96, 128), mode=m, guide=img) - hi).mean()
        for m in ("bilinear", "guided", "guided_filter")
    }
    assert err["guided"] < 0.25 * err["bilinear"]
    assert err["guided_filter"] < err["bilinear"]
    # torch [B, C, h, w] layout, float guide in [0, 1]
    t = torch.from_numpy(lo).permute(2, 0, 1)[None].float()
    g = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    out = upsample(t, (96, 128), mode="jbu", guide=g)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 96, 128)
    np.testing.assert_allclose(
        out[0].permute(1, 2, 0).numpy(), upsample(lo, (96, 128), mode="jbu", guide=img), atol=1e-5
    )


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "guided", "jbu", "guided_filter"])
def test_upsample_preserves_constant_fields(mode):
    img, _, _ = _disk_scene()
    const = np.tile(np.array([0.3, -1.0, 2.0], np.float32), (6, 8, 1))
    out = upsample(const, (90, 120), mode=mode, guide=img)  # non-integer factor
    assert out.shape == (90, 120, 3)
    np.testing.assert_allclose(out, np.broadcast_to(const[0, 0], out.shape), atol=1e-4)


def test_upsample_validation():
    with pytest.raises(ValueError, match="guide"):
        upsample(np.zeros((4, 4, 2), np.float32), (16, 16), mode="jbu")
    with pytest.raises(ValueError, match="mode"):
        upsample(np.zeros((4, 4, 2), np.float32), (16, 16), mode="magic")
