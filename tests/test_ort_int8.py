"""ONNX Runtime CPU forms: fused-attention ``--target cpu`` parity and the INT8 accuracy bound (real ORT)."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest
import skimage.data
import torch
from planted_bugs import deploy_bug, model_bug

from dinov3_ros.models import build_backbone, load_backbone
from dinov3_ros.models.testing import random_backbone
from dinov3_ros.runtime import export
from dinov3_ros.runtime.accuracy import (
    feature_agreement,
    nn_match_agreement,
    pca_rgb_difference,
    related_pair,
)
from dinov3_ros.runtime.engine import create_engine
from dinov3_ros.runtime.export import export_onnx
from dinov3_ros.runtime.ort_backend import quantize_int8, read_metadata
from dinov3_ros.runtime.vit_infer import InferenceViT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _perturbed(depth: int = 2) -> torch.nn.Module:
    """Random ViT-S/16 whose every block changes the output (see ``dinov3_ros.models.testing``)."""
    return random_backbone("vits16", seed=0, depth=depth)


def _ops(path) -> set[tuple[str, str]]:
    return {(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node}


def _image() -> np.ndarray:
    return skimage.data.coffee()


@pytest.mark.parametrize("resolution", [(64, 96), "dynamic"])
def test_cpu_target_matches_torch(tmp_path, resolution):
    """``--target cpu`` (fused MultiHeadAttention, RotaryEmbedding) equals torch fp32 to 1e-3 / 0.9999, fixed and dynamic."""
    bb = _perturbed()
    path, findings = export_onnx(bb, tmp_path / "cpu.onnx", resolution=resolution, target="cpu")
    assert findings == []  # the TensorRT checker does not apply to the CPU form
    assert ("com.microsoft", "MultiHeadAttention") in _ops(path)
    meta = read_metadata(path)
    assert meta["target"] == "cpu" and meta["fused_attention"] == 2
    # fixed size: RoPE as com.microsoft.RotaryEmbedding (q and k per block); dynamic keeps the in-graph RoPE
    assert meta["fused_rope"] == (0 if resolution == "dynamic" else 2)
    assert (("com.microsoft", "RotaryEmbedding") in _ops(path)) == (resolution != "dynamic")
    eng = create_engine("onnxruntime", onnx_path=path, threads=1)
    assert eng.info.precision == "fp32" and eng.n_fused_attention == 2  # fused in the file, not again
    assert eng.n_fused_rope == meta["fused_rope"]
    tch = create_engine("torch", model=bb, device="cpu")
    for b, size in (
        ((1, (64, 96)), (2, (64, 96))) if resolution != "dynamic" else ((1, (48, 80)), (2, (64, 96)))
    ):
        x = torch.randn(b, 3, *size)
        assert _cpu_form_matches(tch, eng, x)


def _cpu_form_matches(tch, eng, x) -> bool:
    """The CPU-form parity bound: max-abs 1e-3 and worst-token cosine 0.9999 against torch fp32."""
    agree = feature_agreement(tch.run(x)["patch_tokens"], eng.run(x)["patch_tokens"])
    return agree["max_abs"] <= 1e-3 and agree["cos_min"] >= 0.9999


def test_cpu_target_parity_catches_interleaved_rotary(tmp_path):
    """Negative control: the fused RotaryEmbedding switched to interleaved pairs fails the same bound."""
    bb = _perturbed()
    path, _ = export_onnx(bb, tmp_path / "cpu.onnx", resolution=(64, 96), target="cpu")
    model = onnx.load(str(path))
    rotary = [n for n in model.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rotary) == 4  # q and k of 2 blocks
    for n in rotary:
        next(a for a in n.attribute if a.name == "interleaved").i = 1
    onnx.save(model, str(tmp_path / "bad.onnx"))
    tch = create_engine("torch", model=bb, device="cpu")
    x = torch.randn(2, 3, 64, 96)
    assert _cpu_form_matches(tch, create_engine("onnxruntime", onnx_path=path, threads=1), x)
    assert not _cpu_form_matches(
        tch, create_engine("onnxruntime", onnx_path=tmp_path / "bad.onnx", threads=1), x
    )


@pytest.mark.parametrize("bug", ["rope_unscaled", "relu"])
def test_cpu_target_parity_catches_planted_bug(tmp_path, bug):
    """Negative control: a CPU-form export of a deploy forward with a planted bug fails the bound."""
    bb = _perturbed()
    m = InferenceViT.from_backbone(bb)
    with deploy_bug(bug, m):
        m.rope(4, 6, torch.device("cpu"))
        path, _ = export_onnx(m, tmp_path / "bad.onnx", resolution=(64, 96), target="cpu")
    eng = create_engine("onnxruntime", onnx_path=path, threads=1)
    assert eng.n_fused_attention == 2
    assert not _cpu_form_matches(
        create_engine("torch", model=bb, device="cpu"), eng, torch.randn(2, 3, 64, 96)
    )


def test_ort_engine_fuses_attention_on_cpu_by_default(tmp_path):
    bb = _perturbed()
    path, _ = export_onnx(bb, tmp_path / "std.onnx", resolution=(32, 48))
    assert not any(d == "com.microsoft" for d, _ in _ops(path))  # the standard export stays TensorRT-clean
    assert create_engine("onnxruntime", onnx_path=path, threads=1).n_fused_attention == 2
    assert (
        create_engine("onnxruntime", onnx_path=path, threads=1, fuse_attention=False).n_fused_attention == 0
    )
    # a graph without our metadata (head count unknown) is left as it is
    foreign = onnx.load(str(path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    eng = create_engine("onnxruntime", onnx_path=tmp_path / "foreign.onnx", threads=1)
    assert eng.n_fused_attention == 0
    assert eng.run(torch.randn(1, 3, 32, 48))["patch_tokens"].shape == (1, 2, 3, 384)


def test_int8_accuracy_bound_default_model(tmp_path):
    """The shipped ViT-S/16 in INT8 (ORT dynamic quantization) vs torch fp32 on a real photo at 224x224.

    Bounds (measured on the shipped model: worst-token cosine 0.99972, mean 0.99988, max-abs relative 0.039,
    CLS cosine 0.99987, NN agreement 1.0, PCA-RGB 0.23 levels) leave room for other CPUs' int8 kernels
    (VNNI/AMX vs AVX2 paths round differently).
    """
    bb = load_backbone("default").float().eval()
    size = (224, 224)
    path, _ = export_onnx(bb, tmp_path / "std.onnx", resolution=size)
    int8 = create_engine("onnxruntime", onnx_path=path, threads=2, precision="int8")
    assert int8.info.precision == "int8" and int8.n_fused_attention == 12
    tch = create_engine("torch", model=bb, device="cpu")
    a, b = related_pair(_image(), size)
    pre = tch.preprocessor(size)
    xa, _ = pre(a)
    xb, _ = pre(b)
    ref_a, ref_b = tch.run(xa), tch.run(xb)
    q_a, q_b = int8.run(xa), int8.run(xb)
    assert _int8_within_bounds(ref_a, ref_b, q_a, q_b)
    # and int8 really is quantized: it differs from fp32 (cls moves by ~1e-2)
    assert (ref_a["cls"] - q_a["cls"]).abs().max() > 1e-4
    # negative controls: a reference with a planted bug is out of the same bounds
    for bug in ("drop_block", "relu", "rope_unscaled"):
        with model_bug(bug, bb), torch.no_grad():
            bad_a, bad_b = (
                {
                    "patch_tokens": f["x_norm_patchtokens"].reshape(ref_a["patch_tokens"].shape),
                    "cls": f["x_norm_clstoken"],
                }
                for f in (bb.forward_features(xa), bb.forward_features(xb))
            )
        assert not _int8_within_bounds(bad_a, bad_b, q_a, q_b), bug


def _int8_within_bounds(ref_a, ref_b, q_a, q_b) -> bool:
    """The INT8 accuracy bounds (features, CLS, nearest-neighbour matches, PCA-RGB view)."""
    agree = feature_agreement(ref_a["patch_tokens"], q_a["patch_tokens"])
    nn_agree = nn_match_agreement(
        ref_a["patch_tokens"], ref_b["patch_tokens"], q_a["patch_tokens"], q_b["patch_tokens"]
    )
    return (
        agree["cos_min"] >= 0.999
        and agree["cos_mean"] >= 0.9997
        and agree["max_abs_rel"] <= 0.06
        and feature_agreement(ref_a["cls"], q_a["cls"])["cos_min"] >= 0.999
        and nn_agree >= 0.98
        and pca_rgb_difference(ref_a["patch_tokens"], q_a["patch_tokens"]) <= 2.0  # 8-bit levels
    )


def test_export_cli_quantize_int8(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    out = tmp_path / "q.onnx"
    args = parser.parse_args(
        ["--arch", "vitt16", "--resolution", "32x48", "--quantize", "int8", "--out", str(out)]
    )
    assert export.main(args) == 0
    assert "TensorRT check does not apply" in capsys.readouterr().out
    meta = read_metadata(out)
    n_blocks = len(build_backbone("vitt16", device="meta").blocks)
    assert meta["precision"] == "int8" and meta["target"] == "cpu"
    assert meta["quantization"]["matmuls"] == 4 * n_blocks  # qkv, proj, fc1, fc2 per block
    ops = _ops(out)
    assert ("", "MatMulInteger") in ops and ("com.microsoft", "MultiHeadAttention") in ops
    assert ("", "ConvInteger") not in ops  # the patch embedding stays fp32
    eng = create_engine("onnxruntime", onnx_path=out, threads=1)
    assert eng.info.precision == "int8" and eng.info.arch == "vitt16"
    assert eng.run(torch.randn(1, 3, 32, 48))["patch_tokens"].shape == (1, 2, 3, 192)
    # the file's precision wins (the pipeline passes its default precision "fp32")
    assert create_engine("onnxruntime", onnx_path=out, threads=1, precision="fp32").info.precision == "int8"
    trt = parser.parse_args(
        ["--arch", "vitt16", "--format", "tensorrt", "--quantize", "int8", "--out", str(tmp_path / "x.plan")]
    )
    assert export.main(trt) == 2 and "--format onnx" in capsys.readouterr().err


def test_quantize_int8_rejects_fp16_and_keeps_input(tmp_path):
    bb = _perturbed(depth=1)
    path, _ = export_onnx(bb, tmp_path / "h.onnx", resolution=(32, 32), precision="fp16")
    with pytest.raises(ValueError, match="fp32"):
        quantize_int8(onnx.load(str(path)))
    with pytest.raises(ValueError, match="needs an fp32 export"):
        create_engine("onnxruntime", onnx_path=path, threads=1, precision="int8")
    path32, _ = export_onnx(bb, tmp_path / "f.onnx", resolution=(32, 32))
    model = onnx.load(str(path32))
    n = len(model.graph.node)
    q = quantize_int8(model)
    assert len(model.graph.node) == n and any(nd.op_type == "MatMulInteger" for nd in q.graph.node)
    # 7-bit weights (chosen automatically on x86 CPUs without VNNI) also run and stay close
    q7 = quantize_int8(model, reduce_range=True)
    q7_path = tmp_path / "q7.onnx"
    onnx.save(q7, str(q7_path))
    assert read_metadata(q7_path)["quantization"]["weights"] == "s7"
    x = torch.randn(1, 3, 32, 32)
    ref = create_engine("onnxruntime", onnx_path=path32, threads=1).run(x)["patch_tokens"]
    q7_out = create_engine("onnxruntime", onnx_path=q7_path, threads=1).run(x)["patch_tokens"]
    assert feature_agreement(ref, q7_out)["cos_min"] >= 0.999
    # negative control: the fp32 run of the model with ReLU for GELU is out of that bound
    m = InferenceViT.from_backbone(bb)
    with deploy_bug("relu", m):
        bad, _ = export_onnx(m, tmp_path / "bad.onnx", resolution=(32, 32))
    bad_out = create_engine("onnxruntime", onnx_path=bad, threads=1).run(x)["patch_tokens"]
    assert feature_agreement(bad_out, q7_out)["cos_min"] < 0.999
