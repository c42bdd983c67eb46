"""The leaf ``core`` layer: one resize formula, one camera_info policy, validated settings and one
weight resolver behind the pipeline, eval and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.core import CameraIntrinsics, IntrinsicsSource, ModelSpec, PipelineConfig, WeightsSpec
from dinov3_ros.core.camera import intrinsics_for_image, scale_matrix
from dinov3_ros.runtime.preprocess import Preprocessor

K = np.array([[500.0, 0.0, 319.5], [0.0, 510.0, 239.5], [0.0, 0.0, 1.0]])


def test_one_resize_formula_for_intrinsics_and_letterboxing():
    """Resizing moves pixel centres: ``c' = (c + 0.5) s - 0.5 + o``; the letterbox geometry, the
    intrinsics' own resize and the formula agree, and a projected point lands where the image moved it."""
    intr = CameraIntrinsics(K, 640, 480)
    small = intr.resized(320, 240)
    assert small.K[0, 0] == 250 and small.K[0, 2] == (319.5 + 0.5) * 0.5 - 0.5
    assert np.array_equal(small.P[:, :3], small.K)
    g = Preprocessor((64, 96), 16).plan([(480, 640)])[0]
    Kg, _ = g.scale_intrinsics(K)
    assert np.array_equal(Kg, scale_matrix(K, g.scale_x, g.scale_y, g.offset_x, g.offset_y))
    moved = intr.transformed(g.scale_x, g.scale_y, g.offset_x, g.offset_y, 96, 64)
    X = np.array([0.3, -0.2, 2.0])
    u, v = (K @ X)[:2] / X[2]
    un, vn = g.input_to_network(u, v)
    assert np.allclose((moved.K @ X)[:2] / X[2], [un, vn])


def test_camera_info_policy_never_rejects_a_frame():
    intr = CameraIntrinsics(K, 640, 480)
    assert intrinsics_for_image(intr, 640, 480) == (intr, IntrinsicsSource.CAMERA_INFO)
    half, src = intrinsics_for_image(intr, 320, 240)
    assert src is IntrinsicsSource.RESCALED and (half.width, half.height) == (320, 240)
    assert intrinsics_for_image(intr, 480, 480) == (None, IntrinsicsSource.INVALID)  # another aspect ratio
    assert intrinsics_for_image(None, 640, 480) == (None, IntrinsicsSource.MISSING)
    for bad in (np.zeros((3, 3)), np.diag([np.nan, 1.0, 1.0]), np.diag([-5.0, 5.0, 1.0])):
        with pytest.raises(ValueError):
            CameraIntrinsics(bad, 640, 480)
    with pytest.raises(ValueError, match="positive size"):
        CameraIntrinsics(K, 0, 0)


def test_settings_are_validated_with_their_ranges():
    cfg = PipelineConfig()
    for name, value in (
        ("depth_scale", float("inf")),
        ("depth_scale", 0.0),
        ("match_ratio", 1.5),
        ("max_objects", 0),
    ):
        with pytest.raises(ValueError, match=name):
            cfg.with_updates(**{name: value})
    with pytest.raises(ValueError, match="min_depth"):
        cfg.with_updates(min_depth=60.0)
    assert cfg.with_updates(depth_scale=2.0).depth_scale == 2.0
    assert PipelineConfig.describe("match_ratio")["description"]


def test_model_spec_names_the_problem():
    with pytest.raises(ValueError, match="int8 needs backend 'onnxruntime'"):
        ModelSpec(weights="random:vitt16", precision="int8").validate()
    with pytest.raises(ValueError, match="multiples of 16"):
        ModelSpec(resolution=(100, 64)).validate()
    with pytest.raises(ValueError, match="weights is empty"):
        ModelSpec(weights="").validate()
    assert WeightsSpec.parse("random:vits16") == WeightsSpec("random", "vits16")
    assert WeightsSpec.parse("default").kind == "registry"
    assert WeightsSpec.parse("models/x.pth").kind == "file"
    with pytest.raises(FileNotFoundError, match="not found"):
        WeightsSpec.parse("/nonexistent/x.pth").path()


def test_one_resolver_behind_pipeline_eval_and_export():
    """``random:vitt16`` is the same model through the pipeline, eval and export loaders."""
    from dinov3_ros.eval.features import resolve_weights
    from dinov3_ros.pipeline.model import load_model
    from dinov3_ros.runtime.export import load_model as export_model

    ev = resolve_weights("random:vitt16").backbone.state_dict()
    ex = export_model(None, "random:vitt16").state_dict()
    pipe = load_model("random:vitt16", resolution=(32, 32)).engine.model
    assert ev.keys() == ex.keys()
    assert all(torch.equal(ev[k], ex[k]) for k in ev)
    emb = "patch_embed.proj.weight"
    assert torch.equal(
        pipe.state_dict()[f"vit.{emb}"] if f"vit.{emb}" in pipe.state_dict() else ev[emb], ev[emb]
    )


def test_parse_settings_reads_yaml_values_and_names_a_bad_pair():
    """The tools' ``--set KEY=VALUE``: values as YAML, names left to ``with_updates``, a pair without
    ``=`` refused by name."""
    from dinov3_ros.core.config import PipelineConfig, parse_settings

    got = parse_settings(["max_objects=2", " match_refine = features", "resolution=[64, 96]", "odom_frame="])
    assert got == {"max_objects": 2, "match_refine": "features", "resolution": [64, 96], "odom_frame": None}
    cfg = PipelineConfig().with_updates(**{**got, "odom_frame": ""})
    assert cfg.max_objects == 2 and cfg.resolution == (64, 96)
    with pytest.raises(ValueError, match="KEY=VALUE, got 'max_objects'"):
        parse_settings(["max_objects"])
