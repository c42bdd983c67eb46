"""``precision: int8`` end to end: load_model on onnxruntime quantizes the export, the pipeline runs on it and
its features stay close to the fp32 ONNX Runtime run of the same file; other backends refuse int8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.models import build_backbone
from dinov3_ros.pipeline import Frame, PipelineConfig
from dinov3_ros.pipeline.model import ModelLoadError, load_model
from dinov3_ros.pipeline.pipeline import Pipeline
from dinov3_ros.runtime.export import export_onnx

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_int8_pipeline_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    bb = build_backbone("vits16", depth=2).eval()
    path, _ = export_onnx(bb, tmp_path / "m.onnx", resolution=(64, 96))
    y, x = np.mgrid[0:120, 0:180]
    img = np.stack([(x * 3) % 256, (y * 5) % 256, ((x // 20 + y // 20) % 2) * 200], 2).astype(np.uint8)
    feats = {}
    for prec in ("fp32", "int8"):
        m = load_model(str(path), "onnxruntime", "cpu", prec, (64, 96))
        p = Pipeline.from_model(m, PipelineConfig(resolution=(64, 96)))
        (o,) = p.process([Frame(img, 1, "cam", None, "s")], {"features", "features_pca"})
        assert o["features"].shape == (4, 6, 384) and o["features_pca"].shape == (4, 6, 3)
        feats[prec] = o["features"].reshape(-1, 384).astype(np.float64)
    a, b = feats["fp32"], feats["int8"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99, cos.min()
    assert not np.array_equal(a, b)  # it really ran the quantized graph


def test_int8_needs_onnxruntime():
    with pytest.raises(ModelLoadError, match="int8 needs backend 'onnxruntime'"):
        load_model("random:vitt16", "torch", "cpu", "int8", (32, 32))
