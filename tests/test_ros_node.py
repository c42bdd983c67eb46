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

import pytest

ROOT = Path(__file__).resolve().parent.parent
W, H = 160, 120  # input frames
RES = (64, 96)  # network H, W
K_IN = [100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0]
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2"]
OUT_TOPICS = [
    "features",
    "features/pca",
    "depth",
    "depth/camera_info",
    "points",
    "matches",
    "objects/mask",
    "objects/boxes",
    "debug",
]
NODE = "/dinov3_node"


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
    node = rclpy.create_node("test_pub")
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
    time.sleep(0.5)
    K = np.array(K_IN).reshape(3, 3)
    for it in a["items"]:
        kind, stamp = it["kind"], it.get("stamp", 0)
        p_img, p_cmp, p_inf = pubs[it.get("ns", "")]
        hdr = B.header(tp, stamp, it.get("frame_id", "cam_optical"))
        w, h = it.get("w", W), it.get("h", H)
        if it.get("info", True) and kind != "sleep":
            iw, ih = it.get("info_size", (w, h))
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
    return rec


def _role_sub(a: dict) -> None:
    """Subscribe to every output (+ /diagnostics); write records to a JSON-lines file."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from dinov3_ros.pipeline.outputs import topic_types

    TOPIC_TYPES = topic_types()
    from dinov3_ros.ros.types import ros_types

    rclpy.init()
    node = rclpy.create_node("test_sub")
    tp = ros_types()
    out = open(a["out"], "w")
    subs = []
    for t in a.get("topics", OUT_TOPICS):
        subs.append(
            node.create_subscription(
                tp.cls(TOPIC_TYPES.get(t) or TOPIC_TYPES[t.split("/", 1)[1]]),
                f"{a.get('node', NODE)}/{t}",
                lambda m, t=t: (out.write(json.dumps(_summ(t, m)) + "\n"), out.flush()),
                10,
            )
        )

    def on_diag(m) -> None:
        for s in m.status:
            if "perception" in s.name:
                out.write(json.dumps({"topic": "diag", **{kv.key: kv.value for kv in s.values}}) + "\n")
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
    node = rclpy.create_node("test_setparam")
    client = AsyncParameterClient(node, a.get("node", NODE))
    assert client.wait_for_services(timeout_sec=20.0), "parameter services not found"
    fut = client.set_parameters([Parameter(k, value=v) for k, v in a["params"].items()])
    rclpy.spin_until_future_complete(node, fut, timeout_sec=20.0)
    print(json.dumps([{"ok": r.successful, "reason": r.reason} for r in fut.result().results]), flush=True)
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
            "pipeline.max_objects": 3,
        },
        params_file=ROOT / "config/dinov3.yaml",
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
        self.sub_args = {"out": str(self.out), "ready": str(self.ready), "seconds": 40, **sub_args}
        self.items = items
        self.pub_args = pub_args or {}
        self.sub = self.pub = None

    def __enter__(self) -> _Session:
        self.sub = _spawn("sub", self.sub_args, self.tmp / f"{self.name}.sub.log")
        t_end = time.time() + 30
        while not self.ready.exists() and time.time() < t_end:
            assert self.sub.poll() is None, (self.tmp / f"{self.name}.sub.log").read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # the node's publishers see the new subscriptions
        self.pub = _spawn("pub", {"items": self.items, **self.pub_args}, self.tmp / f"{self.name}.pub.log")
        return self

    def wait_pub(self, timeout: float = 60) -> str:
        self.pub.wait(timeout=timeout)
        return (self.tmp / f"{self.name}.pub.log").read_text()

    def stop_sub(self, settle: float = 1.2) -> list[dict]:
        time.sleep(settle)
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
        recs = s.stop_sub(settle=1.5)
    diag = _last_diag(s.out)
    assert diag, recs
    assert int(diag["frames_received"]) >= 5, diag
    assert int(diag["inferences"]) == 0, diag
    assert int(diag["skipped_no_subscribers"]) >= 5, diag
    assert diag["backend"] == "torch" and diag["model"] == "random:vitt16", diag


def test_outputs_every_encoding(node_proc):
    _p, _log, tmp = node_proc
    items = [
        {"kind": "raw", "encoding": e, "stamp": 2_000_000_000 + 1000 * i} for i, e in enumerate(ENCODINGS)
    ]
    items += [
        {"kind": "compressed", "format": f, "stamp": 3_000_000_000 + i} for i, f in enumerate(["jpeg", "png"])
    ]
    stamps = [it["stamp"] for it in items]
    with _Session(tmp, "enc", {}, items) as s:
        s.wait_pub()
        recs = s.stop_sub()
    by = {}
    for r in recs:
        if r["topic"] != "diag":
            by.setdefault(r["stamp"], {})[r["topic"]] = r
    missing = {
        st: sorted(set(OUT_TOPICS) - set(by.get(st, {})))
        for st in stamps
        if set(OUT_TOPICS) - set(by.get(st, {}))
    }
    assert not missing, f"outputs missing per stamp: {missing}; got stamps {sorted(by)}"
    h, w = RES[0] // 16, RES[1] // 16
    for st in stamps:
        o = by[st]
        for r in o.values():
            assert r["frame_id"] == "cam_optical" and r["stamp"] == st
        assert o["features"]["encoding"] == "32FC192" and (
            o["features"]["height"],
            o["features"]["width"],
        ) == (h, w)
        assert o["features/pca"]["encoding"] == "rgb8" and (
            o["features/pca"]["height"],
            o["features/pca"]["width"],
        ) == (h, w)
        assert o["depth"]["encoding"] == "32FC1" and (o["depth"]["width"], o["depth"]["height"]) == (W, H)
        ci = o["depth/camera_info"]
        assert (ci["width"], ci["height"]) == (W, H) and ci["k"] == pytest.approx(K_IN)
        assert o["points"]["fields"] == ["x", "y", "z", "rgb"] and o["points"]["width"] > 0
        assert o["objects/mask"]["encoding"] == "mono8" and (
            o["objects/mask"]["width"],
            o["objects/mask"]["height"],
        ) == (W, H)
        assert o["debug"]["encoding"] == "rgb8" and (o["debug"]["width"], o["debug"]["height"]) == (W, H)
        assert 0 < o["objects/boxes"]["n"] <= 3
        assert o["matches"]["type"] == "PointCloud2"
    # matches reference the previous processed frame of the source (keyframe policy "previous")
    refs = [by[st]["matches"]["ref"] for st in stamps[1:] if by[st]["matches"]["n"]]
    assert refs and all(r in stamps for r in refs)


def test_bad_input_one_error_each_and_recovers(node_proc):
    """Each undecodable frame is one error and the next frame is published; a camera_info of another
    size is no error: same aspect ratio -> rescaled, another one -> the fallback pinhole (the frame is
    published either way: only depth back-projection uses the intrinsics)."""
    _p, log, tmp = node_proc
    before = log.read_text()
    bads = ["encoding", "zero", "step", "jpeg"]
    items = []
    for i, b in enumerate(bads):
        items.append({"kind": "bad", "bad": b, "stamp": 4_000_000_000 + 10 * i})
        items.append({"kind": "raw", "encoding": "rgb8", "stamp": 4_000_000_001 + 10 * i})
    infos = {4_000_000_100: (80, 60), 4_000_000_110: (100, 60)}
    items += [{"kind": "bad", "bad": "info", "stamp": st, "info_size": size} for st, size in infos.items()]
    with _Session(tmp, "bad", {"topics": ["depth"]}, items) as s:
        s.wait_pub()
        recs = s.stop_sub()
    new = log.read_text()[len(before) :]
    errors = [ln for ln in new.splitlines() if "bad frame" in ln]
    expect = ["unknown image encoding 'weird16'", "zero-size image", "step mismatch", "truncated JPEG"]
    assert len(errors) == len(bads), new
    for e, line in zip(expect, errors):
        assert e in line, (e, line)
    got = {r["stamp"] for r in recs if r["topic"] == "depth"}
    good = {4_000_000_001 + 10 * i for i in range(len(bads))} | set(infos)
    assert good <= got, (sorted(good - got), new)
    assert not (got & {4_000_000_000 + 10 * i for i in range(len(bads))})
    assert _p.poll() is None, new


def _setparam(tmp: Path, params: dict) -> list[dict]:
    p = _spawn("setparam", {"params": params}, tmp / "setparam.log")
    try:
        p.wait(timeout=60)
    finally:
        _kill(p)
    out = (tmp / "setparam.log").read_text()
    return json.loads(out.strip().splitlines()[-1])


def test_runtime_parameters_depth_at_network_resolution_scaled_camera_info(node_proc):
    _p, _log, tmp = node_proc
    assert _setparam(tmp, {"pipeline.depth_resolution": "network"}) == [{"ok": True, "reason": ""}]
    bad = _setparam(tmp, {"pipeline.match_ratio": 3.0})
    assert not bad[0]["ok"] and "match_ratio" in bad[0]["reason"]
    try:
        items = [{"kind": "raw", "encoding": "rgb8", "stamp": 6_000_000_000 + i} for i in range(2)]
        with _Session(tmp, "net", {"topics": ["depth", "depth/camera_info"]}, items) as s:
            s.wait_pub()
            recs = s.stop_sub()
    finally:
        assert _setparam(tmp, {"pipeline.depth_resolution": "input"})[0]["ok"]
    import numpy as np

    from dinov3_ros.runtime.preprocess import Preprocessor

    g = Preprocessor(RES, 16).plan([(H, W)])[0]
    K_net, (wn, hn) = g.scale_intrinsics(np.array(K_IN).reshape(3, 3), RES)
    by = {(r["topic"], r["stamp"]): r for r in recs if r["topic"] != "diag"}
    for i in range(2):
        d, ci = by[("depth", 6_000_000_000 + i)], by[("depth/camera_info", 6_000_000_000 + i)]
        assert (d["width"], d["height"]) == (RES[1], RES[0]) == (wn, hn) == (ci["width"], ci["height"])
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
