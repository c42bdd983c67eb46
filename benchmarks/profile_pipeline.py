"""Where a frame's time goes in ``Pipeline.process`` (all outputs): per-variant latency + a torch profile.

Variants (same model, same frames, one run): the default config, CUDA graphs for the engine, each output
alone, ``parallel_heads`` off, ``max_objects: 4``. The profile (``--profile``) of the default variant
prints the top operators by self CPU and by device time and writes a Chrome trace.

    python benchmarks/profile_pipeline.py --device cuda --precision fp16 --out prof_pipeline.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_node import K, test_image  # noqa: E402  (the node benchmark's frames and intrinsics)

from dinov3_ros.pipeline import OUTPUTS, Frame, PipelineConfig  # noqa: E402
from dinov3_ros.pipeline.model import load_model  # noqa: E402
from dinov3_ros.pipeline.pipeline import Pipeline  # noqa: E402


def frame(i: int) -> Frame:
    return Frame(test_image(i), i, "camera_optical", K, "prof")


def run(pipe: Pipeline, outputs: set[str], n: int, device: str) -> dict[str, Any]:
    pipe.reset()
    frames = [frame(i) for i in range(8)]
    ms, stages = [], {}
    for i in range(n + 3):
        t0 = time.perf_counter()
        (o,) = pipe.process([frames[i % len(frames)]], outputs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 3:
            ms.append((time.perf_counter() - t0) * 1e3)
            for k, v in o.timings_ms.items():
                stages.setdefault(k, []).append(v)
    a = np.asarray(ms)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "stages_p50_ms": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default="random:vits16")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--resolution", default="480x640")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--trace", default="")
    ap.add_argument("--profile-outputs", default="all", help="output set for --profile (all or a+b)")
    ap.add_argument("--variants", type=int, default=1, help="0 = skip the variant table (profile only)")
    ap.add_argument("--cprofile", default="", help="comma list of output sets to cProfile (e.g. objects,all)")
    ap.add_argument("--switch-interval-ms", type=float, default=0.0, help="sys.setswitchinterval (0 = keep)")
    ap.add_argument("--out", default="prof_pipeline.json")
    args = ap.parse_args()
    if args.switch_interval_ms > 0:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    res = tuple(int(v) for v in args.resolution.lower().split("x"))
    cfg = PipelineConfig(resolution=res)
    results: dict[str, Any] = {"torch": torch.__version__}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
    all_out = set(OUTPUTS)
    graphs = args.device.startswith("cuda")
    engines = {"eager": False, **({"cuda_graphs": True} if graphs else {})}
    for ename, use_graphs in engines.items():
        model = load_model(args.weights, "torch", args.device, args.precision, res, cuda_graphs=use_graphs)
        pipe = Pipeline.from_model(model, cfg, device=args.device)
        variants: list[tuple[str, set[str], PipelineConfig]] = [("all outputs", all_out, cfg)]
        if not args.variants:
            variants = []
        elif ename == list(engines)[-1]:
            variants += [(f"only {o}", {o}, cfg) for o in sorted(all_out)]
            variants += [
                ("all, parallel_heads off", all_out, dataclasses.replace(cfg, parallel_heads=False)),
                ("all, max_objects 4", all_out, dataclasses.replace(cfg, max_objects=4)),
                ("all but objects", all_out - {"objects"}, cfg),
            ]
        for name, outs, c in variants:
            pipe.set_config(c)
            r = run(pipe, outs, args.frames, args.device)
            results[f"{ename}: {name}"] = r
            print(
                f"{ename:12s} {name:28s} p50 {r['p50_ms']:7.2f} p99 {r['p99_ms']:7.2f}  {r['stages_p50_ms']}"
            )
            sys.stdout.flush()
        pipe.set_config(cfg)
    for spec in [c for c in args.cprofile.split(",") if c]:
        import cProfile
        import io
        import pstats

        outs = all_out if spec == "all" else set(spec.split("+"))
        pipe.set_config(dataclasses.replace(cfg, parallel_heads=False))  # cProfile sees one thread
        run(pipe, outs, 5, args.device)
        pr = cProfile.Profile()
        pr.enable()
        run(pipe, outs, 20, args.device)
        pr.disable()
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats(key).print_stats(28)
            print(f"--- cProfile {spec} by {key} (23 frames) ---")
            print(buf.getvalue()[-6000:])
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        pouts = all_out if args.profile_outputs == "all" else set(args.profile_outputs.split("+"))
        pipe.set_config(cfg)
        run(pipe, pouts, 5, args.device)
        with profile(activities=acts, record_shapes=False) as prof:
            run(pipe, pouts, 10, args.device)
        ka = prof.key_averages()
        print(ka.table(sort_by="self_cpu_time_total", row_limit=40))
        if args.device.startswith("cuda"):
            print(ka.table(sort_by="self_device_time_total", row_limit=30))
        if args.trace:
            prof.export_chrome_trace(args.trace)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
