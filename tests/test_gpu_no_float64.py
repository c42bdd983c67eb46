"""No per-frame head launches a float64 CUDA kernel (torch.profiler; skipped without a GPU).

The kernels come from the profiler's CUDA activity (every thread, CUDA-graph replays included); a kernel
counts as float64 by its name (``double`` templates, ``f64`` tiles, cuBLAS/cuSOLVER ``d`` routines) or
by the dtypes of the op that launched it. The negative control shows the check flags float64 GEMMs,
elementwise kernels and an eigen-solver on this card, and flags nothing in their float32 twins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.runtime.device_audit import float64_kernels, trace_events, trace_kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: runs on the GPU machine"),
]


def _kernels(fn):
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        out = fn()
        torch.cuda.synchronize()
    kernels = trace_kernels(trace_events(prof))
    assert kernels, "the profiler recorded no CUDA kernel"
    return kernels, out


def _names(kernels):
    return sorted({k.name[:120] for k in float64_kernels(kernels)})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_profiler_check_flags_float64_kernels_only(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(96, 96, device="cuda", dtype=dtype, generator=g)

    def work():
        b = a @ a.T
        c = torch.sigmoid(b * 0.5 + 1.0).sum(0)
        return torch.linalg.eigh(b + 96 * torch.eye(96, device="cuda", dtype=dtype))[0], c

    kernels, _ = _kernels(work)
    flagged = float64_kernels(kernels)
    if dtype == torch.float64:
        assert len(flagged) >= 3, [k.name for k in kernels]
        assert any("gemm" in k.name.lower() or k.op in ("aten::mm", "aten::matmul") for k in flagged)
    else:
        assert flagged == [], _names(kernels)


def _planted(h, w, C=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    bg, a, b = torch.randn(3, C, generator=g)
    f = bg + 1.5 * torch.randn(h, w, C, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for c, (cy, cx) in ((a, (h // 3, w // 3)), (b, (2 * h // 3, 2 * w // 3))):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 5) ** 2
        f[m] = c + 1.5 * torch.randn(int(m.sum()), C, generator=g)
    return f.cuda()


@pytest.mark.parametrize("grid", [(30, 40), (12, 16)])  # the masked cut; the dense host solve (n <= 256)
def test_tokencut_launches_no_float64_kernel(grid):
    from dinov3_ros.heads.tokencut import tokencut, tokencut_multi

    f = _planted(*grid)
    ref = tokencut_multi(f.cpu().numpy(), k=3, method="scipy")
    tokencut_multi(f, k=3)  # capture the CUDA graphs outside the profile
    kernels, got = _kernels(lambda: tokencut_multi(f, k=3))
    assert _names(kernels) == []
    assert [o.mask.tolist() for o in got] == [o.mask.tolist() for o in ref]
    kernels, res = _kernels(lambda: tokencut(f, method="auto"))
    assert _names(kernels) == [] and np.array_equal(res.mask, ref[0].mask)


def test_pca_points_matches_launch_no_float64_kernel():
    from dinov3_ros.heads.correspondence import match
    from dinov3_ros.heads.pca import PCAView
    from dinov3_ros.heads.pointcloud import backproject

    f0, f1 = _planted(30, 40, seed=1), _planted(30, 40, seed=2)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    depth = torch.rand(480, 640, device="cuda") * 5 + 0.1
    rgb = torch.zeros(480, 640, 3, dtype=torch.uint8, device="cuda")
    view = PCAView(momentum=0.5, fg_threshold=0.5)
    view.update(f0)

    def work():
        view.update(f1)
        img = view.transform_tensor(f1, size=(480, 640))
        pts, _cols = backproject(depth, K, rgb)
        m = match(f0, f1, patch_size=16.0, ratio=0.95, verify_with="fundamental")
        return img, pts, m

    kernels, (img, pts, _m) = _kernels(work)
    assert _names(kernels) == []
    assert img.dtype == torch.uint8 and pts.dtype == torch.float32


@pytest.mark.parametrize("pca_mode", ["fit_once", "update"])
def test_pipeline_frames_launch_no_float64_kernel(pca_mode):
    """Every output of the node's pipeline (engine as CUDA graphs, fp16, 480x640), after warm-up."""
    from dinov3_ros.pipeline import OUTPUTS, Frame, PipelineConfig, load_model
    from dinov3_ros.pipeline.pipeline import Pipeline

    model = load_model("random:vits16", "torch", "cuda", "fp16", (480, 640), cuda_graphs=True)
    cfg = PipelineConfig(resolution=(480, 640), max_objects=3, pca_mode=pca_mode, features_k=8)
    pipe = Pipeline.from_model(model, cfg, device="cuda")
    rng = np.random.default_rng(0)
    frames = [
        Frame(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), i, "cam", None, "s") for i in range(5)
    ]
    for fr in frames[:3]:  # fits, keyframe, graph captures
        pipe.process([fr], set(OUTPUTS))
    kernels, outs = _kernels(lambda: [pipe.process([fr], set(OUTPUTS))[0] for fr in frames[3:]])
    assert _names(kernels) == []
    assert all(o.get(k) is not None for o in outs for k in ("objects", "points", "matches"))
