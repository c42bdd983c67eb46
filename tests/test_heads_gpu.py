"""CUDA paths of the heads agree with the CPU/reference results (skipped without a GPU)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dinov3_ros.heads.correspondence import match_tensors
from dinov3_ros.heads.depth import DPTHead, LinearDepthHead
from dinov3_ros.heads.pca import PCAView
from dinov3_ros.heads.pointcloud import backproject
from dinov3_ros.heads.tokencut import tokencut
from dinov3_ros.heads.upsample import upsample

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA: runs on the GPU machine (benchmarks/gpu_suite.sh)"
    ),
]


def _planted(h=30, w=40, C=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    bg, obj = torch.randn(2, C, generator=g)
    f = bg + 1.5 * torch.randn(h, w, C, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    m = (yy - 14) ** 2 + (xx - 22) ** 2 < 49
    f[m] = obj + 1.5 * torch.randn(int(m.sum()), C, generator=g)
    return f, m.numpy()


@pytest.mark.parametrize("method", ["auto", "subspace", "dense"])
def test_tokencut_cuda_matches_scipy(method):
    f, m = _planted()
    ref = tokencut(f.numpy(), method="scipy")
    res = tokencut(f.cuda(), method=method)
    assert np.array_equal(res.mask, ref.mask)
    np.testing.assert_allclose(res.eigenvector, ref.eigenvector, atol=1e-6)
    assert (res.mask == m).mean() > 0.97


def test_matching_cuda_equals_cpu():
    f0, _ = _planted(seed=1)
    f1 = torch.roll(f0, shifts=(1, 2), dims=(0, 1)) + 0.3 * torch.randn(
        f0.shape, generator=torch.Generator().manual_seed(2)
    )
    a = match_tensors(f0, f1, ratio=0.95)
    b = match_tensors(f0.cuda(), f1.cuda(), ratio=0.95)
    assert torch.equal(a["idx0"], b["idx0"].cpu()) and torch.equal(a["idx1"], b["idx1"].cpu())
    torch.testing.assert_close(a["pts1"], b["pts1"].cpu(), atol=1e-2, rtol=0)


def test_pca_depth_upsample_pointcloud_cuda_equal_cpu():
    f, _ = _planted()
    c_cpu = PCAView(fg_threshold=0.5)(f, size=(480, 640)).astype(int)
    c_gpu = PCAView(fg_threshold=0.5)(f.cuda(), size=(480, 640)).astype(int)
    assert (np.abs(c_cpu - c_gpu) > 1).mean() < 1e-3
    x = f.permute(2, 0, 1)[None]
    lin = LinearDepthHead(384).eval()
    dpt = DPTHead(384, features=64, out_channels=[48, 96, 192, 384], n_bins=None).eval()
    with torch.no_grad():
        torch.testing.assert_close(lin(x), copy.deepcopy(lin).cuda()(x.cuda()).cpu(), atol=1e-4, rtol=1e-4)
        layers = [x + 0.01 * i for i in range(4)]
        torch.testing.assert_close(
            dpt(layers), copy.deepcopy(dpt).cuda()([t.cuda() for t in layers]).cpu(), atol=1e-3, rtol=1e-3
        )
    guide = (torch.rand(480, 640, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    small = x[:, :16]
    for mode in ("guided", "guided_filter"):
        a = upsample(small, (480, 640), mode=mode, guide=guide)
        b = upsample(small.cuda(), (480, 640), mode=mode, guide=guide.cuda()).cpu()
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    depth = torch.rand(480, 640, generator=torch.Generator().manual_seed(4)) * 5
    torch.testing.assert_close(backproject(depth, K), backproject(depth.cuda(), K).cpu())


def test_tokencut_multi_cuda_graph_path_equals_cpu_reference():
    """Multi-object TokenCut on CUDA (every cut one CUDA-graph replay, masked fixed shapes) finds the same
    objects as the CPU per-cut reference, frame after frame (the captured graph is reused)."""
    from dinov3_ros.heads.tokencut import tokencut_multi

    h, w, C = 30, 40, 384
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        bg, oa, ob = torch.randn(3, C, generator=g)
        f = bg + 1.2 * torch.randn(h, w, C, generator=g)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ma = (yy - 8 - seed) ** 2 + (xx - 10) ** 2 < 30
        mb = (yy - 20) ** 2 + (xx - 28 + seed) ** 2 < 30
        f[ma] = oa + 1.2 * torch.randn(int(ma.sum()), C, generator=g)
        f[mb] = ob + 1.2 * torch.randn(int(mb.sum()), C, generator=g)
        ref = tokencut_multi(f.numpy(), k=4, method="scipy")
        got = tokencut_multi(f.cuda(), k=4)
        assert len(got) == len(ref) >= 2
        for r, o in zip(ref, got):
            assert np.array_equal(r.mask, o.mask)
            assert o.contrast == pytest.approx(r.contrast, rel=1e-6)
            assert o.eigenvalue == pytest.approx(r.eigenvalue, abs=1e-6)
