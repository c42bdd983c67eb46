"""Key-conversion round trips official <-> timm <-> Hugging Face (ViT MLP, SwiGLU, no-qkv-bias; ConvNeXt)."""

from __future__ import annotations

import pytest
import torch

from dinov3_ros.models import (
    convnext_hf_to_official,
    convnext_official_to_hf,
    detect_format,
    hf_to_official,
    hf_to_timm,
    official_to_hf,
    official_to_timm,
    timm_to_hf,
    timm_to_official,
)
from dinov3_ros.models.testing import random_backbone


def _official(arch: str, **kw) -> dict[str, torch.Tensor]:
    m = random_backbone(arch, seed=21, **kw)
    sd = m.state_dict()
    D = m.embed_dim
    for k, v in sd.items():  # the masked k third is not representable in timm/HF (it has no effect)
        if k.endswith("qkv.bias"):
            v[D : 2 * D] = 0
    return {k: v.clone() for k, v in sd.items()}


def _equal(a: dict, b: dict, skip=()) -> None:
    assert set(a) == set(b), (sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5])
    for k in a:
        if k not in skip:
            assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


VARIANTS = [
    ("vitt16", {"depth": 2}),  # MLP FFN, qkv bias
    ("vits16plus", {"depth": 2}),  # SwiGLU
    ("vitt16", {"depth": 2, "qkv_bias": False, "ffn": "swiglu64", "ffn_hidden": 512}),  # 7B-style
]


@pytest.mark.parametrize(("arch", "kw"), VARIANTS)
def test_official_timm_round_trip(arch, kw) -> None:
    sd = _official(arch, **kw)
    t = official_to_timm(sd)
    assert detect_format(t) == "timm"
    assert "reg_token" in t and "blocks.0.gamma_1" in t and "mask_token" not in t
    assert not any(k.endswith((".periods", ".bias_mask")) for k in t)
    if kw.get("qkv_bias", True):
        assert "blocks.0.attn.q_bias" in t and "blocks.0.attn.v_bias" in t
    back = timm_to_official(t, qkv_bias=kw.get("qkv_bias", True))
    _equal(back, sd, skip=("mask_token",))  # timm drops the pretraining-only mask token
    assert not back["mask_token"].any()


@pytest.mark.parametrize(("arch", "kw"), VARIANTS)
def test_official_hf_round_trip(arch, kw) -> None:
    sd = _official(arch, **kw)
    for prefix in ("layer.", "model.layer."):
        h = official_to_hf(sd, layer_prefix=prefix)
        assert detect_format(h) == "hf"
        assert f"{prefix}0.attention.q_proj.weight" in h and "embeddings.register_tokens" in h
        assert h["embeddings.mask_token"].shape == (1, 1, sd["mask_token"].shape[-1])
        assert not any("k_proj.bias" in k for k in h)
        _equal(hf_to_official(h), sd)


@pytest.mark.parametrize(("arch", "kw"), VARIANTS[:2])
def test_timm_hf_round_trip(arch, kw) -> None:
    sd = _official(arch, **kw)
    t = official_to_timm(sd)
    h = timm_to_hf(t)
    _equal(hf_to_timm(h), t)
    _equal(timm_to_hf(hf_to_timm(h)), h, skip=("embeddings.mask_token",))


def test_swiglu_names() -> None:
    sd = _official("vits16plus", depth=1)
    t, h = official_to_timm(sd), official_to_hf(sd)
    assert torch.equal(t["blocks.0.mlp.fc1_g.weight"], sd["blocks.0.mlp.w1.weight"])
    assert torch.equal(t["blocks.0.mlp.fc1_x.weight"], sd["blocks.0.mlp.w2.weight"])
    assert torch.equal(t["blocks.0.mlp.fc2.weight"], sd["blocks.0.mlp.w3.weight"])
    assert torch.equal(h["layer.0.mlp.gate_proj.weight"], sd["blocks.0.mlp.w1.weight"])
    assert torch.equal(h["layer.0.mlp.up_proj.weight"], sd["blocks.0.mlp.w2.weight"])
    assert torch.equal(h["layer.0.mlp.down_proj.weight"], sd["blocks.0.mlp.w3.weight"])


def test_convnext_hf_round_trip() -> None:
    sd = random_backbone("convnext_tiny", seed=22, depths=(1, 1, 2, 1)).state_dict()
    for prefix in ("stages.", "model.stages."):
        h = convnext_official_to_hf(sd, stage_prefix=prefix)
        assert detect_format(h) == "hf_convnext"
        assert f"{prefix}2.layers.1.depthwise_conv.weight" in h and "layer_norm.weight" in h
        _equal(convnext_hf_to_official(h), sd)


def test_detect_format_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unrecognised state_dict layout"):
        detect_format({"fc.weight": torch.zeros(1)})
