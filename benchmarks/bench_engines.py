"""ONNX Runtime vs torch eager fp32 for ViT-S/16 (CPU by default), batch 1, at 224x224 and 480x640.

Baselines in the same run: the reference backbone (``dinov3_ros.models``) in eager fp32, and our torch
engine (same graph as the export) in eager fp32. ONNX Runtime variants: default session (all / extended
graph optimisations), our in-memory rewrite of attention to ORT's fused ``MultiHeadAttention``, and the
graph after ``onnxruntime.transformers.optimizer`` (LayerNorm/GELU fusions) when available offline.

    .venv/bin/python benchmarks/bench_engines.py --device cpu --out bench_engines.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from dinov3_ros.models import build_backbone
from dinov3_ros.runtime.bench import markdown_table, vit_gflops, write_json
from dinov3_ros.runtime.engine import create_engine
from dinov3_ros.runtime.export import export_onnx
from dinov3_ros.runtime.graph import DeployModel


def _transformer_optimize(src: Path, dst: Path, num_heads: int, hidden: int) -> Path | None:
    """Fused-op graph from onnxruntime's transformer optimizer (None when it is unavailable or fails)."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        return None
    try:
        opt = optimize_model(
            str(src), model_type="vit", num_heads=num_heads, hidden_size=hidden, opt_level=1, use_gpu=False
        )
        opt.save_model_to_file(str(dst))
        return dst
    except Exception as e:  # noqa: BLE001 - optional path
        print(f"transformer optimizer failed: {e}", file=sys.stderr)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--arch", default="vits16")
    ap.add_argument("--resolutions", default="224x224,480x640")
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--out", default="bench_engines.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = build_backbone(args.arch).eval()
    dm = DeployModel(backbone)
    cfg = dm.vit.cfg
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    for res in args.resolutions.split(","):
        H, W = (int(v) for v in res.split("x"))
        x = torch.randn(1, 3, H, W)
        gfl = vit_gflops(
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            hidden=cfg.hidden,
            height=H,
            width=W,
            n_prefix=1 + cfg.n_storage_tokens,
        )
        variants = {}
        ref = backbone.to(device)
        xd = x.to(device)

        def ref_fn(ref=ref, xd=xd):
            with torch.inference_mode():
                return ref.forward_features(xd)

        variants["torch reference eager"] = ref_fn
        teng = create_engine("torch", model=backbone, precision="fp32", device=device)
        variants["torch engine eager"] = lambda teng=teng, xd=xd: teng.run(xd)
        onnx_path, _ = export_onnx(dm, tmp / f"vit_{H}x{W}.onnx", resolution=(H, W))
        ort_dev = "cpu" if device.type == "cpu" else device
        for level in ("all", "extended"):
            try:
                e = create_engine(
                    "onnxruntime", onnx_path=onnx_path, device=ort_dev, threads=threads, optimization=level
                )
                variants[f"onnxruntime ({level})"] = lambda e=e, x=x: e.run(x)
            except Exception as err:  # noqa: BLE001
                print(f"onnxruntime {level}: {err}", file=sys.stderr)
        try:
            e = create_engine(
                "onnxruntime", onnx_path=onnx_path, device=ort_dev, threads=threads, fuse_attention=True
            )
            variants["onnxruntime + fused MHA"] = lambda e=e, x=x: e.run(x)
        except Exception as err:  # noqa: BLE001
            print(f"fused MHA: {err}", file=sys.stderr)
        fused = _transformer_optimize(
            onnx_path, tmp / f"vit_{H}x{W}_fused.onnx", cfg.num_heads, cfg.embed_dim
        )
        if fused is not None:
            try:
                e = create_engine("onnxruntime", onnx_path=fused, device=ort_dev, threads=threads)
                variants["onnxruntime + transformer optimizer"] = lambda e=e, x=x: e.run(x)
            except Exception as err:  # noqa: BLE001
                print(f"fused model: {err}", file=sys.stderr)
        # Round-robin: every iteration runs each variant once, so load from other processes on a
        # shared machine hits all variants alike.
        import time as _time

        times: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            for _ in range(2):
                fn()
        t_start = _time.perf_counter()
        for _ in range(args.iters):
            for name, fn in variants.items():
                t0 = _time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((_time.perf_counter() - t0) * 1e3)
            if _time.perf_counter() - t_start > args.max_seconds * len(variants):
                break
        base = None
        for name in variants:
            ts = sorted(times[name])
            t = {
                "p50_ms": ts[len(ts) // 2]
                if len(ts) % 2
                else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]),
                "p99_ms": ts[min(len(ts) - 1, round(0.99 * (len(ts) - 1)))],
                "min_ms": ts[0],
                "iters": len(ts),
            }
            if name == "torch reference eager":
                base = t["p50_ms"]
            row = {
                "variant": name,
                "resolution": f"{H}x{W}",
                "threads": threads,
                **t,
                "gflops": gfl,
                "gflop_per_s": gfl / (t["p50_ms"] / 1e3),
            }
            row["speedup_vs_reference"] = base / t["p50_ms"] if base else None
            rows.append(row)
            print(f"{res:>8s} {name:38s} p50 {t['p50_ms']:8.1f} ms  p99 {t['p99_ms']:8.1f} ms", flush=True)
        eng_base = next(
            r["p50_ms"]
            for r in rows
            if r["resolution"] == f"{H}x{W}" and r["variant"] == "torch engine eager"
        )
        for r in rows:
            if r["resolution"] == f"{H}x{W}":
                r["speedup_vs_torch_engine"] = eng_base / r["p50_ms"]
    cols = [
        "resolution",
        "variant",
        "threads",
        "p50_ms",
        "p99_ms",
        "min_ms",
        "gflop_per_s",
        "speedup_vs_reference",
        "speedup_vs_torch_engine",
    ]
    print(markdown_table(rows, cols))
    env = {"torch": torch.__version__, "device": str(device), "threads": threads}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    write_json(args.out, {"env": env, "arch": args.arch, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
