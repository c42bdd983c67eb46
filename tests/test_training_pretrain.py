"""End-to-end pretraining on CPU: a tiny ViT trains on procedural and rosbag data, Gram anchoring from a
checkpoint, the NaN guard, and kill -9 / resume continuing the loss sequence exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.checkpoint import list_checkpoints, load_checkpoint
from training.config import load_config
from training.data import build_pretrain_loader
from training.pretrain import build_training, run_pretraining, train_step

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training/configs/tiny_cpu.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(out: Path, *overrides: str) -> dict:
    return load_config(TINY, [f"train.output_dir={out}", *overrides])


def _decreases(history: list[dict]) -> tuple[float, float]:
    tot = [h["loss/total"] for h in history]
    return sum(tot[:2]) / 2, sum(tot[-2:]) / 2


def test_tiny_vit_trains_then_gram_stage_anchors_to_checkpoint(tmp_path):
    a = tmp_path / "a"
    res = run_pretraining(_cfg(a, "train.iterations=8", "train.checkpoint_period=4", "train.keep_last=1"))
    first, last = _decreases(res["history"])
    assert last < first - 0.1, res["history"]
    assert [p.name for p in list_checkpoints(a / "ckpt")] == ["00000008"]
    teacher_sd = torch.load(a / "teacher_backbone.pth", weights_only=True)
    from dinov3_ros.models import build_backbone

    build_backbone("vitt16", depth=2).load_state_dict(teacher_sd, strict=True)
    assert (a / "config.yaml").exists() and (a / "metrics.jsonl").exists()

    # Gram stage: Gram teacher from the checkpoint (the EMA teacher backbone), 2x-resolution teacher crops,
    # weight 0 at it 0 then 1.0, one refresh from the EMA teacher after iteration 2
    cfg = _cfg(
        tmp_path / "b",
        "gram.use=true",
        f"gram.ckpt={a / 'ckpt' / '00000008'}",
        "gram.loss_weight={peak: 1.0, start_iter: 1, before: 0.0}",
        "gram.it_first_update=2",
        "gram.update_frequency=2",
        "gram.max_updates=1",
        "crops.gram_teacher_crops_size=128",
    )
    st = build_training(cfg)
    for k, v in st.model.gram_teacher.state_dict().items():
        assert torch.equal(v, teacher_sd[k]), k
    loader = build_pretrain_loader({**cfg["data"], "crops": cfg["crops"]}, batch_size=8, max_iter=3)
    logs = [train_step(st, b, it) for it, b in enumerate(loader)]
    assert "loss/gram" not in logs[0] and logs[1]["loss/gram"] > 0 and logs[2]["gram_weight"] == 1.0
    assert st.gram_updates == 1
    for gt in st.model.gram_teacher.parameters():
        assert not torch.equal(gt, teacher_sd_param(teacher_sd, st, gt))
        break

    # high-resolution adaptation: student (backbone + heads) and Gram teacher from the checkpoint's EMA
    # teacher, mixed-resolution loaders, fixed Gram teacher at weight 1.5, DINO local weight 0.5
    ck = a / "ckpt" / "00000008"
    cfg = _cfg(
        tmp_path / "c",
        f"model.pretrained={ck}",
        f"gram.ckpt={ck}",
        "gram.use=true",
        "gram.loss_weight=1.5",
        "gram.rep_update=false",
        "dino.local_weight=0.5",
        "crops.mixed=[{global_crops_size: 32, gram_teacher_crops_size: 64, ratio: 0.5},"
        " {global_crops_size: 64, gram_teacher_crops_size: 96, ratio: 0.5}]",
    )
    st = build_training(cfg)
    for k, v in st.model.student.backbone.state_dict().items():
        assert torch.equal(v, teacher_sd[k]), k
    torch.testing.assert_close(
        st.model.student.dino_head.state_dict(), st.model.teacher.dino_head.state_dict()
    )
    loader = build_pretrain_loader({**cfg["data"], "crops": cfg["crops"]}, batch_size=4, max_iter=6)
    sizes, gram_w = set(), set()
    for it, b in enumerate(loader):
        sizes.add((b["global_crops"].shape[-1], b["gram_teacher_crops"].shape[-1]))
        log = train_step(st, b, it)
        assert log["loss/gram"] >= 0 and log["local_weight"] == 0.5
        gram_w.add(log["gram_weight"])
    assert sizes == {(32, 64), (64, 96)} and gram_w == {1.5}


def teacher_sd_param(sd: dict, st, p: torch.Tensor) -> torch.Tensor:
    name = next(n for n, q in st.model.gram_teacher.named_parameters() if q is p)
    return sd[name]


def test_rosbag_source_trains(tmp_path):
    from test_training_data import write_image_bag

    bag = tmp_path / "bag"
    write_image_bag(bag, n_raw=8, n_compressed=4)
    cfg = _cfg(
        tmp_path / "run",
        "train.iterations=6",
        "train.checkpoint_period=100",
        f"data.sources=[{{type: rosbag, paths: ['{bag}'], frame_stride: 1}}]",
    )
    res = run_pretraining(cfg)
    first, last = _decreases(res["history"])
    assert last < first - 0.1, res["history"]
    assert all(h["skipped_images"] >= 0 for h in res["history"])
    assert res["skipped_images"] > 0  # the bag's undecodable JPEG was drawn, skipped and counted


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    from training.cli import main

    out = tmp_path / "run"
    rc = main(
        [
            "pretrain",
            "--config",
            str(TINY),
            f"train.output_dir={out}",
            "train.iterations=6",
            "train.checkpoint_period=2",
            "debug.nan_at_iteration=3",
        ]
    )
    assert rc == 3
    assert "non-finite loss at iteration 3" in capsys.readouterr().err
    ckpts = list_checkpoints(out / "ckpt")
    assert [p.name for p in ckpts] == ["00000002"]
    assert not [p for p in (out / "ckpt").iterdir() if p.name.startswith(".tmp")]
    st = build_training(_cfg(out))
    extra = load_checkpoint(ckpts[0], st.model, st.optimizer)
    assert extra["next_iteration"] == 2
    assert main(["pretrain", "--config", str(TINY), "optim.nope=1"]) == 2  # bad override -> clear error


def _launch(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "pretrain",
        "--config",
        str(TINY),
        f"train.output_dir={out}",
        "train.iterations=10",
        "train.checkpoint_period=3",
        "train.keep_last=2",
        "train.batch_size_per_gpu=4",
        "train.deterministic=true",
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _losses(out: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["iteration"]] = {k: v for k, v in r.items() if k.startswith("loss/")}  # later lines win
    return rows


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_loss_sequence_exactly(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _launch(ref_dir)
    victim = _launch(run_dir)
    deadline = time.time() + 300
    while not (run_dir / "ckpt" / "00000003").exists():
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = max(_losses(run_dir))
    assert killed_at < 9, "the run finished before it could be killed"
    resumed = _launch(run_dir)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out
    a, b = _losses(ref_dir), _losses(run_dir)
    assert sorted(b) == list(range(10))
    for it in range(10):
        assert a[it] == b[it], (it, a[it], b[it])  # bit-identical, before and after the kill
