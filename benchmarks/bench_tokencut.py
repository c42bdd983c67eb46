"""Multi-object TokenCut at the node's grid (30x40 patches, ``max_objects`` 4): filter power per cut.

The masked cut (``dinov3_ros.heads._cut_solver.MaskedCut``) filters a random block with ``A^(2^s)``
(block power steps, float32 on the device) before its first exact check on the host, and adds Krylov
vectors of the exact residual per failed check. This benchmark times ``tokencut_multi`` with ``s`` =
each of ``--squarings`` (the first = the baseline) on the same features in one run, counts the
correction rounds and dense fallbacks, and checks that every variant finds exactly the baseline's
objects. It also times the pieces: one filter replay per ``s``, one correction, the filter's round trip
to the host and the dense fallback (float64 on the host).

Workloads: ``random`` = a random ViT-S/16 on the node benchmark's frames (what ``bench_node.py``
measures); ``default`` = the shipped model on synthetic rooms (``--images``, rendered once on a machine
with open3d by ``--render N``; realistic object-on-floor spectra).

    .venv/bin/python benchmarks/bench_tokencut.py --render 16 --images .gpu/tc/rooms_480x640.npz
    python benchmarks/bench_tokencut.py --device cuda --images .gpu/tc/rooms_480x640.npz --out tc.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_node import K, test_image  # noqa: E402  (the node benchmark's frames)
from harness import save  # noqa: E402

from dinov3_ros.heads import tokencut as tc  # noqa: E402
from dinov3_ros.heads._cut_solver import MaskedCut, clear_cache  # noqa: E402
from dinov3_ros.pipeline import Frame, PipelineConfig  # noqa: E402
from dinov3_ros.pipeline.model import load_model  # noqa: E402
from dinov3_ros.pipeline.pipeline import Pipeline  # noqa: E402


def render(n: int, path: Path) -> None:
    """``n`` synthetic 640x480 room frames (one per scene) -> ``path`` (npz, key ``rgb``), atomically."""
    from dinov3_ros.synthetic import SceneGenerator

    gen = SceneGenerator(width=640, height=480, seed=11)
    fps = gen.config.frames_per_scene
    rgb = np.stack([gen[i * fps + (i * 7) % fps].rgb for i in range(n)])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, rgb=rgb)
    os.replace(tmp, path)
    print(f"wrote {n} frames to {path}")


def features(weights: str, images: list[np.ndarray], device: str, precision: str) -> list[torch.Tensor]:
    """Patch features [30, 40, C] (float32, on ``device``) of each 640x480 image, as the node gets them."""
    model = load_model(weights, "torch", device, precision, (480, 640))
    pipe = Pipeline.from_model(model, PipelineConfig(resolution=(480, 640)), device=device)
    out = []
    for i, im in enumerate(images):
        (o,) = pipe.process([Frame(im, i, "camera_optical", K, "bench")], {"features"})
        out.append(torch.from_numpy(np.ascontiguousarray(o.features, np.float32)).to(device))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": int(a.size), "p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99))}


def _timed(fn: Callable[[], object], device: str, reps: int) -> dict[str, float]:
    ms = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ms.append((time.perf_counter() - t0) * 1e3)
    return _pct(ms)


def variant(feats: list[torch.Tensor], s: int, k: int, reps: int, device: str) -> dict[str, Any]:
    tc.SQUARINGS = s
    clear_cache()
    for F in feats[:2]:
        tc.tokencut_multi(F, k=k)  # capture the graphs
    tc.CUT_STATS.reset()
    ms, masks = [], []
    for r in range(reps):
        for F in feats:
            _sync(device)
            t0 = time.perf_counter()
            res = tc.tokencut_multi(F, k=k)
            ms.append((time.perf_counter() - t0) * 1e3)
            if r == 0:
                masks.append([o.mask for o in res])
    st = tc.CUT_STATS
    return {
        "squarings": s,
        "tokencut_multi": _pct(ms),
        "cuts_per_frame": float(np.mean([len(m) for m in masks])),
        "solves": st.solves,
        "extra_checks": st.steps,
        "fallbacks": st.fallbacks,
        "_masks": masks,
    }


def pieces(n: int, device: str, squarings: list[int], reps: int) -> dict[str, Any]:
    """Device time of the solver's parts on a random graph of ``n`` patches."""
    g = torch.Generator().manual_seed(0)
    F = torch.randn(n, 384, generator=g).to(device)
    E = tc._edges(F, 0.2)
    out: dict[str, Any] = {}
    for s in squarings:
        solver = MaskedCut(n, torch.device(device), power=2**s, krylov=tc.KRYLOV)
        solver.load(E, 1e-5)
        out[f"filter_s{s}"] = _timed(lambda sv=solver: sv._replay("filter", sv._filter), device, reps)
    out["correct"] = _timed(lambda: solver._replay("correct", solver._correct), device, reps)
    out["filter_round_trip"] = _timed(lambda: solver._fetch("filter"), device, reps)
    W = tc._weights(tc.to_host(E), 1e-5)
    out["dense_fallback_host"] = _timed(lambda: tc._solve_dense_np(W), device, max(3, reps // 10))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--images", default="", help="npz with rgb [N, 480, 640, 3] (the 'default' workload)")
    ap.add_argument("--render", type=int, default=0, help="render this many room frames to --images, exit")
    ap.add_argument("--squarings", default="6,5,7", help="filter powers 2^s; the first is the baseline")
    ap.add_argument("--k", type=int, default=4, help="max objects per frame (the node's max_objects)")
    ap.add_argument("--reps", type=int, default=10, help="passes over the frames per variant")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/tokencut-...)")
    args = ap.parse_args()
    if args.render:
        render(args.render, Path(args.images))
        return 0
    if args.device == "cpu" and args.precision == "fp16":
        args.precision = "fp32"
    sq = [int(v) for v in args.squarings.split(",")]
    work: dict[str, list[torch.Tensor]] = {
        "random": features(
            "random:vits16", [test_image(i) for i in range(0, 80, 10)], args.device, args.precision
        )
    }
    if args.images:
        rgb = np.load(args.images)["rgb"]
        work["default"] = features("default", list(rgb), args.device, args.precision)
    res: dict[str, Any] = {
        "config": vars(args),
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        },
        "workloads": {},
    }
    print("| workload | s | p50 ms | p99 ms | cuts/frame | correction rounds | fallbacks | same objects |")
    print("|---|---|---|---|---|---|---|---|")
    for name, feats in work.items():
        rows = [variant(feats, s, args.k, args.reps, args.device) for s in sq]
        base = rows[0]["_masks"]
        for r in rows:
            m = r.pop("_masks")
            r["same_objects_as_baseline"] = all(
                len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)) for a, b in zip(m, base)
            )
            t = r["tokencut_multi"]
            print(
                f"| {name} ({len(feats)} frames) | {r['squarings']} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | "
                f"{r['cuts_per_frame']:.1f} | {r['extra_checks']} | {r['fallbacks']} | "
                f"{r['same_objects_as_baseline']} |",
                flush=True,
            )
        res["workloads"][name] = rows
    n = int(work["random"][0].shape[0] * work["random"][0].shape[1])
    res["pieces"] = pieces(n, args.device, sq, max(20, args.reps * 5))
    print(f"\npieces at n = {n} (p50 ms):", {k: round(v["p50_ms"], 3) for k, v in res["pieces"].items()})
    save("tokencut", args.device, res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
