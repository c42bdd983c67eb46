"""Resolution is one setting: ``load_model(resolution=...)`` is honoured or refused for every backend.

torch runs at the requested size (and refuses others); a fixed-size ONNX sets the size when none is
requested and refuses another one with one message (the same message as a TensorRT plan, see
``test_trt_paths.py``, which also covers the node, the lifecycle node and the launch file); a dynamic
ONNX runs at the requested size. The bag tool reports a mismatch before it writes anything.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import pytest
import test_ros_node as trn

from dinov3_ros.pipeline import Frame, PipelineConfig
from dinov3_ros.pipeline.model import ModelLoadError, load_model
from dinov3_ros.pipeline.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXED = (64, 96)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> SimpleNamespace:
    from dinov3_ros.runtime.export import export_onnx
    from dinov3_ros.runtime.weights import random_backbone

    d = tmp_path_factory.mktemp("res")
    bb = random_backbone("vitt16")
    fixed, _ = export_onnx(bb, d / "fixed.onnx", resolution=FIXED)
    dynamic, _ = export_onnx(bb, d / "dynamic.onnx", resolution=None)
    return SimpleNamespace(dir=d, fixed=fixed, dynamic=dynamic, C=int(bb.embed_dim))


def _features(model, size: tuple[int, int]):
    pipe = Pipeline.from_model(model, PipelineConfig(resolution=size, parallel_heads=False))
    frame = Frame(trn._frame_rgb(0, 160, 120), 1, "cam", None, "s")
    return pipe.process([frame], {"features"})[0]["features"]


def test_torch_runs_at_the_requested_resolution():
    import torch

    m = load_model("random:vitt16", resolution=FIXED)
    assert m.input_size == FIXED and tuple(m.engine.info.input_size) == FIXED
    assert _features(m, m.input_size).shape == (4, 6, 192)
    with pytest.raises(ValueError, match="engine was built for 64x96, got 32x48"):
        m.engine.run(torch.zeros(1, 3, 32, 48))
    free = load_model("random:vitt16")  # no resolution: the torch engine takes any size
    assert free.input_size is None and free.engine.info.input_size is None
    assert free.engine.run(torch.zeros(1, 3, 32, 48))["patch_tokens"].shape == (1, 2, 3, 192)
    with pytest.raises(ModelLoadError, match="multiples of 16"):
        load_model("random:vitt16", resolution=(65, 96))


def test_fixed_size_onnx_sets_the_size_or_refuses_another(onnx_files):
    m = load_model(str(onnx_files.fixed), "onnxruntime")
    assert m.input_size == FIXED
    assert _features(m, m.input_size).shape == (4, 6, onnx_files.C)
    assert load_model(str(onnx_files.fixed), "onnxruntime", resolution=FIXED).input_size == FIXED
    with pytest.raises(ModelLoadError) as err:
        load_model(str(onnx_files.fixed), "onnxruntime", resolution=(32, 48))
    assert str(err.value) == (
        f"{onnx_files.fixed} was built for 64x96 input, the configured resolution is 32x48: set resolution "
        "to 64x96 (or leave it unset to use the model's size), or export the model again at 32x48"
    )
    with pytest.raises(ModelLoadError, match=r"is an ONNX model: use backend 'onnxruntime' or 'tensorrt'"):
        load_model(str(onnx_files.fixed), "torch", resolution=FIXED)


def test_dynamic_onnx_runs_at_the_requested_resolution(onnx_files):
    m = load_model(str(onnx_files.dynamic), "onnxruntime", resolution=(32, 48))
    assert m.input_size == (32, 48) and m.engine.info.input_size is None
    assert _features(m, m.input_size).shape == (2, 3, onnx_files.C)
    assert load_model(str(onnx_files.dynamic), "onnxruntime").input_size is None


def test_bag_tool_refuses_a_resolution_the_model_was_not_built_for(onnx_files, tmp_path, capsys):
    from dinov3_ros.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i}.png"), trn._frame_rgb(i, 160, 120))
    base = ["process", str(frames), "--backend", "onnxruntime", "--weights", str(onnx_files.fixed),
            "--device", "cpu", "--outputs", "features"]  # fmt: skip
    assert main([*base, "--resolution", "32x48", "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "was built for 64x96 input, the configured resolution is 32x48" in err, err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
    assert main([*base, "--resolution", "64x96", "--out", str(tmp_path / "good")]) == 0
