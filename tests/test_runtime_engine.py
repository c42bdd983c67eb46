"""Engine interface, torch backend modes, FLOP model, bench CLI, TensorRT cache key (TensorRT tests skip)."""

from __future__ import annotations

import argparse
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dinov3_ros.models import build_backbone
from dinov3_ros.runtime import bench
from dinov3_ros.runtime.engine import create_engine
from dinov3_ros.runtime.graph import DeployModel
from dinov3_ros.runtime.trt_backend import calibration_images, engine_cache_key, onnx_sha256

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    bb = build_backbone("vits16", depth=2)
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.2, 1.0)
    return bb.eval()


def test_uint8_input_equals_preprocessed_float(small):
    eng = create_engine("torch", model=small, device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    pre = eng.preprocessor((64, 96))
    batch, (g,) = pre(img)
    assert g.scale_x == 1.0 and g.offset_x == 0.0
    a = eng.run(batch)
    b = eng.run(torch.from_numpy(img)[None])
    assert a["patch_tokens"].shape == (1, 4, 6, 384) and a["cls"].shape == (1, 384)
    assert (a["patch_tokens"] - b["patch_tokens"]).abs().max() < 1e-4


def test_bf16_close_to_fp32(small):
    x = torch.randn(1, 3, 64, 64)
    f32 = create_engine("torch", model=small, device="cpu").run(x)["patch_tokens"]
    e16 = create_engine("torch", model=small, device="cpu", precision="bf16")
    assert e16.info.precision == "bf16" and e16.model.vit.periods.dtype == torch.float32  # RoPE stays fp32
    b16 = e16.run(x)["patch_tokens"]
    assert b16.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(f32.flatten(0, 2), b16.float().flatten(0, 2), dim=-1)
    assert cos.min() > 0.99


def test_engine_input_errors(small):
    eng = create_engine("torch", model=small, device="cpu", input_size=(64, 64))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        eng.run(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match="built for 64x64"):
        eng.run(torch.zeros(1, 3, 32, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        eng.run(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="unknown backend"):
        create_engine("tvm", model=small)
    with pytest.raises(ValueError, match="precision"):
        create_engine("torch", model=small, precision="fp8")
    with pytest.raises(ValueError, match="CUDA"):
        create_engine("torch", model=small, device="cpu", cuda_graphs=True)


def test_analytic_gflops_match_flop_counter(small):
    """The ViT FLOP formula equals PyTorch's FLOP counter (matmuls, conv and SDPA) on the real graph."""
    dm = DeployModel(small).eval()
    for H, W in ((64, 96), (48, 32)):
        # the math SDPA backend decomposes attention into matmuls the counter sees
        with FlopCounterMode(display=False) as fc, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            dm(torch.randn(1, 3, H, W))
        counted = fc.get_total_flops() / 1e9
        assert bench.model_gflops(dm, H, W) == pytest.approx(counted, rel=1e-6)
    # ViT-S/16 at 480x640: ~78 GFLOP per image (the "~77 GFLOP")
    g = bench.vit_gflops(embed_dim=384, depth=12, hidden=1536, height=480, width=640)
    assert 77 < g < 79
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert bench.gpu_peak_tflops("NVIDIA H100 PCIe", "fp16") == pytest.approx(756.0)
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None


def test_bench_cli_writes_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "b.json"
    args = parser.parse_args(
        [
            "--arch",
            "vitt16",
            "--backends",
            "torch,onnxruntime,tensorrt",
            "--resolutions",
            "32x32",
            "--batches",
            "1,2",
            "--device",
            "cpu",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    assert bench.main(args) == 0
    data = json.loads(out.read_text())
    backends = {r["backend"] for r in data["rows"]}
    assert backends == {"torch", "onnxruntime"}  # tensorrt needs CUDA
    for r in data["rows"]:
        assert r["p99_ms"] >= r["p50_ms"] > 0 and r["images_per_s"] > 0 and r["gflops_per_image"] > 0
        assert r["mfu"] is None  # CPU
    assert "| backend |" in capsys.readouterr().out


def test_engine_cache_key_changes_with_every_field():
    base = dict(
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        trt_version="10.13.0",
        onnx_hash="ab" * 32,
        precision="fp16",
        shapes={"batch": [1, 1, 1]},
    )
    k = engine_cache_key(**base)
    assert k == engine_cache_key(**dict(base))
    assert k.startswith("NVIDIA-H100-80GB-HBM3_sm90_trt10.13.0_fp16_")
    for field, val in (
        ("gpu_name", "Orin"),
        ("compute_capability", (8, 7)),
        ("trt_version", "10.3.0"),
        ("onnx_hash", "cd" * 32),
        ("precision", "fp32"),
        ("shapes", {"batch": [1, 4, 8]}),
    ):
        assert engine_cache_key(**{**base, field: val}) != k, field


def test_onnx_hash_and_calibration_folder(tmp_path):
    a = tmp_path / "a.onnx"
    a.write_bytes(b"123")
    h1 = onnx_sha256(a)
    a.write_bytes(b"124")
    assert onnx_sha256(a) != h1 and len(h1) == 64
    for i in range(3):
        im = np.full((8, 10, 3), i * 40, np.uint8)
        im[..., 2] = 200  # BGR on disk -> red channel 200 after loading as RGB
        cv2.imwrite(str(tmp_path / f"{i}.png"), im)
    imgs = list(calibration_images(tmp_path, limit=2))
    assert len(imgs) == 2 and imgs[0].shape == (8, 10, 3) and imgs[0][0, 0, 0] == 200
    with pytest.raises(FileNotFoundError, match="no images"):
        list(calibration_images(tmp_path / "empty_missing"))


@pytest.mark.tensorrt
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: runs on machines without TensorRT (CI)")
def test_tensorrt_missing_gives_install_hint(tmp_path):
    with pytest.raises(ImportError, match="python3-libnvinfer"):
        create_engine("tensorrt", onnx_path=tmp_path / "x.onnx")


@pytest.mark.tensorrt
@pytest.mark.skipif(
    not HAS_TRT or not torch.cuda.is_available(),
    reason="TensorRT with a CUDA GPU not available: runs on a machine with TensorRT and CUDA",
)
def test_tensorrt_engine_matches_onnxruntime(small, tmp_path):  # pragma: no cover - GPU machine only
    from dinov3_ros.runtime.export import export_onnx

    path, _ = export_onnx(small, tmp_path / "m.onnx", resolution=(224, 224))
    trt_eng = create_engine("tensorrt", onnx_path=path, precision="fp32", cache_dir=tmp_path / "c")
    ort = create_engine("onnxruntime", onnx_path=path, device="cpu")
    x = torch.randn(1, 3, 224, 224)
    a = trt_eng.run(x.cuda())["patch_tokens"].float().cpu()
    b = ort.run(x)["patch_tokens"]
    cos = torch.nn.functional.cosine_similarity(a.flatten(0, 2), b.flatten(0, 2), dim=-1)
    assert cos.min() > 0.999
    assert len(list((tmp_path / "c").glob("*.engine"))) == 1
    again = create_engine("tensorrt", onnx_path=path, precision="fp32", cache_dir=tmp_path / "c")
    assert again.engine_path == trt_eng.engine_path  # cache hit


def test_trt_profile_shapes():
    from dinov3_ros.runtime.trt_backend import _profile_shapes

    assert _profile_shapes([-1, 3, 480, 640], (1, 4, 8), None) == (
        (1, 3, 480, 640),
        (4, 3, 480, 640),
        (8, 3, 480, 640),
    )
    assert _profile_shapes([2, 3, 224, 224], (1, 4, 8), None)[0] == (2, 3, 224, 224)  # static batch wins
    hw = ((224, 224), (480, 640), (1024, 1024))
    assert _profile_shapes([-1, 3, -1, -1], (1, 1, 2), hw)[2] == (2, 3, 1024, 1024)
    with pytest.raises(ValueError, match="needs hw="):
        _profile_shapes([-1, 3, -1, -1], (1, 1, 1), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: runs on the GPU machine")
def test_cuda_graphs_and_bf16_match_fp32_eager(small):  # pragma: no cover - GPU machine only
    ref = create_engine("torch", model=small, device="cuda")
    g = create_engine("torch", model=small, device="cuda", precision="bf16", cuda_graphs=True)
    img = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8, device="cuda")
    a = ref.run(img)["patch_tokens"].float()
    for _ in range(2):  # capture, then replay
        b = g.run(img)["patch_tokens"].float()
    cos = torch.nn.functional.cosine_similarity(a.flatten(0, 2), b.flatten(0, 2), dim=-1)
    assert cos.min() > 0.99
    img2 = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8, device="cuda")
    assert not torch.equal(g.run(img2)["patch_tokens"], b.to(torch.bfloat16))  # replay sees new input
