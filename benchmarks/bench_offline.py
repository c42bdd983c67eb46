"""Offline processing throughput (``dinov3-ros process``) against the bare batched engine, same run.

Rows (frames/s, all with the same model, batch size and network resolution):

- ``engine (bare, batched)``: ``engine.run`` on a ready, normalised batch already on the device: the
  ceiling the offline tool is measured against (target: tool >= 80 % of it);
- ``pipeline.process``: ``Pipeline.process`` on pre-decoded frames (preprocess + engine + heads);
- ``pipeline infer|finish overlapped``: the same with ``Pipeline.infer`` on the main thread and
  ``Pipeline.finish`` on a helper thread (what the tool overlaps; no decoding, no bag writing);
- ``offline serial``: read -> decode -> process -> build -> write one batch after the other, one thread;
- ``offline tool``: the real tool (threads + bounded queues) from a bag on disk to a finished bag
  (model load excluded; reading, decoding, writing and the final rename included).

The input bag is synthetic (textured frames, JPEG CompressedImage by default) and written first.

    .venv/bin/python benchmarks/bench_offline.py --device cpu --out bench_offline.json
    python benchmarks/bench_offline.py --device cuda --weights random:vits16 --precision fp16 \\
        --resolution 448x448 --batch-size 32 --frames 512 --decode-workers 8 --out offline_cuda.json
    python benchmarks/bench_offline.py --device cuda --weights random:vitl16 --precision fp16 \\
        --resolution 448x448 --batch-size 32 --frames 256 --decode-workers 8 --out offline_cuda_vitl.json

``--weights`` takes a comma-separated list (e.g. ``random:vits16,random:vitl16``): one table per model
(the input bag is shared); the JSON keeps the first model's rows at the top level and all in ``models``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dinov3_ros.runtime.bench import environment, markdown_table, write_json


def make_input(path: Path, n: int, w: int, h: int, kind: str) -> None:
    """A bag with ``n`` textured frames on /cam/image_raw[/compressed] plus /cam/camera_info."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.msgs import builders
    from dinov3_ros.msgs.provider import rosbags_types
    from dinov3_ros.pipeline.types import CameraIntrinsics

    ts = get_typestore(Stores.LATEST)
    tp = rosbags_types(ts)
    intr = CameraIntrinsics.from_fov(w, h, 70.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    topic = "/cam/image_raw" + ("/compressed" if kind == "jpeg" else "")
    mt = "sensor_msgs/msg/CompressedImage" if kind == "jpeg" else "sensor_msgs/msg/Image"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as wr:
        ci = wr.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        im = wr.add_connection(topic, mt, typestore=ts)
        for i in range(n):
            t = 1_700_000_000_000_000_000 + i * 33_333_333
            rgb = (
                np.stack(
                    [
                        127 + 100 * np.sin((xx + 5 * i) / 17),
                        127 + 100 * np.cos((yy - 3 * i) / 13),
                        ((xx // 32 + yy // 32 + i) % 2) * 200 + 20,
                    ],
                    -1,
                )
                .clip(0, 255)
                .astype(np.uint8)
            )
            hdr = builders.header(tp, t, "cam_optical")
            wr.write(
                ci, t, ts.serialize_cdr(builders.camera_info(tp, hdr, intr), "sensor_msgs/msg/CameraInfo")
            )
            msg = builders.compressed_image(tp, hdr, rgb) if kind == "jpeg" else builders.image(tp, hdr, rgb)
            wr.write(im, t, ts.serialize_cdr(msg, mt))


def disk_bandwidth(work: Path, mb: int) -> float:
    """GB/s of ``mb`` 1 MB writes + fsync into ``work`` (what the output bag's disk sustains)."""
    import os

    buf = os.urandom(1 << 20)
    path = work / "disk_probe.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    path.unlink()
    return mb * (1 << 20) / dt / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--weights", default="random:vitt16", help="one or more (comma-separated) models")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--resolution", default="224x224", help="network HxW")
    ap.add_argument("--image-size", default="640x480", help="input frames WxH")
    ap.add_argument("--input", default="jpeg", choices=("jpeg", "raw"))
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--outputs", default="features_pca,depth")
    ap.add_argument(
        "--cuda-graphs", type=int, default=1, help="engine as CUDA graphs on CUDA (the tool's default)"
    )
    ap.add_argument("--decode-workers", type=int, default=None)
    ap.add_argument("--build-workers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="round-robin repeats per row (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cv-threads", type=int, default=-1, help="as dinov3-ros process --cv-threads")
    ap.add_argument("--torch-threads", type=int, default=-1, help="as dinov3-ros process --torch-threads")
    ap.add_argument("--blas-threads", type=int, default=0, help="as dinov3-ros process --blas-threads")
    ap.add_argument("--switch-interval-ms", type=float, default=0.0, help="as dinov3-ros process")
    ap.add_argument("--workdir", default=None, help="where the bags go (default: a temp dir)")
    ap.add_argument(
        "--rows",
        default="",
        help="measure only the rows whose name contains one of these words besides the engine "
        "(comma-separated, e.g. tool,ceiling,overlapped; default all)",
    )
    ap.add_argument(
        "--gather-mb", type=float, default=None, help="MCAP bytes per write call (default: the tool's)"
    )
    ap.add_argument("--disk-mb", type=int, default=0, help="also measure write+fsync bandwidth (MB)")
    ap.add_argument("--out", default="bench_offline.json")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    from dinov3_ros.offline.process import apply_thread_settings

    apply_thread_settings(args, args.device)  # the tool's process-wide settings, for every row alike
    if args.gather_mb is not None:
        from dinov3_ros.offline import bagout

        bagout.GATHER_BYTES = int(args.gather_mb * (1 << 20))
    device = torch.device(args.device)
    res = tuple(int(v) for v in args.resolution.lower().split("x"))
    iw, ih = (int(v) for v in args.image_size.lower().split("x"))
    outputs = set(args.outputs.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_offline_"))
    work.mkdir(parents=True, exist_ok=True)
    bag = work / "input"
    if bag.exists():
        shutil.rmtree(bag)
    t0 = time.perf_counter()
    make_input(bag, args.frames, iw, ih, args.input)
    print(
        f"input: {args.frames} {args.input} frames {iw}x{ih} in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    disk = disk_bandwidth(work, args.disk_mb) if args.disk_mb > 0 else None
    if disk:
        print(f"disk: {args.disk_mb} MB written in 1 MB writes + fsync at {disk:.2f} GB/s", file=sys.stderr)
    dev = str(device) if device.type == "cpu" else "cuda:0"
    results = []
    for weights in [w for w in args.weights.split(",") if w]:
        results.append(bench_model(args, weights, bag, work, device, dev, res, (iw, ih), outputs))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    first = dict(results[0])
    first["models"] = results
    first["disk_write_fsync_gb_per_s"] = disk
    write_json(args.out, first)

    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def bench_model(args, weights, bag, work, device, dev, res, size, outputs) -> dict:
    """All rows for one model (round-robin repeats, medians)."""
    from dinov3_ros.offline import process as proc
    from dinov3_ros.pipeline.model import load_model
    from dinov3_ros.pipeline.pipeline import Pipeline
    from dinov3_ros.pipeline.types import Frame, PipelineConfig

    iw, ih = size
    B = args.batch_size
    # the same engine (CUDA graphs on CUDA, as the tool's default) for the baseline and every row
    model = load_model(weights, "torch", dev, args.precision, res, cuda_graphs=bool(args.cuda_graphs))
    config = PipelineConfig(resolution=res)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # 1. bare batched engine ----------------------------------------------------------------
    mean = torch.tensor(model.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=dev).view(1, 3, 1, 1)
    batch = ((torch.rand(B, 3, *res, device=dev) - mean) / std).contiguous()
    n_iter = max(3, args.frames // B)

    def engine_fps() -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n_iter):
            model.engine.run(batch)
        sync()
        return n_iter * B / (time.perf_counter() - t0)

    # 2. pipeline.process on pre-decoded frames ----------------------------------------------------
    from dinov3_ros.offline.sources import decode_message, open_source

    src = open_source(bag)
    frames, in_msgs = [], []
    for m in src.messages():
        rgb, stamp, fid = decode_message(src, m)
        frames.append(Frame(rgb, stamp, fid, None, m.topic))
        in_msgs.append(m)
        if len(frames) >= min(args.frames, 4 * B):
            break
    pipe = Pipeline.from_model(model, config, device=dev)

    # the serialized output messages of a few real frames: what the write-only ceiling row writes
    from dinov3_ros.msgs.cdr import parts_len
    from dinov3_ros.offline.emit import MsgEmitter

    emitter = MsgEmitter(src, outputs)
    out_msgs = [
        emitter.frame_messages(fo, m, f.image)
        for fo, m, f in zip(pipe.process(frames[:B], outputs), in_msgs[:B], frames[:B])
    ]
    src.close()
    pipe.reset()
    bytes_per_frame = sum(parts_len(raw) for msgs in out_msgs for _k, _t, raw in msgs) / len(out_msgs)

    def write_only_fps() -> float:
        """Ceiling of the output side: the same serialized bytes through OutputBag, no model."""
        from dinov3_ros.offline.bagout import OutputBag

        out = work / "write_only"
        shutil.rmtree(out, ignore_errors=True)  # deleting the last run's GBs is not the tool's work
        ob = OutputBag(out, overwrite=True, resolve_conn=emitter.resolve)
        t = time.perf_counter()
        ob.open()
        for i in range(args.frames):
            for key, _ts, raw in out_msgs[i % len(out_msgs)]:
                ob.write(key, 1_700_000_000_000_000_000 + i, raw)
        ob.finalize()
        return args.frames / (time.perf_counter() - t)

    def read_decode_fps() -> float:
        """Ceiling of the input side: read the bag + decode every frame on the decode pool, no model."""
        from concurrent.futures import ThreadPoolExecutor

        t = time.perf_counter()
        s2 = open_source(bag)
        n = 0
        with ThreadPoolExecutor(args.decode_workers or 4) as pool:
            futs = []
            for m in s2.messages():
                futs.append(pool.submit(decode_message, s2, m))
                if len(futs) >= 64:
                    futs.pop(0).result()
                    n += 1
            for f in futs:
                f.result()
                n += 1
        s2.close()
        return n / (time.perf_counter() - t)

    def pipeline_fps() -> float:
        sync()
        t0 = time.perf_counter()
        done = 0
        while done < n_iter * B:
            for s in range(0, len(frames) - B + 1, B):
                pipe.process(frames[s : s + B], outputs)
                done += B
        sync()
        return done / (time.perf_counter() - t0)

    def overlapped_fps() -> float:
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=2)

        def heads() -> None:
            while (h := q.get()) is not None:
                pipe.finish(h)

        th = threading.Thread(target=heads, daemon=True)
        sync()
        t0 = time.perf_counter()
        th.start()
        done = 0
        while done < n_iter * B:
            for s in range(0, len(frames) - B + 1, B):
                q.put(pipe.infer(frames[s : s + B], outputs))
                done += B
        q.put(None)
        th.join()
        sync()
        return done / (time.perf_counter() - t0)

    # 3./4. offline: serial loop, then the real tool ------------------------------------------------
    parser = argparse.ArgumentParser()
    proc.add_arguments(parser)

    def tool_fps() -> float:
        out = work / "tool"
        shutil.rmtree(out, ignore_errors=True)  # deleting the last run's GBs is not the tool's work
        a = [
            str(bag),
            "--out",
            str(out),
            "--weights",
            weights,
            "--precision",
            args.precision,
            "--resolution",
            args.resolution,
            "--outputs",
            args.outputs,
            "--batch-size",
            str(B),
            "--device",
            dev,
            "--no-progress",
            "--overwrite",
        ]
        if args.decode_workers:
            a += ["--decode-workers", str(args.decode_workers)]
        if args.build_workers:
            a += ["--build-workers", str(args.build_workers)]
        t = time.perf_counter()
        summ: list = []
        rc, text = proc.process_one(
            parser.parse_args(a), bag, out, model, config, outputs, dev, False, None, summaries=summ
        )
        dt = time.perf_counter() - t
        if rc != 0:
            raise RuntimeError(text)
        if summ:
            stage_ms.append({k: v * 1e3 / max(1, summ[0].frames) for k, v in summ[0].stages.items()})
            run_only.append(summ[0].fps)
            fixed_s.append(dt - summ[0].seconds)
        return args.frames / dt

    stage_ms: list[dict[str, float]] = []
    run_only: list[float] = []  # frames/s of the processing loop alone (no open/scan/finalize)
    fixed_s: list[float] = []  # seconds outside the loop: open input/output, count frames, finalize

    def serial_fps() -> float:
        shutil.rmtree(work / "serial", ignore_errors=True)
        return args.frames / serial_run(bag, work / "serial", model, config, outputs, B, dev, args)

    # warm-up of everything (allocator, cuDNN/cuBLAS heuristics, page cache), then round-robin repeats so
    # slow drifts of a shared machine hit every row alike; the median is reported.
    measures = [
        ("engine (bare, batched)", engine_fps),
        ("pipeline.process (decoded frames)", pipeline_fps),
        ("pipeline infer|finish overlapped (decoded frames)", overlapped_fps),
        ("offline serial (1 thread, no overlap)", serial_fps),
        ("offline tool (pipelined)", tool_fps),
        ("ceiling: read + decode only (no model)", read_decode_fps),
        ("ceiling: write the same output bytes to a bag (no model)", write_only_fps),
    ]
    if args.rows:  # the engine baseline always runs
        keys = [r.strip() for r in args.rows.split(",") if r.strip()]
        measures = measures[:1] + [m for m in measures[1:] if any(k in m[0] for k in keys)]
    for _name, fn in measures:
        fn()
    samples: dict[str, list[float]] = {name: [] for name, _ in measures}
    for _ in range(args.repeats):
        for name, fn in measures:
            samples[name].append(fn())
    rows = [
        {"row": name, "frames_per_s": statistics.median(v), "min": min(v), "max": max(v)}
        for name, v in samples.items()
    ]
    eng_fps = rows[0]["frames_per_s"]
    for r in rows:
        r["vs_engine"] = r["frames_per_s"] / eng_fps
    table = f"### {weights}\n" + markdown_table(rows, ["row", "frames_per_s", "min", "max", "vs_engine"])
    print(table)
    tool_row = next(r for r in rows if r["row"].startswith("offline tool"))
    stages = stage_ms[-1] if stage_ms else {}
    print(
        f"output: {bytes_per_frame / 1e6:.2f} MB/frame; tool stages (ms/frame, thread time, pools summed): "
        + ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if v > 0)
    )
    ratio = tool_row["vs_engine"]
    loop = statistics.median(run_only[-args.repeats :]) if run_only else 0.0
    fixed = statistics.median(fixed_s[-args.repeats :]) if fixed_s else 0.0
    need_gbs = 0.8 * eng_fps * bytes_per_frame / 1e9
    print(
        f"\n{weights}: offline tool / bare engine = {ratio:.2f} (target >= 0.80); processing loop alone "
        f"{loop:.0f} frames/s ({loop / eng_fps:.2f}), {fixed:.2f} s outside it (open, count, finalize); "
        f"80% of the engine needs {need_gbs:.2f} GB/s of output"
    )
    return {
        "env": environment(device),
        "weights": weights,
        "precision": args.precision,
        "resolution": res,
        "image_size": [iw, ih],
        "input": args.input,
        "frames": args.frames,
        "batch_size": B,
        "outputs": sorted(outputs),
        "rows": rows,
        "tool_vs_engine": ratio,
        "tool_loop_frames_per_s": loop,
        "tool_loop_vs_engine": loop / eng_fps,
        "tool_fixed_s": fixed,
        "output_gb_per_s_at_80pct": need_gbs,
        "output_bytes_per_frame": bytes_per_frame,
        "tool_stages_ms_per_frame": stages,
        "tool_stages_all_runs": stage_ms,
        "target": 0.8,
    }


def serial_run(bag: Path, out: Path, model, config, outputs, B, dev, args) -> float:
    """The straightforward loop (read, decode, process, build, write; nothing overlapped)."""
    from dinov3_ros.offline.bagout import OutputBag
    from dinov3_ros.offline.emit import MsgEmitter
    from dinov3_ros.offline.execute import _intrinsics
    from dinov3_ros.offline.sources import decode_message, open_source
    from dinov3_ros.pipeline.pipeline import Pipeline
    from dinov3_ros.pipeline.types import CameraIntrinsics, Frame

    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    src = open_source(bag)
    pipe = Pipeline.from_model(model, config, device=dev)
    em = MsgEmitter(src, outputs)
    ob = OutputBag(out, resolve_conn=em.resolve)
    ob.open()
    pending = []

    def flush() -> None:
        fos = pipe.process([f for f, _m, _r in pending], outputs)
        for (_f, m, rgb), fo in zip(pending, fos):
            for key, ts, raw in em.frame_messages(fo, m, rgb):
                ob.write(key, ts, raw)
        pending.clear()

    for m in src.messages():
        rgb, stamp, fid = decode_message(src, m)
        pending.append(
            (Frame(rgb, stamp, fid, _intrinsics(m.camera_info, rgb, CameraIntrinsics), m.topic), m, rgb)
        )
        if len(pending) == B:
            flush()
    if pending:
        flush()
    ob.finalize()
    src.close()
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
