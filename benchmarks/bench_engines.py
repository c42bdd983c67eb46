"""ONNX Runtime vs torch eager fp32 for ViT-S/16 on CPU (issue 5): batch 1, 224x224 and 480x640.

Baseline (same run): our torch engine, eager fp32. fp32 rows: ONNX Runtime on the standard
(TensorRT-safe) export, on its CPU form (fused ``MultiHeadAttention``, the engine's default on CPU), and
the CPU form with ORT worker threads spinning between runs (as torch's OpenMP threads do by default).
Reduced-precision rows, reported separately: ONNX Runtime INT8 (dynamic quantization of the MatMul
weights; VNNI/AMX int8 GEMMs) and, for fairness, torch's own best CPU option, bf16 weights (oneDNN AMX).

Timing: every variant runs ``--per-round`` times in turn, ``--rounds`` rounds (a short pause when
switching, so one variant's idle threads do not slow the next); medians over all rounds. Accuracy of
every row vs the torch fp32 baseline on two related real photos (the same photo shifted by 32 px with a
brightness change): per-token cosine (min), max-abs, nearest-neighbour patch matching agreement and the
PCA-RGB view difference (8-bit levels). Weights: the shipped ``default`` ViT-S/16 (``--weights``).

    .venv/bin/python benchmarks/bench_engines.py --device cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinov3_ros.models import build_backbone, load_backbone
from dinov3_ros.runtime.accuracy import (
    feature_agreement,
    nn_match_agreement,
    pca_rgb_difference,
    related_pair,
)
from dinov3_ros.runtime.bench import markdown_table, vit_gflops
from dinov3_ros.runtime.engine import create_engine
from dinov3_ros.runtime.export import export_onnx
from dinov3_ros.runtime.graph import DeployModel

BASELINE = "torch eager fp32"


def _photo() -> np.ndarray:
    try:
        from skimage import data

        return data.coffee()
    except Exception:  # noqa: BLE001 - a synthetic stand-in keeps the benchmark runnable
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:400, 0:600]
        img = np.stack([np.sin(xx / 23.0), np.cos(yy / 17.0), np.sin((xx + yy) / 31.0)], -1)
        return ((img * 0.5 + 0.5) * 200 + rng.integers(0, 55, img.shape)).astype(np.uint8)


def _cpu_busy_seconds() -> float | None:
    """Busy CPU-seconds of the whole machine so far (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _median(v: list[float]) -> float:
    return float(statistics.median(v))


def _time_round_robin(
    variants: dict[str, Callable[[], Any]], rounds: int, per_round: int, pause: float, max_seconds: float
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()
        fn()
    start = time.perf_counter()
    for _ in range(rounds):
        for name, fn in variants.items():
            time.sleep(pause)
            fn()  # re-warm after the switch (caches, thread pools)
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds:
            break
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--arch", default="vits16")
    ap.add_argument("--weights", default="default", help="backbone weights ('default', a file, or 'random')")
    ap.add_argument("--resolutions", default="224x224,480x640")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=3)
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between variants")
    ap.add_argument("--max-seconds", type=float, default=240.0, help="per resolution")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/engines-...)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print("note: this benchmark targets the CPU; ONNX Runtime runs on CPU here anyway", file=sys.stderr)
    threads = args.threads
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if args.weights == "random":
        backbone = build_backbone(args.arch).eval()
    else:
        backbone = load_backbone(args.weights, None if args.weights == "default" else args.arch)
        backbone = backbone.float().eval()
    dm = DeployModel(backbone)
    cfg = dm.vit.cfg
    photo = _photo()
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    load_before = os.getloadavg()[0]
    busy0, own0, wall0 = _cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    for res in args.resolutions.split(","):
        H, W = (int(v) for v in res.split("x"))
        gfl = vit_gflops(
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            hidden=cfg.hidden,
            height=H,
            width=W,
            n_prefix=1 + cfg.n_storage_tokens,
        )
        base_eng = create_engine("torch", model=backbone, precision="fp32", device="cpu")
        a, b = related_pair(photo, (H, W))
        pre = base_eng.preprocessor((H, W))
        xa, _ = pre(a)
        xb, _ = pre(b)
        onnx_path, _ = export_onnx(dm, tmp / f"vit_{H}x{W}.onnx", resolution=(H, W))
        ort: dict[str, Any] = {"onnx_path": onnx_path, "device": "cpu", "threads": threads}
        specs: list[tuple[str, str, str, dict[str, Any]]] = [
            ("ORT fp32, standard export", "fp32", "onnxruntime", {**ort, "fuse_attention": False}),
            ("ORT fp32, CPU form (fused MHA)", "fp32", "onnxruntime", ort),
            ("ORT fp32, CPU form + spinning", "fp32", "onnxruntime", {**ort, "spin": True}),
            ("ORT int8 (dynamic, CPU form)", "int8", "onnxruntime", {**ort, "precision": "int8"}),
            ("ORT int8 + spinning", "int8", "onnxruntime", {**ort, "precision": "int8", "spin": True}),
            (
                "torch eager bf16 (AMX; extra)",
                "bf16",
                "torch",
                {"model": backbone, "precision": "bf16", "device": "cpu"},
            ),
        ]
        engines: dict[str, Any] = {BASELINE: base_eng}
        precs: dict[str, str] = {BASELINE: "fp32"}
        for name, prec, backend, kw in specs:
            try:
                engines[name] = create_engine(backend, **kw)
                precs[name] = prec
            except Exception as err:  # noqa: BLE001 - report and continue with the rest
                print(f"skip {name}: {err}", file=sys.stderr)
        ref_a = base_eng.run(xa)
        ref_b = base_eng.run(xb)
        variants = {name: (lambda e=e, x=xa: e.run(x)) for name, e in engines.items()}
        times = _time_round_robin(variants, args.rounds, args.per_round, args.pause, args.max_seconds)
        base_ms = _median(times[BASELINE])
        for name, e in engines.items():
            out_a, out_b = e.run(xa), e.run(xb)
            agree = feature_agreement(ref_a["patch_tokens"], out_a["patch_tokens"])
            ts = sorted(times[name])
            p50 = _median(ts)
            row = {
                "resolution": f"{H}x{W}",
                "variant": name,
                "precision": precs[name],
                "threads": threads,
                "p50_ms": p50,
                "p90_ms": ts[min(len(ts) - 1, round(0.9 * (len(ts) - 1)))],
                "min_ms": ts[0],
                "iters": len(ts),
                "speedup": base_ms / p50,
                "gflop_per_s": gfl / (p50 / 1e3),
                "cos_min": agree["cos_min"],
                "max_abs": agree["max_abs"],
                "nn_agree": nn_match_agreement(
                    ref_a["patch_tokens"], ref_b["patch_tokens"], out_a["patch_tokens"], out_b["patch_tokens"]
                ),
                "pca_rgb_diff": pca_rgb_difference(ref_a["patch_tokens"], out_a["patch_tokens"]),
                "cls_cos": feature_agreement(ref_a["cls"], out_a["cls"])["cos_min"],
            }
            rows.append(row)
            print(
                f"{res:>8s} {name:34s} p50 {p50:8.1f} ms  x{row['speedup']:.2f}  cos_min {row['cos_min']:.6f}"
                f"  max_abs {row['max_abs']:.2e}  nn {row['nn_agree']:.4f}",
                flush=True,
            )
        del engines
    cols = [
        "resolution",
        "variant",
        "precision",
        "p50_ms",
        "p90_ms",
        "speedup",
        "cos_min",
        "max_abs",
        "nn_agree",
        "pca_rgb_diff",
    ]
    fmt = {"cos_min": "{:.6f}", "max_abs": "{:.2e}", "nn_agree": "{:.4f}", "pca_rgb_diff": "{:.3f}"}
    table = [{k: (fmt[k].format(v) if k in fmt else v) for k, v in r.items()} for r in rows]
    print(markdown_table(table, cols))
    load_after = os.getloadavg()[0]
    busy1, own1, wall = _cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter() - wall0
    others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    print(
        f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}; {os.cpu_count()} CPUs; "
        + ("" if others is None else f"other processes used {others:.2f} cores on average during the run")
    )
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "device": "cpu",
        "threads": threads,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "other_processes_cores": others,
        "weights": args.weights,
    }
    try:
        import onnxruntime as ort_mod

        env["onnxruntime"] = ort_mod.__version__
    except ImportError:
        pass
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import save

    save(
        "engines",
        args.device,
        {"env_engines": env, "arch": args.arch, "baseline": BASELINE, "rows": rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
