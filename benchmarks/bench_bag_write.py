"""The bag tool's output path alone: frames/s through its MCAP storage (``OutputBag``: checkpoints with
their fsync, final rename) against rosbags' own MCAP writer and against raw writes of the same bytes to
one file, in the same run.

    python benchmarks/bench_bag_write.py --where tmpfs=/dev/shm/bw,disk=out/bw --frames 2048

Each frame is the messages of ``features_pca,depth`` at 448x448 (an rgb8 and a 32FC1 ``Image``: a
small header part and the pixels as a zero-copy part, 1.4 MB), as the serialiser hands them over.
Rows: ``raw`` = the same bytes written with one ``os.writev`` per 8 MB and an fsync every
``--checkpoint-every`` frames on a background thread (the ceiling for one file); ``tool`` = ``OutputBag``; ``rosbags`` =
``rosbags.rosbag2.Writer`` with its MCAP storage (each message joined into one buffer first, as it
takes them). Reported: frames/s, MB/s, % of ``raw`` and the writing thread's CPU ms per frame.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import markdown_table, save

from dinov3_ros.offline.bagout import ConnKey, OutputBag

MSGTYPE = "sensor_msgs/msg/Image"
Frames = list[list[tuple[str, list]]]


@functools.cache
def _spec(msgtype: str) -> dict:
    """The connection definition of ``msgtype`` (built once: outside the timed writes)."""
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    return {
        "msgdef": ts.generate_msgdef(msgtype, ros_version=2)[0],
        "rihs01": ts.hash_rihs01(msgtype),
        "serialization_format": "cdr",
        "qos": (),
    }


def _frames(side: int, distinct: int) -> Frames:
    """``distinct`` frames of two messages each (header part + pixel part), cycled by the writers."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(distinct):
        pca = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        depth = rng.random((side, side), dtype=np.float32)
        out.append(
            [
                ("/cam/features/pca", [bytes(96), memoryview(pca).cast("B")]),
                ("/cam/depth/image", [bytes(96), memoryview(depth).cast("B")]),
            ]
        )
    return out


def write_tool(out: Path, frames: Frames, n: int, every: int) -> None:
    bag = OutputBag(out, resolve_conn=lambda key: _spec(key.msgtype))
    bag.open()
    keys = {t: ConnKey(t, MSGTYPE, "bench") for t, _ in frames[0]}
    for i in range(n):
        for topic, parts in frames[i % len(frames)]:
            bag.write(keys[topic], 1_000_000 * (i + 1), parts)
        if (i + 1) % every == 0:
            bag.checkpoint({"frames": i + 1}, None)
    bag.finalize({})


def write_rosbags(out: Path, frames: Frames, n: int, every: int) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    spec = _spec(MSGTYPE)
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {
            t: w.add_connection(t, MSGTYPE, msgdef=spec["msgdef"], rihs01=spec["rihs01"])
            for t, _ in frames[0]
        }
        for i in range(n):
            for topic, parts in frames[i % len(frames)]:
                w.write(conns[topic], 1_000_000 * (i + 1), b"".join(parts))


def write_raw(out: Path, frames: Frames, n: int, every: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    out.mkdir(parents=True)
    fd = os.open(out / "raw.bin", os.O_CREAT | os.O_WRONLY | os.O_EXCL)
    sync = ThreadPoolExecutor(1)  # checkpoint fsyncs off the writing thread, as the tool does
    try:
        batch: list = []
        size = 0
        for i in range(n):
            for _, parts in frames[i % len(frames)]:
                batch += parts
                size += sum(memoryview(p).nbytes for p in parts)
            if size >= 8 << 20 or (i + 1) % every == 0 or i == n - 1:
                os.writev(fd, batch)
                batch, size = [], 0
            if (i + 1) % every == 0:
                sync.submit(os.fsync, fd)
        sync.shutdown(wait=True)
        os.fsync(fd)
    finally:
        sync.shutdown(wait=True)
        os.close(fd)


WRITERS: dict[str, Callable[[Path, Frames, int, int], None]] = {
    "raw": write_raw,
    "tool": write_tool,
    "rosbags": write_rosbags,
}


def run_once(where: Path, name: str, frames: Frames, n: int, every: int) -> dict[str, float]:
    out = where / "bag"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    nbytes = sum(memoryview(p).nbytes for _, parts in frames[0] for p in parts)
    t0, c0 = time.perf_counter(), time.thread_time()
    WRITERS[name](out, frames, n, every)
    dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    shutil.rmtree(where, ignore_errors=True)
    return {"fps": n / dt, "mb_s": n * nbytes / dt / 1e6, "cpu_ms": cpu / n * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--where", default="tmpfs=/dev/shm/bench_bag_write", help="name=dir,... output places")
    ap.add_argument("--frames", type=int, default=2048)
    ap.add_argument("--side", type=int, default=448, help="image side of the two messages")
    ap.add_argument("--writers", default=",".join(WRITERS), help="rows, of: " + ", ".join(WRITERS))
    ap.add_argument("--checkpoint-every", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="round-robin repeats (median)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    frames = _frames(a.side, 16)
    _spec(MSGTYPE)
    names = [w for w in a.writers.split(",") if w]
    rows = []
    for spec in a.where.split(","):
        place, _, where = spec.partition("=")
        runs: dict[str, list[dict[str, float]]] = {w: [] for w in names}
        for _ in range(a.repeats):
            for w in names:
                runs[w].append(run_once(Path(where), w, frames, a.frames, a.checkpoint_every))
        meds = {w: {k: statistics.median(r[k] for r in runs[w]) for k in runs[w][0]} for w in names}
        for w in names:
            share = 100 * meds[w]["fps"] / meds["raw"]["fps"] if "raw" in meds else None
            rows.append({"where": place, "writer": w, **meds[w], "% of raw": share})
    print(markdown_table(rows, ["where", "writer", "fps", "mb_s", "% of raw", "cpu_ms"]))
    save("bag_write", "cpu", {"args": vars(a), "rows": rows}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
