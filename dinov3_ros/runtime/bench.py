"""``dinov3-ros bench``: latency/throughput of every available backend x precision x resolution x batch.

Reports p50/p99 latency per batch, images/s, the model's analytic GFLOPs per image, achieved TFLOP/s,
and MFU against the dense bf16/fp16 tensor-core peak of known GPUs. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PEAK_TFLOPS",
    "add_arguments",
    "gpu_peak_tflops",
    "main",
    "markdown_table",
    "time_fn",
    "vit_gflops",
    "write_json",
]

#: dense (no sparsity) tensor-core peak TFLOP/s for bf16/fp16 by GPU-name substring, checked in order
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.2),
)


def gpu_peak_tflops(name: str | None, precision: str) -> float | None:
    """bf16/fp16 dense peak for a known GPU name; None for fp32, CPUs and unknown GPUs."""
    if not name or precision not in ("bf16", "fp16"):
        return None
    for key, peak in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def vit_gflops(
    *,
    embed_dim: int,
    depth: int,
    hidden: int,
    height: int,
    width: int,
    patch_size: int = 16,
    n_prefix: int = 5,
    swiglu: bool = False,
) -> float:
    """Analytic GFLOPs (2 x multiply-accumulates) of one ViT forward for one image.

    Counts the patch-embedding conv, QKV/proj, both attention matmuls (QK^T and AV: 2 x N^2 x D MACs)
    and the FFN (2 or, for SwiGLU, 3 matrices); LayerNorm, softmax, GELU and RoPE are not counted.
    """
    D = embed_dim
    hw = (height // patch_size) * (width // patch_size)
    N = hw + n_prefix
    ffn_mats = 3 if swiglu else 2
    per_block = 2 * N * (4 * D * D + ffn_mats * D * hidden) + 4 * N * N * D
    embed = 2 * hw * (3 * patch_size * patch_size) * D
    return (depth * per_block + embed) / 1e9


def model_gflops(model: torch.nn.Module, height: int, width: int) -> float | None:
    """GFLOPs for a backbone / DeployModel / InferenceViT when it is a ViT; None otherwise."""
    from .graph import DeployModel
    from .vit_infer import InferenceViT, is_dinov3_vit_state_dict

    vit = None
    if isinstance(model, DeployModel):
        vit = model.vit
    elif isinstance(model, InferenceViT):
        vit = model
    elif is_dinov3_vit_state_dict(model.state_dict()):
        vit = InferenceViT.from_backbone(model)
    if vit is None:
        return None
    c = vit.cfg
    return vit_gflops(
        embed_dim=c.embed_dim,
        depth=c.depth,
        hidden=c.hidden,
        height=height,
        width=width,
        patch_size=c.patch_size,
        n_prefix=1 + c.n_storage_tokens,
        swiglu=c.ffn == "swiglu",
    )


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    *,
    device: torch.device | str | None = "cpu",
    warmup: int = 3,
    iters: int = 20,
    max_seconds: float | None = None,
) -> dict[str, float]:
    """Latency statistics (ms) of ``fn()``, synchronising CUDA around every call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    t_start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds and len(times) >= 3:
            break
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": p99,
        "mean_ms": statistics.fmean(times),
        "min_ms": times[0],
        "iters": len(times),
    }


def summarise(row: dict[str, Any], batch: int, gflops: float | None, gpu_name: str | None) -> dict[str, Any]:
    """Add images/s, TFLOP/s and MFU to a timing row."""
    ips = batch / (row["mean_ms"] / 1e3)
    row["images_per_s"] = ips
    if gflops:
        row["gflops_per_image"] = gflops
        row["tflops"] = gflops * ips / 1e3
        peak = gpu_peak_tflops(gpu_name, row.get("precision", ""))
        row["mfu"] = row["tflops"] / peak if peak else None
    return row


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of ``rows`` (missing values as '-')."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if abs(v) >= 100:
                return f"{v:.0f}"
            if abs(v) >= 1:
                return f"{v:.2f}"
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware for the JSON header."""
    env: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "cpu_count": os.cpu_count()}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# -- CLI ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``dinov3-ros bench``."""
    parser.add_argument("--arch", default="vits16", help="backbone arch (default vits16)")
    parser.add_argument(
        "--weights", help="checkpoint (random weights if omitted: speed does not depend on them)"
    )
    parser.add_argument(
        "--backends",
        default="torch,onnxruntime,tensorrt",
        help="comma list of torch, onnxruntime, tensorrt; those that cannot run here are listed as not measured",
    )
    parser.add_argument(
        "--precisions",
        default=None,
        help="comma list of fp32, fp16, bf16, int8 (int8: onnxruntime on CPU); default: fp32 on CPU, "
        "fp32,fp16,bf16 on CUDA. Combinations a backend lacks are listed as not measured",
    )
    parser.add_argument(
        "--resolutions", default="224x224,480x640", help="comma list of HxW network input sizes"
    )
    parser.add_argument("--batches", default="1", help="comma list of batch sizes")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default: cuda when available)",
    )
    parser.add_argument("--compile", action="store_true", help="torch: also torch.compile")
    parser.add_argument("--cuda-graphs", action="store_true", help="torch: also CUDA graphs (CUDA only)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch and onnxruntime)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per configuration")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per configuration")
    parser.add_argument("--out", default="bench.json", help="results file (JSON; a Markdown table beside it)")


PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def not_measured(backend: str, prec: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run ``prec`` on ``device`` (``None`` when it can)."""
    if backend == "torch":
        if prec == "int8":
            return "torch has no int8 engine (int8 runs on onnxruntime, CPU)"
        if prec != "fp32" and device.type == "cpu":
            return f"torch {prec} is measured on CUDA only"
    if backend == "onnxruntime":
        if prec == "int8" and device.type != "cpu":
            return "onnxruntime int8 runs on CPU only"
        if prec in ("fp16", "bf16"):
            return f"onnxruntime {prec} is not offered (export with --precision fp16 for TensorRT)"
    if backend == "tensorrt" and prec in ("bf16", "int8"):
        return f"tensorrt {prec} is not offered"
    return None


def _available(backends: list[str], device: torch.device) -> list[str]:
    out = []
    for b in backends:
        if b == "torch":
            out.append(b)
        elif b == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                continue
            if device.type == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers():
                out.append(b)
        elif b == "tensorrt" and device.type == "cuda":
            try:
                import tensorrt  # noqa: F401
            except ImportError:
                continue
            out.append(b)
    return out


#: columns of the printed table
COLUMNS = ("backend", "mode", "precision", "resolution", "batch", "p50_ms", "p99_ms", "images_per_s",
           "gflops_per_image", "tflops", "mfu")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """Run ``dinov3-ros bench``."""
    from .export import load_model, parse_resolution
    from .graph import DeployModel

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    backends = _available(wanted, device)
    for b in wanted:
        if b not in backends:
            print(f"not measured: {b} (not available on {device.type} here)", file=sys.stderr)
    precs = args.precisions or ("fp32" if device.type == "cpu" else "fp32,fp16,bf16")
    precisions = [p.strip() for p in precs.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        print(f"dinov3-ros bench: unknown precision(s) {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
        return 2
    for backend in backends:
        for prec in precisions:
            why = not_measured(backend, prec, device)
            if why:
                print(f"not measured: {backend}/{prec}: {why}", file=sys.stderr)
    sizes = [parse_resolution(r) for r in args.resolutions.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    backbone = load_model(args.arch, args.weights)
    dm = DeployModel(backbone)
    env = environment(device)
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="dinov3_bench_"))
    for size in sizes:
        gfl = model_gflops(dm, *size)
        onnx_cache: dict[str, Path] = {}
        for backend in backends:
            for prec in precisions:
                if not_measured(backend, prec, device):
                    continue
                for mode in _modes(backend, prec, device, args):
                    try:
                        eng = _engine(backend, prec, mode, backbone, dm, size, device, args, tmp, onnx_cache)
                    except Exception as e:  # noqa: BLE001 - report and continue with the rest
                        print(f"skip {backend}/{prec}/{mode}: {e}", file=sys.stderr)
                        continue
                    for b in batches:
                        row = _time_batch(eng, b, size, device, args, f"{backend}/{prec}/{mode}")
                        if row is not None:
                            row = {"backend": backend, "mode": mode, "precision": prec, **row}
                            rows.append(summarise(row, b, gfl, env.get("gpu")))
                            _print_row(row)
    print(markdown_table(rows, COLUMNS))
    write_json(args.out, {"env": env, "arch": args.arch, "rows": rows})
    print(f"wrote {args.out}")
    return 0


def _modes(backend: str, prec: str, device: torch.device, args: argparse.Namespace) -> list[str]:
    """The modes measured for ``backend`` at ``prec`` (none where the combination does not exist)."""
    if backend == "torch":
        if prec != "fp32" and device.type == "cpu":
            return []
        modes = ["eager"]
        if args.compile:
            modes.append("compile")
        if args.cuda_graphs and device.type == "cuda":
            modes.append("cudagraphs")
        return modes
    if backend == "onnxruntime":
        return ["default", "fused-mha"] if prec == "fp32" else ["default"]
    if backend == "tensorrt" and prec == "bf16":
        return []
    return ["eager"]


def _engine(
    backend: str,
    prec: str,
    mode: str,
    backbone: torch.nn.Module,
    dm: Any,
    size: tuple[int, int],
    device: torch.device,
    args: argparse.Namespace,
    tmp: Path,
    onnx_cache: dict[str, Path],
) -> Any:
    """The engine for one configuration; the ONNX of ``size`` is exported once and shared."""
    from .engine import create_engine
    from .export import export_onnx

    if backend == "torch":
        return create_engine(
            "torch",
            model=backbone,
            precision=prec,
            device=device,
            compile=mode == "compile",
            cuda_graphs=mode == "cudagraphs",
        )
    if "onnx" not in onnx_cache:
        onnx_cache["onnx"], _ = export_onnx(
            dm, tmp / f"{size[0]}x{size[1]}.onnx", resolution=size, check=False
        )
    kw: dict[str, Any] = {"onnx_path": onnx_cache["onnx"], "device": device}
    if backend == "onnxruntime":
        kw["threads"] = args.threads
        kw["fuse_attention"] = mode == "fused-mha"
        if prec == "int8":
            kw["precision"] = "int8"
    else:
        batches = [int(b) for b in args.batches.split(",")]
        kw.update(precision=prec, max_batch=max(batches), cache_dir=tmp / "trt")
    return create_engine(backend, **kw)


def _time_batch(
    eng: Any, b: int, size: tuple[int, int], device: torch.device, args: argparse.Namespace, label: str
) -> dict[str, Any] | None:
    """Timings of ``eng`` at batch ``b`` (None, reported with ``label``, when it fails)."""
    x = torch.randn(b, 3, *size, device=device)
    try:
        t = time_fn(
            lambda: eng.run(x),
            device=device,
            warmup=args.warmup,
            iters=args.iters,
            max_seconds=args.max_seconds,
        )
    except Exception as e:  # noqa: BLE001
        print(f"fail {label}/b{b}: {e}", file=sys.stderr)
        return None
    return {"resolution": f"{size[0]}x{size[1]}", "batch": b, **t}


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['backend']:12s} {row['mode']:10s} {row['precision']:5s} {row['resolution']:>8s} "
        f"b{row['batch']:<3d} p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
        f"{row['images_per_s']:8.1f} img/s",
        flush=True,
    )
