"""``dinov3-ros process`` throughput against the bare batched engine, in the same run.

For each model and each output location (e.g. tmpfs and disk), frames/s of:

- ``engine``: ``engine.run`` on a ready, normalised batch on the device (the same engine the tool
  uses: CUDA graphs on CUDA) - the baseline;
- ``tool``: the tool end to end from a bag to a finished bag (open, read, decode, infer, heads,
  serialise, write, final fsync and rename; the model load excluded);
- optional (``--rows``): ``pipeline`` (``Pipeline.process`` on decoded frames, no bag), ``read``
  (read + decode the input only) and ``write`` (write the tool's output bytes only).

The input is a synthetic bag of textured frames (JPEG ``CompressedImage`` + ``CameraInfo`` by default).
``--engine null`` replaces the model by an engine that returns fixed tokens at once: the tool's
host-side ceiling on any machine. Results: ``benchmarks/results/offline-<device>-<torch>.json``.

    python benchmarks/bench_offline.py --device cuda --precision fp16 --resolution 448x448 --batch-size 32 \\
        --weights random:vits16,random:vitb16,random:vitl16 --frames 6144 \\
        --where tmpfs=/dev/shm/bench_offline,disk=out/bench_offline
    python benchmarks/bench_offline.py --device cpu --engine null --frames 1024 --where disk=out/bench_offline
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import markdown_table, save
from stack_sampler import StackSampler

W_IN, H_IN = 640, 480


def _frame(i: int, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack(
        [
            127 + 100 * np.sin((xx + 5 * i) / 17),
            127 + 100 * np.cos((yy - 3 * i) / 13),
            ((xx // 32 + yy // 32 + i) % 2) * 200 + 20,
        ],
        -1,
    )
    return rgb.clip(0, 255).astype(np.uint8)


def make_input(path: Path, n: int, w: int, h: int, kind: str = "jpeg") -> None:
    """A bag of ``n`` textured frames on ``/cam/image_raw[/compressed]`` plus ``/cam/camera_info``."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.core import CameraIntrinsics
    from dinov3_ros.msgs import builders
    from dinov3_ros.msgs.provider import rosbags_types

    ts = get_typestore(Stores.LATEST)
    tp = rosbags_types(ts)
    intr = CameraIntrinsics.from_fov(w, h, 70.0)
    topic = "/cam/image_raw" + ("/compressed" if kind == "jpeg" else "")
    mt = "sensor_msgs/msg/CompressedImage" if kind == "jpeg" else "sensor_msgs/msg/Image"

    def encode(i: int) -> tuple[bytes, bytes]:
        t = 1_700_000_000_000_000_000 + i * 33_333_333
        hdr = builders.header(tp, t, "cam_optical")
        rgb = _frame(i % 64, w, h)
        msg = builders.compressed_image(tp, hdr, rgb) if kind == "jpeg" else builders.image(tp, hdr, rgb)
        info = builders.camera_info(tp, hdr, intr)
        return bytes(ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo")), bytes(ts.serialize_cdr(msg, mt))

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as wr, ThreadPoolExecutor(8) as pool:
        ci = wr.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        im = wr.add_connection(topic, mt, typestore=ts)
        for i, (info, img) in enumerate(pool.map(encode, range(n))):
            t = 1_700_000_000_000_000_000 + i * 33_333_333
            wr.write(ci, t, info)
            wr.write(im, t, img)


class NullEngine:
    """An engine that returns fixed random tokens (and a depth plane) at once: the host-side ceiling."""

    def __init__(self, device: str, res: tuple[int, int], dim: int = 384) -> None:
        g = torch.Generator().manual_seed(0)
        h, w = res[0] // 16, res[1] // 16
        self.tokens = torch.randn(64, h, w, dim, generator=g).to(device)
        self.depth = torch.full((64, 1, *res), 2.0, device=device)
        self.info = type("Info", (), {"input_size": res, "patch_size": 16, "embed_dim": dim})()

    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        b = batch.shape[0]
        return {"patch_tokens": self.tokens[:b], "depth": self.depth[:b]}


def load(args: argparse.Namespace, weights: str, dev: str, res: tuple[int, int]) -> Any:
    from dinov3_ros.pipeline.model import LoadedModel, load_model

    if args.engine == "null":
        info = {
            "backend": "null",
            "model": "null",
            "arch": "null",
            "device": dev,
            "precision": "-",
            "depth_head": "-",
        }
        return LoadedModel(
            NullEngine(dev, res), None, 16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), info, res
        )
    return load_model(weights, "torch", dev, args.precision, res, cuda_graphs=dev.startswith("cuda"))


def engine_fps(model: Any, dev: str, res: tuple[int, int], batch_size: int, frames: int) -> float:
    """Frames/s of the bare engine on a ready, normalised batch (the same engine the tool runs)."""
    mean = torch.tensor(model.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=dev).view(1, 3, 1, 1)
    batch = ((torch.rand(batch_size, 3, *res, device=dev) * 255 / 255 - mean) / std).contiguous()
    n = max(3, frames // batch_size)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    model.engine.run(batch)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        model.engine.run(batch)
    sync()
    return n * batch_size / (time.perf_counter() - t)


def tool_run(
    args: argparse.Namespace, weights: str, model: Any, bag: Path, out: Path, dev: str
) -> tuple[float, Any]:
    """Frames/s of the tool end to end (and its summary)."""
    from dinov3_ros.offline import process as proc

    shutil.rmtree(out, ignore_errors=True)  # removing the last run's output is not the tool's work
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    p = argparse.ArgumentParser()
    proc.add_arguments(p)
    argv = [str(bag), "--out", str(out), "--weights", weights, "--precision", args.precision]
    argv += ["--resolution", args.resolution, "--outputs", args.outputs, "--batch-size", str(args.batch_size)]
    argv += ["--device", dev, "--no-progress", *args.tool_args.split()]
    a = p.parse_args(argv)
    proc.apply_thread_settings(a, dev)
    config = proc._config(a)
    summaries: list[Any] = []
    t = time.perf_counter()
    rc, text = proc.process_one(
        a, bag, out, model, config, proc._outputs(a.outputs), dev, False, None, summaries=summaries
    )
    dt = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(text)
    return summaries[0].frames / dt, summaries[0]


def read_fps(bag: Path, workers: int) -> float:
    """Frames/s of reading + decoding the input alone."""
    from dinov3_ros.offline.sources import decode_message, open_source

    t = time.perf_counter()
    src = open_source(bag)
    n = 0
    with ThreadPoolExecutor(workers) as pool:
        futs = [
            pool.submit(decode_message, src, m) for m in src.messages() if m.kind in ("image", "compressed")
        ]
        for f in futs:
            f.result()
            n += 1
    src.close()
    return n / (time.perf_counter() - t)


def _save_samples(path: str, weights: str, where: str, sampler: StackSampler) -> None:
    """Append the tool run's per-thread stack samples to ``path`` (text)."""
    with open(path, "a") as f:
        f.write(f"== {weights} on {where}: {sampler.table(top=60)}\n\n")


def measure(
    args: argparse.Namespace, weights: str, where: dict[str, Path], bags: dict[str, Path], dev: str
) -> list[dict[str, Any]]:
    """Every row of one model at every location (round-robin repeats, medians)."""
    res = tuple(int(v) for v in args.resolution.lower().split("x"))
    model = load(args, weights, dev, res)
    rows = args.rows.split(",")
    tool_frames = {}
    first = next(iter(where.values()))
    tool_run(args, weights, model, bags["warmup"], first / "warmup_out", dev)  # graph capture, allocator
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name, d in where.items():
            samples.setdefault(("engine", name), []).append(
                engine_fps(model, dev, res, args.batch_size, args.frames)
            )
            sampler = StackSampler(interval=0.002, depth=4) if args.sample else contextlib.nullcontext()
            with sampler:
                fps, summary = tool_run(args, weights, model, bags[name], d / "out", dev)
            if args.sample:
                _save_samples(args.sample, weights, name, sampler)
            samples.setdefault(("tool", name), []).append(fps)
            tool_frames[name] = {k: v * 1e3 / max(1, summary.frames) for k, v in summary.stages.items()}
            if "read" in rows:
                samples.setdefault(("read", name), []).append(read_fps(bags[name], 8))
            shutil.rmtree(d / "out", ignore_errors=True)
    out = []
    for (row, name), v in samples.items():
        eng = statistics.median(samples[("engine", name)])
        out.append(
            {
                "model": weights if args.engine != "null" else "null engine",
                "where": name,
                "row": row,
                "frames_per_s": statistics.median(v),
                "vs_engine": statistics.median(v) / eng,
                "runs": v,
                **({"tool_ms_per_frame_thread_time": tool_frames[name]} if row == "tool" else {}),
            }
        )
    if dev.startswith("cuda"):
        del model
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--weights", default="random:vitt16", help="comma-separated models, one table each")
    ap.add_argument("--engine", default="model", choices=("model", "null"), help="null: host-side ceiling")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--resolution", default="224x224", help="network HxW")
    ap.add_argument("--frames", type=int, default=512, help="frames of the input bag")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--outputs", default="features_pca,depth")
    ap.add_argument(
        "--where", default="disk=out/bench_offline", help="name=dir,... where input and output go"
    )
    ap.add_argument("--rows", default="engine,tool", help="engine,tool[,read]")
    ap.add_argument("--repeats", type=int, default=1, help="round-robin repeats (median)")
    ap.add_argument(
        "--tool-args", default="", help="extra dinov3-ros process arguments, e.g. '--decode-workers 4'"
    )
    ap.add_argument(
        "--sample",
        default=None,
        help="append per-thread Python stack samples of every tool run to this text file (stack_sampler)",
    )
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/offline-...)")
    args = ap.parse_args()
    dev = "cuda:0" if args.device.startswith("cuda") else "cpu"
    where = {k: Path(v) for k, v in (item.split("=", 1) for item in args.where.split(","))}
    bags: dict[str, Path] = {}
    t = time.perf_counter()
    for i, (name, d) in enumerate(where.items()):
        d.mkdir(parents=True, exist_ok=True)
        bags[name] = d / "input"
        shutil.rmtree(bags[name], ignore_errors=True)
        if i == 0:
            make_input(bags[name], args.frames, W_IN, H_IN)
            bags["warmup"] = d / "warmup_input"
            shutil.rmtree(bags["warmup"], ignore_errors=True)
            make_input(bags["warmup"], 2 * args.batch_size, W_IN, H_IN)
        else:
            shutil.copytree(bags[next(iter(where))], bags[name])
    print(
        f"inputs: {args.frames} JPEG frames {W_IN}x{H_IN} in {time.perf_counter() - t:.1f} s", file=sys.stderr
    )
    rows = []
    for weights in [w for w in args.weights.split(",") if w]:
        rows += measure(args, weights, where, bags, dev)
        print(markdown_table(rows, ["model", "where", "row", "frames_per_s", "vs_engine"]), flush=True)
    for d in where.values():
        shutil.rmtree(d, ignore_errors=True)
    settings = {
        k: getattr(args, k)
        for k in (
            "engine",
            "precision",
            "resolution",
            "frames",
            "batch_size",
            "outputs",
            "where",
            "tool_args",
        )
    }
    save(
        "offline",
        dev,
        {"settings": settings, "input": f"{args.frames} JPEG {W_IN}x{H_IN}", "rows": rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
