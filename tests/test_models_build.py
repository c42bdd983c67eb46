"""Architecture facts: parameter counts, state_dict keys/shapes (official layout), fresh-model buffers.

Facts from /work/shared/reference/dinov3.md sections 1, 2, 4, 5. The large models are built on the
``meta`` device (no memory), so these checks are cheap.
"""

from __future__ import annotations

import pytest
import torch

from dinov3_ros.models import ARCHS, build_backbone, count_params, resolve_arch

# exact counts from the facts file, in millions rounded to 2 decimals
FACT_PARAMS_M = {
    "vits16": 21.60,
    "vits16plus": 28.70,
    "vitb16": 85.67,
    "vitl16": 303.15,
    "vitl16plus": 403.92,
    "vith16plus": 840.63,
    "vit7b16": 6716.04,
    "convnext_tiny": 27.82,
    "convnext_small": 49.45,
    "convnext_base": 87.57,
    "convnext_large": 196.23,
}
FACT_ARCH = {  # dim, depth, heads, ffn hidden
    "vits16": (384, 12, 6, 1536),
    "vits16plus": (384, 12, 6, 1536),
    "vitb16": (768, 12, 12, 3072),
    "vitl16": (1024, 24, 16, 4096),
    "vitl16plus": (1024, 24, 16, 4096),
    "vith16plus": (1280, 32, 20, 5120),
    "vit7b16": (4096, 40, 32, 8192),
}


@pytest.mark.parametrize("arch", list(FACT_PARAMS_M))
def test_param_counts_match_facts(arch: str) -> None:
    model = build_backbone(arch, device="meta")
    n = count_params(model)
    assert round(n / 1e6, 2) == FACT_PARAMS_M[arch]
    assert n == ARCHS[arch].params
    assert model.arch == arch


@pytest.mark.parametrize("arch", list(FACT_ARCH))
def test_vit_spec_matches_facts(arch: str) -> None:
    dim, depth, heads, hidden = FACT_ARCH[arch]
    s = ARCHS[arch]
    assert (s.embed_dim, s.depth, s.num_heads, s.ffn_hidden) == (dim, depth, heads, hidden)
    assert s.qkv_bias == (arch != "vit7b16")
    assert s.patch_size == 16 and s.n_storage_tokens == 4


def _vits16_expected() -> dict[str, tuple[int, ...]]:
    """The 188-key ViT-S/16 table of facts section 4."""
    D, H = 384, 1536
    exp = {
        "cls_token": (1, 1, D),
        "storage_tokens": (1, 4, D),
        "mask_token": (1, D),
        "patch_embed.proj.weight": (D, 3, 16, 16),
        "patch_embed.proj.bias": (D,),
        "rope_embed.periods": (16,),
        "norm.weight": (D,),
        "norm.bias": (D,),
    }
    for i in range(12):
        b = f"blocks.{i}."
        exp.update(
            {
                b + "norm1.weight": (D,),
                b + "norm1.bias": (D,),
                b + "attn.qkv.weight": (3 * D, D),
                b + "attn.qkv.bias": (3 * D,),
                b + "attn.qkv.bias_mask": (3 * D,),
                b + "attn.proj.weight": (D, D),
                b + "attn.proj.bias": (D,),
                b + "ls1.gamma": (D,),
                b + "ls2.gamma": (D,),
                b + "norm2.weight": (D,),
                b + "norm2.bias": (D,),
                b + "mlp.fc1.weight": (H, D),
                b + "mlp.fc1.bias": (H,),
                b + "mlp.fc2.weight": (D, H),
                b + "mlp.fc2.bias": (D,),
            }
        )
    return exp


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_vits16_keys_and_shapes_exact() -> None:
    got = _shapes(build_backbone("vits16", device="meta"))
    exp = _vits16_expected()
    assert len(exp) == 188
    assert got == exp


def test_vit7b16_keys_and_shapes_on_meta() -> None:
    model = build_backbone("vit7b16", device="meta")
    got = _shapes(model)
    assert len(got) == 610
    D, H = 4096, 8192
    assert not any(k.endswith(("qkv.bias", "qkv.bias_mask")) for k in got)  # qkv_bias=False
    assert got["local_cls_norm.weight"] == (D,) and got["local_cls_norm.bias"] == (D,)
    assert got["rope_embed.periods"] == (32,)  # head dim 128 -> 32 periods
    assert got["storage_tokens"] == (1, 4, D) and got["mask_token"] == (1, D)
    for i in (0, 39):
        b = f"blocks.{i}."
        assert got[b + "attn.qkv.weight"] == (3 * D, D)
        assert got[b + "mlp.w1.weight"] == (H, D) and got[b + "mlp.w2.weight"] == (H, D)
        assert got[b + "mlp.w3.weight"] == (D, H) and got[b + "mlp.w3.bias"] == (D,)
        assert got[b + "ls1.gamma"] == (D,)
    assert "blocks.40.norm1.weight" not in got
    per_block = {k.split(".", 2)[2] for k in got if k.startswith("blocks.0.")}
    assert len(per_block) == 15  # norm1 x2, qkv.weight, proj x2, ls1, ls2, norm2 x2, w1/w2/w3 x2
    assert not any("fc1" in k for k in got)


def test_vith16plus_keys_and_shapes_on_meta() -> None:
    got = _shapes(build_backbone("vith16plus", device="meta"))
    D, H = 1280, 5120
    assert len(got) == 6 + 32 * 17 + 2
    assert got["rope_embed.periods"] == (16,)
    assert got["blocks.31.attn.qkv.bias_mask"] == (3 * D,)
    assert got["blocks.31.mlp.w1.weight"] == (H, D) and got["blocks.31.mlp.w3.weight"] == (D, H)
    assert "local_cls_norm.weight" not in got and "cls_norm.weight" not in got


def test_vits16plus_swiglu_keys() -> None:
    got = _shapes(build_backbone("vits16plus", device="meta"))
    assert len(got) == 212  # 188 - 12*4 (fc1/fc2) + 12*6 (w1/w2/w3)
    assert got["blocks.0.mlp.w1.weight"] == (1536, 384)
    assert got["blocks.0.mlp.w3.bias"] == (384,)


def test_sat_vitl16_has_local_cls_norm() -> None:
    model = build_backbone("vitl16", device="meta", untie_global_and_local_cls_norm=True)
    assert "local_cls_norm.weight" in model.state_dict()
    assert count_params(model) == ARCHS["vitl16"].params + 2 * 1024


def test_convnext_keys() -> None:
    got = _shapes(build_backbone("convnext_tiny", device="meta"))
    assert got["downsample_layers.0.0.weight"] == (96, 3, 4, 4)
    assert got["downsample_layers.3.1.weight"] == (768, 384, 2, 2)
    assert got["stages.2.8.dwconv.weight"] == (384, 1, 7, 7)
    assert got["stages.3.2.pwconv1.weight"] == (3072, 768)
    assert got["stages.3.2.gamma"] == (768,)
    assert got["norm.weight"] == got["norms.3.weight"] == (768,)
    assert "stages.2.9.gamma" not in got


def test_fresh_model_has_no_nan_and_correct_buffers() -> None:
    for arch, kw in [
        ("vitt16", {}),
        ("vits16plus", {"depth": 2}),
        ("convnext_tiny", {"depths": (1, 1, 2, 1)}),
    ]:
        model = build_backbone(arch, **kw)
        for k, v in model.state_dict().items():
            assert torch.isfinite(v).all(), f"{arch}: {k} has NaN/inf"
    model = build_backbone("vits16", depth=1)
    mask = model.blocks[0].attn.qkv.bias_mask
    assert torch.equal(mask, torch.cat([torch.ones(384), torch.zeros(384), torch.ones(384)]))
    gamma = model.blocks[0].ls1.gamma
    assert torch.allclose(gamma, torch.full_like(gamma, 1e-5))


def test_periods_are_bf16_rounded_base100() -> None:
    p = build_backbone("vits16", depth=1).rope_embed.periods
    exact = 100.0 ** (torch.arange(16, dtype=torch.float64) / 16)
    assert p.dtype == torch.float32
    assert torch.equal(p, exact.to(torch.bfloat16).to(torch.float32))
    assert p[0] == 1.0 and abs(p[-1].item() - 74.99) < 0.5
    # head dim 128 (the 7B): 32 values 100^(k/32)
    p128 = build_backbone("vitt16", depth=1, embed_dim=256, num_heads=2, ffn_hidden=512).rope_embed.periods
    exact128 = 100.0 ** (torch.arange(32, dtype=torch.float64) / 32)
    assert torch.equal(p128, exact128.to(torch.bfloat16).to(torch.float32))


def test_build_backbone_arguments() -> None:
    assert resolve_arch("dinov3_vits16").name == "vits16"
    with pytest.raises(ValueError, match="unknown arch 'vitz99'"):
        build_backbone("vitz99")
    with pytest.raises(TypeError, match="unknown override"):
        build_backbone("vitt16", not_a_flag=1)
    m = build_backbone("vitt16", depth=2, dtype=torch.bfloat16)
    assert m.cls_token.dtype == torch.bfloat16 and not m.training
    assert (m.embed_dim, m.patch_size, m.n_storage_tokens, m.n_blocks, m.arch) == (192, 16, 4, 2, "vitt16")
    assert m.norm_mean == (0.485, 0.456, 0.406) and m.norm_std == (0.229, 0.224, 0.225)
    assert count_params(build_backbone("vitt16", device="meta")) == ARCHS["vitt16"].params
