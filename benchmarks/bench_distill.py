"""Distillation throughput: images/s per student, students sharing one teacher pass vs. alone.

Measures (same run, same inputs, random-initialised models, synthetic tensors so the data loader is
not what is timed):

- ``teacher``: the teacher forward alone (backbone + DINO/iBOT bottlenecks) - the floor;
- ``alone``: each student distilled on its own (a teacher pass per student) - the baseline;
- ``shared``: all students in one ``Distiller`` (one teacher pass per step feeds every student).

Under ``torchrun --nproc-per-node N`` every student gets its own process subgroup (``ranks`` split
evenly); each rank runs the teacher on its slice, and the per-student images/s is the global batch
over the step time. Rank 0 prints the table and writes ``--out``.

    python benchmarks/bench_distill.py --device cuda --out bench_distill.json
    torchrun --nproc-per-node 2 benchmarks/bench_distill.py --device cuda --out bench_distill_2gpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.distill import Batch, DistillConfig, Distiller, Teacher


def _teacher(arch: str, k: int, bottleneck: int, hidden: int, depth: int | None) -> Teacher:
    from dinov3_ros.models import build_backbone
    from training.heads import DINOHead

    kw = {"depth": depth} if depth else {}
    bb = build_backbone(arch, **kw)
    if hasattr(bb, "init_weights"):
        bb.init_weights()
    dim = int(bb.embed_dim)
    t = Teacher(bb, DINOHead(dim, k, hidden, bottleneck), DINOHead(dim, k, hidden, bottleneck), arch)
    for m in t.modules():
        m.eval().requires_grad_(False)
    return t


def _batch(b: int, args, patch: int, seed: int) -> Batch:
    from training.data import sample_masks

    g = torch.Generator().manual_seed(seed)
    G, L = args.global_size, args.local_size
    gc = torch.randn(2 * b, 3, G, G, generator=g)
    lc = torch.randn(args.n_local * b, 3, L, L, generator=g) if args.n_local else None
    masks = sample_masks(2 * b, (G // patch, G // patch), g, 0.5, (0.1, 0.5))
    return Batch(gc, lc, masks, 2)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_steps(fn, steps: int, warmup: int, dev: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / steps


def _cfg(students: list[dict], args, out: str) -> DistillConfig:
    return DistillConfig.from_dict(
        {
            "output_dir": out,
            "mode": args.mode,
            "students": students,
            "optim": {"warmup_iters": 1},
            "train": {"iterations": 10**6, "amp": "bf16" if args.bf16 else "fp32"},
        }
    )


def _student_specs(names: list[str], depth: int | None) -> list[dict]:
    out = []
    for n in names:
        kw = {"depth": depth} if depth and not n.startswith("convnext") else {}
        if depth and n.startswith("convnext"):
            kw = {"depths": [1, 1, 1, 1]}
        out.append({"name": n, "arch": n, "overrides": kw})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/distill-...)")
    ap.add_argument("--teacher", default="vitb16")
    ap.add_argument("--students", default="vits16,vitt16,convnext_tiny")
    ap.add_argument("--mode", choices=("heads", "features"), default="heads")
    ap.add_argument("--batch", type=int, default=64, help="images per rank (the teacher's slice)")
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--n-local", type=int, default=6)
    ap.add_argument("--prototypes", type=int, default=65536)
    ap.add_argument("--bottleneck", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=None, help="override every ViT's depth (quick CPU checks)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (median)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    args = ap.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    dev = torch.device(args.device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    names = [s for s in args.students.split(",") if s]
    teacher = _teacher(args.teacher, args.prototypes, args.bottleneck, args.hidden, args.depth).to(dev)
    patch = int(teacher.backbone.patch_size)
    batch = _batch(args.batch, args, patch, seed=rank).to(dev)
    tmp = f"/tmp/bench_distill_{os.getpid()}"
    res: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "world_size": world,
        "torch": torch.__version__,
        "args": vars(args),
        "global_batch": args.batch * world,
    }

    specs = _student_specs(names, args.depth)
    rows = []
    if world == 1:
        # every configuration is built once and timed in `--repeats` interleaved rounds (median), so
        # drifting load on a shared machine hits all of them alike
        runs = {"teacher": Distiller(_cfg(specs[:1], args, tmp), teacher, dev)}
        for s in specs:
            runs[s["name"]] = Distiller(_cfg([s], args, tmp), teacher, dev)
        runs["shared"] = Distiller(_cfg(specs, args, tmp), teacher, dev)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, d in runs.items():
                fn = (lambda d=d: d._teacher_pass(batch)) if k == "teacher" else (lambda d=d: d.step(batch))
                times[k].append(_time_steps(fn, args.steps, args.warmup, dev))
        med = {k: statistics.median(v) for k, v in times.items()}
        alone = {s["name"]: med[s["name"]] for s in specs}
        t_shared = med["shared"]
        res["raw_step_s"] = times
        res["teacher_img_s"] = args.batch / med["teacher"]
        res["alone_step_s"] = alone
        res["shared_step_s"] = t_shared
        res["alone_img_s"] = {n: args.batch / t for n, t in alone.items()}
        res["shared_img_s_per_student"] = {n: args.batch / t_shared for n in alone}
        res["speedup_shared_vs_separate"] = sum(alone.values()) / t_shared
        if dev.type == "cuda":
            res["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
        rows = [(n, res["alone_img_s"][n], res["shared_img_s_per_student"][n]) for n in alone]
    else:
        d = Distiller(_cfg(specs, args, tmp), teacher, dev)
        t_step = _time_steps(lambda: d.step(batch), args.steps, args.warmup, dev)
        mine = {n: args.batch * world / t_step for n in d.students}
        gathered: list = [None] * world
        dist.all_gather_object(gathered, {"rank": rank, "students": mine, "step_s": t_step})
        per_student: dict[str, list[float]] = {}
        for g in gathered:
            for n, v in g["students"].items():
                per_student.setdefault(n, []).append(v)
        res["ranks"] = gathered
        res["subgroup_img_s_per_student"] = {n: min(v) for n, v in per_student.items()}
        res["step_s_max"] = max(g["step_s"] for g in gathered)
        rows = [(n, float("nan"), v) for n, v in res["subgroup_img_s_per_student"].items()]
    if rank == 0:
        print(
            f"\ndistillation throughput, teacher {args.teacher}, {res['device']} x{world}, global batch "
            f"{res['global_batch']}, crops 2x{args.global_size} + {args.n_local}x{args.local_size}, mode {args.mode}"
        )
        if world == 1:
            print(f"teacher forward alone: {res['teacher_img_s']:.1f} img/s")
        print(f"{'student':16s} {'alone img/s':>12s} {'shared img/s':>13s}")
        for n, a, s in rows:
            print(f"{n:16s} {a:12.1f} {s:13.1f}")
        if world == 1:
            print(f"all students together vs one after another: {res['speedup_shared_vs_separate']:.2f}x")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from harness import save

        save("distill", args.device, res, args.out)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
