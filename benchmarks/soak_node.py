"""Soak of ``dinov3_node``: a long run at a camera rate with corrupted frames and camera_info faults.

Three processes over real DDS (the node, a camera publisher, a subscriber), as on a robot:

* the publisher sends ``--rate`` Hz rgb8 frames (reliable QoS, so nothing is lost in transport) for
  ``--minutes``, with a camera_info per frame; ``--corrupt`` of the frames are undecodable (unknown
  encoding, step mismatch, truncated data, a garbage JPEG) and ``--info-faults`` of the camera_infos are
  unusable (K all zero, NaN, negative focal length);
* the subscriber records the stamp of every ``depth/image`` and ``features/pca`` it receives, and the
  node's last ``/diagnostics``;
* this script samples the node's RSS every 2 s.

Reported (JSON on stdout and in ``--out``): whether the node survived, RSS growth after the warm-up
(median of the last minute against the median of the minute after warm-up), and the accounting of
every good frame: published (its outputs received), or counted by the node as dropped by the
newest-frame policy, or unaccounted. Not a test: it runs for minutes.

    python benchmarks/soak_node.py --minutes 10 --rate 30 --out benchmarks/results/soak_node-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
W, H = 160, 120
NODE = "dinov3_soak_node"
TOPICS = ("depth/image", "features/pca")


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


# ---------------------------------------------------------------------------------------- roles
def role_pub(a: dict) -> None:
    """Publish frames at ``rate`` Hz; write the stamps of good, corrupted and info-fault frames."""
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from dinov3_ros.core import CameraIntrinsics
    from dinov3_ros.msgs import builders as B
    from dinov3_ros.msgs.image_codec import encode_raw
    from dinov3_ros.ros.types import ros_types

    rclpy.init()
    node = rclpy.create_node(f"soak_pub_{os.getpid()}")
    tp = ros_types()
    q = QoSProfile(depth=50)
    p_img = node.create_publisher(Image, "image", q)
    p_cmp = node.create_publisher(CompressedImage, "image/compressed", q)
    p_inf = node.create_publisher(CameraInfo, "camera_info", q)
    t_end = time.time() + 60
    while (
        p_img.get_subscription_count() == 0 or p_inf.get_subscription_count() == 0
    ) and time.time() < t_end:
        time.sleep(0.05)
    rng = random.Random(a["seed"])
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for k in range(8):  # a few moving textures, encoded once
        img = np.stack([(xx * 2 + 9 * k) % 256, (yy * 2) % 256, ((xx // 16 + yy // 16 + k) % 2) * 200], 2)
        frames.append(encode_raw(img.astype(np.uint8), "rgb8"))
    K = CameraIntrinsics(np.array([[120.0, 0, 79.5], [0, 120.0, 59.5], [0, 0, 1]]), W, H)
    bad_k = [[0.0] * 9, [float("nan")] * 9, [-120.0, 0, 79.5, 0, 120.0, 59.5, 0, 0, 1]]
    log = {"good": [], "corrupt": [], "info_fault": []}
    period, n = 1.0 / a["rate"], int(a["seconds"] * a["rate"])
    t0 = time.perf_counter()
    for i in range(n):
        stamp = 1_000_000_000 + i * 1_000_000
        hdr = B.header(tp, stamp, "cam_optical")
        if rng.random() < a["info_faults"]:
            k = rng.choice(bad_k)
            roi = tp.new(
                "sensor_msgs/msg/RegionOfInterest",
                x_offset=0,
                y_offset=0,
                height=0,
                width=0,
                do_rectify=False,
            )
            p_inf.publish(tp.new("sensor_msgs/msg/CameraInfo", header=hdr, height=H, width=W, distortion_model="plumb_bob",
                                 d=[0.0] * 5, k=[float(v) for v in k], r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1], p=[0.0] * 12,
                                 binning_x=0, binning_y=0, roi=roi))  # fmt: skip
            log["info_fault"].append(stamp)
        else:
            p_inf.publish(B.camera_info(tp, hdr, K))
        data, step = frames[i % len(frames)]
        if rng.random() < a["corrupt"]:
            kind = rng.choice(["encoding", "step", "truncated", "jpeg"])
            if kind == "jpeg":
                msg = tp.new("sensor_msgs/msg/CompressedImage", header=hdr, format="jpeg",
                             data=tp.u8(np.frombuffer(b"\xff\xd8\xff" + os.urandom(2000), np.uint8)))  # fmt: skip
                p_cmp.publish(msg)
            else:
                enc, st, d = {"encoding": ("weird16", step, data), "step": ("rgb8", step - 3, data),
                              "truncated": ("rgb8", step, data[: len(data) // 2])}[kind]  # fmt: skip
                p_img.publish(B.raw_image(tp, hdr, d, H, W, st, enc))
            log["corrupt"].append(stamp)
        else:
            p_img.publish(B.raw_image(tp, hdr, data, H, W, step, "rgb8"))
            log["good"].append(stamp)
        delay = t0 + (i + 1) * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    log["seconds"] = time.perf_counter() - t0
    Path(a["out"]).write_text(json.dumps(log))
    node.destroy_node()
    rclpy.shutdown()


def role_sub(a: dict) -> None:
    """Record the stamps of the outputs and the node's last /diagnostics until told to stop."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node(f"soak_sub_{os.getpid()}")
    got: dict[str, set[int]] = {t: set() for t in TOPICS}
    diag: dict[str, str] = {}

    def on(t: str, m) -> None:
        got[t].add(m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec)

    for t in TOPICS:
        node.create_subscription(Image, f"/{NODE}/{t}", lambda m, t=t: on(t, m), QoSProfile(depth=100))

    def on_diag(m) -> None:
        for s in m.status:
            if s.name.endswith(": perception"):
                diag.clear()
                diag.update({kv.key: kv.value for kv in s.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    Path(a["ready"]).write_text("ready")
    while not Path(a["stop"]).exists():
        rclpy.spin_once(node, timeout_sec=0.1)
    Path(a["out"]).write_text(json.dumps({"got": {t: sorted(v) for t, v in got.items()}, "diag": diag}))
    node.destroy_node()
    rclpy.shutdown()


# ---------------------------------------------------------------------------------------- driver
def _spawn(role: str, args: dict, log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, json.dumps(args)],
        cwd=ROOT,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )


def _stop(p: subprocess.Popen | None) -> int | None:
    if p is None:
        return None
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
    return p.returncode


def _node(args: argparse.Namespace, log: Path) -> subprocess.Popen:
    from dinov3_ros.ros.params import node_command

    params = {
        "weights": args.weights,
        "resolution": args.resolution,
        "input_qos": "default",
        "image_transport": "both",
        "diagnostics_period": 1.0,
        "stale_after_s": 0.0,
    }
    cmd = node_command(params, params_file=ROOT / "config/dinov3.yaml", node_name=NODE)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _wait_for(cond, seconds: float, what: str) -> None:
    t_end = time.time() + seconds
    while time.time() < t_end:
        if cond():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="dinov3_soak_"))
    node = sub = pub = None
    rss: list[tuple[float, int]] = []
    try:
        node = _node(args, tmp / "node.log")
        _wait_for(
            lambda: "loaded in" in (tmp / "node.log").read_text() or node.poll() is not None, 300, "the node"
        )
        if node.poll() is not None:
            raise RuntimeError((tmp / "node.log").read_text())
        sub = _spawn("sub", {"ready": str(tmp / "ready"), "stop": str(tmp / "stop"), "out": str(tmp / "sub.json")},
                     tmp / "sub.log")  # fmt: skip
        _wait_for(lambda: (tmp / "ready").exists(), 60, "the subscriber")
        seconds = args.minutes * 60
        pub = _spawn("pub", {"rate": args.rate, "seconds": seconds, "corrupt": args.corrupt,
                             "info_faults": args.info_faults, "seed": args.seed, "out": str(tmp / "pub.json")},
                     tmp / "pub.log")  # fmt: skip
        t0 = time.time()
        while pub.poll() is None and node.poll() is None:
            rss.append((time.time() - t0, _rss_kb(node.pid)))
            time.sleep(2.0)
        time.sleep(5.0)  # the last frames through the heads, a last /diagnostics
        alive = node.poll() is None
        (tmp / "stop").write_text("")
        sub.wait(timeout=60)
    finally:
        for p in (pub, sub):
            _stop(p)
        node_rc = _stop(node)
    return _report(args, tmp, rss, alive, node_rc)


def _report(args: argparse.Namespace, tmp: Path, rss: list, alive: bool, node_rc: int | None) -> dict:
    import numpy as np
    import torch

    pub = json.loads((tmp / "pub.json").read_text())
    sub = json.loads((tmp / "sub.json").read_text())
    diag = sub["diag"]
    good = set(pub["good"])
    published = good & set(sub["got"]["depth/image"])
    dropped = int(diag.get("frames_dropped", 0)) + int(diag.get("frames_stale", 0))
    received = int(diag.get("frames_received", 0))
    bad = int(diag.get("bad_frames", 0))
    t = np.array([x[0] for x in rss])
    r = np.array([x[1] for x in rss], float)
    warm = args.warmup_s
    base = r[(t >= warm) & (t < warm + 60)]
    last = r[t >= t.max() - 60]
    log_text = (tmp / "node.log").read_text()
    return {
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "torch": torch.__version__,
        "weights": args.weights,
        "resolution": args.resolution,
        "seconds": round(pub["seconds"], 1),
        "rate_hz": args.rate,
        "frames_sent": len(pub["good"]) + len(pub["corrupt"]),
        "good_frames": len(good),
        "corrupted_frames": len(pub["corrupt"]),
        "camera_info_faults": len(pub["info_fault"]),
        "node_alive_at_end": alive,
        "node_exit_code": node_rc,
        "tracebacks_in_log": log_text.count("Traceback"),
        "frames_received": received,
        "lost_in_transport": len(pub["good"]) + len(pub["corrupt"]) - received,
        "good_published": len(published),
        "counted_dropped_newest_frame": dropped,
        "counted_bad": bad,
        # every received frame is published (good ones), dropped by the newest-frame policy, or bad
        "unaccounted_frames": received - len(published) - dropped - bad,
        "bad_camera_info_counted": int(diag.get("bad_camera_info", 0)),
        "published_rate_hz": round(len(published) / max(pub["seconds"], 1e-9), 2),
        "rss_mb_after_warmup": round(float(np.median(base)) / 1024, 1) if base.size else None,
        "rss_mb_last_minute": round(float(np.median(last)) / 1024, 1) if last.size else None,
        "rss_growth_pct": round(100 * (np.median(last) / np.median(base) - 1), 2)
        if base.size and last.size
        else None,
        "rss_max_mb": round(float(r.max()) / 1024, 1) if r.size else None,
        "latency_p99_ms_last": float(diag.get("latency_p99_ms", 0)),
        "logs": str(tmp),
    }


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        {"pub": role_pub, "sub": role_sub}[sys.argv[2]](json.loads(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the camera publishes")
    ap.add_argument("--rate", type=float, default=30.0, help="camera rate, Hz")
    ap.add_argument("--corrupt", type=float, default=0.01, help="fraction of undecodable frames")
    ap.add_argument("--info-faults", type=float, default=0.01, help="fraction of unusable camera_infos")
    ap.add_argument("--weights", default="default", help="node weights (default: the shipped model)")
    ap.add_argument("--resolution", default="64x96", help="network input HxW")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the node")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS baseline starts after this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    # its own DDS domain on this host unless one is given: other graphs stay out of the figures
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    res = run(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out is not None:
        from dinov3_ros.fsutil import atomic_write_bytes

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (text + "\n").encode())
    ok = res["node_alive_at_end"] and abs(res["unaccounted_frames"]) <= 2
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
