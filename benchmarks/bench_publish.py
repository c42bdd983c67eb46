"""Cost of publishing one frame's outputs with rclpy: message objects vs serialized CDR bytes.

The node's outputs at 640x480 (features 30x40x384 float32, PCA, depth + camera_info, a 307k-point
xyzrgb cloud, matches, objects mask + boxes, debug overlay: ~10 MB) are built and published on real
rclpy publishers, with a subscriber process on every topic (Fast DDS, localhost), alternating the two
paths in one run:

- ``objects``: the builders' rclpy message objects, ``Publisher.publish(msg)`` (the payload is copied
  into an ``array.array``, into the C message, then serialized - all under the GIL);
- ``serialized``: ``cdr.serialized_types()`` bytes, ``Publisher.publish(bytes)`` (one ``bytes.join``
  copy, then rclpy's copy into the serialized message).

Reported per frame: the publishing thread's wall time, and how much a concurrent pure-Python thread
got done meanwhile (its loop rate relative to running alone): the GIL left to the node's other threads.

    .venv/bin/python benchmarks/bench_publish.py --frames 60 --out bench_publish.json
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_node import K, write_json_atomic  # noqa: E402

from dinov3_ros.msgs import builders as B  # noqa: E402
from dinov3_ros.msgs.cdr import serialized_types  # noqa: E402
from dinov3_ros.pipeline.types import FrameOutputs, MatchResult, ObjectsResult  # noqa: E402

H, W = 480, 640

SUBSCRIBER = """
import sys, time, rclpy
from rclpy.qos import QoSProfile
from dinov3_ros.msgs import builders as B
from dinov3_ros.ros.types import ros_types
rclpy.init()
node = rclpy.create_node("bench_publish_sink")
tp, n = ros_types(), [0]
def cb(_m):
    n[0] += 1
subs = [node.create_subscription(tp.cls(t), "/bench_publish/" + k, cb, QoSProfile(depth=10))
        for k, t in B.TOPIC_TYPES.items()]
print("ready", flush=True)
end, last = time.monotonic() + float(sys.argv[1]), None
while time.monotonic() < end:  # until 3 s without messages after the first one
    before = n[0]
    rclpy.spin_once(node, timeout_sec=0.1)
    if n[0] != before:
        last = time.monotonic()
    elif last is not None and time.monotonic() - last > 3.0:
        break
print("received", n[0], flush=True)
node.destroy_node()
rclpy.shutdown()
"""


def frame_outputs(i: int) -> FrameOutputs:
    rng = np.random.default_rng(i)
    n = H * W
    xyz = rng.uniform(0.5, 4.0, (n, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, (n, 3), dtype=np.uint8)
    packed = np.concatenate([xyz, B.pack_rgb(rgb)[:, None]], 1)
    m = 300
    return FrameOutputs(
        stamp_ns=1_700_000_000_000_000_000 + i * 33_000_000,
        frame_id="camera_optical",
        source="",
        width=W,
        height=H,
        features=rng.standard_normal((30, 40, 384)).astype(np.float32),
        features_pca=rng.integers(0, 255, (30, 40, 3), dtype=np.uint8),
        depth=rng.uniform(0.5, 4.0, (H, W)).astype(np.float32),
        depth_info=K,
        points=xyz,
        points_rgb=rgb,
        points_packed=packed,
        points_dense=True,
        matches=MatchResult(
            rng.uniform(0, W, (m, 2)).astype(np.float32),
            rng.uniform(0, W, (m, 2)).astype(np.float32),
            rng.uniform(0, 1, m).astype(np.float32),
            rng.uniform(0, 1, m) > 0.3,
            1_700_000_000_000_000_000,
            "camera_optical",
        ),
        objects=ObjectsResult(
            (rng.uniform(0, 1, (H, W)) > 0.7).astype(np.uint16),
            np.array([1], np.uint32),
            np.array([[10, 10, 200, 200]], np.float32),
            np.array([0.8], np.float32),
            np.array([30000], np.uint32),
        ),
        debug=rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
    )


class _Spinner:
    """A pure-Python loop on its own thread: its iteration rate measures the GIL left to others."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(100):
                self.count += 1

    def start(self) -> None:
        self._th.start()

    def stop(self) -> None:
        self._stop.set()
        self._th.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per path (alternating)")
    ap.add_argument("--out", default="bench_publish.json")
    args = ap.parse_args()
    import rclpy
    from rclpy.qos import QoSProfile

    from dinov3_ros.ros.types import ros_types

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    seconds = 30 + args.frames * 1.0
    sink = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, str(seconds)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    rclpy.init()
    node = rclpy.create_node("bench_publish")
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        tp_obj, tp_ser = ros_types(), serialized_types()
        pubs = {
            k: node.create_publisher(tp_obj.cls(t), "/bench_publish/" + k, QoSProfile(depth=10))
            for k, t in B.TOPIC_TYPES.items()
        }
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and min(p.get_subscription_count() for p in pubs.values()) < 1:
            time.sleep(0.05)
        outs = [frame_outputs(i) for i in range(4)]
        # the spinner's rate alone (no publishing), the reference for "GIL left"
        sp = _Spinner()
        sp.start()
        time.sleep(0.5)
        c0, t0 = sp.count, time.perf_counter()
        time.sleep(1.0)
        alone = (sp.count - c0) / (time.perf_counter() - t0)
        res: dict[str, dict[str, list[float]]] = {
            "objects": {"ms": [], "gil_left": []},
            "serialized": {"ms": [], "gil_left": []},
        }
        for i in range(2 * args.frames + 4):
            path = "objects" if i % 2 == 0 else "serialized"
            tp = tp_obj if path == "objects" else tp_ser
            out = outs[i % len(outs)]
            c0, t0 = sp.count, time.perf_counter()
            for k, m in B.frame_messages(tp, out).items():
                pubs[k].publish(m)
            dt = time.perf_counter() - t0
            if i >= 4:
                res[path]["ms"].append(dt * 1e3)
                res[path]["gil_left"].append((sp.count - c0) / dt / alone)
            time.sleep(0.03)
        sp.stop()
    finally:
        node.destroy_node()
        rclpy.shutdown()
        try:
            received = (sink.communicate(timeout=30)[0] or "").strip()
        except subprocess.TimeoutExpired:
            sink.kill()
            received = "no answer (killed)"
    mb = sum(len(v) for v in B.frame_messages(serialized_types(), outs[0]).values()) / 1e6
    summary: dict[str, Any] = {
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "frame_mb": mb,
        "sink": received,
    }
    print(f"one frame's messages: {mb:.1f} MB; subscriber: {received}")
    print("| path | frames | publish ms p50 | p90 | GIL left to another thread (median) |")
    print("|---|---|---|---|---|")
    for path, r in res.items():
        a, g = np.asarray(r["ms"]), np.asarray(r["gil_left"])
        summary[path] = {
            "n": int(a.size),
            "p50_ms": float(np.median(a)),
            "p90_ms": float(np.percentile(a, 90)),
            "gil_left_median": float(np.median(g)),
        }
        print(f"| {path} | {a.size} | {np.median(a):.1f} | {np.percentile(a, 90):.1f} | {np.median(g):.0%} |")
    write_json_atomic(Path(args.out), summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
