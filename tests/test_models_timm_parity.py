"""Numerical parity with timm's DINOv3 ports (``Eva`` models, timm >= 1.0.20) on random weights.

timm cannot be imported on the CPU CI machine (PyPI's torchvision, which timm imports, is a CUDA build
that does not load beside the CPU-only torch), so these tests skip there (marker ``timm``, an allowed
skip); they run on the GPU machine: ``pytest tests/test_models_timm_parity.py``.
The ``*_qkvb`` timm variants carry q/v biases, so every bias path is exercised; planted bugs on our side
must fail the same checks.
"""

from __future__ import annotations

import functools

import pytest
import torch
from planted_bugs import BUGS, model_bug

from dinov3_ros.models import load_backbone, official_to_timm, timm_to_official
from dinov3_ros.models.testing import random_backbone

try:
    import timm
except (ImportError, RuntimeError, OSError) as e:  # torchvision missing, or its CUDA ops failing to load
    timm = None
    _TIMM_ERROR = f"{type(e).__name__}: {e}"

pytestmark = [
    pytest.mark.timm,
    pytest.mark.skipif(
        timm is None,
        reason=f"timm cannot be imported here ({_TIMM_ERROR if timm is None else ''}); "
        "runs on the GPU machine (benchmarks/gpu_suite.sh, step parity)",
    ),
]

TOL = 1e-4
TIMM_NAMES = {
    "vitt16": "vit_tiny_patch16_dinov3_qkvb",
    "vits16": "vit_small_patch16_dinov3_qkvb",
    "vits16plus": "vit_small_plus_patch16_dinov3_qkvb",
    "vitb16": "vit_base_patch16_dinov3_qkvb",
}


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max-abs {err:.3g} > {TOL}"


@functools.lru_cache(maxsize=1)
def _pair(arch: str):
    model = random_backbone(arch, seed=11)
    tm = timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=0)
    tm.load_state_dict(official_to_timm(model.state_dict()), strict=True)
    with torch.no_grad():  # timm generates exact fp32 periods; the official files hold bf16-rounded ones
        tm.rope.periods.copy_(model.rope_embed.periods)
    return model, tm.eval()


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full fp32 matmuls on GPU (TF32 would exceed the 1e-4 tolerance)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


CASES = [
    ("vits16", 224, 224),
    ("vits16", 480, 640),
    ("vits16plus", 224, 224),
    ("vits16plus", 480, 640),
    ("vitb16", 224, 224),
    ("vitb16", 480, 640),
]


@pytest.mark.parametrize(("arch", "H", "W"), CASES)
def test_vit_matches_timm(arch: str, H: int, W: int) -> None:
    model, tm = _pair(arch)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model, tm = model.to(dev), tm.to(dev)
    x = torch.randn(2, 3, H, W, device=dev)
    R = model.n_storage_tokens
    take = [3, 7, 11]
    with torch.no_grad():
        out = model.forward_features(x)
        ref = tm.forward_features(x)
        layers = model.get_intermediate_layers(x, n=take, return_class_token=True, return_extra_tokens=True)
        ref_layers = tm.forward_intermediates(
            x, indices=take, norm=True, return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
        )
    _assert_close(out["x_norm_clstoken"], ref[:, 0], "CLS")
    _assert_close(out["x_storage_tokens"], ref[:, 1 : 1 + R], "registers")
    _assert_close(out["x_norm_patchtokens"], ref[:, 1 + R :], "patch tokens")
    for b, (patch, cls, regs), (rpatch, rprefix) in zip(take, layers, ref_layers):
        _assert_close(patch, rpatch, f"block {b} patches")
        _assert_close(cls, rprefix[:, 0], f"block {b} CLS")
        _assert_close(regs, rprefix[:, 1 : 1 + R], f"block {b} registers")


@pytest.mark.parametrize("bug", BUGS)
def test_timm_parity_catches_planted_bug(bug: str) -> None:
    """Negative control: with a planted bug on our side the same 1e-4 check fails."""
    model, tm = _pair("vits16")
    dev = next(model.parameters()).device
    x = torch.randn(1, 3, 64, 96, device=dev)
    with torch.no_grad():
        ref = tm.to(dev).forward_features(x)[:, 1 + model.n_storage_tokens :]
        _assert_close(model.forward_features(x)["x_norm_patchtokens"], ref, "patch tokens")
        with model_bug(bug, model), pytest.raises(AssertionError, match="max-abs"):
            _assert_close(model.forward_features(x)["x_norm_patchtokens"], ref, "patch tokens")


def test_timm_state_dict_loads_through_load_backbone(tmp_path) -> None:
    """A timm state_dict saved to disk loads with load_backbone (arch inferred) and matches timm."""
    _model, tm = _pair("vits16")
    path = tmp_path / "vit_small_patch16_dinov3_qkvb.pth"
    torch.save(tm.state_dict(), path)
    ours = load_backbone(path)
    assert ours.arch == "vits16" and ours.checkpoint_info.format == "timm"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _assert_close(ours.cpu()(x), tm.cpu().forward_features(x)[:, 0], "CLS via load_backbone")


def test_no_qkv_bias_timm_variant_round_trip() -> None:
    """The released non-7B checkpoints have all-zero qkv biases: timm's bias-free variant loads them."""
    model = random_backbone("vitt16", seed=12, depth=12)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.bias.zero_()
    tm = timm.create_model(
        "vit_small_patch16_dinov3", pretrained=False, num_classes=0, embed_dim=192, num_heads=3
    )
    tm.load_state_dict(official_to_timm(model.state_dict(), qkv_bias=False), strict=True)
    with torch.no_grad():
        tm.rope.periods.copy_(model.rope_embed.periods)
    back = timm_to_official(tm.state_dict(), qkv_bias=True)
    ref = model.state_dict()
    assert set(back) == set(ref)
    for k in ref:
        if k != "mask_token":  # timm has no mask token (pretraining only); it comes back as zeros
            assert torch.equal(back[k], ref[k]), k
    assert not back["mask_token"].any()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        _assert_close(model(x), tm.eval().forward_features(x)[:, 0], "CLS (no qkv bias)")
