"""Numerical parity with Hugging Face transformers' DINOv3 models on random weights (fp32, CPU).

Our state_dict is converted with ``official_to_hf`` and loaded strictly into ``DINOv3ViTModel`` /
``DINOv3ConvNextModel``; CLS, register and patch tokens and ``get_intermediate_layers`` must agree to
1e-4 max-abs. LayerScale, every bias (including the masked k third of qkv) and the norms are randomised
(``random_backbone``: every block changes the output), and planted bugs on our side fail the same checks.
"""

from __future__ import annotations

import functools

import pytest
import torch
import transformers
from planted_bugs import BUGS, model_bug

from dinov3_ros.models import ARCHS, convnext_official_to_hf, official_to_hf
from dinov3_ros.models.testing import random_backbone

TOL = 1e-4


@functools.lru_cache(maxsize=1)
def _pair(arch: str, depth: int | None = None):
    """(ours, HF) with identical random weights; cached so both resolutions share one build."""
    model = random_backbone(arch, seed=1, **({} if depth is None else {"depth": depth}))
    spec = ARCHS[arch]
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=spec.embed_dim,
        intermediate_size=spec.ffn_hidden,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=spec.num_heads,
        num_register_tokens=spec.n_storage_tokens,
        use_gated_mlp=spec.ffn != "mlp",
        hidden_act="gelu" if spec.ffn == "mlp" else "silu",
        query_bias=spec.qkv_bias,
        key_bias=False,
        value_bias=spec.qkv_bias,
        layer_norm_eps=1e-5,
        rope_theta=100.0,
    )
    with torch.device("meta"):  # skip HF's random init: every tensor comes from our state_dict
        hf = transformers.DINOv3ViTModel(cfg)
    hf.config._attn_implementation = "sdpa"
    hf_sd = {k: v.clone() for k, v in official_to_hf(model.state_dict(), layer_prefix="model.layer.").items()}
    missing, unexpected = hf.load_state_dict(hf_sd, strict=True, assign=True)  # copies: no shared storage
    assert not missing and not unexpected
    # same (bf16-rounded) periods as the official checkpoints; inv_freq is a non-persistent buffer
    hf.rope_embeddings.inv_freq = 1.0 / model.rope_embed.periods.clone()
    return model, hf.eval()


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max-abs {err:.3g} > {TOL}"


# ordered by arch so the cached pair is reused across the two resolutions
CASES = [
    ("vits16", 224, 224),
    ("vits16", 480, 640),
    ("vits16plus", 224, 224),
    ("vits16plus", 480, 640),
    ("vitb16", 224, 224),
    pytest.param("vitb16", 480, 640, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("arch", "H", "W"), CASES)
def test_vit_matches_transformers(arch: str, H: int, W: int) -> None:
    """get_intermediate_layers (blocks 3, 7, 11 incl. the last = final output) vs HF hidden states;
    forward_features too at 224 (it shares the block/norm path, see test_models_vit)."""
    torch.set_num_threads(2)
    model, hf = _pair(arch)
    x = torch.randn(1, 3, H, W)
    R = model.n_storage_tokens
    take = [3, 7, 11]
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        layers = model.get_intermediate_layers(x, n=take, return_class_token=True, return_extra_tokens=True)
        normed = [hf.norm(ref.hidden_states[b + 1]) for b in take]  # hidden_states[0] = embeddings
    last = ref.last_hidden_state
    for b, (patch, cls, regs), nb in zip(take, layers, normed):
        assert patch.shape == (1, (H // 16) * (W // 16), model.embed_dim)
        _assert_close(patch, nb[:, 1 + R :], f"block {b} patches")
        _assert_close(cls, nb[:, 0], f"block {b} CLS")
        _assert_close(regs, nb[:, 1 : 1 + R], f"block {b} registers")
    _assert_close(layers[-1][1], last[:, 0], "final CLS")
    _assert_close(layers[-1][2], last[:, 1 : 1 + R], "final registers")
    _assert_close(layers[-1][0], last[:, 1 + R :], "final patch tokens")
    if H == 224:
        with torch.no_grad():
            out = model.forward_features(x)
        _assert_close(out["x_norm_clstoken"], last[:, 0], "forward_features CLS")
        _assert_close(out["x_storage_tokens"], last[:, 1 : 1 + R], "forward_features registers")
        _assert_close(out["x_norm_patchtokens"], last[:, 1 + R :], "forward_features patch tokens")
        _assert_close(out["x_prenorm"], ref.hidden_states[-1], "forward_features prenorm")


def _check_final(model, hf, x: torch.Tensor) -> None:
    """Final CLS, registers and patch tokens against HF (the checks of ``test_vit_matches_transformers``)."""
    R = model.n_storage_tokens
    with torch.no_grad():
        last = hf(pixel_values=x).last_hidden_state
        out = model.forward_features(x)
    _assert_close(out["x_norm_clstoken"], last[:, 0], "CLS")
    _assert_close(out["x_storage_tokens"], last[:, 1 : 1 + R], "registers")
    _assert_close(out["x_norm_patchtokens"], last[:, 1 + R :], "patch tokens")


@pytest.mark.parametrize("bug", BUGS)
@pytest.mark.parametrize("arch", ["vits16", "vits16plus"])
def test_hf_parity_catches_planted_bug(arch: str, bug: str) -> None:
    """Negative control: with a planted bug on our side the same 1e-4 checks fail (GELU and SwiGLU)."""
    model, hf = _pair(arch, depth=4)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    _check_final(model, hf, x)
    with model_bug(bug, model), pytest.raises(AssertionError, match="max-abs"):
        _check_final(model, hf, x)
    _check_final(model, hf, x)  # undone


def test_masked_k_bias_has_no_effect() -> None:
    """The k third of qkv.bias is multiplied by bias_mask=0: changing it changes nothing."""
    model = random_backbone("vitt16", seed=2, depth=2)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        a = model(x)
        for blk in model.blocks:
            D = model.embed_dim
            blk.attn.qkv.bias[D : 2 * D] += 5.0
        b = model(x)
        blk.attn.qkv.bias[:D] += 1.0  # the q part does matter
        c = model(x)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_convnext_matches_transformers() -> None:
    model = random_backbone("convnext_tiny", seed=3)
    cfg = transformers.DINOv3ConvNextConfig(
        hidden_sizes=list(model.dims),
        depths=list(model.depths),
        layer_norm_eps=1e-6,
        layer_scale_init_value=1e-6,
    )
    with torch.device("meta"):
        hf = transformers.DINOv3ConvNextModel(cfg)
    hf.load_state_dict(
        {
            k: v.clone()
            for k, v in convnext_official_to_hf(model.state_dict(), stage_prefix="model.stages.").items()
        },
        strict=True,
        assign=True,
    )
    hf.eval()
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        out = model.forward_features(x)
        ref = hf(pixel_values=x).last_hidden_state
    assert out["x_norm_patchtokens"].shape == (2, 4 * 5, 768)
    assert out["x_storage_tokens"].shape == (2, 0, 768)
    _assert_close(out["x_norm_clstoken"], ref[:, 0], "ConvNeXt pooled CLS")
    _assert_close(out["x_norm_patchtokens"], ref[:, 1:], "ConvNeXt patch tokens")
    for bug in ("relu", "drop_block", "norm_affine"):  # negative controls
        with model_bug(bug, model), torch.no_grad(), pytest.raises(AssertionError, match="max-abs"):
            _assert_close(model.forward_features(x)["x_norm_patchtokens"], ref[:, 1:], bug)
