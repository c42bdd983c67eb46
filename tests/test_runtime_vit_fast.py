"""The GPU fast paths of the inference ViT (patch embedding as a GEMM, GELU in the GEMM epilogue) compute
the same function as the plain forward; checked here on CPU, where both code paths run."""

from __future__ import annotations

import copy

import pytest
import torch

from dinov3_ros.models import build_backbone
from dinov3_ros.runtime.vit_infer import InferenceViT


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    bb = build_backbone("vitt16").eval()
    return InferenceViT.from_backbone(bb).eval()


@pytest.mark.parametrize("size", [(64, 96), (48, 48)])
def test_patch_gemm_equals_conv(vit, size):
    x = torch.randn(2, 3, *size)
    fast = copy.deepcopy(vit)
    fast.patch_gemm = True
    with torch.inference_mode():
        ref, ref_cls, _ = vit(x)
        out, cls, _ = fast(x)
        out_cl, _, _ = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, ref_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-5)


def test_gelu_epilogue_path_equals_plain_mlp_on_cpu(vit):
    """On CPU ``_addmm_activation`` applies the exact GELU, so the fused code path must equal the
    plain one (on CUDA it is the tanh approximation, a documented speed option)."""
    x = torch.randn(1, 3, 64, 64)
    fast = copy.deepcopy(vit)
    fast.set_gelu_epilogue(True)
    assert all(b.gelu_epilogue for b in fast.blocks)
    with torch.inference_mode():
        ref, _, _ = vit(x)
        out, _, _ = fast(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_tanh_gelu_deviation_is_below_half_precision_resolution():
    """What the CUDA epilogue changes: |gelu_tanh - gelu| <= 1e-3 everywhere, i.e. below bf16's
    relative resolution (2^-8) for activations of magnitude >= 0.25."""
    z = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    d = (torch.nn.functional.gelu(z, approximate="tanh") - torch.nn.functional.gelu(z)).abs()
    assert float(d.max()) < 1e-3
