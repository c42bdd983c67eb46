"""The torch renderer on CUDA gives the CPU renderer's frames (no open3d needed: runs on the GPU host)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.synthetic import SceneConfig, sample_scene
from dinov3_ros.synthetic.torch_pack import pack_scenes
from dinov3_ros.synthetic.torch_pool import render_pool
from dinov3_ros.synthetic.torch_render import render

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: runs on the GPU machine"),
]

W, H = 96, 80
CFG = SceneConfig(width=W, height=H, frames_per_scene=6, min_objects=4, tumble_prob=0.6)


def test_cuda_render_matches_cpu_render():
    specs = [sample_scene(CFG, 3, s) for s in range(6)]
    sid = torch.arange(6).repeat_interleave(2)
    T = torch.from_numpy(np.stack([sp.trajectory.pose(i / 5) for sp in specs for i in (0, 5)]))
    K = torch.from_numpy(np.stack([sp.K for sp in specs for _ in (0, 5)]))
    K[1::3, 0, 2] += 7.5  # per-frame intrinsics
    cpu = render(pack_scenes(specs), sid, T, K, H, W)
    gpu = render(pack_scenes(specs, "cuda"), sid.cuda(), T.cuda(), K.cuda(), H, W, chunk_rays=3 * H * W)
    assert (gpu.rgb.cpu() == cpu.rgb).all(-1).float().mean().item() > 0.999
    assert (gpu.instances.cpu() == cpu.instances).float().mean().item() > 0.999
    both = (gpu.depth.cpu() > 0) & (cpu.depth > 0)
    assert both.float().mean().item() > 0.999
    rel = ((gpu.depth.cpu() - cpu.depth).abs() / cpu.depth.clamp(min=1e-6))[both]
    assert rel.max().item() < 1e-4
    cos = (gpu.normals.cpu() * cpu.normals).sum(-1)[both & (gpu.instances.cpu() == cpu.instances)]
    assert cos.min().item() > 0.999


def test_cuda_render_pool_matches_cpu():
    kw = dict(frames=[0, 3], batch_frames=4, gt_stride=4)
    a = render_pool(CFG, 1, range(5), "cuda", **kw)
    b = render_pool(CFG, 1, range(5), "cpu", **kw)
    assert (a["rgb"].cpu() == b["rgb"]).all(-1).float().mean().item() > 0.999
    for k in ("K", "T_world_cam", "scene_index", "frame_index", "instance_classes"):
        assert torch.equal(a[k].cpu(), b[k]), k
