"""The default-model recipe as documented (`training/recipes/default_model.sh`), every stage on CPU at a
toy size through its environment overrides: a teacher cut by its wall-time limit and resumed, then
student -> depth head -> objects head -> export, then a re-run that skips the finished stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training/recipes/default_model.sh"

POOL = "{scenes: 4, frames_per_scene: 2, height: 64, width: 64, gt_stride: 4, initial_scenes: 4, scenes_per_step: 0, backend: generator, render_batch: 4, workers: 0}"
TINY_HEADS = "n_prototypes: 64, hidden_dim: 64, bottleneck_dim: 32, norm_last_layer: true"
CROPS = ["crops.global_crops_size=32", "crops.local_crops_size=16", "crops.local_crops_number=2"]


@pytest.mark.slow
def test_default_recipe_stages_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PY": sys.executable,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "STAGES": "teacher student depth objects export",
        "TEACHER_ITERS": "2",
        "STUDENT_ITERS": "2",
        "DEPTH_ITERS": "2",
        "EXTRA_TEACHER": "\n".join(
            [
                "model.backbone={depth: 1, rope_rescale: 2.0, layerscale_init: 0.1}",
                f"dino={{{TINY_HEADS}}}",
                f"ibot={{{TINY_HEADS}}}",
                "train.batch_size_per_gpu=2",
                "train.param_dtype=fp32",
                f"sim.pool={POOL}",
                *CROPS,
            ]
        ),
        "EXTRA_STUDENT": "\n".join(
            [
                "students=[{name: vits16, arch: vits16, overrides: {depth: 1}, init_from_teacher: true}]",
                "heads.hidden_dim=64",
                "train.batch_size_per_gpu=2",
                f"sim.pool={POOL}",
                *CROPS,
            ]
        ),
        "EXTRA_DEPTH": "\n".join(
            [
                "backbone.overrides={depth: 1}",
                "data.image_size=[32, 32]",
                "data.image_sizes=[[32, 32], [32, 48]]",
                "train.batch_sizes=[2, 1]",
                "data.val_scenes=1",
                "data.val_frames_per_scene=1",
                "data.pool={scenes: 2, backend: generator, render_batch: 2}",
            ]
        ),
        "EXTRA_OBJECTS": "\n".join(
            [
                "backbone.overrides={depth: 1}",
                "data.image_sizes=[[32, 32]]",
                "data.scenes=2",
                "data.frames_per_scene=2",
                "data.val_scenes=1",
                "optim.iterations=2",
                "head.out_dim=8",
            ]
        ),
    }

    def go(**extra: str) -> str:
        r = subprocess.run(
            ["bash", str(SCRIPT), str(out)],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    # a wall-time limit stops the teacher after its first step with a checkpoint; the next run resumes it
    first = go(TEACHER_SECONDS="0.01")
    assert "stopped by train.max_seconds after iteration 1" in first and "teacher: not finished" in first
    assert not (out / "student").exists()
    second = go()
    assert "resumed from" in second and "at iteration 1" in second
    model = out / "model"
    manifest = json.loads((model / "model.json").read_text())
    assert set(manifest["files"]) == {"dinov3_vits16_dinov3ros.pth", "depth_head.pt", "objects_head.npz"}
    sd = torch.load(model / "dinov3_vits16_dinov3ros.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    from dinov3_ros.models import build_backbone

    build_backbone("vits16", depth=1).load_state_dict({k: v.float() for k, v in sd.items()})
    from dinov3_ros.heads.objects_head import load_objects_head

    assert (
        load_objects_head(model / "objects_head.npz", expect_arch="vits16", expect_embed_dim=384).out_dim == 8
    )
    names = ("teacher_config.yaml", "student_config.yaml", "depth_config.yaml", "depth_metrics.json")
    for name in (*names, "objects_config.yaml", "objects_metrics.json"):
        assert (model / "provenance" / name).is_file(), name
    log = (out / "recipe.log").read_text()
    assert "sim pool: 8 frames of 64x64" in log  # the teacher rendered its pool
    again = go()  # a finished run skips every stage
    for stage in ("teacher", "student", "depth", "objects"):
        assert f"{stage}: done, skipping" in again
