"""Negative controls for the ``precision: int8`` pipeline bound (cosine > 0.99 of the pipeline's features
against the fp32 ONNX Runtime run of the same file, as in ``test_pipeline_int8``).

With a random model whose every block matters, the int8 run stays inside the bound while models with
every block removed, or every block redrawn, fall outside it: the bound can tell a broken model apart.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dinov3_ros.models.testing import random_backbone, randomize_backbone_
from dinov3_ros.pipeline import Frame, PipelineConfig
from dinov3_ros.pipeline.model import load_model
from dinov3_ros.pipeline.pipeline import Pipeline
from dinov3_ros.runtime.export import export_onnx
from dinov3_ros.runtime.vit_infer import InferenceViT

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = (64, 96)
BOUND = 0.99  # the worst-token cosine bound of test_pipeline_int8


def _image() -> np.ndarray:
    y, x = np.mgrid[0:120, 0:180]
    return np.stack([(x * 3) % 256, (y * 5) % 256, ((x // 20 + y // 20) % 2) * 200], 2).astype(np.uint8)


def _features(path, precision: str) -> np.ndarray:
    m = load_model(str(path), "onnxruntime", "cpu", precision, SIZE)
    p = Pipeline.from_model(m, PipelineConfig(resolution=SIZE))
    (o,) = p.process([Frame(_image(), 1, "cam", None, "s")], {"features"})
    return o.features.reshape(-1, o.features.shape[-1]).astype(np.float64)


def _worst_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


@pytest.fixture(scope="module")
def fp32_and_int8(tmp_path_factory):
    bb = random_backbone("vits16", seed=0, depth=2)
    path, _ = export_onnx(bb, tmp_path_factory.mktemp("int8") / "m.onnx", resolution=SIZE)
    return bb, _features(path, "fp32"), _features(path, "int8")


def test_int8_inside_the_bound(fp32_and_int8):
    _, fp32, int8 = fp32_and_int8
    assert _worst_cos(fp32, int8) > BOUND
    assert not np.array_equal(fp32, int8)


def test_blocks_removed_fall_outside_the_bound(fp32_and_int8, tmp_path):
    bb, fp32, int8 = fp32_and_int8
    m = InferenceViT.from_backbone(bb)
    with pytest.MonkeyPatch.context() as mp:
        for blk in m.blocks:
            mp.setattr(blk, "forward", lambda t, cos, sin: t)
        path, _ = export_onnx(m, tmp_path / "noblocks.onnx", resolution=SIZE)
    none = _features(path, "fp32")
    assert _worst_cos(fp32, none) < BOUND and _worst_cos(int8, none) < BOUND


def test_blocks_redrawn_fall_outside_the_bound(fp32_and_int8, tmp_path):
    bb, fp32, int8 = fp32_and_int8
    other = copy.deepcopy(bb)
    for i, blk in enumerate(other.blocks):
        randomize_backbone_(blk, seed=100 + i)
    path, _ = export_onnx(other, tmp_path / "redrawn.onnx", resolution=SIZE)
    redrawn = _features(path, "fp32")
    assert _worst_cos(fp32, redrawn) < BOUND and _worst_cos(int8, redrawn) < BOUND
