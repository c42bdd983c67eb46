"""ViT / ConvNeXt forward API: token layout, masks, lists, get_intermediate_layers, RoPE maths and
augmentation, drop path, dtypes, input-size errors and an export-friendly (If/Tile-free) ONNX graph.
Numerical comparisons have negative controls (``planted_bugs``) that must fail them."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from planted_bugs import BUGS, model_bug

from dinov3_ros.models import build_backbone
from dinov3_ros.models.layers import apply_rope
from dinov3_ros.models.testing import random_backbone


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return random_backbone("vitt16", seed=5, depth=3)


def test_token_layout_and_shapes(vit) -> None:
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        tokens, (h, w) = vit.prepare_tokens_with_masks(x)
        out = vit.forward_features(x)
        conv = vit.patch_embed.proj(x)
    assert (h, w) == (3, 5)
    assert tokens.shape == (2, 1 + 4 + 15, 192)
    assert torch.equal(tokens[:, 0], (vit.cls_token + 0 * vit.mask_token).expand(2, -1, -1)[:, 0])
    assert torch.equal(tokens[:, 1:5], vit.storage_tokens.expand(2, -1, -1))
    assert torch.equal(tokens[:, 5:], conv.flatten(2).transpose(1, 2))  # row-major patch grid
    assert out["x_norm_clstoken"].shape == (2, 192)
    assert out["x_storage_tokens"].shape == (2, 4, 192)
    assert out["x_norm_patchtokens"].shape == (2, 15, 192)
    assert out["x_prenorm"].shape == (2, 20, 192)
    assert out["masks"] is None
    with torch.no_grad():
        assert torch.equal(vit(x), out["x_norm_clstoken"])
        normed = vit.norm(out["x_prenorm"])
    assert torch.allclose(normed[:, 5:], out["x_norm_patchtokens"])


@pytest.mark.parametrize(("H", "W"), [(225, 224), (224, 100), (8, 16)])
def test_input_size_must_be_multiple_of_16(vit, H: int, W: int) -> None:
    with pytest.raises(ValueError, match=f"{H}x{W}"):
        vit.forward_features(torch.randn(1, 3, H, W))
    with pytest.raises(ValueError, match=f"{H}x{W}"):
        vit.get_intermediate_layers(torch.randn(1, 3, H, W))


def test_masks_replace_patches_with_mask_token(vit) -> None:
    x = torch.randn(2, 3, 32, 48)
    masks = torch.zeros(2, 6, dtype=torch.bool)
    masks[0, [1, 4]] = True
    with torch.no_grad():
        t, _ = vit.prepare_tokens_with_masks(x, masks)
        t0, _ = vit.prepare_tokens_with_masks(x)
        out_none = vit.forward_features(x)
        out_false = vit.forward_features(x, torch.zeros(2, 6, dtype=torch.bool))
        out_m = vit.forward_features(x, masks)
    assert torch.equal(t[0, 5 + 1], vit.mask_token[0]) and torch.equal(t[0, 5 + 4], vit.mask_token[0])
    assert torch.equal(t[1], t0[1]) and torch.equal(t[0, 5], t0[0, 5])
    assert torch.allclose(out_none["x_norm_patchtokens"], out_false["x_norm_patchtokens"], atol=1e-6)
    assert out_m["masks"] is masks
    assert not torch.allclose(out_m["x_norm_clstoken"][0], out_none["x_norm_clstoken"][0])
    assert torch.allclose(out_m["x_norm_clstoken"][1], out_none["x_norm_clstoken"][1], atol=1e-6)
    with pytest.raises(ValueError, match="masks must be"):
        vit.forward_features(x, torch.zeros(2, 5, dtype=torch.bool))


def test_mask_token_stays_in_graph_without_masks() -> None:
    m = random_backbone("vitt16", seed=1, depth=1).train()
    m.forward_features(torch.randn(1, 3, 32, 32))["x_norm_clstoken"].sum().backward()
    assert m.mask_token.grad is not None  # cls + 0*mask_token (DDP/FSDP need every param used)


def test_list_input_gives_list_of_dicts(vit) -> None:
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        outs = vit.forward_features([a, b])
        single = [vit.forward_features(a), vit.forward_features(b)]
    assert isinstance(outs, list) and len(outs) == 2
    for o, s in zip(outs, single):
        for k in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm"):
            assert torch.allclose(o[k], s[k], atol=1e-5), k


def test_local_cls_norm_only_for_local_crops_in_training() -> None:
    m = random_backbone("vitt16", seed=3, depth=2, untie_global_and_local_cls_norm=True)
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ev = m.forward_features([a, b])
        m.train()
        tr = m.forward_features([a, b])
        m.eval()
    assert torch.allclose(tr[1]["x_norm_clstoken"], m.local_cls_norm(tr[1]["x_prenorm"][:, 0]), atol=1e-5)
    assert torch.allclose(tr[0]["x_norm_clstoken"], m.norm(tr[0]["x_prenorm"][:, 0]), atol=1e-5)
    assert torch.allclose(ev[1]["x_norm_clstoken"], m.norm(ev[1]["x_prenorm"][:, 0]), atol=1e-5)
    assert torch.allclose(tr[1]["x_norm_patchtokens"], ev[1]["x_norm_patchtokens"], atol=1e-5)


def test_get_intermediate_layers_semantics(vit) -> None:
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        last2 = vit.get_intermediate_layers(x, n=2)
        idx = vit.get_intermediate_layers(x, n=[1, 2])
        rev = vit.get_intermediate_layers(x, n=[2, 0])
        full = vit.get_intermediate_layers(
            x, n=3, reshape=True, return_class_token=True, return_extra_tokens=True
        )
        raw = vit.get_intermediate_layers(x, n=1, norm=False)
        cls_only = vit.get_intermediate_layers(x, n=1, return_class_token=True)
        ext_only = vit.get_intermediate_layers(x, n=1, return_extra_tokens=True)
        ff = vit.forward_features(x)
    assert isinstance(last2, tuple) and len(last2) == 2
    for a, b in zip(last2, idx):
        assert torch.equal(a, b)
    assert torch.equal(rev[0], idx[1])  # order follows the request
    assert last2[0].shape == (2, 8, 192)
    patches, cls, regs = full[-1]
    assert patches.shape == (2, 192, 2, 4) and cls.shape == (2, 192) and regs.shape == (2, 4, 192)
    assert torch.allclose(patches.flatten(2).transpose(1, 2), ff["x_norm_patchtokens"], atol=1e-6)
    assert torch.allclose(cls, ff["x_norm_clstoken"], atol=1e-6)
    assert torch.allclose(regs, ff["x_storage_tokens"], atol=1e-6)
    assert torch.allclose(raw[0], ff["x_prenorm"][:, 5:], atol=1e-6)
    assert len(cls_only[0]) == 2 and cls_only[0][1].shape == (2, 192)
    assert len(ext_only[0]) == 2 and ext_only[0][1].shape == (2, 4, 192)
    for bad in (0, 4, [3], [-1], []):
        with pytest.raises(ValueError):
            vit.get_intermediate_layers(x, n=bad)


def _rope_matches_formula(m) -> bool:
    """sin/cos equal the reference math (coords (i+0.5)/n*2-1, angle 2*pi*c/period, tile(2)) and the
    rotation pairs dim i with i + hd/2, leaving the 1 + 4 prefix tokens untouched."""
    h, w = 3, 5
    sin, cos = m.rope_embed(h, w)
    periods = m.rope_embed.periods
    ch = (torch.arange(0.5, h) / h) * 2 - 1
    cw = (torch.arange(0.5, w) / w) * 2 - 1
    coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1)
    angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1, 2).tile(2)
    assert sin.shape == (15, 64) and sin.dtype == torch.float32
    ok = torch.allclose(sin, torch.sin(angles), atol=1e-6) and torch.allclose(
        cos, torch.cos(angles), atol=1e-6
    )
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 5 + 15, 64, generator=g)
    k = torch.randn(1, 1, 5 + 15, 64, generator=g)
    qr, kr = apply_rope(q, k, (torch.sin(angles), torch.cos(angles)))
    assert torch.equal(qr[:, :, :5], q[:, :, :5]) and torch.equal(kr[:, :, :5], k[:, :, :5])
    rot = torch.cat((-q[..., 32:], q[..., :32]), -1)
    ok &= torch.allclose(
        qr[:, :, 5:], q[:, :, 5:] * torch.cos(angles) + rot[:, :, 5:] * torch.sin(angles), atol=1e-6
    )
    # rotation preserves norms
    ok &= torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-4)
    return bool(ok)


def test_rope_matches_reference_formula() -> None:
    assert _rope_matches_formula(build_backbone("vitt16", depth=1))


@pytest.mark.parametrize("bug", ["rope_interleaved", "rope_unscaled"])
def test_rope_formula_check_catches_planted_bug(bug) -> None:
    m = build_backbone("vitt16", depth=1)
    with model_bug(bug, m):
        assert not _rope_matches_formula(m)


def test_rope_augmentation_only_in_train_mode() -> None:
    x = torch.randn(1, 3, 32, 32)
    aug = random_backbone("vitt16", seed=4, depth=1, rope_rescale=2.0, rope_shift=0.1, rope_jitter=1.2)
    plain = random_backbone("vitt16", seed=4, depth=1)
    with torch.no_grad():
        e1, e2 = aug(x), aug(x)
        ref = plain(x)
        aug.train()
        plain.train()
        t1, t2 = aug(x), aug(x)
        p1 = plain(x)
    assert torch.equal(e1, e2) and torch.allclose(e1, ref, atol=1e-6)  # eval: no augmentation
    assert not torch.allclose(t1, t2)  # train: random box jitter per forward
    assert torch.allclose(p1, ref, atol=1e-6)  # default build: augmentation off even in train mode
    assert aug.rope_embed.augmenting and not plain.rope_embed.augmenting


def test_drop_path_train_only_and_configurable() -> None:
    m = random_backbone("vitt16", seed=6, depth=2, drop_path_rate=0.5)
    assert m.drop_path_rate == 0.5
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        e = m(x)
        m.train()
        torch.manual_seed(1)
        t1 = m(x)
        torch.manual_seed(2)
        t2 = m(x)
        m.set_drop_path_rate(0.0)
        t0 = m(x)
        m.eval()
    assert not torch.allclose(t1, t2)
    assert torch.allclose(t0, e, atol=1e-6)
    m.set_drop_path_rate(0.2, uniform=False)
    assert [b.drop_path for b in m.blocks] == [0.0, 0.2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inference_is_finite_and_close(dtype) -> None:
    m32 = random_backbone("vitt16", seed=7, depth=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m32.forward_features(x)["x_norm_patchtokens"]
        m = random_backbone("vitt16", seed=7, depth=3).to(dtype)
        assert m.rope_embed.periods.dtype == dtype  # bf16-rounded values survive the cast exactly
        assert torch.equal(m.rope_embed.periods.float(), m32.rope_embed.periods)
        out = m.forward_features(x.to(dtype))["x_norm_patchtokens"]
    assert out.dtype == dtype and torch.isfinite(out).all()
    cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)
    assert cos.min() > 0.999


@pytest.mark.parametrize("bug", BUGS)
def test_low_precision_bound_catches_planted_bug(bug) -> None:
    """Negative control: an fp32 forward with a planted bug is outside the low-precision bound."""
    m = random_backbone("vitt16", seed=7, depth=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m.forward_features(x)["x_norm_patchtokens"]
        with model_bug(bug, m):
            out = m.forward_features(x)["x_norm_patchtokens"]
    assert torch.nn.functional.cosine_similarity(out, ref, dim=-1).min() < 0.999


def test_onnx_export_has_no_if_or_tile_and_dynamic_hw(tmp_path) -> None:
    """RoPE uses cat (not tile) so the graph has no If node; H, W stay dynamic."""
    m = random_backbone("vitt16", seed=8, depth=2)
    path = _export_dynamic(m, tmp_path / "vit.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"If", "Tile", "Loop"}, ops
    for hw in [(64, 96), (128, 80)]:
        assert _ort_matches(path, m, hw)


class _Wrap(torch.nn.Module):
    def __init__(self, bb):
        super().__init__()
        self.bb = bb

    def forward(self, x):
        return self.bb.get_intermediate_layers(x, n=1, reshape=True)[0]


def _export_dynamic(m, path):
    torch.onnx.export(
        _Wrap(m),
        (torch.randn(1, 3, 64, 96),),
        str(path),
        input_names=["x"],
        output_names=["f"],
        dynamic_axes={"x": {2: "H", 3: "W"}, "f": {2: "h", 3: "w"}},
        dynamo=False,
    )
    return path


def _ort_matches(path, m, hw) -> bool:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, *hw)
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        exp = _Wrap(m)(x).numpy()
    assert got.shape == exp.shape
    return float(np.abs(got - exp).max()) < 1e-4


@pytest.mark.parametrize("bug", ["relu", "rope_interleaved"])
def test_onnx_parity_catches_planted_bug(tmp_path, bug) -> None:
    """Negative control: a graph exported with a planted bug fails the same 1e-4 bound."""
    m = random_backbone("vitt16", seed=8, depth=2)
    with model_bug(bug, m):
        path = _export_dynamic(m, tmp_path / "bad.onnx")
    assert not _ort_matches(path, m, (64, 96))


# ----------------------------------------------------------------------------------- ConvNeXt
def test_convnext_dict_api_and_resampling() -> None:
    m = random_backbone("convnext_tiny", seed=9, depths=(1, 1, 2, 1))
    assert (m.patch_size, m.n_storage_tokens, m.n_blocks, m.embed_dim) == (32, 0, 4, 768)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = m.forward_features(x)
        layers = m.get_intermediate_layers(x, n=4, reshape=True, return_class_token=True)
        last = m.get_intermediate_layers(x, n=1)[0]
    assert out["x_norm_clstoken"].shape == (2, 768)
    assert out["x_storage_tokens"].shape == (2, 0, 768)
    assert out["x_norm_patchtokens"].shape == (2, 3 * 4, 768)
    assert torch.allclose(last, out["x_norm_patchtokens"], atol=1e-5)
    assert [p.shape for p, _ in layers] == [(2, 96, 24, 32), (2, 192, 12, 16), (2, 384, 6, 8), (2, 768, 3, 4)]
    assert torch.allclose(layers[-1][1], out["x_norm_clstoken"], atol=1e-5)
    r = random_backbone("convnext_tiny", seed=9, depths=(1, 1, 2, 1), patch_size=16)
    assert r.patch_size == 16
    with torch.no_grad():
        ro = r.forward_features(x)
        rl = r.get_intermediate_layers(x, n=[1, 3], reshape=True)
    assert ro["x_norm_patchtokens"].shape == (2, 6 * 8, 768)
    assert torch.allclose(ro["x_norm_clstoken"], out["x_norm_clstoken"], atol=1e-5)  # pooling unchanged
    assert [p.shape for p in rl] == [(2, 192, 6, 8), (2, 768, 6, 8)]
    with pytest.raises(ValueError, match="100x96"):
        m.forward_features(torch.randn(1, 3, 100, 96))
