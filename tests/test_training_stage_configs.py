"""Every shipped training stage config runs for a few iterations on CPU, shrunk only by overrides: the
ViT-S/16 pretraining, its Gram-anchoring continuation and high-resolution adaptation, published
distillation from that run, head-free distillation from its backbone, a depth head on the student;
and the CPU-sized chain (tiny_cpu -> distill_tiny_cpu -> depth_tiny_cpu) as the README runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training import cli
from training.config import load_config
from training.pretrain import run_pretraining

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training/configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_root_logging")


TINY_VIT = "{depth: 1, embed_dim: 48, num_heads: 2, ffn_hidden: 96, n_storage_tokens: 0}"
#: the sizes of the paper configs replaced by CPU-sized ones; everything else comes from the file
SHRINK = [
    "model.arch=vitt16",
    f"model.backbone={TINY_VIT}",
    "dino.n_prototypes=64",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "ibot.n_prototypes=64",
    "ibot.hidden_dim=32",
    "ibot.bottleneck_dim=16",
    "crops.global_crops_size=32",
    "crops.local_crops_size=16",
    "crops.local_crops_number=1",
    "data.sources=[{type: procedural, height: 48, width: 48}]",
    "data.num_workers=0",
    "train.batch_size_per_gpu=2",
    "train.tensorboard=false",
    "train.log_period=1",
]


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory) -> Path:
    """vits16_1gpu.yaml for 2 iterations, then vits16_gram_anchor.yaml continuing it to 4."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stages") / "vits16_1gpu"
    cfg = load_config(
        CONFIGS / "vits16_1gpu.yaml",
        [*SHRINK, f"train.output_dir={out}", "train.iterations=2", "train.checkpoint_period=2"],
    )
    assert run_pretraining(cfg)["iteration"] == 2
    gram = load_config(
        CONFIGS / "vits16_gram_anchor.yaml",
        [
            *SHRINK,
            f"train.output_dir={out}",
            "train.iterations=4",
            "train.checkpoint_period=2",
            "gram.loss_weight={peak: 2.0, start_iter: 2, before: 0.0, warmup_iters: 1}",
            "dino.local_weight={peak: 0.5, start_iter: 2, before: 1.0, warmup_iters: 1}",
            "gram.it_first_update=4",
            "gram.update_frequency=2",
            "crops.gram_teacher_crops_size=64",
        ],
    )
    res = run_pretraining(gram)  # the file allows continuing the run under its own config
    assert res["iteration"] == 4 and [h["iteration"] for h in res["history"]] == [2, 3]
    assert res["history"][-1]["loss/gram"] > 0 and res["state"].gram_updates == 1
    assert (out / "config.before-00000002.yaml").is_file() and (out / "teacher_backbone.pth").is_file()
    return out


def test_highres_adaptation_starts_from_the_gram_stage(pretrain_run, tmp_path):
    ck = pretrain_run / "ckpt" / "00000004"
    cfg = load_config(
        CONFIGS / "vits16_highres_adapt.yaml",
        [
            *SHRINK,
            f"train.output_dir={tmp_path / 'hr'}",
            f"model.pretrained={ck}",
            f"gram.ckpt={ck}",
            "train.iterations=2",
            "crops.mixed=[{global_crops_size: 32, local_crops_size: 16, gram_teacher_crops_size: 48, ratio: 0.5},"
            " {global_crops_size: 48, local_crops_size: 16, gram_teacher_crops_size: 64, ratio: 0.5}]",
        ],
    )
    res = run_pretraining(cfg)
    assert res["iteration"] == 2 and all(h["loss/gram"] >= 0 for h in res["history"])


def _tiny_students() -> str:
    return f"students=[{{name: s, arch: vitt16, overrides: {TINY_VIT}}}]"


DISTILL_SHRINK = [
    "crops.global_crops_size=32",
    "crops.local_crops_size=16",
    "crops.local_crops_number=1",
    "data.sources=[{type: procedural, height: 48, width: 48}]",
    "data.num_workers=0",
    "train.iterations=2",
    "train.batch_size_per_gpu=2",
    "train.log_period=1",
    "train.amp=fp32",
    "--device",
    "cpu",
]


def test_published_distillation_from_the_pretraining_run(pretrain_run, tmp_path, capsys):
    out = tmp_path / "distill"
    rc = cli.main(
        [
            "distill",
            "--config",
            str(CONFIGS / "distill_default_vits16.yaml"),
            f"teacher.checkpoint={pretrain_run}",
            f"output_dir={out}",
            _tiny_students(),
            *DISTILL_SHRINK,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["done"] is True
    meta = json.loads((out / "students/s/export.json").read_text())
    assert meta["iteration"] == 2 and "ema_fp16" in meta["files"]


def test_head_free_distillation_from_the_backbone_then_a_depth_head(pretrain_run, tmp_path, capsys):
    out = tmp_path / "features"
    rc = cli.main(
        [
            "distill",
            "--config",
            str(CONFIGS / "distill_features_vitl16.yaml"),
            f"teacher.checkpoint={pretrain_run / 'teacher_backbone.pth'}",
            "teacher.arch=vitt16",
            f"teacher.overrides={TINY_VIT}",
            f"output_dir={out}",
            f"students=[{{name: s, arch: vitt16, overrides: {TINY_VIT}}},"
            " {name: c, arch: convnext_tiny, overrides: {depths: [1, 1, 1, 1], dims: [8, 16, 32, 48]}}]",
            *DISTILL_SHRINK,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (out / "students/c/export.json").is_file()
    # the depth stage on the distilled student
    depth = tmp_path / "depth"
    rc = cli.main(
        [
            "depth",
            "--config",
            str(CONFIGS / "depth_default_vits16.yaml"),
            "--device",
            "cpu",
            f"output_dir={depth}",
            f"backbone.weights={out / 'students/s/backbone_ema.pth'}",
            "backbone.arch=vitt16",
            f"backbone.overrides={TINY_VIT}",
            "data.image_size=[32, 32]",
            "data.frames_per_scene=2",
            "data.val_scenes=1",
            "data.val_frames_per_scene=1",
            "data.num_workers=0",
            "train.iterations=2",
            "train.batch_size=2",
            "train.amp=fp32",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (depth / "depth_head.pt").is_file() and (depth / "metrics.json").is_file()


def test_cpu_quick_start_chain_as_documented(tmp_path, monkeypatch, capsys):
    """The commands of the CPU quick start, from the repository's relative paths (shortened runs)."""
    monkeypatch.chdir(tmp_path)
    cfg = CONFIGS
    assert cli.main(["pretrain", "--config", str(cfg / "tiny_cpu.yaml"), "train.iterations=2"]) == 0
    assert "done: iteration 2" in capsys.readouterr().out
    assert cli.main(["distill", "--config", str(cfg / "distill_tiny_cpu.yaml"), "train.iterations=2"]) == 0
    assert (tmp_path / "runs/distill_tiny_cpu/students/vitt16/backbone_ema.pth").is_file()
    assert cli.main(["depth", "--config", str(cfg / "depth_tiny_cpu.yaml"), "train.iterations=2"]) == 0
    assert (tmp_path / "runs/depth_tiny_cpu/depth_head.pt").is_file()
    assert cli.main(["objects", "--config", str(cfg / "objects_tiny_cpu.yaml"), "optim.iterations=2"]) == 0
    from dinov3_ros.heads.objects_head import load_objects_head

    head = load_objects_head(tmp_path / "runs/objects_tiny_cpu/objects_head.npz", expect_arch="vitt16")
    assert head.out_dim == 32 and head.meta["trained_on"]["scenes"] == 4
    held = json.loads((tmp_path / "runs/objects_tiny_cpu/metrics.json").read_text())["held_out"]["64x64"]
    assert set(held) == {"raw", "projected"} and 0.0 <= held["projected"]["iou"] <= 1.0
