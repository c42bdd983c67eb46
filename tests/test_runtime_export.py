"""Export: ONNX Runtime vs torch parity (fixed and dynamic), TensorRT checker, metadata, CLI.

The models are ``random_backbone``s (every block changes the output); each parity check has a negative
control: the same comparison with a planted bug (``planted_bugs``) must fail.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from planted_bugs import BUGS, deploy_bug

from dinov3_ros.heads import depth as depth_mod
from dinov3_ros.models.testing import random_backbone
from dinov3_ros.runtime.engine import create_engine
from dinov3_ros.runtime.export import ExportError, export_onnx
from dinov3_ros.runtime.export import main as export_main
from dinov3_ros.runtime.graph import DeployModel
from dinov3_ros.runtime.onnx_check import check_tensorrt_compat, format_findings
from dinov3_ros.runtime.ort_backend import read_metadata
from dinov3_ros.runtime.vit_infer import InferenceViT


def _perturbed(arch: str = "vits16", **overrides) -> torch.nn.Module:
    """Random backbone whose every block changes the output (see ``dinov3_ros.models.testing``)."""
    return random_backbone(arch, seed=0, **overrides)


@pytest.fixture(scope="module")
def vits16():
    return _perturbed("vits16")


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a = a.float().reshape(-1, a.shape[-1])
    b = b.float().reshape(-1, b.shape[-1])
    return (a - b).abs().max().item(), torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()


def _parity(a: torch.Tensor, b: torch.Tensor, max_err: float, min_cos: float) -> bool:
    err, cos = _compare(a, b)
    return err <= max_err and cos >= min_cos


@pytest.fixture(scope="module")
def deploy_case():
    """A 4-block ViT-S/16, its deploy forward (layers 1 and 3 out) and the reference outputs on ``x``."""
    ref_model = _perturbed("vits16", depth=4)
    m = InferenceViT.from_backbone(ref_model)
    m.layer_indices = (1, 3)
    x = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ref_model.forward_features(x)
        inter = ref_model.get_intermediate_layers(x, n=[1, 3], reshape=True, return_class_token=True)
    return m, x, ref, inter


def _deploy_matches(m, x, ref, inter) -> bool:
    """Token-by-token agreement of the deploy forward with the reference (patches, CLS, both layers)."""
    with torch.no_grad():
        patch, cls, layers = m(x)
    ok = _parity(patch, ref["x_norm_patchtokens"], 1e-4, 0.99999)
    ok &= float((cls - ref["x_norm_clstoken"]).abs().max()) < 1e-4
    for (ref_l, ref_c), (ours, ours_c) in zip(inter, layers):
        ok &= float((ref_l - ours).abs().max()) < 1e-4 and float((ref_c - ours_c).abs().max()) < 1e-4
    return ok


def test_inference_vit_matches_reference_backbone(deploy_case):
    """Our deploy forward (cached fp32 RoPE, folded LayerScale) equals dinov3_ros.models token by token."""
    assert _deploy_matches(*deploy_case)


@pytest.mark.parametrize("bug", BUGS)
def test_inference_vit_parity_catches_planted_bug(deploy_case, bug):
    m, x, ref, inter = deploy_case
    with deploy_bug(bug, m):
        assert not _deploy_matches(m, x, ref, inter)
    assert _deploy_matches(m, x, ref, inter)  # the bug is undone


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (480, 640)])
def test_ort_parity_fixed_full_vits16(vits16, tmp_path, size):
    path, findings = export_onnx(vits16, tmp_path / "m.onnx", resolution=size)
    assert not [f for f in findings if f.severity != "info"], findings
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "LayerNormalization" in ops and not ops & {"If", "Loop", "Range", "Tile"}
    assert [i.name for i in graph.input] == ["image"]
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ref = vits16.forward_features(x)
    # the standard graph as exported, and the CPU form the engine builds by default (fused MHA + RoPE)
    for fuse in (False, None):
        ort = create_engine("onnxruntime", onnx_path=path, threads=2, fuse_attention=fuse)
        assert ort.n_fused_attention == (0 if fuse is False else 12)
        out = ort.run(x)
        assert out["patch_tokens"].shape == (1, size[0] // 16, size[1] // 16, 384)
        err, cos = _compare(out["patch_tokens"], ref["x_norm_patchtokens"])
        assert err <= 1e-3 and cos >= 0.9999, (fuse, err, cos)
        assert (out["cls"] - ref["x_norm_clstoken"]).abs().max() <= 1e-3


@pytest.fixture(scope="module")
def small_vit():
    return _perturbed("vits16", depth=2)


def _ort_matches_torch(path, bb, size=(64, 96), batch=2, **engine_kw) -> bool:
    """The ORT parity bound of this file (max-abs 1e-3, worst-token cosine 0.9999) on one random batch."""
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = bb.forward_features(x)["x_norm_patchtokens"]
    out = create_engine("onnxruntime", onnx_path=path, threads=2, **engine_kw).run(x)["patch_tokens"]
    return _parity(out, ref, 1e-3, 0.9999)


def test_ort_parity_fixed_small(small_vit, tmp_path):
    path, _ = export_onnx(small_vit, tmp_path / "m.onnx", resolution=(64, 96))
    assert _ort_matches_torch(path, small_vit, fuse_attention=False)
    assert _ort_matches_torch(path, small_vit)  # the fused CPU form


@pytest.mark.parametrize("bug", BUGS)
def test_ort_parity_catches_planted_bug(small_vit, tmp_path, bug):
    """The same bound fails when the exported graph carries a planted bug."""
    m = InferenceViT.from_backbone(small_vit)
    with deploy_bug(bug, m):
        m.rope(4, 6, torch.device("cpu"))  # the (buggy) tables of the 64x96 grid, as constants
        path, _ = export_onnx(m, tmp_path / "bug.onnx", resolution=(64, 96))
    assert not _ort_matches_torch(path, small_vit, fuse_attention=False)


def test_ort_parity_dynamic(tmp_path):
    """Dynamic batch and H/W export (2-block ViT-S/16) at 224x224 and 480x640, batch 1 and 2."""
    bb = _perturbed("vits16", depth=2)
    path, findings = export_onnx(bb, tmp_path / "dyn.onnx", resolution="dynamic")
    assert not [f for f in findings if f.severity == "error"]
    assert any("dynamic" in f.message for f in findings)  # warned for Isaac ROS
    assert "If" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    engines = [
        create_engine("onnxruntime", onnx_path=path, threads=2, fuse_attention=f) for f in (False, None)
    ]
    assert engines[0].info.input_size is None and engines[1].n_fused_attention == 2
    for b, size in ((1, (224, 224)), (2, (480, 640))):
        x = torch.randn(b, 3, *size)
        with torch.no_grad():
            ref = bb.forward_features(x)
        for ort in engines:
            err, cos = _compare(ort.run(x)["patch_tokens"], ref["x_norm_patchtokens"])
            assert err <= 1e-3 and cos >= 0.9999, (size, ort.n_fused_attention, err, cos)


class _ToyDepthHead(torch.nn.Module):
    """Stand-in dense head: two layers in, [B, 1, h, w] out (the export upsamples to the input size)."""

    layer_indices = (0, 1)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(2 * dim, 1, 1)

    def forward(self, feats):
        return torch.nn.functional.softplus(self.proj(torch.cat([p for p, _cls in feats], 1)))


def test_export_with_depth_head_and_metadata(tmp_path):
    bb = _perturbed("vits16", depth=2)
    head = _ToyDepthHead(384).eval()
    path, _ = export_onnx(bb, tmp_path / "d.onnx", resolution=(64, 96), depth_head=head)
    meta = read_metadata(path)
    assert meta["arch"] == "vits16" and meta["patch_size"] == 16 and meta["embed_dim"] == 384
    assert meta["norm_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["heads"] == ["depth"] and meta["outputs"] == ["patch_tokens", "cls", "depth"]
    assert meta["output_layout"]["depth"] == "B,1,H,W" and meta["input_size"] == [64, 96]
    assert meta["layer_indices"] == [0, 1]
    ort = create_engine("onnxruntime", onnx_path=path, threads=2)
    assert ort.info.arch == "vits16" and ort.info.input_size == (64, 96)
    x = torch.randn(2, 3, 64, 96)
    tch = create_engine("torch", model=DeployModel(bb, head), device="cpu")
    a, b = tch.run(x), ort.run(x)
    assert b["depth"].shape == (2, 1, 64, 96)
    assert (a["depth"] - b["depth"]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="built for 64x96"):
        ort.run(torch.randn(1, 3, 64, 64))
    # negative control: the head reads layers (0, 1); the graph of a model missing block 0 fails the bound
    m = InferenceViT.from_backbone(bb)
    with deploy_bug("drop_block", m):  # 2 blocks: drops block 1
        bad, _ = export_onnx(m, tmp_path / "bad.onnx", resolution=(64, 96), depth_head=head)
    c = create_engine("onnxruntime", onnx_path=bad, threads=2).run(x)
    assert (a["depth"] - c["depth"]).abs().max() > 1e-4


def _graph(nodes, opset=17, inputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_checker_flags_bad_graphs():
    # decomposed LayerNorm at opset 13
    def c(n, v):
        return helper.make_node("Constant", [], [n], value=helper.make_tensor(n, TensorProto.FLOAT, [], [v]))

    ln = [
        c("two", 2.0),
        c("eps", 1e-5),
        helper.make_node("ReduceMean", ["x"], ["m"], name="rm1", axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["y"]),
    ]
    found = check_tensorrt_compat(_graph(ln, opset=13))
    kinds = {(f.severity, f.op) for f in found}
    assert ("error", "opset") in kinds and ("error", "LayerNorm(decomposed)") in kinds
    # If node + a double cast + a mask input + an unsupported op + antialiased Resize
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "t",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    nodes = [
        c("z", 0.0),
        helper.make_node("Greater", ["x", "z"], ["cond_full"]),
        helper.make_node("ReduceMin", ["cond_i"], ["cond_r"], keepdims=0),
        helper.make_node("Cast", ["cond_full"], ["cond_i"], to=TensorProto.INT32),
        helper.make_node("Cast", ["cond_r"], ["cond"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["ifo"], name="rope_if", then_branch=then_g, else_branch=then_g),
        helper.make_node("Cast", ["ifo"], ["dbl"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="aa", mode="linear", antialias=1),
        helper.make_node("Identity", ["x"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
        helper.make_tensor_value_info("masks", TensorProto.BOOL, [1, 8]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [2]),
    ]
    found = check_tensorrt_compat(_graph(nodes, opset=18, inputs=inputs))
    errs = {(f.op, f.node) for f in found if f.severity == "error"}
    assert ("If", "rope_if") in errs
    assert ("Cast", "to_double") in errs
    assert ("Unique", "uniq") in errs
    assert ("Resize", "aa") in errs
    assert ("input", "masks") in errs
    assert all(f.severity in ("error", "warning", "info") for f in found)


def test_export_refuses_bad_graph_unless_forced(tmp_path, monkeypatch):
    """The export fails (writes nothing) on checker errors, and --force keeps the file."""
    import dinov3_ros.runtime.export as ex
    from dinov3_ros.runtime.onnx_check import Finding

    bad = [Finding("error", "n", "If", "crafted")]
    monkeypatch.setattr(ex, "check_tensorrt_compat", lambda _model: bad)
    bb = _perturbed("vits16", depth=1)
    with pytest.raises(ExportError, match="1 TensorRT compatibility error"):
        export_onnx(bb, tmp_path / "x.onnx", resolution=(32, 32))
    assert not (tmp_path / "x.onnx").exists()
    path, found = export_onnx(bb, tmp_path / "x.onnx", resolution=(32, 32), force=True)
    assert path.exists() and found == bad


def test_export_cli(tmp_path, capsys):
    import argparse

    from dinov3_ros.runtime import export

    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    out = tmp_path / "cli.onnx"
    args = parser.parse_args(["--arch", "vitt16", "--resolution", "64x64", "--out", str(out)])
    assert export_main(args) == 0
    printed = capsys.readouterr().out
    assert format_findings(check_tensorrt_compat(onnx.load(str(out)))) in printed  # the checker's report
    assert f"wrote {out}" in printed
    meta = read_metadata(out)
    assert meta["arch"] == "vitt16" and meta["dynamic_batch"] is True
    sess_in = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert sess_in[0].dim_param == "batch" and [d.dim_value for d in sess_in[1:]] == [3, 64, 64]
    bad = parser.parse_args(["--arch", "vitt16", "--resolution", "60x64", "--out", str(tmp_path / "b.onnx")])
    assert export_main(bad) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    nohead = parser.parse_args(["--arch", "vitt16", "--heads", "depth", "--out", str(tmp_path / "c.onnx")])
    assert export_main(nohead) == 2
    # every metadata value is JSON (or a plain string) and survives a JSON round trip unchanged
    for prop in onnx.load(str(out)).metadata_props:
        try:
            json.loads(prop.value)
        except ValueError:
            assert meta[prop.key] == prop.value and isinstance(meta[prop.key], str), prop.key
    assert json.loads(json.dumps(meta)) == meta


def test_fp16_export_keeps_rope_and_layernorm_fp32(tmp_path):
    bb = _perturbed("vits16", depth=1)
    path, _ = export_onnx(bb, tmp_path / "h.onnx", resolution=(32, 48), precision="fp16")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert read_metadata(path)["precision"] == "fp16"
    ort = create_engine("onnxruntime", onnx_path=path, threads=2)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = bb.forward_features(x)["x_norm_patchtokens"]
    _, cos = _compare(ort.run(x)["patch_tokens"], ref)
    assert cos > 0.999
    assert np.isfinite(ort.run(x)["cls"].float().numpy()).all()
    # negative control: an fp16 graph with ReLU for GELU fails the same bound
    m = InferenceViT.from_backbone(bb)
    with deploy_bug("relu", m):
        bad, _ = export_onnx(m, tmp_path / "bad.onnx", resolution=(32, 48), precision="fp16")
    _, cos_bad = _compare(create_engine("onnxruntime", onnx_path=bad, threads=2).run(x)["patch_tokens"], ref)
    assert cos_bad < 0.999


@pytest.mark.parametrize("kind", ["linear", "dpt"])
def test_export_with_real_depth_head_file(tmp_path, kind):
    """A saved dinov3_ros.heads depth head (file -> load_head) exports into the graph; ORT == torch."""
    bb = _perturbed("vits16", depth=4)
    torch.manual_seed(1)
    if kind == "linear":
        head = depth_mod.LinearDepthHead(384, n_bins=16, n_layers=2)
        layers = [2, 3]
    else:
        head = depth_mod.DPTHead(384, features=32, n_bins=16, readout="project", layers=[0, 1, 2, 3])
        layers = [0, 1, 2, 3]
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05)
    head.eval()
    meta = {
        "arch": "vits16",
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "input_size": [64, 96],
        "layers": layers,
    }
    hp = tmp_path / "head.pt"
    depth_mod.save_head(hp, head, meta)
    from dinov3_ros.runtime.torch_backend import load_depth_head

    loaded = load_depth_head(hp)
    assert tuple(loaded.layer_indices) == tuple(layers)
    path, findings = export_onnx(bb, tmp_path / "d.onnx", resolution=(64, 96), depth_head=loaded)
    assert not [f for f in findings if f.severity == "error"], findings
    assert read_metadata(path)["layer_indices"] == layers
    x = torch.randn(1, 3, 64, 96)
    # ground truth: the reference backbone's intermediate layers through the head
    with torch.no_grad():
        inter = bb.get_intermediate_layers(x, n=layers, reshape=True, return_class_token=True)
        ref = head(list(inter), output_size=(64, 96))
    out = create_engine("onnxruntime", onnx_path=path, threads=2).run(x)
    assert out["depth"].shape == (1, 1, 64, 96)
    assert (out["depth"] - ref).abs().max() < 1e-3 * float(ref.abs().max())
    # negative control: the head on a backbone with a wrong activation fails the same bound
    m = InferenceViT.from_backbone(bb)
    with deploy_bug("relu", m):
        bad, _ = export_onnx(m, tmp_path / "bad.onnx", resolution=(64, 96), depth_head=loaded)
    out_bad = create_engine("onnxruntime", onnx_path=bad, threads=2).run(x)
    assert (out_bad["depth"] - ref).abs().max() > 1e-3 * float(ref.abs().max())


def test_ort_fused_attention_matches(tmp_path):
    """The ORT-only MultiHeadAttention rewrite fuses every block and keeps the outputs."""
    bb = _perturbed("vits16", depth=2)
    for res in ((64, 96), "dynamic"):
        path, _ = export_onnx(bb, tmp_path / "m.onnx", resolution=res)
        plain = create_engine("onnxruntime", onnx_path=path, threads=2, fuse_attention=False)
        fused = create_engine("onnxruntime", onnx_path=path, threads=2, fuse_attention=True)
        assert fused.n_fused_attention == 2 and plain.n_fused_attention == 0
        x = torch.randn(2, 3, 64, 96)
        assert _parity(fused.run(x)["patch_tokens"], plain.run(x)["patch_tokens"], 1e-4, 0.99999)
    assert "com.microsoft" not in {o.domain for o in onnx.load(str(path)).opset_import}  # file untouched
    # negative control: fusing with a wrong head split (3 heads of 128 instead of 6 of 64) fails the bound
    wrong = onnx.load(str(path))
    next(p for p in wrong.metadata_props if p.key == "num_heads").value = "3"
    onnx.save(wrong, str(tmp_path / "wrong.onnx"))
    bad = create_engine("onnxruntime", onnx_path=tmp_path / "wrong.onnx", threads=2, fuse_attention=True)
    assert bad.n_fused_attention == 2
    assert not _parity(bad.run(x)["patch_tokens"], plain.run(x)["patch_tokens"], 1e-4, 0.99999)
