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


def _why(p: subprocess.CompletedProcess) -> str:
    """A failed launch's story: each rank's first error lines (torchrun's own report comes last)."""
    lines = p.stderr.splitlines()
    keys = ("Traceback", "Error", "error:", "terminate", "Abort", "Signal", "[rank")
    first = [ln for ln in lines if any(k in ln for k in keys)][:40]
    return "\n".join(first) + "\n...\n" + p.stderr[-2000:]


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
    assert p.returncode == 0, _why(p)
    p = _torchrun([*common, "train.iterations=4", "train.stop_at_iteration=2"], REPO)
    assert p.returncode == 0, _why(p)
    ckpt = out / "ckpt" / "00000002"
    assert (ckpt / ".metadata").exists() and (ckpt / "extra_rank1.pt").exists()
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank
    p = _torchrun([*common, "train.iterations=4"], REPO)
    assert p.returncode == 0, _why(p)
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


# ---------------------------------------------------------------- DDP: same loss curve as one process

DDP_STEPS = 4
DDP_GLOBAL_BATCH = 8
DDP_OVERRIDES = [
    "train.iterations=4",
    "model.backbone.layerscale_init=0.1",  # images get distinct CLS tokens (KoLeo is -log distance)
    "model.backbone.rope_rescale=null",  # no random RoPE rescale: each rank would draw its own
    "dino.koleo_distributed=true",  # KoLeo over groups of 4 global samples: the same in both layouts
    "dino.koleo_group_size=4",
    "train.tensorboard=false",
]


def _ddp_cfg(out: str, batch: int) -> dict:
    from training.config import load_config

    return load_config(
        REPO / "training/configs/tiny_cpu.yaml",
        [f"train.output_dir={out}", f"train.batch_size_per_gpu={batch}", *DDP_OVERRIDES],
    )


def _global_batches(state) -> list[dict]:
    """The batches one process with the whole global batch would see (loader with world size 1)."""
    from training.data import build_pretrain_loader

    cfg, bb = state.cfg, state.model.student.backbone
    data_cfg = {
        **cfg["data"],
        "crops": cfg["crops"],
        "mask_probability": cfg["ibot"]["mask_probability"],
        "mask_ratio": cfg["ibot"]["mask_ratio"],
    }
    loader = build_pretrain_loader(
        data_cfg,
        batch_size=DDP_GLOBAL_BATCH,
        patch_size=state.model.patch_size,
        max_iter=DDP_STEPS,
        num_workers=0,
        seed=int(cfg["train"]["seed"]),
        mean=bb.norm_mean,
        std=bb.norm_std,
    )
    return list(loader)


def _rank_slice(batch: dict, rank: int, world: int) -> dict:
    """This rank's share of a crop-major global batch (every crop of images rank*B/W ... (rank+1)*B/W)."""
    B = DDP_GLOBAL_BATCH
    lo, hi = rank * B // world, (rank + 1) * B // world
    out = dict(batch)
    for key in ("global_crops", "local_crops", "gram_teacher_crops", "masks"):
        x = batch.get(key)
        if torch.is_tensor(x) and x.numel():
            out[key] = x.reshape(-1, B, *x.shape[1:])[:, lo:hi].flatten(0, 1)
    out["mask_indices"] = out["masks"].flatten().nonzero().flatten()
    out["n_skipped"] = batch.get("n_skipped", 0) if rank == 0 else 0
    return out


def _loss_curve(state, batches, rank: int = 0, world: int = 1) -> list[dict]:
    from training.pretrain import train_step

    rows = []
    for it, b in enumerate(batches):
        logs = train_step(state, _rank_slice(b, rank, world), it)
        rows.append({k: v for k, v in logs.items() if k.startswith("loss/")})
    return rows


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.pretrain import build_training

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = _ddp_cfg(out_dir, DDP_GLOBAL_BATCH // world)
        st = build_training(cfg)  # train.parallel: auto -> DDP on CPU under a process group
        batches = _global_batches(st)
        curve = _loss_curve(st, batches, rank, world)
        # checkpoint and reload through DCP with replicated (unsharded) modules
        path = save_checkpoint(
            Path(out_dir) / "ckpt", DDP_STEPS, st.model, st.optimizer, {"next_iteration": 4}
        )
        fresh = build_training(cfg)
        load_checkpoint(path, fresh.model, fresh.optimizer)
        reloaded = all(
            torch.equal(a, b)
            for a, b in zip(st.model.state_dict().values(), fresh.model.state_dict().values())
        )
        # negative control: the same replicas without gradient averaging
        plain = build_training(cfg)
        plain.grad_sync = None
        no_sync = _loss_curve(plain, batches, rank, world)
        torch.save(
            {
                "mode": st.parallel,
                "curve": curve,
                "no_sync": no_sync,
                "reloaded": reloaded,
                "student": {k: v.clone() for k, v in st.model.student.state_dict().items()},
                "student_no_sync": {k: v.clone() for k, v in plain.model.student.state_dict().items()},
            },
            os.path.join(out_dir, f"ddp_rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_give_the_loss_curve_of_one_process(tmp_path):
    from training.pretrain import build_training

    torch.set_num_threads(1)
    ref_state = build_training(_ddp_cfg(str(tmp_path / "ref"), DDP_GLOBAL_BATCH))
    assert ref_state.parallel == "none"
    ref = _loss_curve(ref_state, _global_batches(ref_state))
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"ddp_rank{i}.pt", weights_only=True) for i in range(2)]
    assert r[0]["mode"] == r[1]["mode"] == "ddp" and r[0]["reloaded"] and r[1]["reloaded"]
    assert r[0]["curve"] == r[1]["curve"]  # the logged losses are all-reduced
    # every loss term agrees up to float reassociation
    for step, (a, b) in enumerate(zip(ref, r[0]["curve"])):
        assert set(a) == set(b), step
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5), (step, k, a[k], b[k])
    # the replicas stay identical; their distance to the single-process model is float noise, far
    # below that of the negative control (the same replicas without averaging their gradients)
    ref_sd = ref_state.model.student.state_dict()
    for k, v in r[0]["student"].items():
        assert torch.equal(v, r[1]["student"][k]), k

    def dist_to_ref(sd: dict) -> float:
        return max(float((sd[k].float() - ref_sd[k].float()).abs().max()) for k in ref_sd)

    d_ddp, d_plain = dist_to_ref(r[0]["student"]), dist_to_ref(r[0]["student_no_sync"])
    assert d_ddp < 0.05 * d_plain, (d_ddp, d_plain)
    no_sync_total = [row["loss/total"] for row in r[0]["no_sync"]]
    assert no_sync_total[-1] != pytest.approx(ref[-1]["loss/total"], rel=1e-3), no_sync_total
