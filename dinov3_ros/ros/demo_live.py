"""``dinov3-ros demo --live``: play a bag over real DDS into ``dinov3_node`` and record its outputs.

The node runs in its own process (``python -m dinov3_ros.ros.node``, input remapped to the bag's first
image topic and its camera_info); this process publishes the bag's messages in order (each frame waits
for the node's outputs of the previous one, so a slow CPU drops nothing) and writes every output
message into a rosbag2 directory (written to a temporary name, then renamed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def _image_topics(reader: Any) -> tuple[str | None, str | None, str | None]:
    img = next(
        (
            c.topic
            for c in reader.connections
            if c.msgtype == "sensor_msgs/msg/Image" and "depth" not in c.topic
        ),
        None,
    )
    cmp_ = next((c.topic for c in reader.connections if c.msgtype == "sensor_msgs/msg/CompressedImage"), None)
    base = (img or cmp_ or "").removesuffix("/compressed").rsplit("/", 1)[0]
    info = next(
        (
            c.topic
            for c in reader.connections
            if c.msgtype == "sensor_msgs/msg/CameraInfo" and c.topic.startswith(base)
        ),
        None,
    )
    return img, cmp_, info


def run_live_demo(
    bag: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: str = "default",
    device: str = "cpu",
    resolution: tuple[int, int] = (224, 224),
    timeout_s: float = 30.0,
) -> Path:
    """Feed ``bag`` into a ``dinov3_node`` process over DDS; record its outputs to the rosbag2 ``out``."""
    import rclpy
    from rclpy.qos import QoSProfile
    from rclpy.serialization import deserialize_message, serialize_message
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.msgs.builders import TOPIC_TYPES
    from dinov3_ros.ros.types import ros_types

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tp = ros_types()
    with AnyReader([Path(bag)]) as reader:
        img_t, cmp_t, info_t = _image_topics(reader)
        if img_t is None and cmp_t is None:
            raise ValueError(f"{bag}: no sensor_msgs/Image or CompressedImage topic")
        transport = "raw" if img_t else "compressed"
        in_topic = img_t or cmp_t.removesuffix("/compressed")  # type: ignore[union-attr]
        cmd = [
            sys.executable,
            "-m",
            "dinov3_ros.ros.node",
            "--ros-args",
            "--params-file",
            str(ROOT / "config/dinov3.yaml"),
            "-p",
            f"weights:={weights}",
            "-p",
            f"device:={device}",
            "-p",
            f"resolution:=[{resolution[0]},{resolution[1]}]",
            "-p",
            f"image_transport:={transport}",
            "-p",
            "input_qos:=default",
            "-r",
            f"image:={in_topic}",
            "-r",
            f"image/compressed:={in_topic}/compressed",
        ]
        if info_t:
            cmd += ["-r", f"camera_info:={info_t}"]
        node_p = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        rclpy.init()
        drv = rclpy.create_node("dinov3_demo_player")
        qos = QoSProfile(depth=50)
        pubs: dict[str, Any] = {}
        got: dict[int, int] = {}
        lock = threading.Lock()
        records: list[tuple[str, str, int, bytes]] = []

        def on_out(msg: Any, topic: str, msgtype: str) -> None:
            st = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            with lock:
                records.append((f"/dinov3_node/{topic}", msgtype, st, bytes(serialize_message(msg))))
                got[st] = got.get(st, 0) + 1

        for topic, mtype in TOPIC_TYPES.items():
            drv.create_subscription(
                tp.cls(mtype), f"/dinov3_node/{topic}", lambda m, t=topic, mt=mtype: on_out(m, t, mt), qos
            )
        stop = threading.Event()
        spinner = threading.Thread(
            target=lambda: [rclpy.spin_once(drv, timeout_sec=0.05) for _ in iter(stop.is_set, True)],
            daemon=True,
        )
        spinner.start()
        try:
            wanted = {img_t, cmp_t, info_t} - {None}
            conns = [c for c in reader.connections if c.topic in wanted]
            for c in conns:
                pubs[c.topic] = drv.create_publisher(tp.cls(c.msgtype), c.topic, qos)
            frame_topic = img_t or cmp_t
            t_end = time.time() + 120
            while pubs[frame_topic].get_subscription_count() == 0:
                if node_p.poll() is not None or time.time() > t_end:
                    raise RuntimeError("dinov3_node did not start (see its log above)")
                time.sleep(0.2)
            time.sleep(1.0)
            for conn, _t, raw in reader.messages(connections=conns):
                msg = deserialize_message(raw, tp.cls(conn.msgtype))
                pubs[conn.topic].publish(msg)
                if conn.topic == frame_topic:
                    st = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                    t_wait = time.time() + timeout_s
                    while time.time() < t_wait:
                        with lock:
                            if got.get(st, 0) >= len(TOPIC_TYPES):
                                break
                        time.sleep(0.01)
            time.sleep(1.0)
        finally:
            stop.set()
            spinner.join(timeout=5)
            drv.destroy_node()
            rclpy.shutdown()
            if node_p.poll() is None:
                os.killpg(node_p.pid, signal.SIGINT)
                try:
                    node_p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(node_p.pid, signal.SIGKILL)
    ts = get_typestore(Stores.LATEST)
    with Writer(tmp, version=9) as w:
        conns_out: dict[str, Any] = {}
        for topic, mtype, st, raw in sorted(records, key=lambda r: (r[2], r[0])):
            if topic not in conns_out:
                conns_out[topic] = w.add_connection(topic, mtype, typestore=ts)
            w.write(conns_out[topic], st, raw)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
