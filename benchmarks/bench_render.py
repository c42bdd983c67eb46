"""Synthetic rendering throughput (frames/s): open3d ``Scene.render`` vs the torch renderer, HxW sizes.

Rows per size (frames/s of wall time, and CPU milliseconds per frame of this process, which is the fairer
CPU figure on a shared machine; open3d's ray caster may use several threads):

* ``open3d``: ``Scene.render`` of pre-sampled scenes (BVH built once per scene, untimed), one process,
  the baseline (CPU only; skipped where open3d is missing);
* ``torch``: ``torch_render.render`` of batches of ``--batch`` frames taken from many scenes (scenes packed
  on the device once, untimed), on ``--device``;
* ``pool``: ``render_pool`` end to end (scene sampling in ``--workers`` processes + packing + rendering,
  GT at stride 4), on ``--device``.

    .venv/bin/python benchmarks/bench_render.py --device cpu --out bench_render_cpu.json
    python benchmarks/bench_render.py --device cuda --batch 64,256 --pool-scenes 2048 --workers 14 --out bench_render_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, min_s: float, device: str, min_reps: int = 2) -> tuple[float, float, int]:
    """Wall and process-CPU seconds per call (CPU time: fair on a shared machine), calls made."""
    fn()  # warm-up
    _sync(device)
    t0, c0, k = time.perf_counter(), time.process_time(), 0
    while k < min_reps or time.perf_counter() - t0 < min_s:
        fn()
        k += 1
    _sync(device)
    return (time.perf_counter() - t0) / k, (time.process_time() - c0) / k, k


def _open3d_row(config, seed, n_scenes, n_frames, min_s) -> dict | None:
    try:
        import open3d  # noqa: F401
    except ImportError:
        return None
    from dinov3_ros.synthetic import sample_scene

    specs = [sample_scene(config, seed, s) for s in range(n_scenes)]
    n = config.frames_per_scene
    views = [(sp, sp.trajectory.pose(i / (n - 1))) for sp in specs for i in range(n_frames)]
    for sp, T in views[::n_frames]:
        sp.scene.render(T, sp.K, config.width, config.height)  # builds the BVHs
    t0, c0, k = time.perf_counter(), time.process_time(), 0
    while k < len(views) and (k < 4 or time.perf_counter() - t0 < min_s):
        sp, T = views[k]
        sp.scene.render(T, sp.K, config.width, config.height)
        k += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "backend": "open3d",
        "device": "cpu",
        "batch": 1,
        "frames": k,
        "fps": k / dt,
        "cpu_ms_per_frame": 1e3 * cpu / k,
    }


def _torch_rows(config, seed, device, batches, n_frames, min_s, chunk_rays, max_elems) -> list[dict]:
    from dinov3_ros.synthetic.packing import sample_packed
    from dinov3_ros.synthetic.torch_pack import PackedScenes
    from dinov3_ros.synthetic.torch_render import render

    rows = []
    for B in batches:
        n_sc = max(1, B // n_frames)
        n = config.frames_per_scene
        res = sample_packed(
            config, seed, range(n_sc), [round(i * (n - 1) / max(1, n_frames - 1)) for i in range(n_frames)]
        )
        packed = PackedScenes.from_arrays(res["arrays"], device)
        sid = torch.arange(n_sc, device=device).repeat_interleave(n_frames)[:B]
        T = torch.from_numpy(res["T_world_cam"].reshape(-1, 4, 4)[:B]).to(device)
        K = torch.from_numpy(np.repeat(res["K"], n_frames, 0)[:B]).to(device)
        Bn = int(sid.shape[0])

        def fn(packed=packed, sid=sid, T=T, K=K):
            render(packed, sid, T, K, config.height, config.width, chunk_rays=chunk_rays, max_elems=max_elems)

        dt, cpu, reps = _timed(fn, min_s, device)
        row = {"backend": "torch", "device": device, "batch": Bn, "reps": reps, "fps": Bn / dt}
        rows.append({**row, "cpu_ms_per_frame": 1e3 * cpu / Bn})
    return rows


def _pool_row(config, seed, device, n_scenes, n_frames, workers, batch, chunk_rays, max_elems) -> dict:
    from dinov3_ros.synthetic.torch_pool import render_pool

    frames = list(range(n_frames))
    render_pool(config, seed, range(2), device, frames=frames, gt_stride=4)  # warm-up (texture tables)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = render_pool(
        config, seed, range(1000, 1000 + n_scenes), device, frames=frames, workers=workers,
        batch_frames=batch, gt_stride=4, chunk_rays=chunk_rays, max_elems=max_elems,
    )  # fmt: skip
    _sync(device)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    N = int(out["rgb"].shape[0])
    row = {
        "backend": "pool",
        "device": device,
        "batch": batch,
        "workers": workers,
        "frames": N,
        "fps": N / dt,
    }
    return {**row, "main_process_cpu_ms_per_frame": 1e3 * cpu / N}


def main() -> int:
    from dinov3_ros.synthetic import SceneConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="256x256,224x224", help="HxW list")
    ap.add_argument("--batch", default="16,64", help="torch frames per render call (list)")
    ap.add_argument("--frames-per-scene", type=int, default=4, help="frames of each scene in a batch")
    ap.add_argument("--open3d-scenes", type=int, default=8)
    ap.add_argument("--pool-scenes", type=int, default=32, help="scenes of the render_pool row (0 = skip)")
    ap.add_argument("--workers", type=int, default=0, help="render_pool sampling processes")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--chunk-rays", type=int, default=None, help="rays per chunk (default: per device)")
    ap.add_argument("--max-elems", type=int, default=None, help="BVH tests per slice (default: per device)")
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--out", default="bench_render.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        H, W = (int(x) for x in size.lower().split("x"))
        cfg = SceneConfig(width=W, height=H, frames_per_scene=32)
        r = _open3d_row(cfg, 0, args.open3d_scenes, args.frames_per_scene, args.min_seconds)
        for row in ([r] if r else []) + _torch_rows(
            cfg, 0, args.device, [int(b) for b in args.batch.split(",")], args.frames_per_scene,
            args.min_seconds, args.chunk_rays, args.max_elems,
        ):  # fmt: skip
            row["size"] = f"{H}x{W}"
            rows.append(row)
            print(row, flush=True)
        if args.pool_scenes:
            row = _pool_row(
                cfg, 0, args.device, args.pool_scenes, args.frames_per_scene, args.workers,
                max(int(b) for b in args.batch.split(",")), args.chunk_rays, args.max_elems,
            )  # fmt: skip
            row["size"] = f"{H}x{W}"
            rows.append(row)
            print(row, flush=True)
    info = {
        "command": " ".join([sys.executable, *sys.argv]),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
