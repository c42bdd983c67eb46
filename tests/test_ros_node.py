"""dinov3_node over real rclpy + DDS, with publisher, node and subscriber in separate processes.

One node process (tiny random ViT-Ti at 64x96) serves the module; each test starts its own publisher
and subscriber/diagnostics processes. This file is also the helper script those processes run:
``python tests/test_ros_node.py <role> <json args>``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
W, H = 160, 120  # input frames
RES = (64, 96)  # network H, W
K_IN = [100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0]
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2"]
#: every output topic but objects/detections (vision_msgs is not installed here)
OUT_TOPICS = [
    "features",
    "features/camera_info",
    "features/pca",
    "features/pca/compressed",
    "depth/image",
    "depth/camera_info",
    "depth",
    "depth/points",
    "points",
    "matches",
    "matches/markers",
    "odometry",
    "objects/mask",
    "objects/mask/compressed",
    "objects/boxes",
    "objects/markers",
    "debug",
    "debug/compressed",
]
# unique per test process; the helper processes inherit it
NODE_NAME = os.environ.setdefault("DINOV3_TEST_NODE_NAME", f"dinov3_node_{os.getpid()}")
NODE = "/" + NODE_NAME
WARMUP_STAMP = 1  # frames the publisher sends until the node has matched the subscriber


# ------------------------------------------------------------------------------------------------
# helper roles (run in child processes)
# ------------------------------------------------------------------------------------------------
def _frame_rgb(i: int, w: int = W, h: int = H):
    import numpy as np

    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w + 7 * i) % 256, (y * 255 // h) % 256, ((x // 20 + y // 20) % 2) * 200], 2)
    img[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = (250, 30, 30)
    return img.astype(np.uint8)


def _role_pub(a: dict) -> None:
    """Publish a list of items: {"kind": raw|compressed|info|bad, ...} with a pause between."""
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from dinov3_ros.core import CameraIntrinsics
    from dinov3_ros.msgs import builders as B
    from dinov3_ros.msgs.image_codec import encode_raw
    from dinov3_ros.ros.types import ros_types

    rclpy.init()
    node = rclpy.create_node(a.get("name", f"test_pub_{os.getpid()}"))
    tp = ros_types()
    q = qos_profile_sensor_data
    pubs = {}
    for ns in a.get("namespaces", [""]):
        pre = f"{ns}/" if ns else ""
        pubs[ns] = (
            node.create_publisher(Image, pre + "image", q),
            node.create_publisher(CompressedImage, pre + "image/compressed", q),
            node.create_publisher(CameraInfo, pre + "camera_info", q),
        )
    t_end = time.time() + 20
    need = [p for trio in pubs.values() for p in trio[: 1 if a.get("namespaces") else 2]]
    while any(p.get_subscription_count() == 0 for p in need) and time.time() < t_end:
        time.sleep(0.05)
    K = np.array(K_IN).reshape(3, 3)
    if a.get("sync"):  # warm-up frames until the subscriber got an output: the node has seen it
        _warm_up(node, tp, pubs, a["sync"])
    for it in a["items"]:
        kind, stamp = it["kind"], it.get("stamp", 0)
        p_img, p_cmp, p_inf = pubs[it.get("ns", "")]
        hdr = B.header(tp, stamp, it.get("frame_id", "cam_optical"))
        w, h = it.get("w", W), it.get("h", H)
        if it.get("info", True) and kind != "sleep":
            iw, ih = it.get("info_size", (w, h))
            if "info_k" in it:  # a faulty calibration (K zeros, NaN, negative focal lengths)
                p_inf.publish(_raw_info(tp, hdr, iw, ih, it["info_k"]))
            else:
                p_inf.publish(B.camera_info(tp, hdr, CameraIntrinsics(K, W, H).resized(iw, ih)))
        rgb = _frame_rgb(stamp % 97, w, h)
        if kind == "raw":
            data, step = encode_raw(rgb, it["encoding"])
            p_img.publish(B.raw_image(tp, hdr, data, h, w, step, it["encoding"]))
        elif kind == "compressed":
            p_cmp.publish(B.compressed_image(tp, hdr, rgb, it["format"]))
        elif kind == "bad":
            bad = it["bad"]
            if bad == "encoding":
                data, step = encode_raw(rgb, "rgb8")
                p_img.publish(B.raw_image(tp, hdr, data, h, w, step, "weird16"))
            elif bad == "zero":
                p_img.publish(B.raw_image(tp, hdr, b"", 0, 0, 0, "rgb8"))
            elif bad == "step":
                data, step = encode_raw(rgb, "rgb8")
                p_img.publish(B.raw_image(tp, hdr, data, h, w, step - 5, "rgb8"))
            elif bad == "jpeg":
                msg = B.compressed_image(tp, hdr, rgb, "jpeg")
                msg.data = bytes(msg.data)[: len(msg.data) // 2]
                p_cmp.publish(msg)
            elif bad == "info":  # camera_info published above with info_size != image size
                data, step = encode_raw(rgb, "rgb8")
                p_img.publish(B.raw_image(tp, hdr, data, h, w, step, "rgb8"))
        elif kind == "burst":
            data, step = encode_raw(rgb, "rgb8")
            n, period = it["n"], 1.0 / it["hz"]
            t0 = time.perf_counter()
            for k in range(n):
                p_img.publish(
                    B.raw_image(tp, B.header(tp, stamp + k, "cam_optical"), data, h, w, step, "rgb8")
                )
                delay = t0 + (k + 1) * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            print(json.dumps({"burst_seconds": time.perf_counter() - t0}), flush=True)
        time.sleep(it.get("pause", 0.6))
    node.destroy_node()
    rclpy.shutdown()


def _warm_up(node, tp, pubs, sync: str) -> None:
    from dinov3_ros.msgs import builders as B
    from dinov3_ros.msgs.image_codec import encode_raw

    p_img = next(iter(pubs.values()))[0]
    data, step = encode_raw(_frame_rgb(0), "rgb8")
    t_end = time.time() + 30
    while not Path(sync).exists() and time.time() < t_end:
        p_img.publish(B.raw_image(tp, B.header(tp, WARMUP_STAMP, "cam_optical"), data, H, W, step, "rgb8"))
        time.sleep(0.2)


def _raw_info(tp, hdr, w: int, h: int, k: list):
    """A camera_info message with an arbitrary (possibly unusable) K, as a driver may send it."""
    roi = tp.new(
        "sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    z = [float(v) for v in k]
    return tp.new("sensor_msgs/msg/CameraInfo", header=hdr, height=h, width=w, distortion_model="plumb_bob",
                  d=[0.0] * 5, k=z, r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1], p=[*z[:3], 0.0, *z[3:6], 0.0, *z[6:], 0.0],
                  binning_x=0, binning_y=0, roi=roi)  # fmt: skip


def _summ(topic: str, msg) -> dict:
    from dinov3_ros.msgs import decode as D

    rec = {
        "topic": topic,
        "type": type(msg).__name__,
        "stamp": D.stamp_ns(msg),
        "frame_id": msg.header.frame_id,
    }
    for k in ("encoding", "width", "height", "step"):
        if hasattr(msg, k):
            rec[k] = getattr(msg, k)
    if topic.endswith("camera_info"):
        rec["k"] = list(msg.k)
        rec["p"] = list(msg.p)
    if topic.endswith("matches"):
        m = D.decode_matches(msg)
        rec["n"] = len(m)
        rec["ref"] = m.ref_stamp_ns
    if topic.endswith("boxes"):
        rec["n"] = len(D.decode_boxes(msg).ids)
    if topic.endswith("points"):
        rec["fields"] = [f.name for f in msg.fields]
        rec["height"], rec["width"], rec["dense"] = msg.height, msg.width, bool(msg.is_dense)
    if topic == "odometry":
        rec["frame_id"], rec["odom_frame"] = msg.child_frame_id, msg.header.frame_id
    if topic.endswith("markers"):
        rec["n"], rec["marker_type"] = len(msg.points), msg.type
    if topic.endswith("compressed"):
        rec["format"] = msg.format
    return rec


def _role_sub(a: dict) -> None:
    """Subscribe to every output (+ /diagnostics); write records to a JSON-lines file."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from dinov3_ros.pipeline.outputs import topic_types

    TOPIC_TYPES = topic_types()
    from dinov3_ros.ros.types import ros_types

    rclpy.init()
    node = rclpy.create_node(a.get("name", f"test_sub_{os.getpid()}"))
    tp = ros_types()
    out = open(a["out"], "w")
    subs = []
    sync = a.get("sync")

    def on_msg(t: str, m) -> None:
        rec = _summ(t, m)
        if rec["stamp"] == WARMUP_STAMP:
            if sync and not Path(sync).exists():
                Path(sync).write_text("ok")
            return
        out.write(json.dumps(rec) + "\n")
        out.flush()

    for t in a.get("topics", OUT_TOPICS):
        subs.append(
            node.create_subscription(
                tp.cls(TOPIC_TYPES.get(t) or TOPIC_TYPES[t.split("/", 1)[1]]),
                f"{a.get('node', NODE)}/{t}",
                lambda m, t=t: on_msg(t, m),
                10,
            )
        )

    def on_diag(m) -> None:
        for s in m.status:
            if not s.name.startswith(a.get("node", NODE)[1:] + ":") and not s.name.startswith(
                a.get("node", NODE) + ":"
            ):
                continue
            kind = s.name.split(": ", 1)[1]
            rec = {"topic": "diag" if kind == "perception" else "diag:" + kind, "level": int.from_bytes(s.level, "little")
                   if isinstance(s.level, bytes) else int(s.level), "message": s.message}  # fmt: skip
            out.write(json.dumps({**rec, **{kv.key: kv.value for kv in s.values}}) + "\n")
            out.flush()

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    t_end = time.time() + 20
    while time.time() < t_end and not all(s.get_publisher_count() > 0 for s in subs):
        rclpy.spin_once(node, timeout_sec=0.05)
    Path(a["ready"]).write_text("ready")
    t_end = time.time() + a["seconds"]
    while time.time() < t_end and not Path(a["ready"] + ".stop").exists():
        rclpy.spin_once(node, timeout_sec=0.05)
    out.close()
    node.destroy_node()
    rclpy.shutdown()


def _role_setparam(a: dict) -> None:
    """Set parameters of the node through its parameter services; print the results as JSON."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    rclpy.init()
    node = rclpy.create_node(f"test_setparam_{os.getpid()}")
    client = AsyncParameterClient(node, a.get("node", NODE))
    assert client.wait_for_services(timeout_sec=20.0), "parameter services not found"
    if a.get("get"):
        fut = client.get_parameters(a["get"])
        rclpy.spin_until_future_complete(node, fut, timeout_sec=20.0)
        from rclpy.parameter import parameter_value_to_python

        values = [parameter_value_to_python(v) for v in fut.result().values]
        print(json.dumps(values), flush=True)
    elif a.get("atomic"):  # all or nothing (SetParametersAtomically)
        fut = client.set_parameters_atomically([Parameter(k, value=v) for k, v in a["params"].items()])
        rclpy.spin_until_future_complete(node, fut, timeout_sec=20.0)
        r = fut.result().result
        print(json.dumps([{"ok": r.successful, "reason": r.reason}]), flush=True)
    else:  # each parameter on its own (SetParameters)
        fut = client.set_parameters([Parameter(k, value=v) for k, v in a["params"].items()])
        rclpy.spin_until_future_complete(node, fut, timeout_sec=20.0)
        print(
            json.dumps([{"ok": r.successful, "reason": r.reason} for r in fut.result().results]), flush=True
        )
    node.destroy_node()
    rclpy.shutdown()


# ------------------------------------------------------------------------------------------------
# test-side process management
# ------------------------------------------------------------------------------------------------
def _spawn(role: str, args: dict, log: Path) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen(
        [sys.executable, __file__, role, json.dumps(args)],
        cwd=ROOT,
        stdout=f,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=5)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=5)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _last_diag(path: Path) -> dict:
    d = [r for r in _records(path) if r["topic"] == "diag"]
    return d[-1] if d else {}


@pytest.fixture(scope="module")
def node_proc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node")
    log = tmp / "node.log"
    f = open(log, "w")
    from dinov3_ros.ros.params import node_command

    cmd = node_command(
        {
            "weights": "random:vitt16",
            "resolution": RES,
            "image_transport": "both",
            "diagnostics_period": 0.5,
            "stale_after_s": 1.5,
            "pipeline.max_objects": 3,
        },
        params_file=ROOT / "config/dinov3.yaml",
        node_name=NODE_NAME,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        t_end = time.time() + 90
        while "loaded in" not in log.read_text() and time.time() < t_end:
            assert p.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "loaded in" in log.read_text(), log.read_text()
        yield p, log, tmp
    finally:
        _kill(p)


class _Session:
    """A subscriber process + a publisher process; always killed."""

    def __init__(
        self, tmp: Path, name: str, sub_args: dict, items: list[dict], pub_args: dict | None = None
    ) -> None:
        self.tmp, self.name = tmp, name
        self.out = tmp / f"{name}.jsonl"
        self.ready = tmp / f"{name}.ready"
        self.sync = tmp / f"{name}.sync"
        self.sub_args = {"out": str(self.out), "ready": str(self.ready), "seconds": 60, **sub_args}
        if self.sub_args.get("topics", True) != []:
            self.sub_args["sync"] = str(self.sync)
        self.items = items
        self.pub_args = pub_args or {}
        self.sub = self.pub = None

    def __enter__(self) -> _Session:
        self.sub = _spawn("sub", self.sub_args, self.tmp / f"{self.name}.sub.log")
        t_end = time.time() + 30
        while not self.ready.exists() and time.time() < t_end:
            assert self.sub.poll() is None, (self.tmp / f"{self.name}.sub.log").read_text()
            time.sleep(0.1)
        args = {"items": self.items, **self.pub_args}
        if "sync" in self.sub_args:  # no fixed sleep: warm-up frames until an output arrives
            args["sync"] = self.sub_args["sync"]
        self.pub = _spawn("pub", args, self.tmp / f"{self.name}.pub.log")
        return self

    def wait_pub(self, timeout: float = 60) -> str:
        self.pub.wait(timeout=timeout)
        return (self.tmp / f"{self.name}.pub.log").read_text()

    def stop_sub(self, settle: float = 1.2, until: Any = None) -> list[dict]:
        """Stop the subscriber once ``until(records)`` holds (or after ``settle`` s without a condition;
        at most 30 s)."""
        t_end = time.time() + (30 if until is not None else settle)
        while time.time() < t_end and not (until is not None and until(_records(self.out))):
            time.sleep(0.1)
        Path(str(self.ready) + ".stop").write_text("")
        self.sub.wait(timeout=15)
        return _records(self.out)

    def __exit__(self, *exc) -> None:
        _kill(self.pub)
        _kill(self.sub)


# ------------------------------------------------------------------------------------------------
# tests (order matters: the lazy test runs before any output subscriber exists)
# ------------------------------------------------------------------------------------------------
def test_lazy_no_subscriber_no_inference(node_proc):
    _p, _log, tmp = node_proc
    items = [{"kind": "raw", "encoding": "rgb8", "stamp": 1000 + i, "pause": 0.15} for i in range(10)]
    with _Session(tmp, "lazy", {"topics": []}, items) as s:
        s.wait_pub()
        recs = s.stop_sub(
            until=lambda r: any(x["topic"] == "diag" and int(x["frames_received"]) >= 10 for x in r)
        )
    diag = _last_diag(s.out)
    assert diag, recs
    assert int(diag["frames_received"]) >= 5, diag
    assert int(diag["inferences"]) == 0, diag
    assert int(diag["skipped_no_subscribers"]) >= 5, diag
    assert diag["backend"] == "torch" and diag["model"] == "random:vitt16", diag


def _by_stamp(recs: list[dict]) -> dict[int, dict[str, dict]]:
    by: dict[int, dict[str, dict]] = {}
    for r in recs:
        if not r["topic"].startswith("diag"):
            by.setdefault(r["stamp"], {})[r["topic"]] = r
    return by


def test_outputs_every_encoding(node_proc):
    _p, log, tmp = node_proc
    items = [
        {"kind": "raw", "encoding": e, "stamp": 2_000_000_000 + 1000 * i} for i, e in enumerate(ENCODINGS)
    ]
    items += [
        {"kind": "compressed", "format": f, "stamp": 3_000_000_000 + i} for i, f in enumerate(["jpeg", "png"])
    ]
    stamps = [it["stamp"] for it in items]

    def complete(recs: list[dict]) -> bool:
        by = _by_stamp(recs)
        return all(set(OUT_TOPICS) <= set(by.get(st, {})) for st in stamps)

    with _Session(tmp, "enc", {}, items) as s:
        s.wait_pub()
        recs = s.stop_sub(until=complete)
    by = _by_stamp(recs)
    missing = {
        st: sorted(set(OUT_TOPICS) - set(by.get(st, {})))
        for st in stamps
        if set(OUT_TOPICS) - set(by.get(st, {}))
    }
    assert not missing, f"outputs missing per stamp: {missing}; got stamps {sorted(by)}"
    h, w = RES[0] // 16, RES[1] // 16
    for st in stamps:
        o = by[st]
        for t, r in o.items():
            assert r["stamp"] == st and r["frame_id"] == "cam_optical", t
        assert o["odometry"]["odom_frame"] == "cam_optical_odom"
        assert o["features"]["encoding"] == "32FC192" and (
            o["features"]["height"],
            o["features"]["width"],
        ) == (h, w)
        fi = o["features/camera_info"]
        assert (fi["height"], fi["width"]) == (h, w) and fi["k"][0] > 0  # calibrated: K on the grid
        assert o["features/pca"]["encoding"] == "rgb8" and (
            o["features/pca"]["height"],
            o["features/pca"]["width"],
        ) == (h, w)
        for t in ("depth/image", "depth"):  # the deprecated alias carries the same image
            assert o[t]["encoding"] == "32FC1" and (o[t]["width"], o[t]["height"]) == (W, H)
        ci = o["depth/camera_info"]
        assert (ci["width"], ci["height"]) == (W, H) and ci["k"] == pytest.approx(K_IN)
        dp = o["depth/points"]
        assert (dp["height"], dp["width"]) == (H, W) and dp["fields"] == ["x", "y", "z", "rgb"]  # organized
        assert o["points"]["fields"] == ["x", "y", "z", "rgb"] and o["points"]["height"] == 1
        assert o["objects/mask"]["encoding"] == "mono8" and (
            o["objects/mask"]["width"],
            o["objects/mask"]["height"],
        ) == (W, H)
        assert o["debug"]["encoding"] == "rgb8" and (o["debug"]["width"], o["debug"]["height"]) == (W, H)
        assert 0 < o["objects/boxes"]["n"] <= 3 and o["objects/markers"]["n"] == 8 * o["objects/boxes"]["n"]
        assert o["objects/markers"]["marker_type"] == 2  # LINE_LIST
        assert o["debug/compressed"]["format"] == "rgb8; jpeg compressed bgr8"
        assert o["objects/mask/compressed"]["format"] == "mono8; png compressed mono8"
    # matches reference the previous processed frame of the source (keyframe policy "previous")
    refs = [by[st]["matches"]["ref"] for st in stamps[1:] if by[st]["matches"]["n"]]
    assert refs and all(r in stamps for r in refs)
    assert "vision_msgs is not installed" in log.read_text()  # objects/detections: a clean fallback


def test_bad_input_counted_per_class_logs_rate_limited_and_recovers(node_proc):
    """Each undecodable frame is counted under its class (and on /diagnostics); the log says it once per
    class and interval; the next frame is published. A camera_info of another size is no error: same
    aspect ratio -> rescaled."""
    _p, log, tmp = node_proc
    before = log.read_text()
    bads = ["encoding", "zero", "step", "jpeg"]
    items = []
    for i, b in enumerate(bads):
        items.append({"kind": "bad", "bad": b, "stamp": 4_000_000_000 + 10 * i})
        items.append({"kind": "raw", "encoding": "rgb8", "stamp": 4_000_000_001 + 10 * i})
    items.append({"kind": "bad", "bad": "info", "stamp": 4_000_000_100, "info_size": (80, 60)})
    good = {4_000_000_001 + 10 * i for i in range(len(bads))} | {4_000_000_100}

    def done(recs: list[dict]) -> bool:
        return good <= {r["stamp"] for r in recs if r["topic"] == "depth/image"}

    with _Session(tmp, "bad", {"topics": ["depth/image", "depth/camera_info"]}, items) as s:
        s.wait_pub()
        recs = s.stop_sub(until=done)
    new = log.read_text()[len(before) :]
    errors = [ln for ln in new.splitlines() if "bad frame" in ln]
    # zero size and step mismatch are one class ("size"): the second is suppressed in the log
    expect = ["unknown image encoding 'weird16'", "zero-size image", "truncated JPEG"]
    assert len(errors) == len(expect), new
    for e, line in zip(expect, errors):
        assert e in line, (e, line)
    got = {r["stamp"] for r in recs if r["topic"] == "depth/image"}
    assert good <= got, (sorted(good - got), new)
    assert not (got & {4_000_000_000 + 10 * i for i in range(len(bads))})
    ci = [r for r in recs if r["topic"] == "depth/camera_info" and r["stamp"] == 4_000_000_100]
    assert ci and (ci[0]["width"], ci[0]["height"]) == (W, H)  # rescaled from 80x60
    diag = _last_diag(s.out)
    assert int(diag["bad_encoding"]) >= 1 and int(diag["bad_size"]) >= 2 and int(diag["bad_compressed"]) >= 1
    warned = {r["topic"] for r in recs if r["topic"].startswith("diag:bad input") and r["level"] == 1}
    assert {"diag:bad input encoding", "diag:bad input size", "diag:bad input compressed"} <= warned, warned
    assert _p.poll() is None, new


def test_camera_info_faults_disable_only_metric_outputs_and_recover(node_proc):
    """K all zero (uncalibrated), NaN, a negative focal length or another aspect ratio: features, PCA
    and the depth image keep coming; depth/points, points, odometry and depth/camera_info stop; WARN on
    /diagnostics with the reason and one log line; a valid camera_info brings everything back."""
    _p, log, tmp = node_proc
    before = log.read_text()
    zero, nan = [0.0] * 9, [float("nan")] * 9
    neg = [-100.0, 0, 79.5, 0, 100.0, 59.5, 0, 0, 1]
    faults = [{"info_k": zero}, {"info_k": nan}, {"info_k": neg}, {"info_size": (100, 60)}]
    items = [
        {"kind": "raw", "encoding": "rgb8", "stamp": 8_000_000_000 + i, "pause": 0.4, **f}
        for i, f in enumerate(faults)
    ]
    items += [{"kind": "raw", "encoding": "rgb8", "stamp": 8_100_000_000 + i, "pause": 0.4} for i in range(3)]
    topics = [
        "features",
        "features/pca",
        "depth/image",
        "depth/camera_info",
        "depth/points",
        "points",
        "odometry",
    ]
    metric = {"depth/camera_info", "depth/points", "points", "odometry"}
    bad = {8_000_000_000 + i for i in range(len(faults))}
    fixed = {8_100_000_000 + i for i in range(3)}

    def done(recs: list[dict]) -> bool:
        by = _by_stamp(recs)
        ok = all(set(topics) - metric <= set(by.get(st, {})) for st in bad)
        back = all(set(topics) <= set(by.get(st, {})) for st in fixed)
        return ok and back and _recovered(recs)

    with _Session(tmp, "info", {"topics": topics}, items) as s:
        s.wait_pub()
        recs = s.stop_sub(until=done)
    by = _by_stamp(recs)
    for st in bad:
        assert set(topics) - metric <= set(by.get(st, {})), (st, sorted(by.get(st, {})))
        assert not (metric & set(by.get(st, {}))), (st, sorted(by.get(st, {})))
    for st in fixed:
        assert set(topics) <= set(by.get(st, {})), (st, sorted(by.get(st, {})))
    inputs = [r for r in recs if r["topic"] == "diag:input /"]
    warn = [r for r in inputs if r["level"] == 1 and "camera_info invalid" in r["message"]]
    assert warn and "odometry" in warn[0]["message"], inputs
    assert _recovered(recs), inputs[-6:]  # recovered by itself
    new = log.read_text()[len(before) :]
    lines = [ln for ln in new.splitlines() if "camera_info invalid" in ln]
    assert 1 <= len(lines) <= 2, lines  # throttled: one line per 5 s, not one per frame
    assert int(_last_diag(s.out)["bad_camera_info"]) >= 4


def _recovered(recs: list[dict]) -> bool:
    """A camera_info WARN on /diagnostics followed by an input status without a camera_info problem."""
    inputs = [r for r in recs if r["topic"] == "diag:input /"]
    last_bad = max((i for i, r in enumerate(inputs) if "camera_info" in r["message"]), default=None)
    return last_bad is not None and any("camera_info" not in r["message"] for r in inputs[last_bad + 1 :])


def _setparam(
    tmp: Path, params: dict | None = None, get: list[str] | None = None, atomic: bool = False
) -> Any:
    p = _spawn("setparam", {"params": params or {}, "get": get or [], "atomic": atomic}, tmp / "setparam.log")
    try:
        p.wait(timeout=60)
    finally:
        _kill(p)
    out = (tmp / "setparam.log").read_text()
    return json.loads(out.strip().splitlines()[-1])


def test_rejected_parameter_update_leaves_the_node_unchanged(node_proc):
    _p, _log, tmp = node_proc
    res = _setparam(tmp, {"pipeline.match_max": 7, "pipeline.features_k": 100000}, atomic=True)
    assert not res[0]["ok"] and "exceeds the model's 192" in res[0]["reason"], res
    assert _setparam(tmp, get=["pipeline.match_max", "pipeline.features_k"]) == [512, 0]  # neither applied
    res = _setparam(tmp, {"pipeline.depth_scale": float("inf")})
    assert not res[0]["ok"] and "out of range" in res[0]["reason"], res  # inf is refused by the range
    res = _setparam(tmp, {"lazy": "yes"})
    assert not res[0]["ok"] and "parameter lazy must be a bool, got 'yes' (string)" in res[0]["reason"], res
    res = _setparam(tmp, {"weights": "random:vits16"})
    assert not res[0]["ok"] and "read-only" in res[0]["reason"].lower(), res
    res = _setparam(tmp, {"pipeline.pca_space": "objects"})  # valid value, but this model has no objects head
    assert not res[0]["ok"] and "needs an objects head" in res[0]["reason"], res
    assert _setparam(tmp, get=["pipeline.depth_scale", "lazy", "weights", "pipeline.pca_space"]) == [
        1.0,
        True,
        "random:vitt16",
        "auto",
    ]


def test_diagnostics_degrade_and_recover(node_proc):
    """Low input rate, p99 latency over the budget, fallback intrinsics, an engine error and stale input
    each turn /diagnostics to WARN (ERROR for the engine) with the reason, over real DDS."""
    _p, _log, tmp = node_proc
    # a 1 ms pairing tolerance: camera_infos that earlier tests sent to this node do not pair with these frames
    changed = {"expected_rate_hz": 50.0, "latency_budget_ms": 0.001, "require_camera_info": False,
               "camera_info_tolerance_ms": 1.0}  # fmt: skip
    assert all(r["ok"] for r in _setparam(tmp, changed))
    try:
        items = [{"kind": "raw", "encoding": "rgb8", "stamp": 9_000_000_000 + i, "info": False, "pause": 0.5}
                 for i in range(3)]  # fmt: skip
        items.append(
            {"kind": "raw", "encoding": "rgb8", "stamp": 9_000_000_010, "w": 2000, "h": 1, "pause": 0.5}
        )
        checks = {
            "rate": lambda r: r["topic"] == "diag:input /" and "below the expected 50 Hz" in r["message"],
            "fallback": lambda r: r["topic"] == "diag:input /" and "fallback pinhole in use" in r["message"],
            "latency": lambda r: r["topic"] == "diag:latency" and r["level"] == 1 and "over the budget" in r["message"],
            "engine": lambda r: r["topic"] == "diag:engine" and r["level"] == 2 and "processing failed" in r["message"],
            "stale": lambda r: r["topic"] == "diag:input /" and r["level"] == 1 and "stale input" in r["message"],
            "summary": lambda r: r["topic"] == "diag" and r["level"] == 2,
        }  # fmt: skip
        # the 2000x1 frame has no patch on image content: TokenCut (objects) fails on it -> an engine error
        with _Session(tmp, "health", {"topics": ["depth/image", "objects/mask"]}, items) as s:
            s.wait_pub()
            recs = s.stop_sub(until=lambda rs: all(any(c(r) for r in rs) for c in checks.values()))
    finally:
        assert all(r["ok"] for r in _setparam(tmp, {"expected_rate_hz": 0.0, "latency_budget_ms": 0.0,
                                                      "require_camera_info": True,
                                                      "camera_info_tolerance_ms": 0.0}))  # fmt: skip
    missing = [k for k, c in checks.items() if not any(c(r) for r in recs)]
    assert not missing, (missing, [r for r in recs if r["topic"].startswith("diag:")][-12:])
    got = {r["stamp"] for r in recs if r["topic"] == "depth/image"}
    assert {9_000_000_000 + i for i in range(3)} <= got  # fallback: the depth image is published


def test_runtime_parameters_depth_at_network_resolution_scaled_camera_info(node_proc):
    _p, _log, tmp = node_proc
    assert _setparam(tmp, {"pipeline.depth_resolution": "network"}) == [{"ok": True, "reason": ""}]
    bad = _setparam(tmp, {"pipeline.match_ratio": 3.0})
    assert not bad[0]["ok"] and "match_ratio" in bad[0]["reason"]
    stamps = {6_000_000_000 + i for i in range(2)}
    try:
        items = [{"kind": "raw", "encoding": "rgb8", "stamp": st} for st in sorted(stamps)]
        topics = ["depth/image", "depth/camera_info", "depth/points"]
        with _Session(tmp, "net", {"topics": topics}, items) as s:
            s.wait_pub()
            recs = s.stop_sub(
                until=lambda rs: (
                    len({(r["topic"], r.get("stamp")) for r in rs if r.get("stamp") in stamps}) == 6
                )
            )
    finally:
        assert _setparam(tmp, {"pipeline.depth_resolution": "input"})[0]["ok"]
    import numpy as np

    from dinov3_ros.runtime.preprocess import Preprocessor

    g = Preprocessor(RES, 16).plan([(H, W)])[0]
    K_net, (wn, hn) = g.scale_intrinsics(np.array(K_IN).reshape(3, 3), RES)
    by = {(r["topic"], r["stamp"]): r for r in recs if not r["topic"].startswith("diag")}
    for st in stamps:
        d, ci, pc = by[("depth/image", st)], by[("depth/camera_info", st)], by[("depth/points", st)]
        assert (d["width"], d["height"]) == (RES[1], RES[0]) == (wn, hn) == (ci["width"], ci["height"])
        assert (pc["width"], pc["height"]) == (wn, hn) and not pc["dense"]  # letterbox padding = NaN
        assert ci["k"] == pytest.approx(K_net.ravel().tolist())
        assert ci["k"][0] == pytest.approx(K_IN[0] * g.scale_x) and g.offset_x > 0  # letterboxed 4:3 -> 3:2


@pytest.mark.slow
def test_burst_1000fps_drops_counted_memory_flat(node_proc):
    p, _log, tmp = node_proc
    items = [{"kind": "burst", "stamp": 5_000_000_000, "n": 3000, "hz": 1000, "info": False, "pause": 0.3}]
    with _Session(tmp, "burst", {"topics": ["depth", "features"]}, items) as s:
        rss = []
        while s.pub.poll() is None:
            rss.append(_rss_kb(p.pid))
            time.sleep(0.25)
        pub_log = s.wait_pub()
        recs = s.stop_sub(settle=1.5)
    diags = [r for r in recs if r["topic"] == "diag"]
    first, last = diags[0], diags[-1]

    def delta(key: str) -> int:
        return int(last[key]) - int(first[key])

    burst_s = json.loads(pub_log.strip().splitlines()[-1])["burst_seconds"]
    assert burst_s < 8, pub_log
    got = len({r["stamp"] for r in recs if r["topic"] == "depth"})
    # DDS (best effort, keep-last 5) may shed some of the 3000 messages before the node's callback
    # when the machine is loaded; of those that arrive, the stale ones are dropped and counted.
    received, dropped, processed = (
        delta("frames_received"),
        delta("frames_dropped"),
        delta("frames_processed"),
    )
    assert received >= 30 and dropped > 0, (first, last)
    assert 0 < processed < received and processed + dropped <= received + 1, (first, last)
    # every processed frame was published; a starved subscriber process (2 shared cores) may still
    # lose a few to the writer's keep-last-10 history while the node publishes at full speed
    assert got >= processed - max(2, processed // 10), (got, processed)
    # memory flat: RSS late in the burst within 40 MB of RSS early in the burst
    assert len(rss) >= 6, rss
    early, late = max(rss[1:3]), max(rss[-3:])
    assert late - early < 40_000, rss
    assert p.poll() is None


if __name__ == "__main__":
    _role = sys.argv[1]
    _args = json.loads(sys.argv[2])
    {"pub": _role_pub, "sub": _role_sub, "setparam": _role_setparam}[_role](_args)
