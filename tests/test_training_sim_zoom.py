"""Object-centred crops: instance boxes against the frames' masks, crop boxes inside the frame around the
object, and zoomed batches that put the object on most patches (random crops do not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.synthetic import SceneGenerator
from training.sim import FramePool, ViewSpec, sample_views
from training.sim.zoom import ZoomSpec, instance_boxes, object_boxes, pick_objects

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pool():
    gen = SceneGenerator(seed=4, width=96, height=96, frames_per_scene=3)
    return FramePool.from_generator(gen, range(6), gt_stride=2)


def test_instance_boxes_match_masks(pool):
    flat = torch.arange(pool.scenes * pool.frames_per_scene)
    boxes, area = instance_boxes(pool, flat)
    inst = pool.instances.flatten(0, 1).numpy()
    s = pool.gt_stride
    checked = 0
    for n in range(inst.shape[0]):
        for k in range(1, pool.classes.shape[1]):
            ys, xs = np.nonzero(inst[n] == k)
            assert int(area[n, k]) == len(xs)
            if len(xs):
                want = [xs.min() * s, ys.min() * s, (xs.max() + 1) * s, (ys.max() + 1) * s]
                assert boxes[n, k].tolist() == pytest.approx(want)
                checked += 1
    assert checked > 10


def test_pick_objects_only_shared_foreground():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[50, 9, 0, 9], [50, 9, 0, 0], [50, 0, 0, 0]])
    b = torch.tensor([[50, 9, 9, 0], [50, 0, 9, 0], [50, 9, 9, 9]])
    for _ in range(20):
        pick, has = pick_objects(a, b, 6, g)
        assert has.tolist() == [True, False, False]
        assert int(pick[0]) == 1  # the only id visible in both frames, background excluded


def test_object_boxes_square_inside_and_around_the_object():
    g = torch.Generator().manual_seed(1)
    obj = torch.tensor([[10.0, 20.0, 30.0, 30.0], [0.0, 0.0, 4.0, 4.0], [80.0, 70.0, 96.0, 96.0]])
    for _ in range(50):
        b = object_boxes(obj, (1.3, 2.0), 0.1, 24.0, (96, 96), g)
        x0, y0, w, h = b.unbind(1)
        assert torch.equal(w, h) and bool((w >= 24).all()) and bool((w <= 96).all())
        assert bool(
            (x0 >= 0).all()
            and (y0 >= 0).all()
            and (x0 + w <= 96 + 1e-4).all()
            and (y0 + h <= 96 + 1e-4).all()
        )
        cx, cy = (obj[:, 0] + obj[:, 2]) / 2, (obj[:, 1] + obj[:, 3]) / 2
        assert bool(((cx >= x0) & (cx <= x0 + w) & (cy >= y0) & (cy <= y0 + h)).all())


def _object_share(pool, fraction: float) -> float:
    spec = ViewSpec(global_size=48, local_size=32, local_number=2, patch_size=16, zoom=ZoomSpec(fraction))
    shares = []
    for it in range(4):
        t = sample_views(pool, 8, spec, seed=2, iteration=it)["sim"]
        shares.append(float((t.instance > 0).float().mean()))  # patches that are one object
    return float(np.mean(shares))


def test_zoomed_batches_put_objects_on_the_patches(pool):
    spec = ViewSpec(global_size=48, local_size=32, local_number=2, patch_size=16, zoom=ZoomSpec(1.0))
    a = sample_views(pool, 8, spec, seed=2, iteration=0)
    b = sample_views(pool, 8, spec, seed=2, iteration=0)
    assert torch.equal(a["global_crops"], b["global_crops"]) and torch.equal(
        a["local_crops"], b["local_crops"]
    )
    assert a["local_crops"].shape == (16, 3, 32, 32)
    plain, zoomed = _object_share(pool, 0.0), _object_share(pool, 1.0)
    assert zoomed > 5 * plain and zoomed > 0.05, (plain, zoomed)  # 3x3 grids of small objects
    assert bool(a["sim"].corr_valid.any())  # the two zoomed views still overlap


def test_zoomed_crops_carry_their_object_class(pool):
    spec = ViewSpec(global_size=48, local_size=32, local_number=0, patch_size=16, zoom=ZoomSpec(1.0))
    labelled = 0
    for it in range(3):
        b = sample_views(pool, 8, spec, seed=3, iteration=it)
        y = b["sim"].crop_class
        assert y.shape == (16,) and torch.equal(y[:8], y[8:])  # both views of a sample: one object
        for k in range(8):
            if int(y[k]) < 0:
                continue
            labelled += 1
            assert int(y[k]) in set(pool.classes.flatten().tolist()) - {-1}
    assert labelled >= 12
    plain = sample_views(
        pool, 8, ViewSpec(global_size=48, local_number=0, patch_size=16), seed=3, iteration=0
    )
    assert plain["sim"].crop_class is None


def test_object_class_loss_trains_the_cls_head_only_when_weighted(pool):
    from training.sim import SimLossConfig, SimObjective

    off = SimObjective(24, SimLossConfig())
    assert off.class_head is None and not any(k.startswith("class_head") for k in off.state_dict())
    on = SimObjective(24, SimLossConfig(object_class=1.0))
    spec = ViewSpec(global_size=48, local_number=0, patch_size=16, zoom=ZoomSpec(1.0))
    t = sample_views(pool, 8, spec, seed=1, iteration=0)["sim"]
    x = torch.randn(16, 9, 24)
    with pytest.raises(ValueError, match="CLS tokens"):
        on(x, t)
    cls = torch.nn.functional.one_hot(t.crop_class.clamp_min(0), 24).float()  # separable by class
    opt = torch.optim.SGD(on.class_head.parameters(), lr=1.0)
    first = None
    for _ in range(30):
        loss = on(x, t, cls_tokens=cls)["sim_object_class"]
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first, (first, float(loss))
