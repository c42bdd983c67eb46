"""The simulator as a second teacher: crop geometry against the generator's exact correspondences, batch
determinism, the losses on ideal and wrong features, GPU-style augmentation, and depth-head batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.synthetic import SceneGenerator
from dinov3_ros.synthetic.correspondence import gt_correspondences
from training.data.gpu_augment import crop_grid, gaussian_blur, photometric, random_boxes, resized_crops
from training.sim import (
    FramePool,
    SimLossConfig,
    SimObjective,
    ViewSpec,
    correspondence_loss,
    crop_targets,
    instance_contrast_loss,
    reproject,
    sample_views,
)
from training.sim.depth_batches import PoolDepthBatches
from training.sim.loader import SimBatches, filled_at
from training.sim.render import scene_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gen():
    return SceneGenerator(seed=3, width=96, height=96, frames_per_scene=4)


@pytest.fixture(scope="module")
def pool(gen):
    return FramePool.from_generator(gen, range(3), gt_stride=1)


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


def test_reproject_equals_generator_correspondences(gen, pool):
    fa, fb = gen.frame(1, 0), gen.frame(1, 2)
    px = np.random.default_rng(0).integers(0, 96, size=(400, 2)).astype(np.float64)
    ref = gt_correspondences(fa, fb, px, check_instance=False, abs_tol=0.02, rel_tol=0.03)
    d = _tensor(fa.depth[px[:, 1].astype(int), px[:, 0].astype(int)])[None]
    x, y = _tensor(px[:, 0])[None], _tensor(px[:, 1])[None]
    pb, vis = reproject(pool, torch.tensor([4]), torch.tensor([6]), x, y, d)
    vis = vis[0].numpy()
    assert vis.sum() > 100 and np.array_equal(vis, ref.valid)
    assert np.abs(pb[0].numpy()[vis] - ref.pixels_b[vis]).max() < 1e-3
    # negative control: the partner frame's pose instead of the right one moves every point
    pb_bad, _ = reproject(pool, torch.tensor([4]), torch.tensor([5]), x, y, d)
    assert np.median(np.abs(pb_bad[0].numpy()[vis] - ref.pixels_b[vis]).sum(1)) > 2.0


def test_crop_targets_match_ground_truth(gen, pool):
    fa, fb = gen.frame(2, 1), gen.frame(2, 3)
    boxes = torch.tensor([[8.0, 16.0, 64.0, 64.0], [24.0, 0.0, 72.0, 72.0]])
    g = 4
    t = crop_targets(pool, torch.tensor([9, 11]), boxes, g, n_classes=8, sub=4)
    # patch (r, c) of crop 0 covers frame pixels x0 + [c, c+1) * 16: its mean log-depth by hand
    logd = np.log(fa.depth)
    for r, c in [(0, 0), (1, 2), (3, 3)]:
        ys = 16 + r * 16 + np.arange(16)[::4] + 2
        xs = 8 + c * 16 + np.arange(16)[::4] + 2
        want = logd[np.ix_(ys, xs)].mean()
        assert abs(float(t.log_depth[0, r, c]) - want) < 1e-5
    # semantic: the class of the patch's instance, background = n_classes
    inst = int(t.instance[0, 1, 2])
    if inst > 0:
        assert int(t.semantic[0, 1, 2]) == int(fa.instance_classes[inst])
    elif inst == 0:
        assert int(t.semantic[0, 1, 2]) == 8
    # correspondences: patch centres of crop 0 land where the generator says, in crop 1's patch units
    cc = (np.arange(g) + 0.5) * 16 - 0.5
    src = np.stack(np.meshgrid(8 + cc, 16 + cc), -1).reshape(-1, 2)
    ref = gt_correspondences(fa, fb, src, check_instance=False, abs_tol=0.02, rel_tol=0.03, subpixel=True)
    pred = t.corr_xy[0].numpy() * (72 / g) + np.array([24.0, 0.0]) + 72 / g / 2 - 0.5
    ok = t.corr_valid[0].numpy()
    assert ok.sum() >= 4
    assert np.abs(pred[ok] - ref.pixels_b[ok]).max() < 1e-3
    inside = (ref.pixels_b[:, 0] >= 23.5) & (ref.pixels_b[:, 0] <= 95.5) & (ref.pixels_b[:, 1] <= 71.5)
    assert np.array_equal(ok, ref.valid & inside)


def test_sample_views_deterministic_multiview(pool):
    spec = ViewSpec(global_size=48, local_size=32, local_number=3, patch_size=16)
    a = sample_views(pool, 4, spec, seed=5, iteration=7)
    b = sample_views(pool, 4, spec, seed=5, iteration=7)
    c = sample_views(pool, 4, spec, seed=5, iteration=8)
    assert a["global_crops"].shape == (8, 3, 48, 48) and a["local_crops"].shape == (12, 3, 32, 32)
    assert torch.equal(a["global_crops"], b["global_crops"]) and torch.equal(a["masks"], b["masks"])
    assert torch.equal(a["sim"].corr_xy, b["sim"].corr_xy)
    assert not torch.equal(a["global_crops"], c["global_crops"])
    assert a["masks"].shape == (8, 9) and a["mask_indices"].numel() == int(a["masks"].sum())
    assert bool(a["sim"].corr_valid.any())  # two views of one scene overlap


def test_losses_prefer_ideal_features():
    torch.manual_seed(0)
    g, D = 4, 16
    P = g * g
    inst = torch.tensor([[0] * 8 + [1] * 4 + [2] * 4 + [0] * 8 + [1] * 4 + [2] * 4])  # [1, 2P]
    protos = torch.linalg.qr(torch.randn(D, 3)).Q.t()  # orthonormal: different instances at cosine 0
    ideal = protos[inst]
    assert float(instance_contrast_loss(ideal, inst)) < 1e-6
    mixed = ideal.clone()
    mixed[0, :8] = protos[1]  # background patches look like object 1
    assert float(instance_contrast_loss(mixed, inst)) > 0.05
    # correspondence: partner = a shifted copy of the source grid; exact features -> low loss
    base = torch.nn.functional.normalize(torch.randn(P, D), dim=-1)[None]
    xy = (
        torch.stack(torch.meshgrid(torch.arange(g), torch.arange(g), indexing="xy"), -1)
        .reshape(1, P, 2)
        .float()
    )
    valid = torch.ones(1, P, dtype=torch.bool)
    good = correspondence_loss(base, base, xy, valid, g, temperature=0.05)
    wrong = correspondence_loss(base, base.roll(1, dims=1), xy, valid, g, temperature=0.05)
    assert float(good) < 0.1 < float(wrong)
    obj = SimObjective(D, SimLossConfig())
    assert set(obj.cfg.__dict__) >= {"depth", "correspondence", "instance"}
    with pytest.raises(ValueError, match="unknown sim loss key"):
        SimLossConfig.from_dict({"dpeth": 1.0})


def test_sim_objective_on_a_batch_is_finite_and_trainable(pool):
    spec = ViewSpec(global_size=48, local_size=32, local_number=0, patch_size=16)
    b = sample_views(pool, 4, spec, seed=1, iteration=0)
    obj = SimObjective(24, SimLossConfig())
    x = torch.randn(8, 9, 24, requires_grad=True)
    out = obj(x, b["sim"], b["masks"].any(-1))
    assert torch.isfinite(out["sim"]) and out["sim"] > 0
    out["sim"].backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_gpu_augment_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 24, generator=g)
    sig = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    y = gaussian_blur(x, sig)
    assert torch.allclose(y[:2], x[:2], atol=1e-6)  # sigma 0 = identity
    assert y[2:].std() < x[2:].std()
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.02)  # blur keeps the mean
    z = photometric(x, torch.Generator().manual_seed(1), blur_p=0.5, solarize_p=0.5)
    assert z.shape == x.shape and float(z.min()) >= 0 and float(z.max()) <= 1
    boxes = random_boxes(5, 30, 40, (0.3, 1.0), torch.Generator().manual_seed(2), "cpu")
    assert bool(((boxes[:, 0] >= 0) & (boxes[:, 0] + boxes[:, 2] <= 40 + 1e-4)).all())
    # a crop of the full frame at the same size reproduces the frame
    full = torch.tensor([[0.0, 0.0, 24.0, 20.0]] * 6)
    assert torch.allclose(resized_crops(x, full, (20, 24)), x, atol=1e-5)
    assert crop_grid(full, (20, 24), (20, 24)).shape == (6, 20, 24, 2)


def test_sim_batches_fill_progressively_and_resume_identically():
    cfg = {
        "scenes": 4,
        "frames_per_scene": 2,
        "height": 64,
        "width": 64,
        "gt_stride": 2,
        "seed": 9,
        "initial_scenes": 2,
        "scenes_per_step": 1,
        "backend": "generator",
        "render_batch": 1,
    }
    spec = ViewSpec(global_size=32, local_size=16, local_number=2, patch_size=16)
    a = SimBatches(cfg, spec, 3, device="cpu", seed=4, start_iter=0, max_iter=3)
    seq = [next(a) for _ in range(3)]
    assert [filled_at(cfg, i) for i in range(4)] == [2, 3, 4, 4]
    assert a.pool.filled == 4
    b = SimBatches(cfg, spec, 3, device="cpu", seed=4, start_iter=2, max_iter=3)
    assert b.pool.filled == filled_at(cfg, 2)
    assert torch.equal(next(b)["global_crops"], seq[2]["global_crops"])
    with pytest.raises(ValueError, match=r"unknown sim\.pool key"):
        SimBatches({**cfg, "scens": 3}, spec, 3, device="cpu", seed=0)


def test_pool_depth_batches_sizes_and_flips():
    cfg = {"scenes": 2, "frames_per_scene": 2, "seed": 1, "backend": "generator", "render_batch": 2}
    it = PoolDepthBatches(
        cfg, [[32, 32], [32, 48]], [3, 2], seed=0, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", stop=4
    )
    batches = list(it)
    assert [tuple(b[0].shape) for b in batches] == [(3, 3, 32, 32), (2, 3, 32, 48)] * 2
    for _img, depth in batches:
        assert depth.shape[1] == 1 and bool((depth > 0).all())


@pytest.mark.parametrize("backend", ["generator", "torch"])
def test_pool_cameras_take_their_field_of_view_from_hfov_deg(backend):
    cfg = {
        "scenes": 6,
        "frames_per_scene": 1,
        "height": 32,
        "width": 48,
        "gt_stride": 2,
        "seed": 5,
        "initial_scenes": 6,
        "backend": backend,
        "render_batch": 3,
    }
    spec = ViewSpec(global_size=32, local_size=16, local_number=1, patch_size=16)

    def hfov(pool_cfg) -> np.ndarray:
        K = SimBatches(pool_cfg, spec, 2, device="cpu", seed=0).pool.K[:, 0].numpy()
        return np.degrees(2 * np.arctan(0.5 * 48 / K[:, 0, 0]))

    wide, narrow = hfov(cfg), hfov({**cfg, "hfov_deg": [20.0, 24.0]})
    assert np.all((wide >= 55.0 - 1e-3) & (wide <= 75.0 + 1e-3))  # the generator's range
    assert np.all((narrow >= 20.0 - 1e-3) & (narrow <= 24.0 + 1e-3))
    for bad in ([30.0, 10.0], 20.0, [10.0, 20.0, 30.0], ["wide", 60.0], [0.5, 60.0]):
        with pytest.raises(ValueError, match=r"sim\.pool\.hfov_deg must be \[lo, hi\]"):
            scene_config({**cfg, "hfov_deg": bad})
