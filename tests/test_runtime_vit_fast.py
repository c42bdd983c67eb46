"""The GPU fast paths of the inference ViT (patch embedding as a GEMM, GELU in the GEMM epilogue) compute
the same function as the plain forward; checked here on CPU, where both code paths run. Each check has a
negative control: a plausible bug in the fast path fails the same tolerance."""

from __future__ import annotations

import copy

import pytest
import torch

from dinov3_ros.models.testing import random_backbone
from dinov3_ros.runtime.vit_infer import InferenceViT

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def vit():
    return InferenceViT.from_backbone(random_backbone("vitt16", seed=0, depth=4)).eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, **TOL)


@pytest.mark.parametrize("size", [(64, 96), (48, 48)])
def test_patch_gemm_equals_conv(vit, size):
    x = torch.randn(2, 3, *size)
    fast = copy.deepcopy(vit)
    fast.patch_gemm = True
    with torch.inference_mode():
        ref, ref_cls, _ = vit(x)
        out, cls, _ = fast(x)
        out_cl, _, _ = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(cls, ref_cls, **TOL)
    torch.testing.assert_close(out_cl, ref, **TOL)


def test_patch_gemm_tolerance_catches_transposed_patches(vit):
    """Negative control: patchifying (kw, kh) instead of (kh, kw) - the GEMM with the kernel transposed -
    is outside the tolerance."""
    x = torch.randn(2, 3, 64, 96)
    fast = copy.deepcopy(vit)
    fast.patch_gemm = True
    with torch.no_grad():
        fast.patch_embed.weight.copy_(fast.patch_embed.weight.transpose(-1, -2).clone())
    with torch.inference_mode():
        assert not _close(fast(x)[0], vit(x)[0])


def _relu_epilogue(bias, mat1, mat2, *, use_gelu=False, **kw):
    return torch.relu(torch.addmm(bias, mat1, mat2))


def _tanh_epilogue(bias, mat1, mat2, *, use_gelu=False, **kw):
    return torch.nn.functional.gelu(torch.addmm(bias, mat1, mat2), approximate="tanh")


def _epilogue_matches(vit) -> bool:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fast = copy.deepcopy(vit)
    fast.set_gelu_epilogue(True)
    assert all(b.gelu_epilogue for b in fast.blocks)
    with torch.inference_mode():
        return _close(fast(x)[0], vit(x)[0])


def test_gelu_epilogue_path_equals_plain_mlp_on_cpu(vit):
    """On CPU ``_addmm_activation`` applies the exact GELU, so the fused code path must equal the
    plain one (on CUDA it is the tanh approximation, a documented speed option)."""
    assert _epilogue_matches(vit)


@pytest.mark.parametrize("epilogue", [_relu_epilogue, _tanh_epilogue], ids=["relu", "tanh_gelu"])
def test_gelu_epilogue_tolerance_catches_wrong_activation(vit, monkeypatch, epilogue):
    """Negative control: an epilogue with ReLU, or with the tanh GELU, is outside the tolerance."""
    monkeypatch.setattr(torch, "_addmm_activation", epilogue)
    assert not _epilogue_matches(vit)


def test_tanh_gelu_deviation_is_below_half_precision_resolution():
    """What the CUDA epilogue changes: |gelu_tanh - gelu| <= 1e-3 everywhere, i.e. below bf16's
    relative resolution (2^-8) for activations of magnitude >= 0.25."""
    z = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    d = (torch.nn.functional.gelu(z, approximate="tanh") - torch.nn.functional.gelu(z)).abs()
    assert float(d.max()) < 1e-3
    assert float(d.max()) > 1e-4  # and it is a different function
