"""Where the offline tool's time goes: a torch.profiler trace (CPU ops of every thread, CUDA runtime
calls, GPU kernels) of one warm ``dinov3-ros process`` run, plus a summary of it.

    python benchmarks/profile_offline.py --device cuda --weights random:vits16 --precision fp16 \\
        --resolution 448x448 --batch-size 32 --frames 512 --out out/profile_offline

Writes ``trace.json.gz`` (open in chrome://tracing or Perfetto) and ``summary.json``: wall time, frames/s,
per-thread busy time by top-level op, CUDA runtime calls that block (synchronize, host alloc/free,
memcpy), and how much of the wall the GPU was busy. The model is loaded and the tool run once before
the traced run, so capture/compile/allocator warm-up are not in the trace.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _summarize(trace_path: Path, wall_s: float) -> dict:
    with gzip.open(trace_path, "rt") as f:
        ev = json.load(f)["traceEvents"]
    xs = [e for e in ev if e.get("ph") == "X" and "dur" in e]
    if not xs:
        return {}
    t0 = min(e["ts"] for e in xs)
    t1 = max(e["ts"] + e["dur"] for e in xs)
    span_us = t1 - t0
    gpu = [e for e in xs if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    by_stream: dict[str, float] = collections.Counter()
    for e in gpu:
        by_stream[f"{e.get('cat')}@stream{e.get('args', {}).get('stream', '?')}"] += e["dur"]
    # union of GPU busy intervals
    iv = sorted((e["ts"], e["ts"] + e["dur"]) for e in gpu)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in iv:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    rt = [e for e in xs if e.get("cat") == "cuda_runtime" or e.get("cat") == "cuda_driver"]
    rt_by: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for e in rt:
        k = f"tid{e.get('tid')}:{e['name']}"
        rt_by[k][0] += 1
        rt_by[k][1] += e["dur"]
    cpu = [e for e in xs if e.get("cat") in ("cpu_op", "user_annotation", "python_function")]
    # top-level CPU ops per thread (not nested in another op of the same thread)
    per_tid: dict[int, list] = collections.defaultdict(list)
    for e in cpu:
        per_tid[e.get("tid")].append(e)
    top: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    busy_tid: dict[str, float] = {}
    for tid, es in per_tid.items():
        es.sort(key=lambda e: (e["ts"], -e["dur"]))
        end = -1.0
        tot = 0.0
        for e in es:
            if e["ts"] >= end:
                top[f"tid{tid}:{e['name']}"][0] += 1
                top[f"tid{tid}:{e['name']}"][1] += e["dur"]
                end = e["ts"] + e["dur"]
                tot += e["dur"]
        busy_tid[f"tid{tid}"] = tot / 1e3
    return {
        "wall_s": wall_s,
        "trace_span_ms": span_us / 1e3,
        "gpu_busy_ms": busy / 1e3,
        "gpu_busy_frac": busy / span_us if span_us else 0.0,
        "gpu_by_stream_ms": {k: v / 1e3 for k, v in sorted(by_stream.items(), key=lambda kv: -kv[1])},
        "cuda_runtime_top": {
            k: {"n": n, "ms": d / 1e3} for k, (n, d) in sorted(rt_by.items(), key=lambda kv: -kv[1][1])[:40]
        },
        "cpu_ops_busy_ms_per_thread": busy_tid,
        "cpu_top_level_ops": {
            k: {"n": n, "ms": d / 1e3} for k, (n, d) in sorted(top.items(), key=lambda kv: -kv[1][1])[:60]
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights", default="random:vits16")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--resolution", default="448x448")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--outputs", default="features_pca,depth")
    ap.add_argument("--extra", default="", help="extra dinov3-ros process arguments (space-separated)")
    ap.add_argument("--out", default="out/profile_offline")
    args = ap.parse_args()

    import bench_offline

    from dinov3_ros.offline import process as proc
    from dinov3_ros.pipeline.model import load_model
    from dinov3_ros.pipeline.types import PipelineConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="profile_offline_"))
    bag = work / "in"
    bench_offline.make_input(bag, args.frames, 640, 480, "jpeg")
    res = tuple(int(v) for v in args.resolution.lower().split("x"))
    dev = args.device if args.device != "cuda" else "cuda:0"
    model = load_model(args.weights, "torch", dev, args.precision, res, cuda_graphs=dev.startswith("cuda"))
    config = PipelineConfig(resolution=res)
    outputs = set(args.outputs.split(","))
    parser = argparse.ArgumentParser()
    proc.add_arguments(parser)
    a = [str(bag), "--out", str(work / "o"), "--weights", args.weights, "--precision", args.precision]
    a += ["--resolution", args.resolution, "--outputs", args.outputs, "--batch-size", str(args.batch_size)]
    a += ["--device", dev, "--no-progress", "--overwrite", *args.extra.split()]

    proc.apply_thread_settings(parser.parse_args(a), dev)  # as dinov3-ros process does

    def run_tool() -> tuple[float, str]:
        summ: list = []
        t = time.perf_counter()
        rc, text = proc.process_one(
            parser.parse_args(a), bag, work / "o", model, config, outputs, dev, False, None, summaries=summ
        )
        dt = time.perf_counter() - t
        if rc != 0:
            raise RuntimeError(text)
        return dt, summ[0].text() if summ else text

    dt, text = run_tool()  # warm-up: graph capture, allocator and pinned pools, page cache
    dt, text = run_tool()
    print(f"untraced: {args.frames / dt:.1f} frames/s\n{text}", flush=True)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    try:  # every thread's CPU ops and the CUDA sync events (torch >= 2.5)
        cfg = torch._C._profiler._ExperimentalConfig(profile_all_threads=True, enable_cuda_sync_events=True)
    except TypeError:
        cfg = None
    with torch.profiler.profile(activities=acts, experimental_config=cfg) as prof:
        dt, text = run_tool()
    print(f"traced: {args.frames / dt:.1f} frames/s\n{text}", flush=True)
    raw = out / "trace.json"
    prof.export_chrome_trace(str(raw))
    gz = out / "trace.json.gz"
    with open(raw, "rb") as f, gzip.open(gz, "wb", compresslevel=6) as g:
        g.write(f.read())
    raw.unlink()
    summ = _summarize(gz, dt)
    summ["frames_per_s_traced"] = args.frames / dt
    summ["args"] = vars(args)
    (out / "summary.json").write_text(json.dumps(summ, indent=1))
    print(json.dumps({k: summ[k] for k in ("trace_span_ms", "gpu_busy_ms", "gpu_busy_frac")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
