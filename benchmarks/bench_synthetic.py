"""Synthetic scene rendering throughput on CPU (frames/s) at 224x224 and 480x640 (HxW).

Rows per resolution: the baseline (open3d ray cast of the same rays only: no spheres, texturing or
shading), the full render (RGB + depth + instances + normals), the render of a fresh scene each frame
(scene sampling + BVH build included: the worst case for a shuffled training stream), and GT
correspondences for all pixels of a pair. Rendering is CPU-only: ``--device cuda`` is accepted and
recorded but changes nothing.

    .venv/bin/python benchmarks/bench_synthetic.py --device cpu --out bench_synthetic.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _rate(fn, n: int, max_s: float) -> tuple[float, int]:
    fn(0)  # warm-up (texture bank, caches)
    t0 = time.perf_counter()
    k = 0
    while k < n and (k < 3 or time.perf_counter() - t0 < max_s):
        fn(k + 1)
        k += 1
    return k / (time.perf_counter() - t0), k


def main() -> int:
    import open3d as o3d

    from dinov3_ros.synthetic import SceneGenerator, gt_correspondences

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--resolutions", default="224x224,480x640", help="HxW list")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/synthetic-...)")
    args = ap.parse_args()

    rows = []
    for res in args.resolutions.split(","):
        H, W = (int(x) for x in res.lower().split("x"))
        gen = SceneGenerator(seed=0, width=W, height=H, frames_per_scene=10_000)
        spec = gen.scene(0)
        scene = spec.scene
        gen.frame(0, 0)  # builds the scene structure

        from dinov3_ros.synthetic.scene import _camera_rays

        d_cam = _camera_rays(tuple(spec.K.ravel().tolist()), W, H)

        def cast_only(i: int, gen=gen, scene=scene, d_cam=d_cam) -> None:
            T = gen.pose(0, i % 10_000)
            d = np.einsum("ni,ji->nj", d_cam, T[:3, :3].astype(np.float32))
            rays = np.empty((d.shape[0], 6), np.float32)
            rays[:, :3] = T[:3, 3]
            rays[:, 3:] = d
            scene._rc.cast_rays(o3d.core.Tensor.from_numpy(rays))

        def render(i: int, gen=gen) -> None:
            gen.frame(0, i % 10_000)

        fresh = SceneGenerator(seed=1, width=W, height=H, frames_per_scene=1)

        def render_fresh(i: int, fresh=fresh) -> None:
            fresh.frame(i, 0)

        a, b = gen.frame(0, 0), gen.frame(0, 5)

        def corr(i: int, a=a, b=b) -> None:
            gt_correspondences(a, b)

        for name, fn in (
            ("baseline: open3d cast_rays only", cast_only),
            ("render (rgb+depth+inst+normals)", render),
            ("render, new scene every frame", render_fresh),
            ("gt_correspondences, all pixels", corr),
        ):
            fps, n = _rate(fn, args.frames, args.max_seconds)
            rows.append({"resolution": f"{H}x{W}", "case": name, "fps": fps, "ms": 1000.0 / fps, "n": n})
            print(f"{H}x{W:<5} {name:36s} {fps:8.1f} /s {1000.0 / fps:8.2f} ms  (n={n})", flush=True)

    print("\n| resolution | case | per s | ms |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['resolution']} | {r['case']} | {r['fps']:.1f} | {r['ms']:.1f} |")
    meta = {
        "device": "cpu (rendering is CPU-only)",
        "requested_device": args.device,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "open3d": o3d.__version__,
    }
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import save

    save("synthetic", "cpu", {"meta": meta, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
