"""Depth heads, head files, losses, back-projection and point-cloud clean-up against exact answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dinov3_ros.heads.depth import (
    DPTHead,
    LinearDepthHead,
    bins_to_depth,
    default_layers,
    load_head,
    save_head,
)
from dinov3_ros.heads.losses import (
    SigLoss,
    gradient_matching_loss,
    scale_shift_invariant_loss,
    sig_loss,
    ssi_gradient_loss,
)
from dinov3_ros.heads.pointcloud import backproject, clean_cloud, scale_intrinsics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


K = np.array([[300.0, 0.0, 79.5], [0.0, 310.0, 59.5], [0.0, 0.0, 1.0]])
META = {
    "arch": "vits16",
    "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "input_size": [96, 128],
    "layers": [11],
}


def _plane_depth(H, W, n, d):
    """Exact depth of the plane n·X = d seen through K (ray r = K⁻¹[u, v, 1], z-component 1)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rx, ry = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    return d / (n[0] * rx + n[1] * ry + n[2])


def test_backproject_plane_is_exact():
    H, W = 120, 160
    n = np.array([0.1, -0.2, 1.0])
    n /= np.linalg.norm(n)
    depth = _plane_depth(H, W, n, 2.0)
    depth[5, 7] = 0.0
    depth[6, 8] = np.nan
    depth[7, 9] = np.inf
    depth[8, 10] = -1.0
    pts = backproject(depth, K)
    assert isinstance(pts, np.ndarray) and pts.shape == (H * W - 4, 3)
    np.testing.assert_allclose(pts @ n, 2.0, atol=1e-9)  # every point lies on the plane
    # pixel (u=30, v=40) -> X = (u - cx) z / fx, Y = (v - cy) z / fy (optical frame: x right, y down)
    z = depth[40, 30]
    i = 40 * W + 30 - 4  # four invalid pixels precede it in row-major order
    np.testing.assert_allclose(pts[i], [(30 - 79.5) * z / 300, (40 - 59.5) * z / 310, z], rtol=1e-12)
    # torch in -> torch out, colours follow the valid pixels
    rgb = np.arange(H * W * 3, dtype=np.int64).reshape(H, W, 3).astype(np.uint8)
    p_t, c_t = backproject(torch.from_numpy(depth), torch.from_numpy(K), rgb=rgb)
    assert isinstance(p_t, torch.Tensor) and p_t.shape == pts.shape
    valid = np.isfinite(depth) & (depth > 0)
    np.testing.assert_array_equal(c_t.numpy(), rgb[valid])
    assert backproject(depth[None, None], K, stride=2).shape[0] == int(valid[::2, ::2].sum())
    with pytest.raises(ValueError, match="3x3"):
        backproject(depth, np.eye(4))
    with pytest.raises(ValueError, match="rgb"):
        backproject(depth, K, rgb=rgb[:10])


def test_scale_intrinsics_matches_projection():
    X = np.array([0.3, -0.2, 2.0])
    u = (K @ X)[:2] / X[2]
    x0, y0, sx, sy = 10.0, 6.0, 0.5, 0.25
    K2 = scale_intrinsics(K, sx, sy, crop=(x0, y0))
    u2 = (K2 @ X)[:2] / X[2]
    # pixel-centre mapping of the crop-then-resize: u' + 0.5 = (u + 0.5 - x0) * s
    np.testing.assert_allclose(u2, [(u[0] + 0.5 - x0) * sx - 0.5, (u[1] + 0.5 - y0) * sy - 0.5])


def test_clean_cloud_voxel_outliers_normals():
    H, W = 120, 160
    n = np.array([0.0, 0.0, 1.0])
    pts = backproject(_plane_depth(H, W, n, 2.0), K)
    outliers = np.array([[0.0, 0.0, 5.0], [1.0, 1.0, 0.5], [-1.0, 0.5, 9.0]])
    cloud = clean_cloud(
        np.vstack([pts, outliers]), voxel_size=0.02, outlier_neighbors=10, outlier_std=2.0, normals=True
    )
    assert 100 < len(cloud.points) < len(pts) / 2
    np.testing.assert_allclose(cloud.points[:, 2], 2.0, atol=1e-9)  # outliers removed, plane kept
    np.testing.assert_allclose(np.abs(cloud.normals[:, 2]), 1.0, atol=1e-6)
    assert (cloud.normals[:, 2] < 0).all()  # oriented towards the camera at the origin


def test_linear_head_shapes_and_range():
    torch.manual_seed(0)
    head = LinearDepthHead(32, n_bins=16, min_depth=0.5, max_depth=4.0).eval()
    with torch.no_grad():
        head.conv.weight.mul_(500)  # extreme logits still give depths inside the range
        d = head(torch.randn(2, 32, 6, 8))
        assert d.shape == (2, 1, 96, 128)
        assert d.min() >= 0.5 and d.max() <= 4.0
        d2 = head((torch.randn(1, 32, 5, 7), torch.randn(1, 32)), output_size=(77, 109))
        assert d2.shape == (1, 1, 77, 109) and d2.min() >= 0.5 and d2.max() <= 4.0
        head_l = LinearDepthHead(32, n_bins=16, min_depth=0.5, max_depth=4.0, upsample_logits=True).eval()
        assert head_l(torch.randn(1, 32, 5, 7), output_size=(40, 56)).shape == (1, 1, 40, 56)
        four = LinearDepthHead(32, n_layers=4).eval()
        assert four([torch.randn(1, 32, 3, 4)] * 4).shape == (1, 1, 48, 64)
    with pytest.raises(ValueError, match="channels"):
        head(torch.randn(1, 31, 6, 8))
    with pytest.raises(ValueError, match="range"):
        LinearDepthHead(8, min_depth=3.0, max_depth=1.0)
    # expected-bin formula: ReLU + 0.1, normalised, weighted centres
    lg = torch.tensor([[1.0, -2.0, 0.5]]).view(1, 3, 1, 1)
    w = torch.tensor([1.1, 0.1, 0.6])
    ref = (w / w.sum() * torch.tensor([1.0, 2.0, 3.0])).sum()
    assert torch.allclose(bins_to_depth(lg, torch.tensor([1.0, 2.0, 3.0])).flatten(), ref.view(1))


@pytest.mark.parametrize("readout", ["ignore", "add", "project"])
@pytest.mark.parametrize("n_bins", [16, None])
def test_dpt_head_shapes_and_range(readout, n_bins):
    torch.manual_seed(0)
    head = DPTHead(
        32, features=16, readout=readout, n_bins=n_bins, min_depth=0.2, max_depth=8.0, use_bn=True
    ).eval()
    layers = [(torch.randn(2, 32, 5, 7), torch.randn(2, 32)) for _ in range(4)]
    with torch.no_grad():
        d = head(layers)
        assert d.shape == (2, 1, 80, 112)
        assert d.min() >= 0.2 and d.max() <= 8.0
        assert head(layers, output_size=(60, 90)).shape == (2, 1, 60, 90)
    if readout != "ignore":
        with pytest.raises(ValueError, match="class token"):
            head([layers[0][0]] * 4)
    with pytest.raises(ValueError, match="4"):
        head(layers[:3])


def test_default_layers():
    assert default_layers("vits16") == [2, 5, 8, 11]
    assert default_layers("vitb16") == [2, 5, 8, 11]
    assert default_layers("vitl16") == [4, 11, 17, 23]
    assert default_layers("vit7b16") == [9, 19, 29, 39]
    assert default_layers(n_blocks=2 * 4) == [1, 3, 5, 7]
    with pytest.raises(ValueError):
        default_layers("mystery")


def test_head_file_round_trip_and_validation(tmp_path):
    torch.manual_seed(0)
    head = DPTHead(32, features=16, readout="project", n_bins=8, layers=[2, 5, 8, 11], use_bn=True)
    with torch.no_grad():
        head.norms[0].running_mean.normal_()
    head.eval()
    path = tmp_path / "sub" / "depth.pt"
    save_head(path, head, {k: v for k, v in META.items() if k != "layers"})
    raw = torch.load(path, weights_only=True)  # weights_only-safe content
    json.dumps(raw["meta"])
    loaded, meta = load_head(path, expect_arch="vits16", expect_embed_dim=32)
    assert meta["layers"] == [2, 5, 8, 11] and meta["embed_dim"] == 32 and meta["n_bins"] == 8
    assert meta["min_depth"] == 0.001 and meta["input_size"] == [96, 128] and meta["head_type"] == "dpt"
    layers = [(torch.randn(1, 32, 4, 5), torch.randn(1, 32)) for _ in range(4)]
    with torch.no_grad():
        assert torch.equal(loaded(layers), head(layers))
    lin = LinearDepthHead(32, n_bins=8).eval()
    save_head(tmp_path / "lin.pt", lin, META)
    lin2, m2 = load_head(tmp_path / "lin.pt")
    assert isinstance(lin2, LinearDepthHead) and m2["head_type"] == "linear"
    x = torch.randn(1, 32, 3, 4)
    assert torch.equal(lin2(x), lin(x))
    # clear errors
    with pytest.raises(ValueError, match="missing"):
        save_head(tmp_path / "bad.pt", lin, {"arch": "vits16"})
    with pytest.raises(ValueError, match="disagrees"):
        save_head(tmp_path / "bad.pt", lin, {**META, "embed_dim": 64})
    with pytest.raises(ValueError, match="arch"):
        load_head(path, expect_arch="vitl16")
    with pytest.raises(ValueError, match="embed_dim"):
        load_head(path, expect_embed_dim=1024)
    with pytest.raises(FileNotFoundError):
        load_head(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable head file"):
        load_head(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dinov3_ros depth head"):
        load_head(tmp_path / "other.pt")
    raw["state_dict"]["head1.weight"] = torch.zeros(3, 3)
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="weights do not match"):
        load_head(tmp_path / "tampered.pt")
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files


def test_sig_loss_matches_formula():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0.5, 5, (2, 1, 8, 9))
    gt = rng.uniform(0.5, 5, (2, 1, 8, 9))
    gt[0, 0, :2] = 0.0  # invalid
    v = gt > 0
    g = np.log(pred[v] + 1e-3) - np.log(gt[v] + 1e-3)
    ref = np.sqrt(np.var(g) + 0.15 * np.mean(g) ** 2)
    assert abs(ref - np.sqrt(np.mean(g**2) - 0.85 * np.mean(g) ** 2)) < 1e-12
    out = sig_loss(torch.from_numpy(pred), torch.from_numpy(gt))
    assert abs(float(out) - ref) < 1e-10
    # warm-up: mean term only for the first `warm_up_iters` training calls
    crit = SigLoss(warm_up_iters=2).train()
    vals = [float(crit(torch.from_numpy(pred), torch.from_numpy(gt))) for _ in range(3)]
    assert abs(vals[0] - np.sqrt(0.15) * abs(np.mean(g))) < 1e-10 and abs(vals[2] - ref) < 1e-10
    # scale invariance: a global scale only enters through the mean term
    gt2 = rng.uniform(0.5, 5, (1, 1, 6, 6))
    s = float(sig_loss(torch.from_numpy(gt2 * 2.0), torch.from_numpy(gt2), eps=0.0))
    assert abs(s - np.sqrt(0.15) * np.log(2.0)) < 1e-6


def test_ssi_and_gradient_losses():
    rng = np.random.default_rng(1)
    gt = torch.from_numpy(rng.uniform(0.5, 5, (2, 1, 16, 16)))
    aff = 3.0 * gt + 0.7  # affine copy: zero loss
    assert float(scale_shift_invariant_loss(aff, gt)) < 1e-10
    assert float(scale_shift_invariant_loss(aff, gt, mode="lstsq")) < 1e-9
    assert float(gradient_matching_loss(gt + 2.0, gt)) < 1e-12
    assert float(ssi_gradient_loss(aff, gt)) < 1e-9
    noisy = gt + torch.from_numpy(rng.normal(0, 0.3, gt.shape))
    assert float(scale_shift_invariant_loss(noisy, gt)) > 0.05
    assert float(gradient_matching_loss(noisy, gt)) > 0.05
    with pytest.raises(ValueError, match="same shape"):
        sig_loss(gt, gt[:, :, :8])


def _pixel_grid(depth: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel columns, rows and depths of every ``stride``-th sample (the pinhole reference's inputs)."""
    h, w = depth.shape
    v, u = torch.meshgrid(
        torch.arange(0, h, stride, dtype=torch.float32),
        torch.arange(0, w, stride, dtype=torch.float32),
        indexing="ij",
    )
    return u, v, depth[::stride, ::stride]


def test_backproject_is_the_masked_pinhole_bit_for_bit():
    # reference: the pixel grids masked by the valid depths, the same float32 arithmetic
    rng = np.random.default_rng(4)
    K = np.array([[300.0, 0, 159.5], [0, 310.0, 119.5], [0, 0, 1]])
    d = rng.uniform(-1.0, 6.0, (23, 31)).astype(np.float32)
    d.flat[::7], d.flat[::9] = np.nan, np.inf
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    for stride in (1, 2, 3):
        dt = torch.from_numpy(d)
        u, v, z = _pixel_grid(dt, stride)
        ok = torch.isfinite(z) & (z > 0.5) & (z <= 4.0)
        z, u, v = z[ok], u[ok], v[ok]
        ref = torch.stack([(u - 159.5) * (z / 300.0), (v - 119.5) * (z / 310.0), z], 1)
        pts, cols = backproject(dt, K, torch.from_numpy(rgb), stride=stride, min_depth=0.5, max_depth=4.0)
        assert pts.numpy().tobytes() == ref.numpy().tobytes()
        assert np.array_equal(cols.numpy(), rgb[::stride, ::stride][ok.numpy()])
        assert np.asarray(backproject(d, K, stride=stride, min_depth=0.5, max_depth=4.0)).tobytes() == (
            ref.numpy().tobytes()
        )


def test_backproject_dense_grid_and_crop_origin_bit_for_bit():
    # every sample valid takes the broadcast path; a crop with ``origin`` gives the samples and bytes
    # of the NaN-padded full canvas (what the points output passed before it cropped)
    rng = np.random.default_rng(5)
    K = np.array([[300.0, 0, 159.5], [0, 310.0, 119.5], [0, 0, 1]])
    d = rng.uniform(0.1, 6.0, (23, 31)).astype(np.float32)
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    for stride in (1, 2, 3):
        dt = torch.from_numpy(d)
        u, v, z = _pixel_grid(dt, stride)
        ref = torch.stack([(u - 159.5) * (z / 300.0), (v - 119.5) * (z / 310.0), z], -1).reshape(-1, 3)
        pts, cols = backproject(dt, K, torch.from_numpy(rgb), stride=stride)
        assert pts.numpy().tobytes() == ref.numpy().tobytes()
        assert np.array_equal(cols.numpy(), rgb[::stride, ::stride].reshape(-1, 3))
        for x0, y0, x1, y1, hole in ((4, 3, 29, 20, False), (5, 2, 31, 23, True)):
            padded = torch.full_like(dt, float("nan"))
            padded[y0:y1, x0:x1] = dt[y0:y1, x0:x1]
            if hole:
                padded[10, 12] = 0.0
            want = backproject(padded, K, torch.from_numpy(rgb), stride=stride)
            sx, sy = -(-x0 // stride) * stride, -(-y0 // stride) * stride
            crop = padded[sy:y1, sx:x1]
            got = backproject(crop, K, torch.from_numpy(rgb[sy:y1, sx:x1]), stride=stride, origin=(sx, sy))
            assert got[0].numpy().tobytes() == want[0].numpy().tobytes()
            assert np.array_equal(got[1].numpy(), want[1].numpy())


def test_valid_depth_on_the_cpu_compares_as_torch_does():
    # the numpy check casts the bounds to the depth's dtype, as torch's comparisons with a scalar do
    from dinov3_ros.heads.pointcloud import _valid_depth

    z32 = torch.tensor([0.05, np.nextafter(np.float32(0.05), 1), 0.1, 50.0, 50.000004, np.nan, np.inf, -1.0])
    for z in (z32.float(), z32.double()):
        for lo, hi in ((0.05, 50.0), (0.0, float("inf")), (0.1, 49.9999999)):
            ref = torch.isfinite(z) & (z > lo) & (z <= hi)
            assert torch.equal(_valid_depth(z, lo, hi), ref)
