"""No float64 on the device, per frame: every head's device code path, run here on CPU tensors under a
dispatch-mode audit of all ATen ops, touches no float64 tensor (float64 stays in numpy, on the host).

Negative controls: the audit flags the previous float64 TokenCut and PCA code (transcribed below) and a
float64 input; the float32 paths still give the published algorithm's objects.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.heads.correspondence import match, match_tensors
from dinov3_ros.heads.depth import DPTHead, LinearDepthHead
from dinov3_ros.heads.pca import PCAView
from dinov3_ros.heads.pointcloud import backproject
from dinov3_ros.heads.tokencut import TokenCutTracker, fiedler_vector, tokencut, tokencut_multi
from dinov3_ros.runtime.device_audit import OpAudit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _planted(h=18, w=24, C=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    bg, a, b = torch.randn(3, C, generator=g)
    f = bg + 1.3 * torch.randn(h, w, C, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for c, (cy, cx) in ((a, (5, 6)), (b, (12, 17))):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < 12
        f[m] = c + 1.3 * torch.randn(int(m.sum()), C, generator=g)
    return f


def _float64_ops(fn) -> tuple[list[str], object]:
    with OpAudit() as audit:
        out = fn()
    assert audit.records, "the audit saw no op at all"
    return sorted({r.name for r in audit.with_dtypes()}), out


@pytest.mark.parametrize("method", ["auto", "subspace", "dense"])
def test_tokencut_device_path_has_no_float64(method):
    f = _planted()
    bad, objs = _float64_ops(lambda: tokencut_multi(f, k=3, method=method, graph_once=True))
    assert bad == []
    ref = tokencut_multi(f.numpy(), k=3, method="scipy")  # float64 reference solve (host)
    assert [o.mask.tolist() for o in objs] == [o.mask.tolist() for o in ref]
    bad, res = _float64_ops(lambda: tokencut(f, method=method))
    assert bad == [] and np.array_equal(res.mask, ref[0].mask)
    bad, _ = _float64_ops(lambda: fiedler_vector(f.reshape(-1, f.shape[-1]), method=method))
    assert bad == []
    tracker = TokenCutTracker(k=2, use_features=True)
    bad, _ = _float64_ops(lambda: [tracker.update(_planted(seed=s)) for s in range(3)])
    assert bad == []


def _old_tokencut_device_solve(F: torch.Tensor, tau: float = 0.2, eps: float = 1e-5) -> np.ndarray:
    """The previous device path, transcribed: float64 graph and ``torch.linalg.eigh`` on F's device."""
    Fn = torch.nn.functional.normalize(F, dim=1)
    S = Fn @ Fn.T
    one = torch.ones((), dtype=torch.float64, device=S.device)
    W = torch.where(S > tau, one, one * eps)
    d = W.sum(1)
    dis = d.rsqrt()
    M = W * dis[:, None] * dis[None, :]
    _, Y = torch.linalg.eigh(0.5 * (M + M.T))
    return (dis * Y[:, -2]).numpy()


def test_audit_catches_the_previous_float64_paths():
    f = _planted()
    F = f.reshape(-1, f.shape[-1])
    bad, x_old = _float64_ops(lambda: _old_tokencut_device_solve(F))
    assert "_linalg_eigh" in bad and "where" in bad
    x_new, _ = fiedler_vector(F, method="subspace")
    np.testing.assert_allclose(abs(x_old @ x_new), x_new @ x_new, rtol=1e-6)  # same vector, up to sign
    # the previous PCA projection (features cast to float64 on their device) is caught too
    view = PCAView().fit(f)
    bad, _ = _float64_ops(
        lambda: (f.reshape(-1, 48).to(torch.float64) - view.mean.double()) @ view.components.double()
    )
    assert {"_to_copy", "mm"} <= set(bad) or {"to", "mm"} <= set(bad)
    # a float64 input reaches the device code only through its cast: flagged as well
    bad, _ = _float64_ops(lambda: tokencut_multi(f.double(), k=2, graph_once=True))
    assert bad


@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("fg_threshold", [None, 0.5])
def test_pca_device_path_has_no_float64(momentum, fg_threshold):
    frames = [_planted(seed=s) for s in range(3)]
    view = PCAView(momentum=momentum, fg_threshold=fg_threshold)

    def run():
        out = []
        for f in frames:
            view.update(f, fg_mask=torch.ones(f.shape[:2]) if fg_threshold is None else None)
            out.append(view.transform_tensor(f, size=(36, 48)))
            view.project(f)
            view.foreground(f)
        return out

    bad, out = _float64_ops(run)
    assert bad == []
    assert out[0].dtype == torch.uint8 and out[0].shape == (36, 48, 3)


def test_depth_points_matches_device_paths_have_no_float64():
    f = _planted(h=12, w=16, C=32)
    x = f.permute(2, 0, 1)[None]
    lin = LinearDepthHead(32).eval()
    dpt = DPTHead(32, features=16, out_channels=[8, 16, 32, 32], n_bins=None).eval()
    K = np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]])
    depth = torch.rand(120, 160, generator=torch.Generator().manual_seed(1)) * 4 + 0.5
    rgb = torch.zeros(120, 160, 3, dtype=torch.uint8)
    f1 = torch.roll(f, shifts=(1, 1), dims=(0, 1))

    def run():
        with torch.no_grad():
            lin(x)
            dpt([x + 0.1 * i for i in range(4)])
        pts, _ = backproject(depth, K, rgb, stride=2)
        match_tensors(f, f1, ratio=0.95)
        m = match(f, f1, patch_size=16.0, ratio=0.95, verify_with="fundamental")
        return pts, m

    bad, (pts, m) = _float64_ops(run)
    assert bad == []
    assert pts.dtype == torch.float32 and len(m) > 0


def test_backproject_float32_matches_float64_reference():
    """The float32 back-projection agrees with an exact float64 one to float32 resolution."""
    g = torch.Generator().manual_seed(2)
    depth = torch.rand(48, 64, generator=g) * 9 + 0.2
    K = np.array([[321.7, 0, 31.3], [0, 318.2, 23.9], [0, 0, 1]])
    pts = backproject(depth, K).numpy()
    v, u = np.mgrid[0:48, 0:64]
    z = depth.numpy().astype(np.float64).reshape(-1)
    ref = np.stack([(u.reshape(-1) - K[0, 2]) * z / K[0, 0], (v.reshape(-1) - K[1, 2]) * z / K[1, 1], z], 1)
    np.testing.assert_allclose(pts, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("pca_mode", ["fit_once", "update"])
def test_pipeline_frames_have_no_float64_torch_ops(pca_mode):
    """The whole per-frame pipeline (all outputs, on CPU tensors) runs no float64 ATen op."""
    from dinov3_ros.pipeline import OUTPUTS, Frame, PipelineConfig, load_model
    from dinov3_ros.pipeline.pipeline import Pipeline

    model = load_model("random:vitt16", "torch", "cpu", "fp32", (128, 160))
    cfg = PipelineConfig(
        resolution=(128, 160), parallel_heads=False, max_objects=3, pca_mode=pca_mode, features_k=8
    )
    pipe = Pipeline.from_model(model, cfg, device="cpu")
    rng = np.random.default_rng(0)
    for i in range(3):  # the first frame fits PCA and sets the keyframe; later ones match and track
        frame = Frame(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), i, "cam", None, "s")
        bad, (out,) = _float64_ops(lambda f=frame: pipe.process([f], set(OUTPUTS)))
        assert bad == [], f"frame {i}: {bad}"
        assert all(out.get(k) is not None for k in ("objects", "points", "matches"))
