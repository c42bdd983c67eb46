"""Two-process gloo runs: distributed Sinkhorn-Knopp / KoLeo equal the single-process result on the
concatenated batch, and FSDP2 pretraining runs (and checkpoints) under torchrun on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.checkpoint import safe_load
from training.losses import koleo_loss, koleo_loss_distributed, sinkhorn_knopp

REPO = Path(__file__).resolve().parents[1]


def _data():
    g = torch.Generator().manual_seed(11)
    return torch.randn(16, 32, generator=g), torch.randn(16, 8, generator=g), torch.randn(7, 32, generator=g)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        logits, feats, ibot_logits = _data()
        B = logits.shape[0] // world
        local = slice(rank * B, (rank + 1) * B)
        q = sinkhorn_knopp(logits[local], 0.07)
        # unequal row counts per rank (as for iBOT's masked patches): rank 0 gets 3 rows, rank 1 gets 4
        rows = slice(0, 3) if rank == 0 else slice(3, 7)
        q_ibot = sinkhorn_knopp(ibot_logits[rows], 0.07)
        x = feats[local].clone().requires_grad_(True)
        k_all = koleo_loss_distributed(x, group_size=None)
        k_grp = koleo_loss_distributed(x, group_size=4)
        k_grp.backward()
        vals = torch.stack([k_all.detach(), k_grp.detach()])
        dist.all_reduce(vals)
        vals /= world
        torch.save(
            {"q": q, "q_ibot": q_ibot, "koleo": vals, "grad_finite": bool(torch.isfinite(x.grad).all())},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_process_sinkhorn_and_koleo_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in range(2)]
    logits, feats, ibot_logits = _data()
    torch.testing.assert_close(
        torch.cat([r[0]["q"], r[1]["q"]]), sinkhorn_knopp(logits, 0.07), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(
        torch.cat([r[0]["q_ibot"], r[1]["q_ibot"]]), sinkhorn_knopp(ibot_logits, 0.07), rtol=1e-5, atol=1e-7
    )
    # per-rank sinkhorn on its half alone would be different: the all-reduce matters
    assert not torch.allclose(r[0]["q"], sinkhorn_knopp(logits[:8], 0.07), atol=1e-4)
    koleo_all, koleo_grp = r[0]["koleo"].tolist()
    assert koleo_all == pytest.approx(koleo_loss(feats).item(), rel=1e-5)
    expect_grp = sum(koleo_loss(feats[i : i + 4]).item() for i in range(0, 16, 4)) / 4
    assert koleo_grp == pytest.approx(expect_grp, rel=1e-5)
    assert r[0]["grad_finite"] and r[1]["grad_finite"]


def _torchrun(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "training.cli",
        "pretrain",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fsdp2_gloo_pretraining_two_processes_checkpoint_and_resume(tmp_path):
    out = tmp_path / "run"
    common = [
        "--config",
        str(REPO / "training/configs/tiny_cpu.yaml"),
        f"train.output_dir={out}",
        "train.batch_size_per_gpu=4",
        "train.checkpoint_period=2",
        "train.fsdp=true",
        "train.activation_checkpointing=full",
        "dino.koleo_distributed=true",
        "dino.koleo_group_size=4",
    ]
    ref = tmp_path / "ref"
    p = _torchrun([*common, "train.iterations=4", f"train.output_dir={ref}"], REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    p = _torchrun([*common, "train.iterations=4", "train.stop_at_iteration=2"], REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = out / "ckpt" / "00000002"
    assert (ckpt / ".metadata").exists() and (ckpt / "extra_rank1.pt").exists()
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank
    p = _torchrun([*common, "train.iterations=4"], REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout
    its = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert its == [0, 1, 2, 3]
    assert (out / "teacher_backbone.pth").exists()
    sd = torch.load(out / "teacher_backbone.pth", weights_only=True)
    assert "blocks.1.attn.qkv.weight" in sd and not any("_checkpoint_wrapped" in k for k in sd)
    # the resumed run ends in the same full state as the uninterrupted one, bit for bit: every shard of
    # the student, the EMA teacher and the optimizer, and each rank's iteration, counters and RNG states
    from test_training_config import _assert_same

    a, b = (
        _read_dcp(ref / "ckpt" / "00000004", tmp_path / "a.pt"),
        _read_dcp(ckpt.parent / "00000004", tmp_path / "b.pt"),
    )
    assert any(k.startswith("teacher.") for k in a["model"]) and a["optimizer"]["state"]
    _assert_same(a, b, "checkpoint")
    for r in range(2):
        ea = safe_load(ref / "ckpt" / "00000004" / f"extra_rank{r}.pt", "state")
        eb = safe_load(ckpt.parent / "00000004" / f"extra_rank{r}.pt", "state")
        assert ea["next_iteration"] == 4
        _assert_same(ea, eb, f"rank {r}")
    # negative control: the checkpoint after two iterations differs from the one after four
    with pytest.raises(AssertionError):
        _assert_same(_read_dcp(ckpt, tmp_path / "c.pt")["model"], b["model"], "model")


def _read_dcp(path: Path, tmp: Path) -> dict:
    """A DCP checkpoint as one plain state dict (tensors and plain data)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(path), str(tmp))
    return torch.load(tmp, weights_only=True)
