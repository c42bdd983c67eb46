"""Batched rendering of many scenes (render_pool): the generator's frames, GT at a stride, worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.synthetic import SceneConfig, SceneGenerator
from dinov3_ros.synthetic.torch_pool import render_pool

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = SceneConfig(width=48, height=40, frames_per_scene=3)


def test_render_pool_equals_generator_frames_with_strided_gt():
    scenes, frames, s = [4, 1, 7], [0, 2], 3
    out = render_pool(CFG, 5, scenes, "cpu", frames=frames, batch_frames=4, gt_stride=s, gt_offset=1)
    gen = SceneGenerator(CFG, seed=5, backend="torch")
    assert out["rgb"].shape == (6, 40, 48, 3) and out["depth"].shape == (6, 13, 16)
    assert out["normals"].shape == (6, 13, 16, 3) and out["instances"].dtype == torch.int32
    assert int(out["gt_stride"]) == 3 and int(out["gt_offset"]) == 1
    k = 0
    for row, sc in enumerate(scenes):
        for i in frames:
            f = gen.frame(sc, i)
            assert int(out["scene_index"][k]) == sc and int(out["frame_index"][k]) == i
            assert int(out["scene_row"][k]) == row
            assert np.array_equal(out["rgb"][k].numpy(), f.rgb)
            assert np.array_equal(out["depth"][k].numpy(), f.depth[1::s, 1::s])
            assert np.array_equal(out["instances"][k].numpy(), f.instances[1::s, 1::s])
            assert np.array_equal(out["normals"][k].numpy(), f.normals[1::s, 1::s])
            assert np.array_equal(out["K"][k].numpy(), f.K)
            assert np.array_equal(out["T_world_cam"][k].numpy(), f.T_world_cam)
            ic = out["instance_classes"][row].numpy()
            n = len(f.instance_classes)
            assert np.array_equal(ic[:n], f.instance_classes) and np.all(ic[n:] == -1)
            k += 1


def test_render_pool_worker_processes_give_the_same_frames():
    kw = dict(frames=[1], batch_frames=2, gt_stride=2)
    a = render_pool(CFG, 9, range(5), "cpu", workers=2, **kw)
    b = render_pool(CFG, 9, range(5), "cpu", workers=0, **kw)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_render_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="frames"):
        render_pool(CFG, 0, [0], frames=[3])
    with pytest.raises(ValueError, match="gt_offset"):
        render_pool(CFG, 0, [0], gt_stride=2, gt_offset=2)
    with pytest.raises(ValueError, match="noise"):
        render_pool(SceneConfig(width=16, height=16, noise_std=1.0), 0, [0])
    with pytest.raises(ValueError, match="scenes"):
        render_pool(CFG, 0, [])
