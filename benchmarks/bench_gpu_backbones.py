"""GPU backbone benchmark: our torch backend vs timm and Hugging Face DINOv3 ViTs, same run, same precision.

ViT-S/16 and ViT-B/16 at 480x640: batch-1 latency (p50/p99) and batch-64 throughput for
- timm ``vit_small_patch16_dinov3`` / ``vit_base_patch16_dinov3`` eager (the baseline: timm eager bf16),
- transformers ``DINOv3ViTModel`` eager (SDPA attention),
- ours (``dinov3_ros.runtime`` TorchEngine): eager; CUDA graphs of the whole forward including the
  uint8 -> normalised-float preprocessing; ``torch.compile`` (max-autotune-no-cudagraphs) with and
  without our CUDA graphs; ``torch.compile`` reduce-overhead,
in bf16 and fp16 (random weights: speed does not depend on them). Reports ratios vs timm eager bf16,
achieved TFLOP/s (analytic ViT FLOPs) and MFU (dense bf16/fp16 peak). Every variant runs in its own
try/except; variants are ordered by priority and skipped once ``--budget-s`` is spent. Writes
``results.json`` and ``results.md`` (and, with ``--profile``, top-kernel tables) into ``--out``.

    python benchmarks/bench_gpu_backbones.py --device cuda --out bench_gpu/
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from dinov3_ros.models import build_backbone
from dinov3_ros.runtime.bench import gpu_peak_tflops, markdown_table, vit_gflops
from dinov3_ros.runtime.engine import create_engine

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TIMM_NAMES = {"vits16": "vit_small_patch16_dinov3", "vitb16": "vit_base_patch16_dinov3"}
SPECS = {"vits16": (384, 12, 6, 1536), "vitb16": (768, 12, 12, 3072)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(fn, x, device, warmup: int, iters: int, max_s: float) -> dict[str, float]:
    for _ in range(warmup):
        fn(x)
    sync(device)
    ts: list[float] = []
    t_end = time.perf_counter() + max_s
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > t_end and len(ts) >= 5:
            break
    ts.sort()
    return {"p50_ms": statistics.median(ts), "p99_ms": ts[min(len(ts) - 1, round(0.99 * (len(ts) - 1)))]}


def throughput(fn, x, device, warmup: int, iters: int, max_s: float) -> float:
    for _ in range(warmup):
        fn(x)
    sync(device)
    n = 0
    t0 = time.perf_counter()
    while n < iters:
        fn(x)
        n += 1
        if n >= 3 and time.perf_counter() - t0 > max_s:
            break
    sync(device)
    return n * x.shape[0] / (time.perf_counter() - t0)


# -- model factories ---------------------------------------------------------------------------------
def make_timm(arch: str, dtype: torch.dtype, device: torch.device, size: tuple[int, int]):
    import timm

    m = timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=0, img_size=size)
    m = m.eval().to(device, dtype)

    def fn(x):
        with torch.inference_mode():
            return m.forward_features(x)

    return fn


def make_hf(arch: str, dtype: torch.dtype, device: torch.device, size: tuple[int, int]):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    D, depth, heads, hidden = SPECS[arch]
    cfg = DINOv3ViTConfig(
        hidden_size=D,
        intermediate_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_register_tokens=4,
        layerscale_value=1e-5,
        image_size=size[0],
    )
    cfg._attn_implementation = "sdpa"
    m = DINOv3ViTModel(cfg).eval().to(device, dtype)

    def fn(x):
        with torch.inference_mode():
            return m(pixel_values=x).last_hidden_state

    return fn


def make_ours(backbone, dtype_name: str, device: torch.device, mode: str):
    """mode: ``+``-joined tokens: eager | cudagraphs | compile (max-autotune-no-cudagraphs) |
    compiledef (inductor default mode: fusions, no GEMM autotuning) | reduce-overhead, plus ``gelu``
    (MLP GELU in the cuBLASLt GEMM epilogue, tanh approximation), ``cdt`` (coordinate-descent tuning
    of the generated kernels; stays on for later variants: list those last)."""
    tok = set(mode.split("+"))
    if "cdt" in tok:  # Inductor coordinate-descent tuning of its Triton kernels (LayerNorm, RoPE, ...)
        import torch._inductor.config as icfg

        icfg.coordinate_descent_tuning = True
    compile_mode = (
        "reduce-overhead"
        if "reduce-overhead" in tok
        else "default"
        if "compiledef" in tok
        else "max-autotune-no-cudagraphs"
    )
    eng = create_engine(
        "torch",
        model=backbone,
        precision=dtype_name,
        device=device,
        compile=bool(tok & {"compile", "compiledef", "reduce-overhead"}),
        compile_mode=compile_mode,
        cuda_graphs="cudagraphs" in tok,
        gelu_epilogue="gelu" in tok,
        clone_outputs=False,
    )
    return eng, (lambda x: eng.run(x))


def inputs(batch: int, size, dtype, device, uint8: bool) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(0)
    img = torch.randint(0, 256, (batch, size[0], size[1], 3), dtype=torch.uint8, generator=g).to(device)
    if uint8:
        return img
    m = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    s = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return ((img.permute(0, 3, 1, 2).float() / 255 - m) / s).to(dtype).contiguous()


def profile_top(fn, x, device, path: Path, rows: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):
        fn(x)
    sync(device)
    with profile(activities=acts) as prof:
        for _ in range(3):
            fn(x)
        sync(device)
    table = None
    keys = ("device_time_total", "cuda_time_total") if device.type == "cuda" else ()
    for key in (*keys, "cpu_time_total"):
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=rows)
            break
        except Exception:  # noqa: BLE001 - column names differ across torch versions
            continue
    table = table or str(prof.key_averages())
    path.write_text(table)


def main() -> int:
    ap = argparse.ArgumentParser(description="ours vs timm vs transformers DINOv3 ViT on GPU")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--out",
        default=None,
        help="FILE.json (markdown beside it) or a directory; default benchmarks/results",
    )
    ap.add_argument("--models", default="vits16,vitb16")
    ap.add_argument("--resolution", default="480x640")
    ap.add_argument("--batch", type=int, default=64, help="throughput batch")
    ap.add_argument("--precisions", default="bf16,fp16")
    ap.add_argument("--lat-iters", type=int, default=100)
    ap.add_argument("--thr-iters", type=int, default=20)
    ap.add_argument("--max-s", type=float, default=3.0, help="max seconds per measurement")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip remaining variants after this")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    ap.add_argument("--profile", action="store_true", help="top-kernel tables for batch-64 runs")
    ap.add_argument(
        "--plan",
        default="",
        help="explicit comma-separated variants arch:impl:mode:precision (e.g. vitb16:ours:compile+cudagraphs+gelu:bf16)",
    )
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.out is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from harness import result_path

        args.out = str(result_path("backbones", device))
    out_dir = Path(args.out)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    if out_dir.suffix == ".json":  # --out FILE.json: markdown beside it
        json_path, md_path = out_dir, out_dir.with_suffix(".md")
        out_dir = out_dir.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    H, W = (int(v) for v in args.resolution.lower().split("x"))
    size = (H, W)
    B = args.batch
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        import torch._inductor.config as icfg

        icfg.max_autotune_gemm_backends = "ATEN,TRITON"
        icfg.fx_graph_cache = True
    except Exception:  # noqa: BLE001
        pass
    env: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "resolution": args.resolution}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    for mod in ("timm", "transformers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            env[mod] = f"unavailable: {type(e).__name__}: {e}"
    print(json.dumps(env), flush=True)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    precs = [p.strip() for p in args.precisions.split(",") if p.strip()]
    backbones = {}
    for a in models:
        torch.manual_seed(0)
        backbones[a] = build_backbone(a).eval()

    # priority-ordered plan (arch, impl, mode, precision): baselines and cheap variants first, then the
    # compiled variants (ViT-B first: it carries the MFU target), then the second precision
    plan: list[tuple[str, str, str, str]] = []
    first, rest = precs[0], precs[1:]
    for a in models:
        plan += [
            (a, "timm", "eager", first),
            (a, "ours", "eager", first),
            (a, "ours", "cudagraphs", first),
            (a, "hf", "eager", first),
        ]
    if not args.no_compile:
        plan += [(a, "ours", "compile+cudagraphs", first) for a in reversed(models)]
    for p in rest:
        for a in models:
            plan += [
                (a, "timm", "eager", p),
                (a, "hf", "eager", p),
                (a, "ours", "eager", p),
                (a, "ours", "cudagraphs", p),
            ]
    if not args.no_compile:
        plan += [(a, "ours", "reduce-overhead", first) for a in reversed(models)]
        plan += [(a, "ours", "compile+cudagraphs", p) for p in rest for a in reversed(models)]
    if args.plan:
        plan = [tuple(v.strip().split(":")) for v in args.plan.split(",") if v.strip()]  # type: ignore[misc]
    if device.type != "cuda":
        plan = [v for v in plan if "cudagraphs" not in v[2] and v[2] != "reduce-overhead"]

    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for arch, impl, mode, prec in plan:
        D, depth, _heads, hidden = SPECS[arch]
        gfl = vit_gflops(embed_dim=D, depth=depth, hidden=hidden, height=H, width=W)
        row: dict[str, Any] = {"model": arch, "impl": impl, "mode": mode, "precision": prec}
        if time.perf_counter() - t_start > args.budget_s:
            row["error"] = "skipped: time budget"
            rows.append(row)
            continue
        dtype = DTYPES[prec]
        t0 = time.perf_counter()
        eng = None
        try:
            if impl == "timm":
                fn = make_timm(arch, dtype, device, size)
            elif impl == "hf":
                fn = make_hf(arch, dtype, device, size)
            else:
                eng, fn = make_ours(backbones[arch], prec, device, mode)
            # ours with CUDA graphs takes uint8 frames: preprocessing is inside the graph
            u8 = impl == "ours" and "cudagraphs" in mode
            row["input"] = "uint8 NHWC (preproc in graph)" if u8 else f"{prec} NCHW normalised"
            x1 = inputs(1, size, dtype, device, u8)
            row.update(
                {"b1_" + k: v for k, v in latency(fn, x1, device, 3, args.lat_iters, args.max_s).items()}
            )
            del x1
            xb = inputs(B, size, dtype, device, u8)
            ips = throughput(fn, xb, device, 2, args.thr_iters, args.max_s)
            row[f"b{B}_img_s"] = ips
            row["tflops"] = gfl * ips / 1e3
            peak = gpu_peak_tflops(env.get("gpu"), prec)
            row["mfu"] = row["tflops"] / peak if peak else None
            if args.profile and (impl == "timm" or "compile" in mode or mode == "eager") and B > 1:
                if eng is not None and eng.cuda_graphs:
                    eng.cuda_graphs = False  # profile kernels, not one graph launch
                name = f"profile_{arch}_{impl}_{mode}_{prec}_b{B}.txt".replace("+", "_")
                profile_top(
                    fn, xb if not u8 else inputs(B, size, dtype, device, False), device, out_dir / name
                )
            del xb
        except Exception as e:  # noqa: BLE001 - keep going with the other variants
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            traceback.print_exc(file=sys.stderr)
        row["setup_and_run_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
        del eng
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ratios vs timm eager bf16 (same model, same run)
    for r in rows:
        base = next(
            (
                b
                for b in rows
                if b["model"] == r["model"]
                and b["impl"] == "timm"
                and b["mode"] == "eager"
                and b["precision"] == "bf16"
                and "b1_p50_ms" in b
            ),
            None,
        )
        if base and "b1_p50_ms" in r:
            r["b1_speedup_vs_timm_bf16"] = base["b1_p50_ms"] / r["b1_p50_ms"]
            r[f"b{B}_speedup_vs_timm_bf16"] = r[f"b{B}_img_s"] / base[f"b{B}_img_s"]
    cols = [
        "model",
        "impl",
        "mode",
        "precision",
        "b1_p50_ms",
        "b1_p99_ms",
        "b1_speedup_vs_timm_bf16",
        f"b{B}_img_s",
        f"b{B}_speedup_vs_timm_bf16",
        "tflops",
        "mfu",
        "error",
    ]
    table = markdown_table(rows, cols)
    header = (
        f"GPU: {env.get('gpu', args.device)}; torch {env['torch']}; timm {env.get('timm')}; "
        f"transformers {env.get('transformers')}; {args.resolution}; batch-1 latency and batch-{B} "
        "throughput; ratios vs timm eager bf16 in the same run\n\n"
    )
    print(table)
    payload = {"env": env, "rows": rows, "total_s": time.perf_counter() - t_start}
    for path, text in (
        (json_path, json.dumps(payload, indent=2, default=str)),
        (md_path, header + table + "\n"),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(f"wrote {json_path} and {md_path} ({payload['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
