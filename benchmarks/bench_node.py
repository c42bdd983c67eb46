"""End-to-end node latency/throughput at 30 Hz 640x480 with all outputs, against bare engine inference.

Three measurements in one run, same model, same device:

1. ``engine``: bare ``Engine.run`` on a preprocessed batch (the baseline), and preprocess + engine.
2. ``pipeline``: ``Pipeline.process`` with every output (decode-free, no messages).
3. ``stream``: frames at ``--hz`` for ``--seconds`` (after ``--warmup``):
   - ``dds`` (rclpy available): ``dinov3_node`` in its own process; this process publishes
     sensor_msgs/Image rgb8 + CameraInfo (header stamp = send time) and subscribes to every output
     (keep-last 1); latency = arrival of each output message - send time (receive -> publish ->
     delivery); the node's own receive -> publish percentiles come from /diagnostics.
   - ``inproc`` (no rclpy, e.g. the GPU machine): the node's own worker
     (:class:`dinov3_ros.ros.worker.FrameWorker`) without DDS: a producer thread at ``--hz`` fills the
     same newest-frame ``Mailbox`` with serialized images (what the node's raw subscriptions get); the
     worker decodes them as the node does, runs the scheduler (inference | heads) and serializes every
     output message; latency = messages serialized - frame put.
   Drops = frames replaced before the worker took them (+ frames with no output in ``dds`` mode).

Results: ``benchmarks/results/node-<device>-<torch>.json``.

    .venv/bin/python benchmarks/bench_node.py --device cpu
    python benchmarks/bench_node.py --device cuda --precision fp16 --resolution 480x640 --seconds 20
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
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import save  # noqa: E402

from dinov3_ros.core import CameraIntrinsics, Frame, PipelineConfig  # noqa: E402
from dinov3_ros.core.config import parse_settings  # noqa: E402
from dinov3_ros.msgs import cdr  # noqa: E402
from dinov3_ros.pipeline.model import load_model  # noqa: E402
from dinov3_ros.pipeline.outputs import OUTPUTS, topic_types  # noqa: E402
from dinov3_ros.pipeline.pipeline import Pipeline  # noqa: E402
from dinov3_ros.ros.mailbox import Mailbox  # noqa: E402

W, H = 640, 480
K = CameraIntrinsics(np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]]), W, H)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def test_image(i: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([(x + 3 * i) % 256, y % 256, ((x // 40 + y // 40) % 2) * 200], 2).astype(np.uint8)
    img[160:320, 240:400] = (230, 40, 40)
    return img


def bench_engine(model: Any, pipe: Pipeline, device: str, seconds: float) -> dict[str, Any]:
    img = test_image()
    pre = pipe._pre
    batch, _ = pre([img])
    for _ in range(3):
        model.engine.run(batch)
    _sync(device)
    eng, both = [], []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(eng) < 5:
        t0 = time.perf_counter()
        b, _ = pre([img])
        _sync(device)
        t1 = time.perf_counter()
        model.engine.run(b)
        _sync(device)
        t2 = time.perf_counter()
        eng.append((t2 - t1) * 1e3)
        both.append((t2 - t0) * 1e3)
    return {"engine": _stats(eng), "preprocess+engine": _stats(both)}


def bench_pipeline(pipe: Pipeline, device: str, seconds: float) -> dict[str, Any]:
    ms, stages = [], {}
    i = 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(ms) < 5:
        fr = Frame(test_image(i), i, "camera_optical", K, "bench_pipeline")
        t0 = time.perf_counter()
        (o,) = pipe.process([fr], set(OUTPUTS))
        _sync(device)
        ms.append((time.perf_counter() - t0) * 1e3)
        if i >= 2:
            for k, v in o.timings_ms.items():
                stages.setdefault(k, []).append(v)
        i += 1
    return {
        "pipeline": _stats(ms[2:] or ms),
        "stages_p50_ms": {k: float(np.median(v)) for k, v in stages.items()},
    }


class _BenchHost:
    """The :class:`FrameWorker` host of the in-process stream: decodes raw images, records latency."""

    def __init__(self, pipe: Pipeline) -> None:
        from types import SimpleNamespace

        self.settings = SimpleNamespace(batch_window_ms=0.0, max_age_ms=0.0, pipeline=pipe.config)
        self.lat: list[tuple[float, float]] = []  # (receive time, latency ms): the frame's last output
        self.topic_lat: dict[str, list[tuple[float, float]]] = {}  # the same per output topic
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.stats = self
        self.log = self
        self._recv: dict[int, float] = {}

    # stats / log
    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def published_frame(self, latency_s: float, now: float) -> None:
        self.lat.append((now - latency_s, latency_s * 1e3))

    def published_topics(self, topics: tuple[str, ...], latency_s: float) -> None:
        now = time.monotonic()
        for t in topics:
            self.topic_lat.setdefault(t, []).append((now - latency_s, latency_s * 1e3))

    def error(self, text: str) -> None:
        self.errors.append(text)

    # host
    def wanted_topics(self, cam: str) -> set[str]:
        return set(topic_types())

    def make_frame(self, cam: str, item: tuple[bytes, bytes]) -> Frame:
        from dinov3_ros.ros.worker import decode_frame

        raw, info = item
        return decode_frame(cam or "/", "sensor_msgs/msg/Image", raw, [info], self)

    def publish(self, cam: str, msgs: dict[str, bytes]) -> None:
        pass


def stream_inproc(pipe: Pipeline, device: str, hz: float, seconds: float, warmup: float) -> dict[str, Any]:
    """The node's worker (:class:`FrameWorker`: mailbox -> decode -> infer | finish -> messages) without DDS."""
    from dinov3_ros.ros.worker import FrameWorker

    host = _BenchHost(pipe)
    images = [test_image(i) for i in range(4)]
    box = Mailbox([""])
    stop = threading.Event()
    produced = [0]

    def producer() -> None:
        period, t0, k = 1.0 / hz, time.perf_counter(), 0
        while not stop.is_set():
            st = time.time_ns()  # the serialized messages the node's raw subscriptions receive
            raw = cdr.join(cdr.image_parts(st, "camera_optical", images[k % len(images)], "rgb8"))
            box.put("", (raw, cdr.join(cdr.camera_info_parts(st, "camera_optical", K))))
            produced[0] += 1
            k += 1
            delay = t0 + k * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    worker = FrameWorker(host, pipe, box)
    worker.start()
    th = threading.Thread(target=producer, daemon=True)
    th.start()
    time.sleep(warmup)
    t_meas, drop0, prod0 = time.monotonic(), box.dropped, produced[0]
    time.sleep(seconds)
    t_end, drops, prod = time.monotonic(), box.dropped - drop0, produced[0] - prod0
    stop.set()
    th.join(timeout=30)
    worker.stop(timeout=30)
    window = [ms for recv, ms in host.lat if t_meas <= recv < t_end]
    per_topic = {
        t: _stats([ms for recv, ms in v if t_meas <= recv < t_end]) for t, v in sorted(host.topic_lat.items())
    }
    return {
        "mode": "inproc",
        "latency_per_topic": per_topic,
        "sent": prod,
        "outputs": len(window),
        "dropped": drops,
        "errors": host.errors[:5],
        "throughput_hz": len(window) / seconds,
        "latency": _stats(window),
    }


def stream_dds(args: argparse.Namespace) -> dict[str, Any]:
    """dinov3_node in a child process; publish + subscribe here over DDS."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    from dinov3_ros.msgs import builders as B
    from dinov3_ros.msgs.image_codec import encode_raw
    from dinov3_ros.ros.params import node_command
    from dinov3_ros.ros.types import ros_types

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 50))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    cmd = node_command(
        {
            "weights": args.weights,
            "device": args.device,
            "precision": args.precision,
            "resolution": args.resolution,
            "backend": args.backend,
            "cuda_graphs": bool(args.cuda_graphs),
            **{f"pipeline.{k}": v for k, v in args.pipeline.items()},
        },
        params_file=ROOT / "config/dinov3.yaml",
    )
    log = open(args.node_log, "w")
    node_p = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    rclpy.init()
    node = rclpy.create_node("bench_driver")
    tp = ros_types()
    arrivals: dict[int, dict[str, int]] = {}
    diags: list[dict[str, str]] = []
    lock = threading.Lock()

    def importable(mt: str) -> bool:  # the node skips types rclpy lacks (vision_msgs) too
        try:
            tp.cls(mt)
        except KeyError:
            return False
        return True

    types = {t: mt for t, mt in topic_types().items() if importable(mt)}
    for topic, mtype in types.items():

        def cb(m, topic=topic) -> None:
            now = time.time_ns()
            st = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
            with lock:
                arrivals.setdefault(st, {})[topic] = now

        # keep-last 1: a consumer that lags sees the newest frame (a drop), never a growing queue
        node.create_subscription(tp.cls(mtype), f"/dinov3_node/{topic}", cb, 1)

    def on_diag(m) -> None:
        for s in m.status:
            if "perception" in s.name:
                diags.append({kv.key: kv.value for kv in s.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    p_img = node.create_publisher(tp.cls("sensor_msgs/msg/Image"), "image", qos_profile_sensor_data)
    p_inf = node.create_publisher(
        tp.cls("sensor_msgs/msg/CameraInfo"), "camera_info", qos_profile_sensor_data
    )
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        t_end = time.time() + 180
        while p_img.get_subscription_count() == 0 or len(diags) == 0:
            if node_p.poll() is not None or time.time() > t_end:
                raise RuntimeError("node did not start: " + Path(args.node_log).read_text()[-2000:])
            time.sleep(0.2)
        time.sleep(1.0)
        raw = [encode_raw(test_image(i), "rgb8") for i in range(4)]
        sent: list[tuple[int, bool]] = []  # (stamp, in measurement window)
        period = 1.0 / args.hz
        t0 = time.perf_counter()
        n_warm, n_total = int(args.warmup * args.hz), int((args.warmup + args.seconds) * args.hz)
        d0 = None
        for k in range(n_total):
            if k == n_warm:
                d0 = dict(diags[-1]) if diags else None
            st = time.time_ns()
            hdr = B.header(tp, st, "camera_optical")
            data, step = raw[k % len(raw)]
            p_inf.publish(B.camera_info(tp, hdr, K))
            p_img.publish(B.raw_image(tp, hdr, data, H, W, step, "rgb8"))
            sent.append((st, k >= n_warm))
            delay = t0 + (k + 1) * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        time.sleep(2.5)
        d1 = dict(diags[-1])
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown()
        try:
            os.killpg(node_p.pid, 2)
            node_p.wait(timeout=10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(node_p.pid, 9)
        log.close()
    n_topics = len(types)
    lat, complete, seen = [], 0, 0
    for st, measured in sent:
        arr = arrivals.get(st, {})
        if measured and arr:
            seen += 1
            complete += len(arr) == n_topics
            lat += [(t - st) / 1e6 for t in arr.values()]  # every output message of the frame
    n_sent = sum(m for _, m in sent)

    def delta(key: str) -> int:
        return int(d1.get(key, 0)) - int((d0 or {}).get(key, 0))

    return {
        "mode": "dds",
        "sent": n_sent,
        "outputs": seen,
        "frames_with_all_outputs": complete,
        "dropped": n_sent - seen,
        "dropped_in_node": delta("frames_dropped") + delta("frames_stale"),
        "received_by_node": delta("frames_received"),
        "throughput_hz": seen / args.seconds,
        "latency": _stats(lat),
        "node_latency_p50_ms": float(d1.get("latency_p50_ms", "nan")),
        "node_latency_p99_ms": float(d1.get("latency_p99_ms", "nan")),
        # the node's own per-output receive -> publish (/diagnostics, each output sent when ready)
        "latency_per_topic": {
            k[len("latency_p50_ms[") : -1]: {
                "n": int(d1.get("latency_samples", 0)),
                "p50_ms": float(v),
                "p99_ms": float(d1.get("latency_p99_ms[" + k[len("latency_p50_ms[") :], "nan")),
            }
            for k, v in sorted(d1.items())
            if k.startswith("latency_p50_ms[")
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--weights", default="random:vits16", help="path, 'default' or random:<arch>")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--resolution", default="224x304", help="network HxW (640x480 frames are letterboxed)")
    ap.add_argument("--hz", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--baseline-seconds", type=float, default=5.0)
    ap.add_argument("--mode", default="auto", choices=("auto", "dds", "inproc", "both"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument(
        "--cv-threads", type=int, default=-1, help="cv2.setNumThreads (-1 = keep OpenCV's default)"
    )
    ap.add_argument(
        "--cuda-graphs", type=int, default=1, help="torch on CUDA: engine as a CUDA graph (node default)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a PipelineConfig setting for every measurement (repeatable), e.g. --set max_objects=1",
    )
    ap.add_argument("--node-log", default="/tmp/bench_node_node.log")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/node-...)")
    args = ap.parse_args()
    args.resolution = tuple(int(v) for v in args.resolution.lower().split("x"))
    try:
        args.pipeline = parse_settings(args.set)
    except ValueError as e:
        ap.error(str(e))
    config = PipelineConfig(resolution=args.resolution).with_updates(**args.pipeline)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cv_threads >= 0:
        import cv2

        cv2.setNumThreads(args.cv_threads)
    try:
        import rclpy  # noqa: F401

        has_ros = True
    except ImportError:
        has_ros = False
    modes = {"auto": ["dds" if has_ros else "inproc"], "both": ["inproc", "dds"]}.get(args.mode, [args.mode])
    model = load_model(
        args.weights,
        args.backend,
        args.device,
        args.precision,
        args.resolution,
        cuda_graphs=bool(args.cuda_graphs),
    )
    pipe = Pipeline.from_model(model, config, device=args.device)
    res: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "model": model.info,
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        },
    }
    print(f"model {model.info} at {args.resolution}, frames {W}x{H}, all outputs, {args.hz} Hz", flush=True)
    res.update(bench_engine(model, pipe, args.device, args.baseline_seconds))
    res.update(bench_pipeline(pipe, args.device, args.baseline_seconds))
    eng = res["engine"]["p50_ms"]
    res["streams"] = {}
    for m in modes:
        if m == "dds" and not has_ros:
            print("dds mode needs rclpy; skipped", file=sys.stderr)
            continue
        pipe.reset()
        r = (
            stream_inproc(pipe, args.device, args.hz, args.seconds, args.warmup)
            if m == "inproc"
            else stream_dds(args)
        )
        r["overhead_vs_engine"] = r["latency"]["p50_ms"] / eng - 1.0
        r["overhead_vs_pipeline"] = r["latency"]["p50_ms"] / res["pipeline"]["p50_ms"] - 1.0
        if args.device.startswith("cuda"):
            r["gpu_targets_met"] = bool(r["dropped"] == 0 and r["latency"]["p99_ms"] <= 15.0)
        r["overhead_target_met"] = bool(r["overhead_vs_engine"] <= 0.25)
        res["streams"][m] = r
    # baseline again after the streams: on a shared/loaded machine the spread shows how far to trust the ratios
    res["engine_after"] = bench_engine(model, pipe, args.device, args.baseline_seconds)["engine"]
    eng2 = 0.5 * (eng + res["engine_after"]["p50_ms"])
    for r in res["streams"].values():
        r["overhead_vs_engine_mean_baseline"] = r["latency"]["p50_ms"] / eng2 - 1.0
    rows = [
        ("engine (bare Engine.run)", res["engine"]),
        ("engine again, after the streams", res["engine_after"]),
        ("preprocess + engine", res["preprocess+engine"]),
        ("pipeline.process, all outputs", res["pipeline"]),
    ]
    print(
        f"\n| measurement ({args.device}) | n | p50 ms | p99 ms | throughput Hz | drops | overhead vs engine |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, st in rows:
        print(
            f"| {name} | {st['n']} | {st['p50_ms']:.1f} | {st['p99_ms']:.1f} | {1e3 / st['mean_ms']:.1f} | - | "
            f"{st['p50_ms'] / eng - 1:+.0%} |"
        )
    for m, r in res["streams"].items():
        st = r["latency"]
        print(
            f"| stream {m} @ {args.hz:g} Hz (receive -> publish) | {st['n']} | {st['p50_ms']:.1f} | "
            f"{st['p99_ms']:.1f} | {r['throughput_hz']:.1f} | {r['dropped']}/{r['sent']} | "
            f"{r['overhead_vs_engine']:+.0%} |"
        )
    for m, r in res["streams"].items():
        if r.get("latency_per_topic"):
            print(
                f"\nstream {m}: receive -> publish per output (each is published when ready), p50 / p99 ms: "
                + ", ".join(
                    f"{t} {st['p50_ms']:.1f} / {st['p99_ms']:.1f}"
                    for t, st in r["latency_per_topic"].items()
                    if st.get("n")
                )
            )
    if "dds" in res["streams"]:
        r = res["streams"]["dds"]
        print(
            f"\ndds: node receive -> publish p50 {r['node_latency_p50_ms']:.1f} ms, p99 {r['node_latency_p99_ms']:.1f} ms "
            f"(node /diagnostics); node received {r['received_by_node']}/{r['sent']}, dropped in node "
            f"{r['dropped_in_node']}, frames with all outputs delivered {r['frames_with_all_outputs']}"
        )
    print("\npipeline stages p50 ms: " + ", ".join(f"{k} {v:.1f}" for k, v in res["stages_p50_ms"].items()))
    save("node", args.device, res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
