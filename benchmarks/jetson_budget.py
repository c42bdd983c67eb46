"""Per-frame budget of the node's pipeline, counted on this host and projected onto Jetson Orin.

Counted per output (each alone, with what it depends on) and for all outputs, per frame, after warm-up,
on ``Pipeline.infer`` (preprocessing + engine) and ``Pipeline.finish`` (the heads) separately:

- **count pass** (every ATen op, ``dinov3_ros.runtime.device_audit.OpAudit``; CUDA graphs off for the
  engine and TokenCut, ``parallel_heads`` off so every head runs on the calling thread): FLOPs of
  matmuls/convolutions/attention by dtype (``torch.utils.flop_counter`` formulas), bytes of each op's
  tensors (views excluded; an upper bound of its memory traffic), device ops;
- **host pass** (the node's model: CUDA graphs on for the engine and TokenCut; ``parallel_heads`` off,
  so the calling thread does all the host work): host CPU time (the calling thread's CPU clock, and the
  process's). CUDA's default waits may spin; ``--blocking-sync`` (``cudaDeviceScheduleBlockingSync``)
  makes a waiting thread sleep instead, so its CPU clock cannot count the device's time;
- **profile pass** (CUDA only; ``torch.profiler`` CUDA activity, the node's settings: CUDA graphs on,
  parallel heads): kernels executed and their device time (graph replays included), float64 kernels,
  host launch calls (``cudaLaunchKernel``, ``cudaGraphLaunch``...) and host syncs (synchronize calls);
- **timing pass**: wall-clock p50/p99 of ``Pipeline.process`` with the node's settings, and the bare
  engine on the same batch.

Projection onto AGX Orin 64GB, Orin NX 16GB and Orin Nano 8GB (Super), rates from
``shared/reference/jetson.md`` (±30%):

- engine: a TensorRT FP16 engine at ``ENGINE_EFF`` (40%) of the dense FP16 tensor peak, from the
  engine's counted FLOPs (all dtypes);
- heads on the GPU: a roofline per op, ``max(FLOPs / (MM_EFF x peak[dtype]), bytes / (BW_EFF x
  bandwidth))`` for matmul-class ops, ``bytes / (BW_EFF x bandwidth)`` for the others, plus
  ``KERNEL_US`` per kernel executed (kernels from the profile pass; the op count off CUDA);
- host: this host's CPU milliseconds x a per-thread factor (A78AE at 2.2 GHz is ~2.75x slower per thread
  than an x86 server core, scaled by clock for NX and Nano) plus ``SYNC_US`` per host sync;
- latency = preprocessing + engine + heads (device + host, serial: conservative); throughput = 1 /
  max(GPU time of a frame, host time of the infer stage, host time of the heads stage) - the node's
  worker overlaps inference of one frame with the heads of the previous one.

    python benchmarks/jetson_budget.py --device cuda --weights random:vits16 --precision fp16 \\
        --resolution 480x640 --out jetson_budget.json            # --images texture: harder frames
    python benchmarks/jetson_budget.py --device cpu --weights random:vitt16 --resolution 64x80 --frames 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dinov3_ros.core.config import parse_settings  # noqa: E402
from dinov3_ros.heads import _cut_solver  # noqa: E402
from dinov3_ros.pipeline import OUTPUTS, Frame, PipelineConfig  # noqa: E402
from dinov3_ros.pipeline.model import load_model  # noqa: E402
from dinov3_ros.pipeline.pipeline import Pipeline  # noqa: E402
from dinov3_ros.runtime.device_audit import (  # noqa: E402
    OpAudit,
    float64_kernels,
    host_syncs,
    trace_events,
    trace_kernels,
)
from dinov3_ros.runtime.preprocess import Preprocessor  # noqa: E402

#: the targets (jetson.md; dense FP16 tensor rates derived from the sparse INT8 TOPS / 4)
TARGETS: dict[str, dict[str, float]] = {
    "AGX Orin 64GB": {"fp16": 42e12, "fp32": 5.3e12, "fp64": 0.08e12, "bw": 204.8e9, "cpu_ghz": 2.2},
    "Orin NX 16GB": {"fp16": 15e12, "fp32": 1.9e12, "fp64": 0.03e12, "bw": 102.4e9, "cpu_ghz": 2.0},
    "Orin Nano 8GB (Super)": {"fp16": 17e12, "fp32": 2.1e12, "fp64": 0.03e12, "bw": 102e9, "cpu_ghz": 1.7},
}
ENGINE_EFF = 0.40  # TensorRT FP16 engine: fraction of the dense FP16 peak
MM_EFF = 0.40  # heads' matmul-class kernels: fraction of the dtype's peak
BW_EFF = 0.60  # fraction of the memory bandwidth a streaming kernel reaches
KERNEL_US = 3.0  # fixed cost per kernel on the GPU (launch/ramp; graph-replayed kernels included)
SYNC_US = 20.0  # host wake-up after a device sync
CPU_FACTOR_AT_2_2_GHZ = 2.75  # host ms on an x86 server core -> ms on one A78AE thread at 2.2 GHz

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "conv2d", "_convolution"}
_MATMUL |= {"scaled_dot_product_attention", "_scaled_dot_product_efficient_attention"}
_MATMUL |= {"_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention", "addmv", "mv"}
_VIEWS = {
    "view",
    "_unsafe_view",
    "reshape",
    "_reshape_alias",
    "transpose",
    "t",
    "permute",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "expand",
    "alias",
    "as_strided",
    "detach",
    "lift_fresh",
    "unbind",
    "split",
    "split_with_sizes",
    "narrow",
    "diagonal",
    "empty",
    "empty_like",
    "empty_strided",
    "view_as_real",
    "_local_scalar_dense",
}
_LAUNCHES = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
)


def _peak(rates: dict[str, float], dtype: str) -> float:
    if dtype in ("float16", "bfloat16"):
        return rates["fp16"]
    if dtype == "float64":
        return rates["fp64"]
    if dtype == "int8":
        return 2 * rates["fp16"]
    return rates["fp32"]  # float32 on CUDA cores (torch keeps fp32 matmuls off TF32 by default)


def cpu_factor(rates: dict[str, float]) -> float:
    """Host ms here -> ms on one of the target's cores."""
    return CPU_FACTOR_AT_2_2_GHZ * 2.2 / rates["cpu_ghz"]


class _Tally:
    """Per-frame sums over the ops of one stage (device ops only), with the roofline time per target."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.flops: Counter[str] = Counter()
        self.bytes = {"matmul": 0, "other": 0}
        self.ops = 0
        self.float64_ops: Counter[str] = Counter()
        self.roofline_s = dict.fromkeys(TARGETS, 0.0)

    def add(self, audit: OpAudit) -> None:
        for r in audit.records:
            if self.device_type not in r.devices or r.name in _VIEWS:
                continue
            self.ops += 1
            kind = "matmul" if r.name in _MATMUL else "other"
            dt = str(r.out_dtype).replace("torch.", "")
            if r.dtypes & {torch.float64, torch.complex128}:
                self.float64_ops[r.name] += 1
            self.bytes[kind] += r.bytes
            if r.flops:
                self.flops[dt] += r.flops
            for name, rates in TARGETS.items():
                t_mem = r.bytes / (BW_EFF * rates["bw"])
                t_flop = r.flops / (MM_EFF * _peak(rates, dt)) if r.flops else 0.0
                self.roofline_s[name] += max(t_mem, t_flop)

    def per_frame(self, n: int) -> dict[str, Any]:
        return {
            "gflop_by_dtype": {k: v / n / 1e9 for k, v in sorted(self.flops.items())},
            "mb": {k: v / n / 1e6 for k, v in self.bytes.items()},
            "ops": self.ops / n,
            "float64_ops": {k: v / n for k, v in self.float64_ops.items()},
            "roofline_ms": {k: v / n * 1e3 for k, v in self.roofline_s.items()},
        }


def _frames(n: int, kind: str) -> list[Frame]:
    """640x480 frames: ``node`` = the node benchmark's (stripes and a moving block); ``texture`` = smooth
    random textures (seeded), whose TokenCut spectra are harder."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_node import K, test_image

    if kind == "node":
        return [Frame(test_image(i), i, "camera_optical", K, "budget") for i in range(n)]
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
        img = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        out.append(Frame(np.ascontiguousarray(img), i, "camera_optical", K, "budget"))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def blocking_sync() -> bool:
    """Make host threads sleep, not spin, while they wait for the CUDA device (before CUDA starts):
    ``cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync)`` through the CUDA runtime torch loaded."""
    import ctypes

    if torch.cuda.is_initialized():
        raise RuntimeError("blocking synchronisation must be set before CUDA is initialised")
    with open("/proc/self/maps") as maps:
        libs = sorted({ln.split()[-1] for ln in maps if "libcudart.so" in ln})
    if not libs:
        return False
    cudart = ctypes.CDLL(libs[0])
    return cudart.cudaSetDeviceFlags(ctypes.c_uint(0x04)) == 0  # cudaDeviceScheduleBlockingSync


def _serial(model: Any, cfg: PipelineConfig, device: str) -> Pipeline:
    """A pipeline that runs every head on the calling thread."""
    return Pipeline.from_model(model, dataclasses.replace(cfg, parallel_heads=False), device=device)


def count_pass(
    model: Any, cfg: PipelineConfig, outputs: set[str], frames: list[Frame], warmup: int, device: str
):
    """Ops, FLOPs and bytes per frame of ``infer`` and ``finish`` (one thread, no graphs)."""
    dev_type = torch.device(device).type
    pipe = _serial(model, cfg, device)
    for f in frames[:warmup]:
        pipe.process([f], outputs)
    inf, fin = _Tally(dev_type), _Tally(dev_type)
    todo = frames[warmup:]
    for f in todo:
        with OpAudit() as a:
            h = pipe.infer([f], outputs)
            _sync(device)
        with OpAudit() as b:
            pipe.finish(h)
            _sync(device)
        inf.add(a)
        fin.add(b)
    n = len(todo)
    return {"infer": inf.per_frame(n), "heads": fin.per_frame(n)}


def host_pass(
    model: Any, cfg: PipelineConfig, outputs: set[str], frames: list[Frame], warmup: int, device: str
) -> dict[str, float]:
    """Host CPU ms per frame of ``infer`` and ``finish`` with the node's model, on one thread."""
    pipe = _serial(model, cfg, device)
    for f in frames[:warmup]:
        pipe.process([f], outputs)
    cpu = Counter()
    todo = frames[warmup:]
    for f in todo:
        _sync(device)
        t0, p0 = time.thread_time(), time.process_time()
        h = pipe.infer([f], outputs)
        _sync(device)
        t1, p1 = time.thread_time(), time.process_time()
        pipe.finish(h)
        _sync(device)
        t2, p2 = time.thread_time(), time.process_time()
        cpu.update(infer_thread=t1 - t0, heads_thread=t2 - t1, infer_process=p1 - p0, heads_process=p2 - p1)
    return {k: v / len(todo) * 1e3 for k, v in cpu.items()}


def profile_pass(pipe: Pipeline, outputs: set[str], frames: list[Frame], warmup: int) -> dict[str, Any]:
    """Kernels, device time, launches and syncs per frame with the node's settings (CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    pipe.reset()
    for f in frames[:warmup]:
        pipe.process([f], outputs)
    torch.cuda.synchronize()
    todo = frames[warmup:]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for f in todo:
            pipe.process([f], outputs)
            torch.cuda.synchronize()
    events = trace_events(prof)
    kernels = trace_kernels(events)
    n = len(todo)
    gemm = [
        k for k in kernels if any(s in k.name.lower() for s in ("gemm", "xmma", "cutlass", "fmha", "flash"))
    ]
    launches = sum(1 for e in events if e.get("cat") == "cuda_runtime" and e.get("name") in _LAUNCHES)
    return {
        "kernels": len(kernels) / n,
        "kernel_ms": sum(k.dur_us for k in kernels) / n / 1e3,
        "matmul_kernel_ms": sum(k.dur_us for k in gemm) / n / 1e3,
        "float64_kernels": sorted({k.name[:100] for k in float64_kernels(kernels)}),
        "host_launches": launches / n,
        "host_syncs": host_syncs(events) / n,
    }


def timing_pass(pipe: Pipeline, outputs: set[str], frames: list[Frame], warmup: int, device: str) -> dict:
    """Wall-clock ms of ``Pipeline.process`` per frame with the node's settings."""
    pipe.reset()
    ms = []
    for i, f in enumerate(frames):
        _sync(device)
        t0 = time.perf_counter()
        pipe.process([f], outputs)
        _sync(device)
        if i >= warmup:
            ms.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(ms)
    return {"p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "n": int(a.size)}


def engine_pass(eager: Any, timed: Any, cfg: PipelineConfig, frame: Frame, device: str, reps: int) -> dict:
    """The bare engine on one preprocessed frame: its ops (eager model) and its p50 ms (node's model)."""
    pre = Preprocessor(tuple(cfg.resolution), eager.patch_size, eager.mean, eager.std, device)
    batch, _ = pre([frame.image])
    tally = _Tally(torch.device(device).type)
    with OpAudit() as audit:
        eager.engine.run(batch)
        _sync(device)
    tally.add(audit)
    for _ in range(3):
        timed.engine.run(batch)
    ms = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        timed.engine.run(batch)
        _sync(device)
        ms.append((time.perf_counter() - t0) * 1e3)
    res = {"count": tally.per_frame(1), "p50_ms": float(np.median(ms))}
    if device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            timed.engine.run(batch)
            torch.cuda.synchronize()
        res["kernels"] = len(trace_kernels(trace_events(prof)))
    return res


def project(entry: dict[str, Any], engine: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Projected ms per frame on each target from one output set's counts (see the module docstring)."""
    count, prof = entry["count"], entry.get("profile")
    # kernels besides the network's (which the TensorRT estimate covers)
    head_kernels = max(prof["kernels"] - engine.get("kernels", 0), 0) if prof else count["heads"]["ops"]
    syncs = prof["host_syncs"] if prof else 0.0
    host = count["host_cpu_ms"]
    gflop = sum(engine["count"]["gflop_by_dtype"].values())
    out = {}
    for name, rates in TARGETS.items():
        f = cpu_factor(rates)
        trt = gflop * 1e9 / (ENGINE_EFF * rates["fp16"]) * 1e3
        # the infer stage without the network: preprocessing (and a depth head outside the engine)
        pre_dev = max(count["infer"]["roofline_ms"][name] - engine["count"]["roofline_ms"][name], 0.0)
        heads_dev = count["heads"]["roofline_ms"][name] + head_kernels * KERNEL_US / 1e3
        infer_host = host["infer_thread"] * f
        heads_host = host["heads_thread"] * f + syncs * SYNC_US / 1e3
        gpu = trt + pre_dev + heads_dev
        out[name] = {
            "engine_trt_fp16_ms": trt,
            "pre_gpu_ms": pre_dev,
            "heads_gpu_ms": heads_dev,
            "infer_host_ms": infer_host,
            "heads_host_ms": heads_host,
            "latency_ms": infer_host + gpu + heads_host,
            "throughput_hz": 1e3 / max(gpu, infer_host, heads_host),
        }
    return out


def run_set(name: str, outs: set[str], ctx: dict[str, Any]) -> dict[str, Any]:
    a = ctx["args"]
    _cut_solver.CUDA_GRAPHS = False
    _cut_solver.clear_cache()
    entry: dict[str, Any] = {"outputs": sorted(outs)}
    entry["count"] = count_pass(ctx["eager"], ctx["cfg"], outs, ctx["frames_count"], a.warmup, a.device)
    _cut_solver.CUDA_GRAPHS = True
    _cut_solver.clear_cache()
    host = host_pass(ctx["timed"], ctx["cfg"], outs, ctx["frames_count"], a.warmup, a.device)
    entry["count"]["host_cpu_ms"] = host
    if a.device.startswith("cuda"):
        entry["profile"] = profile_pass(ctx["pipe"], outs, ctx["frames_count"], a.warmup)
    entry["wall"] = timing_pass(ctx["pipe"], outs, ctx["frames_time"], a.warmup, a.device)
    return entry


def _row(name: str, e: dict[str, Any]) -> str:
    h = e["count"]["heads"]
    fl = ", ".join(f"{k} {v:.2f}" for k, v in h["gflop_by_dtype"].items()) or "0"
    prof = e.get("profile") or {}
    p = e["projection"]
    return (
        f"| {name} | {fl} | {sum(h['mb'].values()):.1f} | {prof.get('kernels', h['ops']):.0f} | "
        f"{prof.get('host_launches', float('nan')):.0f} | {prof.get('host_syncs', float('nan')):.1f} | "
        f"{e['count']['host_cpu_ms']['heads_thread']:.2f} | {e['wall']['p50_ms']:.2f} | "
        + " | ".join(f"{p[t]['latency_ms']:.1f} / {p[t]['throughput_hz']:.0f}" for t in TARGETS)
        + " |"
    )


def _output_sets(spec: str) -> list[tuple[str, set[str]]]:
    """``each`` -> every output alone, ``all`` -> every output together, a name -> that output alone."""
    sets: list[tuple[str, set[str]]] = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if item == "each":
            sets += [(o, {o}) for o in OUTPUTS]
        elif item == "all":
            sets.append(("all", set(OUTPUTS)))
        elif item in OUTPUTS:
            sets.append((item, {item}))
        else:
            raise SystemExit(f"--sets: unknown {item!r}; use each, all or outputs of {sorted(OUTPUTS)}")
    return sets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights", default="random:vits16")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--resolution", default="480x640")
    ap.add_argument("--max-objects", type=int, default=1)
    ap.add_argument("--frames", type=int, default=10, help="counted/profiled frames per output set")
    ap.add_argument("--time-frames", type=int, default=40, help="timed frames per output set")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--images", default="node", choices=("node", "texture"), help="frame content")
    ap.add_argument(
        "--sets", default="each,all", help="comma list of: each (every output alone), all, output names"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any PipelineConfig setting (repeatable)",
    )
    ap.add_argument(
        "--blocking-sync", action="store_true", help="host threads sleep, not spin, while waiting for CUDA"
    )
    ap.add_argument("--out", default="jetson_budget.json")
    a = ap.parse_args(argv)
    blocking = a.device.startswith("cuda") and a.blocking_sync and blocking_sync()
    if a.device == "cpu" and a.precision in ("fp16", "bf16"):
        a.precision = "fp32"
    res = tuple(int(v) for v in a.resolution.lower().split("x"))
    try:
        changes = parse_settings(a.set)
    except ValueError as e:
        ap.error(str(e))
    cfg = PipelineConfig(resolution=res, max_objects=a.max_objects).with_updates(**changes)
    graphs = a.device.startswith("cuda")
    eager = load_model(a.weights, "torch", a.device, a.precision, res)
    timed = (
        load_model(a.weights, "torch", a.device, a.precision, res, cuda_graphs=graphs) if graphs else eager
    )
    frames = _frames(max(a.frames, a.time_frames) + a.warmup, a.images)
    ctx = {
        "args": a,
        "cfg": cfg,
        "eager": eager,
        "timed": timed,
        "pipe": Pipeline.from_model(timed, cfg, device=a.device),
        "frames_count": frames[: a.frames + a.warmup],
        "frames_time": frames[: a.time_frames + a.warmup],
    }
    sets = _output_sets(a.sets)
    result: dict[str, Any] = {
        "command": " ".join(["benchmarks/jetson_budget.py", *(argv if argv is not None else sys.argv[1:])]),
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if graphs else None,
            "cpu": platform.processor() or platform.machine(),
            "blocking_sync": blocking,
        },
        "model": {
            "targets": TARGETS,
            "engine_eff": ENGINE_EFF,
            "mm_eff": MM_EFF,
            "bw_eff": BW_EFF,
            "kernel_us": KERNEL_US,
            "sync_us": SYNC_US,
            "cpu_factor": {t: cpu_factor(r) for t, r in TARGETS.items()},
        },
        "engine": engine_pass(eager, timed, cfg, frames[0], a.device, 20),
        "sets": {},
    }
    for name, outs in sets:
        entry = run_set(name, outs, ctx)
        entry["projection"] = project(entry, result["engine"])
        result["sets"][name] = entry
    eng_gflop = sum(result["engine"]["count"]["gflop_by_dtype"].values())
    print(
        f"engine: {eng_gflop:.1f} GFLOP/frame, p50 {result['engine']['p50_ms']:.2f} ms here "
        f"({result['host']['gpu'] or 'CPU'}, torch {torch.__version__})"
    )
    head = " | ".join(f"{t} ms / Hz" for t in TARGETS)
    print(
        "| output | heads GFLOP by dtype | heads MB | kernels | launches | syncs | heads host ms | "
        f"process p50 ms here | {head} |"
    )
    print("|" + "---|" * (8 + len(TARGETS)))
    for name, e in result["sets"].items():
        print(_row(name, e))
    _write_json(Path(a.out), result)
    print("wrote", a.out)
    return 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
