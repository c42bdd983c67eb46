"""A serialized TensorRT plan loads and runs, with the metadata it needs, without TensorRT installed.

TensorRT cannot be installed here, so the ``tensorrt`` module is replaced at its boundary by a strict
fake (``_fake_tensorrt``: the TensorRT 10 runtime calls a plan needs, nothing else). CUDA is absent too:
the tests that execute a plan also replace ``trt_backend._cuda_device`` - the one place that insists on
a CUDA device - so the I/O buffers live in host memory, which the fake execution context reads and
writes through the addresses it is given. Everything else is real: the ONNX export and its metadata,
the sidecar files, metadata resolution and checks, the engine wrapper, the pipeline.
"""

from __future__ import annotations

import json
import logging
import sys

import _fake_tensorrt as fake
import numpy as np
import pytest
import torch

from dinov3_ros.runtime import trt_backend
from dinov3_ros.runtime.trt_backend import (
    PlanMetadataError,
    TrtEngine,
    load_plan,
    plan_sidecar,
    save_plan,
    sidecar_path,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 64, 80


@pytest.fixture
def trt(monkeypatch):
    mod = fake.module()
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


@pytest.fixture
def host_buffers(monkeypatch):
    """CUDA replaced at the buffer boundary (see the module docstring)."""
    monkeypatch.setattr(trt_backend, "_cuda_device", lambda device: torch.device("cpu"))


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """A real export of a tiny random ViT at 64x80 (its metadata_props are what a plan needs)."""
    from dinov3_ros.runtime.export import export_onnx
    from dinov3_ros.runtime.weights import random_backbone as build_random_backbone

    bb = build_random_backbone("vitt16")
    path, _ = export_onnx(bb, tmp_path_factory.mktemp("onnx") / "model.onnx", resolution=(H, W))
    return path, int(bb.embed_dim)


def _expected_tokens(x: np.ndarray, C: int, patch: int = 16) -> np.ndarray:
    B, _, h, w = x.shape[0], 3, x.shape[2] // patch, x.shape[3] // patch
    means = x.reshape(B, 3, h, patch, w, patch).mean(axis=(3, 5))
    c = np.arange(C)
    return means[:, c % 3].transpose(0, 2, 3, 1) * (c + 1)


def test_plan_with_sidecar_loads_and_runs(trt, host_buffers, onnx_export, tmp_path):
    onnx_path, C = onnx_export
    plan = tmp_path / "m.plan"
    meta = plan_sidecar(onnx_path, "fp16", trt.__version__, None)
    save_plan(plan, fake.vit_plan(H, W, C=C, depth=False), meta)
    assert json.loads(sidecar_path(plan).read_text())["arch"] == "vitt16"
    eng = TrtEngine(engine_path=plan)
    i = eng.info
    assert (i.backend, i.precision, i.arch, i.input_size, i.patch_size, i.embed_dim) == (
        "tensorrt",
        "fp16",
        "vitt16",
        (H, W),
        16,
        C,
    )
    assert i.outputs == ("patch_tokens", "cls") and "sidecar" in i.extra["metadata"]
    assert not i.extra["norm_assumed"]
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    out = eng.run(x)
    np.testing.assert_allclose(out["patch_tokens"].numpy(), _expected_tokens(x.numpy(), C), rtol=1e-5)
    np.testing.assert_allclose(
        out["cls"].numpy(), _expected_tokens(x.numpy(), C).mean(axis=(1, 2)), rtol=1e-5
    )
    assert eng.context.executions == 1
    x5 = torch.rand(5, 3, H, W, generator=torch.Generator().manual_seed(1))
    out = eng.run(x5)  # batch 5 > the profile's max 2: chunks of 2, 2, 1 into one output
    assert eng.max_batch() == 2 and eng.context.executions == 4
    np.testing.assert_allclose(out["patch_tokens"].numpy(), _expected_tokens(x5.numpy(), C), rtol=1e-5)
    np.testing.assert_allclose(
        out["cls"].numpy(), _expected_tokens(x5.numpy(), C).mean(axis=(1, 2)), rtol=1e-5
    )
    with pytest.raises(ValueError, match="built for 64x80"):
        eng.run(torch.zeros(1, 3, 48, 80))


def test_trtexec_plan_takes_metadata_from_our_onnx(trt, host_buffers, onnx_export, tmp_path):
    """``trtexec --onnx=model.onnx --saveEngine=model.plan`` writes no sidecar: the ONNX next to the plan
    (or one given as onnx_path=) supplies the metadata."""
    onnx_path, C = onnx_export
    plan = tmp_path / "model.plan"
    plan.write_bytes(fake.vit_plan(H, W, C=C, depth=False))
    (tmp_path / "model.onnx").write_bytes(onnx_path.read_bytes())
    eng = TrtEngine(engine_path=plan)
    assert eng.info.arch == "vitt16" and "next to the plan" in eng.info.extra["metadata"]
    assert eng.info.precision == "unknown"  # trtexec's flags are not recorded anywhere
    (tmp_path / "model.onnx").unlink()
    eng = TrtEngine(engine_path=plan, onnx_path=onnx_path, precision="fp16")
    assert (
        eng.info.arch == "vitt16"
        and eng.info.precision == "fp16"
        and str(onnx_path) in eng.info.extra["metadata"]
    )


def test_plan_without_metadata_reads_its_io_tensors(trt, host_buffers, tmp_path, caplog):
    plan = tmp_path / "bare.engine"
    plan.write_bytes(fake.vit_plan(96, 128, patch=16, C=24, depth=True))
    with caplog.at_level(logging.WARNING, logger="dinov3_ros.runtime.trt"):
        eng = TrtEngine(engine_path=plan)
    i = eng.info
    assert (i.input_size, i.patch_size, i.embed_dim, i.arch) == ((96, 128), 16, 24, "unknown")
    assert i.outputs == ("patch_tokens", "cls", "depth")
    assert i.extra["norm_assumed"] and tuple(i.norm_mean) == trt_backend.IMAGENET_MEAN
    assert "no metadata" in caplog.text
    x = torch.rand(1, 3, 96, 128)
    d = eng.run(x)["depth"]
    np.testing.assert_allclose(d.numpy(), 1.0 + x.numpy().mean(axis=1, keepdims=True), rtol=1e-6)


def test_metadata_that_contradicts_the_plan_is_refused(trt, host_buffers, onnx_export, tmp_path):
    onnx_path, C = onnx_export
    plan = tmp_path / "m.plan"
    save_plan(
        plan, fake.vit_plan(H, W, C=C, depth=False), plan_sidecar(onnx_path, "fp16", trt.__version__, None)
    )
    side = json.loads(sidecar_path(plan).read_text())
    side["input_size"] = [480, 640]
    sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(PlanMetadataError, match=r"input_size \[480, 640\] vs the plan's \[64, 80\]"):
        TrtEngine(engine_path=plan)
    plan.write_bytes(fake.vit_plan(H, W, C=C + 8, depth=False))  # another width than the ONNX's
    sidecar_path(plan).unlink()
    with pytest.raises(PlanMetadataError, match="embed_dim"):
        TrtEngine(engine_path=plan, onnx_path=onnx_path)
    sidecar_path(plan).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(PlanMetadataError, match=r"not a dinov3_ros\.plan sidecar"):
        TrtEngine(engine_path=plan)
    plan.write_bytes(fake.make_plan([{"name": "x", "mode": "input", "dtype": "float32", "shape": [1, 5]}]))
    sidecar_path(plan).unlink()
    with pytest.raises(PlanMetadataError, match=r"image input \[B, 3, H, W\]"):
        TrtEngine(engine_path=plan)


def test_input_outside_the_profile_is_refused(trt, host_buffers, tmp_path):
    t = [
        {"name": "image", "mode": "input", "dtype": "float32", "shape": [-1, 3, H, W],
         "profile": [[2, 3, H, W], [2, 3, H, W], [4, 3, H, W]]},
        {"name": "patch_tokens", "mode": "output", "dtype": "float32", "shape": [-1, H // 16, W // 16, 8]},
    ]  # fmt: skip
    plan = tmp_path / "min2.plan"
    plan.write_bytes(fake.make_plan(t))
    eng = TrtEngine(engine_path=plan)
    with pytest.raises(ValueError, match=r"does not fit the plan min2\.plan .*profile min/opt/max"):
        eng.run(torch.zeros(1, 3, H, W))  # below the profile's min batch 2
    assert eng.run(torch.zeros(3, 3, H, W))["patch_tokens"].shape == (3, H // 16, W // 16, 8)


def test_plan_from_another_tensorrt_or_gpu_says_rebuild(trt, host_buffers, tmp_path):
    plan = tmp_path / "old.plan"
    meta = {"format": "dinov3_ros.plan", "version": 1, "tensorrt": "10.13.0", "gpu": "NVIDIA H100 80GB HBM3"}
    save_plan(plan, fake.vit_plan(version="10.13.0"), meta)
    with pytest.raises(RuntimeError, match=r"TensorRT 10.13.0 on NVIDIA H100.*rebuild it on this machine"):
        TrtEngine(engine_path=plan)
    with pytest.raises(FileNotFoundError, match="plan not found"):
        TrtEngine(engine_path=tmp_path / "missing.plan")


def test_pipeline_resolution_must_match_the_plan(trt, host_buffers, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(fake.vit_plan(H, W, C=12))
    with pytest.raises(
        PlanMetadataError, match="built for 64x80 input, the configured resolution is 480x640"
    ):
        TrtEngine(engine_path=plan, input_size=(480, 640))
    assert TrtEngine(engine_path=plan, input_size=(H, W)).info.input_size == (H, W)


def test_a_plan_needs_a_cuda_device(trt, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(fake.vit_plan())
    with pytest.raises(ValueError, match="TensorRT runs on CUDA devices, got device='cpu'"):
        TrtEngine(engine_path=plan, device="cpu")


def test_the_fake_is_strict(trt):
    """The stand-in fails on anything outside the TensorRT calls it implements (a plan path that
    reached for the builder or a wrong argument would fail the tests above)."""
    with pytest.raises(AttributeError):
        trt.Builder  # noqa: B018
    eng = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(fake.vit_plan())
    with pytest.raises(KeyError):
        eng.get_tensor_shape("images")
    with pytest.raises(TypeError):
        eng.get_tensor_profile_shape(name="image")  # profile_index is required
    with pytest.raises(AttributeError):
        eng.max_batch_size  # noqa: B018  (removed in TensorRT 10)
    ctx = eng.create_execution_context()
    assert ctx.execute_async_v3(0) is False  # no shapes/addresses set
    with pytest.raises(AssertionError):
        ctx.set_tensor_address("image", 0)
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"not a plan") is None


def test_load_plan_is_the_engines_loader(trt, onnx_export, tmp_path):
    onnx_path, C = onnx_export
    plan = tmp_path / "m.plan"
    save_plan(
        plan, fake.vit_plan(H, W, C=C, depth=False), plan_sidecar(onnx_path, "fp32", trt.__version__, None)
    )
    lp = load_plan(plan, trt)
    assert lp.signature.input_hw() == (H, W)
    from dinov3_ros.runtime.ort_backend import read_metadata

    onnx_meta = read_metadata(onnx_path)
    assert lp.meta["norm_mean"] == onnx_meta["norm_mean"] and lp.meta["norm_std"] == onnx_meta["norm_std"]
    assert lp.meta["precision"] == "fp32" and lp.meta["onnx_sha256"] == trt_backend.onnx_sha256(onnx_path)
    assert [t.name for t in lp.signature.outputs] == ["patch_tokens", "cls"]


def test_pipeline_runs_on_a_plan(trt, host_buffers, tmp_path):
    """The real pipeline on a plan's outputs: features, depth, points, objects, matches."""
    from dinov3_ros.pipeline import Frame, PipelineConfig
    from dinov3_ros.pipeline.pipeline import Pipeline

    plan = tmp_path / "m.plan"
    plan.write_bytes(fake.vit_plan(96, 128, C=24, depth=True))
    eng = TrtEngine(engine_path=plan)
    i = eng.info
    cfg = PipelineConfig(resolution=i.input_size, parallel_heads=False)
    pipe = Pipeline(eng, cfg, patch_size=i.patch_size, mean=i.norm_mean, std=i.norm_std, device="cpu")
    rng = np.random.default_rng(0)
    want = {"features", "depth", "points", "objects", "matches"}
    outs = [
        pipe.process([Frame(rng.integers(0, 255, (96, 128, 3), np.uint8), k, "cam", None, "s")], want)[0]
        for k in range(2)
    ]
    o = outs[1]
    depth = o["depth"].image
    assert o["features"].shape == (6, 8, 24) and depth.shape == (96, 128)
    assert np.nanmin(depth) >= cfg.min_depth and np.nanmax(depth) > 1.0
    assert o["points"].xyz.shape[1] == 3 and len(o["points"].xyz) > 0
    assert o["objects"].mask.shape == (96, 128) and eng.context.executions == 2


# -- building a plan from our ONNX (the builder side of the stand-in) -----------------------------
@pytest.fixture
def trt_builder(monkeypatch):
    mod = fake.builder_module()
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


def test_build_engine_sets_precision_profile_and_timing_cache(trt_builder, onnx_export, tmp_path):
    from dinov3_ros.runtime.trt_backend import build_engine

    onnx_path, _ = onnx_export
    cache = tmp_path / "timing.cache"
    plan = build_engine(onnx_path, precision="fp16", batch=(1, 2, 4), timing_cache=cache, workspace_gib=1.0)
    assert fake.built_with(plan) == {"flags": ["FP16"], "network_flags": 0, "pools": {"WORKSPACE": 1 << 30}}
    assert cache.read_bytes() == b"FAKE-TIMING-CACHE"
    build_engine(onnx_path, precision="fp32", timing_cache=cache)
    assert cache.read_bytes() == b"FAKE-TIMING-CACHE+"  # the cache is read back and extended
    eng = trt_builder.Runtime(trt_builder.Logger()).deserialize_cuda_engine(plan)
    prof = eng.get_tensor_profile_shape("image", 0)
    assert [tuple(d) for d in prof] == [(1, 3, H, W), (2, 3, H, W), (4, 3, H, W)]
    assert fake.built_with(build_engine(onnx_path, precision="fp32"))["flags"] == []
    with pytest.raises(ValueError, match="precision int8 needs calibration="):
        build_engine(onnx_path, precision="int8")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match=r"TensorRT could not parse .*bad\.onnx"):
        build_engine(bad, precision="fp32")


def test_build_engine_on_strongly_typed_tensorrt(monkeypatch, onnx_export):
    """TensorRT 11 has no FP16/INT8 builder flags: an fp32 ONNX builds strongly typed at fp32; fp16 needs
    an fp16 export; implicit INT8 is refused."""
    from dinov3_ros.runtime.trt_backend import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", fake.builder_module(strongly_typed_only=True))
    onnx_path, _ = onnx_export
    assert fake.built_with(build_engine(onnx_path, precision="fp32"))["network_flags"] == 1 << 1
    with pytest.raises(ValueError, match="strongly typed only: export an fp16 ONNX"):
        build_engine(onnx_path, precision="fp16")
    with pytest.raises(ValueError, match="removed implicit INT8 calibration"):
        build_engine(onnx_path, precision="int8")


def test_engine_from_onnx_is_built_once_and_cached(
    trt_builder, host_buffers, onnx_export, tmp_path, monkeypatch
):
    """``TrtEngine(onnx_path=...)``: built on a cache miss (plan + sidecar under a key of GPU, TensorRT,
    ONNX hash, precision and shapes), loaded from the cache afterwards."""
    from types import SimpleNamespace

    onnx_path, C = onnx_export
    gpu = SimpleNamespace(name="Orin", major=8, minor=7)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)  # the CUDA boundary
    builds = []
    real = trt_backend.build_engine
    monkeypatch.setattr(trt_backend, "build_engine", lambda *a, **k: builds.append(k) or real(*a, **k))
    eng = TrtEngine(onnx_path=onnx_path, precision="fp16", cache_dir=tmp_path, max_batch=2)
    (plan,) = tmp_path.glob("*.engine")
    assert plan.name.startswith("Orin_sm87_trt10.3.0_fp16_") and sidecar_path(plan).exists()
    assert len(builds) == 1 and builds[0]["batch"] == (1, 2, 2)
    assert (eng.info.arch, eng.info.precision, eng.info.input_size) == ("vitt16", "fp16", (H, W))
    x = torch.rand(2, 3, H, W)
    np.testing.assert_allclose(eng.run(x)["patch_tokens"].numpy(), _expected_tokens(x.numpy(), C), rtol=1e-5)
    again = TrtEngine(onnx_path=onnx_path, precision="fp16", cache_dir=tmp_path, max_batch=2)
    assert len(builds) == 1 and again.engine_path == plan
    TrtEngine(onnx_path=onnx_path, precision="fp32", cache_dir=tmp_path, max_batch=2)
    assert len(builds) == 2 and len(list(tmp_path.glob("*.engine"))) == 2  # another precision, another key
