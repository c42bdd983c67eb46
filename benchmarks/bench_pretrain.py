"""DINOv3 pretraining benchmarks: step throughput + MFU, FSDP2 scaling, Gram anchoring switched on mid-run.

    # 1 GPU: ViT-S/16 step throughput (images/s, MFU), published crops 2x224+8x96 and 2x256+8x112, bf16
    python benchmarks/bench_pretrain.py --device cuda --mode throughput --out bench_pretrain_1gpu.json [--compile]
    # FSDP2 scaling: per-GPU no-communication baseline vs FSDP2 on all ranks, same launch
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_pretrain.py --device cuda --mode fsdp --out bench_pretrain_fsdp2.json
    torchrun --standalone --nproc_per_node 4 benchmarks/bench_pretrain.py --device cuda --mode fsdp --out bench_pretrain_fsdp4.json
    # Gram anchoring switched on mid-run; dense quality with and without it (same data, same start point)
    python benchmarks/bench_pretrain.py --device cuda --mode gram --out bench_pretrain_gram.json
    # CPU smoke check of every mode (tiny 2-block ViT-Ti, tiny crops)
    .venv/bin/python benchmarks/bench_pretrain.py --device cpu --mode throughput --smoke --out /tmp/b.json

Modes
  throughput  baseline = student backbone forward+backward on the same crops (no teacher, heads, losses,
              optimiser); then the full SSL step (teacher + SK + DINO/iBOT/KoLeo + clip + AdamW + EMA), with
              activation checkpointing, and optionally torch.compile per block. Crops are GPU tensors.
              MFU = FLOPs counted by torch.utils.flop_counter for one step / step time / --peak-tflops.
              The plain SSL step row carries `breakdown_ms`: teacher (EMA backbone + heads + Sinkhorn-
              Knopp), student backbone, student heads, losses and glue, backward, optimizer (clipping,
              AdamW, EMA), each timed with a device sync at its boundaries (they add up to more than
              the step). Then the real loop: the CPU loader (--workers processes, procedural images,
              published augmentations) feeding the step (images/s end to end, `data_wait_ms` per step;
              --no-loop skips it), the same loop with the crops built on the device from the workers'
              uint8 frames (data.augment_on: device), and each loader alone (images/s).
  fsdp        under torchrun: baseline = each GPU trains its own unsharded copy (no gradient sync, the
              ideal), then DDP (gradients averaged), then FSDP2 fully_shard per block (bf16 params, fp32
              reduce); efficiency = images/s / (N x baseline images/s per GPU).
  gram        ViT-S/16 from scratch on procedural images for --gram-start iterations, then two branches
              of --gram-iters iterations from the same state and data: (a) no Gram, (b) Gram anchoring
              (weight ramped to 2.0, Gram teacher = EMA teacher at the switch, 2x-resolution teacher crops).
              Dense quality of the EMA teacher: (1) correspondence accuracy of patches across two augmented
              views with known geometry (NN by cosine, exact / within 1 patch), (2) linear dense probe
              (ridge) of procedural shape-kind labels per patch (accuracy, mIoU).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from training.config import load_config
from training.data import ProceduralSource, build_pretrain_loader, sample_masks
from training.data.augment import color_jitter, to_tensor
from training.data.device_multicrop import build_device_pretrain_loader
from training.distributed import get_rank, get_world_size, init_distributed, is_distributed
from training.pretrain import build_training, flush_scalars, train_step

CFG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "training", "configs", "vits16_1gpu.yaml"
)
SETUPS = {"224/96x8": (224, 96, 8), "256/112x8": (256, 112, 8)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_tflops(device: torch.device, override: float | None) -> float:
    if override:
        return override
    if device.type != "cuda":
        return float("nan")
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756.0
    if "H100" in name or "H200" in name:
        return 989.4  # dense bf16, SXM
    if "A100" in name:
        return 312.0
    return float("nan")


def _cfg(args, setup: tuple[int, int, int], *extra: str) -> dict:
    g, loc, n = setup
    ov = [
        f"crops.global_crops_size={g}",
        f"crops.local_crops_size={loc}",
        f"crops.local_crops_number={n}",
        f"train.batch_size_per_gpu={args.batch}",
        "train.tensorboard=false",
        "optim.warmup_iters=0",
        "optim.freeze_last_layer_iters=0",
        "teacher.warmup_iters=0",
        f"model.arch={args.arch}",
        "data.num_workers=0",
    ]
    if args.smoke:
        ov += [
            "model.backbone={depth: 2, drop_path_rate: 0.0}",
            "dino.n_prototypes=512",
            "ibot.n_prototypes=512",
            "dino.hidden_dim=128",
            "ibot.hidden_dim=128",
            "dino.bottleneck_dim=64",
            "ibot.bottleneck_dim=64",
            "train.param_dtype=fp32",
        ]
    return load_config(CFG, [*ov, *extra])


def _fake_batch(cfg: dict, device: torch.device, seed: int = 0) -> dict[str, Any]:
    c, B = cfg["crops"], int(cfg["train"]["batch_size_per_gpu"])
    g = torch.Generator(device=device).manual_seed(seed)
    G, L, n = int(c["global_crops_size"]), int(c["local_crops_size"]), int(c["local_crops_number"])
    batch: dict[str, Any] = {
        "global_crops": torch.randn(2 * B, 3, G, G, generator=g, device=device),
        "local_crops": torch.randn(n * B, 3, L, L, generator=g, device=device),
    }
    if c.get("gram_teacher_crops_size"):
        S = int(c["gram_teacher_crops_size"])
        batch["gram_teacher_crops"] = torch.randn(2 * B, 3, S, S, generator=g, device=device)
    masks = sample_masks(2 * B, (G // 16, G // 16), torch.Generator().manual_seed(seed))
    batch["masks"] = masks.to(device)
    batch["mask_indices"] = masks.flatten().nonzero().flatten().to(device)
    batch["n_skipped"] = 0
    return batch


def _time_steps(fn, device: torch.device, warmup: int, steps: int) -> float:
    for i in range(warmup):
        fn(i)
    _sync(device)
    t = time.perf_counter()
    for i in range(steps):
        fn(warmup + i)
    _sync(device)
    return (time.perf_counter() - t) / steps


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _mem(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _count_flops(state, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        train_step(state, batch, 0)
    return float(fc.get_total_flops())


def _backbone_step(state, batch):
    bb = state.model.student.backbone
    ctx = (
        torch.autocast(state.device.type, dtype=state.autocast_dtype)
        if state.autocast_dtype is not None
        else torch.autocast(state.device.type, enabled=False)
    )

    def step(_i: int) -> None:
        with ctx:
            outs = bb.forward_features(
                [batch["global_crops"], batch["local_crops"]], masks=[batch["masks"], None]
            )
            loss = sum(
                o["x_norm_patchtokens"].float().mean() + o["x_norm_clstoken"].float().mean() for o in outs
            )
        loss.backward()
        for p in bb.parameters():
            p.grad = None

    return step


class _PhaseTimer:
    """Wall time per phase of the step, the device synchronised at each phase boundary (so the phases
    add up to more than the unsynchronised step; they show where the time goes, not the step rate)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms = device, {}
        self._t = 0.0

    def start(self) -> None:
        _sync(self.device)
        self._t = time.perf_counter()

    def stop(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._t) * 1e3
        self._t = now

    def wrap(self, fn, name: str):
        def timed(*a, **kw):
            self.stop("losses and glue")  # whatever ran since the last boundary
            out = fn(*a, **kw)
            self.stop(name)
            return out

        return timed


def _phase_step(state, batch, it: int, timer: _PhaseTimer) -> None:
    """``train_step`` cut into phases: teacher (EMA backbone + heads + Sinkhorn-Knopp), student backbone,
    student heads, losses (and the glue between them), backward (+ gradient sync), optimizer (clipping,
    AdamW, EMA update)."""
    from training.pretrain import _clip, trainable_modules

    model, opt, sch = state.model, state.optimizer, state.schedules
    bb, heads = model.student.backbone, (model.student.dino_head, model.student.ibot_head)
    saved = (model.teacher_targets, bb.forward_features, [h.forward for h in heads])
    model.teacher_targets = timer.wrap(model.teacher_targets, "teacher")
    bb.forward_features = timer.wrap(bb.forward_features, "student backbone")
    for h in heads:
        h.forward = timer.wrap(h.forward, "student heads")
    try:
        for g in opt.param_groups:
            g["lr"], g["weight_decay"] = (
                sch["lr"](it) * g["lr_multiplier"],
                sch["wd"](it) * g["wd_multiplier"],
            )
        opt.zero_grad(set_to_none=True)
        ctx = (
            torch.autocast(state.device.type, dtype=state.autocast_dtype)
            if state.autocast_dtype is not None
            else torch.autocast(state.device.type, enabled=False)
        )
        timer.start()
        with ctx:
            total, _ = model.forward_losses(batch, teacher_temp=sch["teacher_temp"](it))
        timer.stop("losses and glue")
        total.backward()
        if state.grad_sync is not None:
            state.grad_sync.sync()
        timer.stop("backward")
        o = state.cfg["optim"]
        for name, mod in trainable_modules(model).items():
            _clip(
                list(mod.parameters()),
                float(o["clip_grad_backbone" if name == "backbone" else "clip_grad_heads"]),
            )
        opt.step()
        model.update_teacher(sch["momentum"](it))
        timer.stop("optimizer")
    finally:
        model.teacher_targets, bb.forward_features = saved[0], saved[1]
        for h, f in zip(heads, saved[2]):
            h.forward = f


def _breakdown(state, batch, args, device: torch.device) -> dict[str, float]:
    timer = _PhaseTimer(device)
    for i in range(args.warmup):
        _phase_step(state, batch, i, timer)
    timer.ms.clear()
    for i in range(args.steps):
        _phase_step(state, batch, args.warmup + i, timer)
    return {k: v / args.steps for k, v in timer.ms.items()}


def _loop_rate(args, cfg: dict, device: torch.device, augment_on: str = "cpu") -> dict[str, float]:
    """The real loop: the loader (``--workers`` processes, procedural images, the published
    augmentations on the CPU workers or, with ``augment_on="device"``, on ``device``) feeding
    ``train_step``; images/s end to end and the time the step waited for data."""
    from training.pretrain import _batches

    state = build_training(cfg)
    cfg = state.cfg
    data_cfg = {
        "sources": [{"type": "procedural", "height": 320, "width": 320}],
        "num_workers": args.workers,
        "crops": cfg["crops"],
        "mask_probability": cfg["ibot"]["mask_probability"],
        "mask_ratio": cfg["ibot"]["mask_ratio"],
    }
    cfg["data"]["num_workers"] = args.workers
    cfg["data"]["augment_on"] = augment_on
    bb = state.model.student.backbone
    n = args.warmup + args.steps
    it = iter(_batches(cfg, state, 0, n, data_cfg, bb.norm_mean, bb.norm_std))
    wait = 0.0
    t0 = 0.0
    for i in range(n):
        if i == args.warmup:
            _sync(device)
            t0, wait = time.perf_counter(), 0.0
        tw = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - tw
        train_step(state, batch, i, sync=False)
    _sync(device)
    flush_scalars(state)
    dt = (time.perf_counter() - t0) / args.steps
    B = int(cfg["train"]["batch_size_per_gpu"])
    del it, state
    return {"step_ms": dt * 1e3, "images_s": B / dt, "data_wait_ms": wait / args.steps * 1e3}


def run_throughput(args, device: torch.device) -> list[dict]:
    rows = []
    peak = _peak_tflops(device, args.peak_tflops)
    setups = {"tiny": (32, 16, 2)} if args.smoke else SETUPS
    for name, setup in setups.items():
        variants = [
            ("backbone fwd+bwd (baseline)", [], "backbone"),
            ("ssl step", [], "ssl"),
            ("ssl step, scalars read every step", [], "ssl_sync"),
            ("ssl step + act. ckpt", ["train.activation_checkpointing=full"], "ssl"),
        ]
        if args.compile:
            variants.append(("ssl step + compile", ["train.compile=true"], "ssl"))
        flops = None
        for label, extra, kind in variants:
            _free(device)
            cfg = _cfg(args, setup, *extra)
            state = build_training(cfg)
            batch = _fake_batch(cfg, device)
            if kind == "ssl" and flops is None and not extra:
                flops = _count_flops(state, batch)
            if kind == "backbone":
                fn = _backbone_step(state, batch)
            else:  # the loop's step: scalars stay on the device; ssl_sync reads them (and syncs) every step
                fn = lambda i, s=state, b=batch, k=kind: train_step(s, b, i, sync=k == "ssl_sync")  # noqa: E731
            warm = args.warmup * (3 if "compile" in label else 1)
            dt = _time_steps(fn, device, warm, args.steps)
            if kind != "backbone":
                flush_scalars(state)  # the losses were finite (raises otherwise)
            B = int(cfg["train"]["batch_size_per_gpu"])
            row = {
                "setup": name,
                "variant": label,
                "batch": B,
                "step_ms": dt * 1e3,
                "images_s": B / dt,
                "mem_gib": _mem(device),
            }
            if kind != "backbone" and flops:
                row["tflops_per_step"] = flops / 1e12
                row["mfu"] = flops / dt / (peak * 1e12) if peak == peak else float("nan")
            if kind == "ssl" and not extra:
                row["breakdown_ms"] = _breakdown(state, batch, args, device)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del state, batch, fn
        for where in () if args.no_loop else ("cpu", "device"):
            _free(device)
            what = "loader" if where == "cpu" else "device-augmented loader"
            row = {
                "setup": name,
                "variant": f"loop: {what} ({args.workers} workers) + ssl step",
                "batch": int(args.batch),
                **_loop_rate(args, _cfg(args, setup), device, where),
                "mem_gib": _mem(device),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    # data pipeline throughput (procedural source, published augmentations): on the CPU workers, then
    # with the workers only decoding and resizing and the crops built on the device
    for name, setup in setups.items():
        cfg = _cfg(args, setup)
        dcfg = {"sources": [{"type": "procedural", "height": 320, "width": 320}], "crops": cfg["crops"]}
        for where in ("cpu", "device"):
            kw = {
                "batch_size": int(cfg["train"]["batch_size_per_gpu"]),
                "num_workers": args.workers,
                "max_iter": args.loader_batches + 2,
            }
            if where == "cpu":
                loader = build_pretrain_loader(dcfg, **kw)
                label = f"data loader ({args.workers} workers)"
            else:
                loader = build_device_pretrain_loader(dcfg, device=device, **kw)
                label = f"data loader, crops on {device.type} ({args.workers} workers decode)"
            it = iter(loader)
            next(it)
            next(it)
            _sync(device)
            t = time.perf_counter()
            n = 0
            for b in it:
                n += b["global_crops"].shape[0] // 2
            _sync(device)
            dt = time.perf_counter() - t
            row = {"setup": name, "variant": label, "images_s": n / dt}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del loader, it
    return rows


def run_fsdp(args, device: torch.device) -> list[dict]:
    if not is_distributed():
        raise SystemExit("--mode fsdp needs torchrun (e.g. torchrun --standalone --nproc_per_node 2 ...)")
    import torch.distributed as dist

    ws = get_world_size()
    rows = []
    setups = (
        {"tiny": (32, 16, 2)}
        if args.smoke
        else {"256/112x8": SETUPS["256/112x8"], "224/96x8": SETUPS["224/96x8"]}
    )
    for name, setup in setups.items():
        res = {}
        for label, mode in (("per-GPU unsharded (baseline)", "ddp"), ("DDP", "ddp"), ("FSDP2", "fsdp")):
            _free(device)
            cfg = _cfg(args, setup, f"train.parallel={mode}")
            state = build_training(cfg)
            if label.startswith("per-GPU"):
                state.grad_sync = None  # no gradient synchronisation: the ideal
            batch = _fake_batch(cfg, device, seed=get_rank())
            dt = _time_steps(
                lambda i, s=state, b=batch: train_step(s, b, i, sync=False), device, args.warmup, args.steps
            )
            flush_scalars(state)
            t = torch.tensor([dt], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            B = int(cfg["train"]["batch_size_per_gpu"])
            res[label] = {
                "step_ms": float(t) * 1e3,
                "images_s_total": B * ws / float(t),
                "mem_gib": _mem(device),
            }
            del state, batch
        base = res["per-GPU unsharded (baseline)"]["images_s_total"]
        for label, r in res.items():
            row = {
                "setup": name,
                "variant": label,
                "gpus": ws,
                "batch_per_gpu": args.batch,
                **r,
                "efficiency": r["images_s_total"] / base,
            }
            rows.append(row)
            if get_rank() == 0:
                print(json.dumps(row), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- gram
def _eval_data(n_train: int, n_test: int, size: int, device: torch.device, mean, std):
    src = ProceduralSource(320, 320, seed=12345)
    g = torch.Generator().manual_seed(0)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    v1, v2, labels, maps = [], [], [], []
    P = size // 16
    for i in range(n_train + n_test):
        img, lab = src.render(i)
        x = to_tensor(img)
        v1.append(
            (F.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True)[0].clamp(0, 1) - m) / s
        )
        # patch labels: majority of each 16x16 block at the network resolution
        lab_r = cv2_resize_nearest(lab, size)
        blocks = lab_r.reshape(P, 16, P, 16).transpose(0, 2, 1, 3).reshape(P * P, 256)
        labels.append(torch.from_numpy(np.array([np.bincount(b, minlength=5).argmax() for b in blocks])))
        # second view: a crop of 35-70% of the area, resized, colour-jittered
        frac = 0.35 + 0.35 * float(torch.rand((), generator=g))
        side = round(320 * math.sqrt(frac))
        top = int(torch.randint(0, 320 - side + 1, (), generator=g))
        left = int(torch.randint(0, 320 - side + 1, (), generator=g))
        crop = F.interpolate(
            x[None, :, top : top + side, left : left + side],
            size=(size, size),
            mode="bicubic",
            antialias=True,
        )[0].clamp(0, 1)
        v2.append((color_jitter(crop, g) - m) / s)
        # ground-truth view-1 patch of each view-2 patch centre
        c = (torch.arange(P) + 0.5) * 16 / size * side
        yy, xx = torch.meshgrid(top + c, left + c, indexing="ij")
        r1 = (yy * size / 320 / 16).floor().long().clamp(0, P - 1)
        c1 = (xx * size / 320 / 16).floor().long().clamp(0, P - 1)
        maps.append(torch.stack([r1.flatten(), c1.flatten()], -1))
    return (
        torch.stack(v1).to(device),
        torch.stack(v2).to(device),
        torch.stack(labels).to(device),
        torch.stack(maps).to(device),
    )


def cv2_resize_nearest(lab: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)


@torch.no_grad()
def _features(backbone, x: torch.Tensor, bs: int = 64) -> torch.Tensor:
    was = backbone.training
    backbone.eval()
    out = []
    for i in range(0, x.shape[0], bs):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out.append(backbone.forward_features(x[i : i + bs])["x_norm_patchtokens"].float())
    backbone.train(was)
    return torch.cat(out)


@torch.no_grad()
def dense_quality(backbone, data, n_train: int) -> dict[str, float]:
    v1, v2, labels, maps = data
    f1 = F.normalize(_features(backbone, v1), dim=-1)
    f2 = F.normalize(_features(backbone, v2), dim=-1)
    n, N, D = f1.shape
    P = round(math.sqrt(N))
    sim = torch.einsum("bnd,bmd->bnm", f2, f1)  # view-2 patch -> view-1 patches of the same image
    pred = sim.argmax(-1)
    pr, pc = pred // P, pred % P
    dr, dc = (pr - maps[..., 0]).abs(), (pc - maps[..., 1]).abs()
    gt_idx = maps[..., 0] * P + maps[..., 1]
    pos = sim.gather(-1, gt_idx[..., None])[..., 0]
    # linear probe (ridge) of per-patch shape kind on view-1 features
    X = torch.cat([f1, torch.ones(n, N, 1, device=f1.device)], -1)
    Xtr, Xte = X[:n_train].reshape(-1, D + 1).double(), X[n_train:].reshape(-1, D + 1).double()
    ytr, yte = labels[:n_train].reshape(-1), labels[n_train:].reshape(-1)
    Y = F.one_hot(ytr, 5).double()
    A = Xtr.T @ Xtr
    lam = 1e-3 * A.diagonal().mean()
    W = torch.linalg.solve(A + lam * torch.eye(D + 1, device=A.device, dtype=A.dtype), Xtr.T @ Y)
    yp = (Xte @ W).argmax(-1)
    ious = []
    for k in range(5):
        inter = ((yp == k) & (yte == k)).sum().item()
        union = ((yp == k) | (yte == k)).sum().item()
        if union:
            ious.append(inter / union)
    return {
        "corr_acc_exact": float(((dr == 0) & (dc == 0)).float().mean()),
        "corr_acc_1patch": float(((dr <= 1) & (dc <= 1)).float().mean()),
        "corr_pos_minus_mean_sim": float((pos - sim.mean(-1)).mean()),
        "probe_acc": float((yp == yte).float().mean()),
        "probe_miou": float(np.mean(ious)),
    }


def run_gram(args, device: torch.device) -> list[dict]:
    start, n_it = args.gram_start, args.gram_iters
    setup = (32, 16, 2) if args.smoke else (224, 96, 4)
    G = setup[0]
    sched = f"{{peak: 2.0, start_iter: {start}, before: 0.0, warmup_iters: {max(1, n_it // 10)}, warmup_kind: cosine}}"
    common = [
        "gram.use=true",
        "gram.always_compute=true",
        f"crops.gram_teacher_crops_size={2 * G}",
        f"train.iterations={start + n_it}",
        f"optim.warmup_iters={max(1, start // 5)}",
        f"teacher.warmup_iters={max(1, start // 2)}",
        "optim.momentum_teacher=0.99",
        "optim.final_momentum_teacher=0.99",
        f"optim.freeze_last_layer_iters={max(1, start // 10)}",
        "gram.rep_update=false",
    ]
    if not args.smoke:
        common += ["dino.n_prototypes=16384", "ibot.n_prototypes=16384"]
    cfg_on = _cfg(args, setup, *common, f"gram.loss_weight={sched}")
    cfg_on["optim"]["warmup_iters"] = max(1, start // 5)
    cfg_on["teacher"]["warmup_iters"] = max(1, start // 2)
    cfg_on["optim"]["freeze_last_layer_iters"] = max(1, start // 10)
    cfg_off = copy.deepcopy(cfg_on)
    cfg_off["gram"]["loss_weight"] = {"peak": 0.0, "start_iter": start, "before": 0.0}
    torch.manual_seed(0)
    state = build_training(cfg_on)
    bb = state.model.student.backbone
    mean, std = bb.norm_mean, bb.norm_std
    dcfg = {"sources": [{"type": "procedural", "height": 288, "width": 288}], "crops": cfg_on["crops"]}
    B = int(cfg_on["train"]["batch_size_per_gpu"])

    def loader(s: int, e: int):
        return build_pretrain_loader(
            dcfg, batch_size=B, start_iter=s, max_iter=e, num_workers=args.workers, mean=mean, std=std
        )

    n_eval = (8, 4) if args.smoke else (200, 100)
    data = _eval_data(*n_eval, G, device, mean, std)
    rows: list[dict] = []
    t0 = time.perf_counter()
    hist: dict[str, list] = {"phase_a": []}
    for it, batch in zip(range(start), loader(0, start)):
        s = train_step(state, batch, it)
        if it % max(1, start // 10) == 0:
            hist["phase_a"].append({"it": it, "total": s["loss/total"]})
            print(
                f"[phase A] it {it} loss {s['loss/total']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True
            )
    snap_model = copy.deepcopy(state.model.state_dict())
    snap_opt = copy.deepcopy(state.optimizer.state_dict())
    rng = torch.get_rng_state()
    q0 = dense_quality(state.model.teacher.backbone, data, n_eval[0])
    rows.append({"branch": f"switch point (it {start})", "iterations": start, **q0})
    print(json.dumps(rows[-1]), flush=True)
    for label, cfg in (("no Gram", cfg_off), ("Gram on", cfg_on)):
        state.model.load_state_dict(snap_model)
        state.optimizer.load_state_dict(snap_opt)
        torch.set_rng_state(rng)
        from training.schedules import build_schedules

        state.cfg = cfg
        state.model.cfg = cfg
        state.schedules = build_schedules(cfg, B)
        grams, t1 = [], time.perf_counter()
        for it, batch in zip(range(start, start + n_it), loader(start, start + n_it)):
            s = train_step(state, batch, it)
            grams.append((it, s.get("loss/gram", float("nan")), s["gram_weight"], s["loss/total"]))
        q = dense_quality(state.model.teacher.backbone, data, n_eval[0])
        row = {
            "branch": label,
            "iterations": start + n_it,
            **q,
            "gram_loss_first": grams[0][1],
            "gram_loss_last": grams[-1][1],
            "gram_weight_last": grams[-1][2],
            "total_loss_last": grams[-1][3],
            "seconds": time.perf_counter() - t1,
            "gram_trace": [g[1] for g in grams[:: max(1, n_it // 10)]],
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "gram_trace"}), flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    skip = ("gram_trace", "breakdown_ms")
    keys = [k for k in rows[0] if k not in skip]
    for r in rows[1:]:
        keys += [k for k in r if k not in keys and k not in skip]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cols = [[k] + [fmt(r.get(k, "")) for r in rows] for k in keys]
    widths = [max(len(c) for c in col) for col in cols]
    lines = [" | ".join(col[i].ljust(w) for col, w in zip(cols, widths)) for i in range(len(rows) + 1)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for r in rows:
        if r.get("breakdown_ms"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown_ms"].items())
            lines.append(f"{r['setup']} breakdown (ms, synchronised per phase): {parts}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument("--mode", choices=["throughput", "fsdp", "gram"], default="throughput")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--arch", default="vits16")
    ap.add_argument("--batch", type=int, default=64, help="images per GPU per step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile per block")
    ap.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--loader-batches", type=int, default=6)
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="accelerator peak (default: from the name)"
    )
    ap.add_argument("--gram-start", type=int, default=600, help="iterations before Gram is switched on")
    ap.add_argument("--gram-iters", type=int, default=300, help="iterations of each branch after the switch")
    ap.add_argument("--smoke", action="store_true", help="tiny model and crops (CPU check of the code path)")
    ap.add_argument(
        "--no-loop", action="store_true", help="skip the loader + step loop rows (throughput mode)"
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.smoke:
        args.arch, args.batch, args.steps, args.warmup = "vitt16", min(args.batch, 4), min(args.steps, 2), 1
        args.gram_start, args.gram_iters, args.loader_batches = (
            min(args.gram_start, 4),
            min(args.gram_iters, 3),
            2,
        )
        args.workers = min(args.workers, 1)
    init_distributed()
    device = (
        torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    )
    fn = {"throughput": run_throughput, "fsdp": run_fsdp, "gram": run_gram}[args.mode]
    rows = fn(args, device)
    if get_rank() == 0:
        print()
        print(_table(rows))
        info = {
            "mode": args.mode,
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "world_size": get_world_size(),
            "torch": torch.__version__,
            "arch": args.arch,
            "batch_per_gpu": args.batch,
            "peak_tflops": _peak_tflops(device, args.peak_tflops),
            "rows": rows,
        }
        if args.out:
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(info, f, indent=2)
            os.replace(tmp, args.out)
    if is_distributed():
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
