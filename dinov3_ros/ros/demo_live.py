"""``dinov3-ros demo --live``: play a bag over real DDS into ``dinov3_node`` and record its outputs.

The node runs in its own process (``python -m dinov3_ros.ros.node``, input remapped to the bag's
first image topic and its camera_info). This process publishes the bag's camera messages in order;
after each image it waits until the node has published every output for that image's stamp (so a
slow CPU drops nothing and keyframe matching sees every frame), then sends the next one. Every
output message is written, with the input header stamp as its time, to an MCAP rosbag2 directory
(written under a temporary name, then renamed).

With Fast DDS (the default RMW) and no profile of the user's, both processes load
``config/fastdds_local.xml``: the built-in 0.5 MB shared-memory segment cannot carry the node's
dense outputs at once and each frame would otherwise wait for a 3 s reliability heartbeat.
The node is stopped (SIGINT, then SIGKILL) however this function exits, and is also signalled by
the kernel if this process dies without cleaning up (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_NAME = "dinov3_node"
FASTDDS_PROFILE = "fastdds_local.xml"
_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


@dataclass
class LiveDemoResult:
    """What :func:`run_live_demo` recorded."""

    path: Path  # the rosbag2 directory (MCAP)
    frames: int  # images played into the node
    stamps: list[int]  # their header stamps (ns), in play order
    counts: dict[str, int] = field(default_factory=dict)  # output topic -> messages recorded
    incomplete: list[int] = field(default_factory=list)  # stamps whose outputs did not all arrive
    seconds: float = 0.0  # wall time from node start to the bag being written


#: raw image encodings that are camera pictures (not depth, instance ids or masks)
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "rgb16", "bgr16", "mono16")
_NOT_CAMERA = ("depth", "instance", "mask", "label", "seg", "disparity")


def _first_encoding(reader: Any, conn: Any) -> str | None:
    for _c, _t, raw in reader.messages(connections=[conn]):
        return str(reader.deserialize(raw, conn.msgtype).encoding)
    return None


def _image_topics(reader: Any, image_topic: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(raw image topic, compressed image topic, camera_info topic) of a bag; either image may be None.

    Without ``image_topic``: a raw ``sensor_msgs/Image`` stream with a colour/grey encoding whose name
    does not look like depth, instance ids or masks; else the first ``CompressedImage`` stream.
    """
    conns = list(reader.connections)
    if image_topic is not None:
        hit = [c for c in conns if c.topic == image_topic]
        if not hit or hit[0].msgtype not in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
            have = sorted(
                c.topic for c in conns if c.msgtype.startswith("sensor_msgs/msg/") and "Image" in c.msgtype
            )
            raise ValueError(
                f"image topic {image_topic!r} is not an image topic of the bag; image topics: {have}"
            )
        img = image_topic if hit[0].msgtype == "sensor_msgs/msg/Image" else None
        cmp_ = image_topic if img is None else None
    else:
        img = next(
            (
                c.topic
                for c in conns
                if c.msgtype == "sensor_msgs/msg/Image"
                and not any(w in c.topic.lower() for w in _NOT_CAMERA)
                and _first_encoding(reader, c) in COLOR_ENCODINGS
            ),
            None,
        )
        cmp_ = (
            None
            if img
            else next((c.topic for c in conns if c.msgtype == "sensor_msgs/msg/CompressedImage"), None)
        )
    base = (img or cmp_ or "").removesuffix("/compressed").rsplit("/", 1)[0]
    info = next(
        (
            c.topic
            for c in conns
            if c.msgtype == "sensor_msgs/msg/CameraInfo" and c.topic.startswith(base + "/")
        ),
        None,
    )
    return img, cmp_, info


def dds_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) plus the shipped Fast DDS profile where it applies.

    Applies when the RMW is Fast DDS (unset = the default) and no Fast DDS profile file is set.
    """
    from dinov3_ros.paths import config_dir

    out = dict(os.environ if env is None else env)
    rmw = out.get("RMW_IMPLEMENTATION", "")
    if (rmw == "" or rmw.startswith("rmw_fastrtps")) and not any(out.get(v) for v in _PROFILE_VARS):
        try:
            profile = config_dir() / FASTDDS_PROFILE
        except FileNotFoundError:
            return out
        if profile.is_file():
            out["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return out


def _die_with_parent() -> None:
    """Child-side (``preexec_fn``): get SIGTERM when the parent dies (Linux only; else no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGINT the process group of ``proc``, then SIGKILL it after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
    except ProcessLookupError:
        proc.wait(timeout=timeout_s)


def _node_command(
    weights: str,
    device: str,
    resolution: tuple[int, int],
    depth_head: str,
    transport: str,
    in_topic: str,
    info_topic: str | None,
) -> list[str]:
    from dinov3_ros.ros.params import node_command

    remaps = {"image" if transport == "raw" else "image/compressed": in_topic}
    if info_topic:
        remaps["camera_info"] = info_topic
    params = {
        "weights": weights,
        "depth_head": depth_head,
        "device": device,
        "resolution": resolution,
        "image_transport": transport,
        "input_qos": "default",
        "output_qos": "default",
    }
    return node_command(params, remaps)


def _write_bag(tmp_root: Path, out: Path, records: list[tuple[str, str, int, bytes]]) -> dict[str, int]:
    """Write ``records`` (topic, type, stamp, cdr) to an MCAP bag, then rename it to ``out``."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.fsutil import fsync_dir, fsync_tree

    ts = get_typestore(Stores.LATEST)
    bag = tmp_root / out.name
    counts: dict[str, int] = {}
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns: dict[str, Any] = {}
        for topic, mtype, st, raw in sorted(records, key=lambda r: (r[2], r[0])):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, mtype, typestore=ts)
            w.write(conns[topic], st, raw)
            counts[topic] = counts.get(topic, 0) + 1
    fsync_tree(bag)  # complete on disk before it appears under its name
    if out.exists():
        shutil.rmtree(out)
    os.replace(bag, out)
    fsync_dir(out.parent)
    shutil.rmtree(tmp_root, ignore_errors=True)
    return counts


class _Recorder:
    """The player's side of a live run: a driver node in its own DDS context that publishes the bag's
    camera messages and records every output of the node, first copy per (stamp, topic)."""

    def __init__(self, env: dict[str, str], node_p: subprocess.Popen) -> None:
        import rclpy
        from rclpy.signals import SignalHandlerOptions

        from dinov3_ros.ros.types import ros_types

        self.node_p, self.tp = node_p, ros_types()
        self.ctx = rclpy.Context()
        self.records: list[tuple[str, str, int, bytes]] = []
        self.got: dict[int, set[str]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.spinner: threading.Thread | None = None
        self.executor: Any = None
        saved = {v: os.environ.get(v) for v in _PROFILE_VARS}
        os.environ.update({k: v for k, v in env.items() if k in _PROFILE_VARS})
        try:  # the profile is read when the participant is created
            rclpy.init(context=self.ctx, signal_handler_options=SignalHandlerOptions.NO)
            self.node = rclpy.create_node("dinov3_demo_player", context=self.ctx)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _on_out(self, msg: Any, topic: str, msgtype: str) -> None:
        from rclpy.serialization import serialize_message

        st = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            seen = self.got.setdefault(st, set())
            if topic not in seen:  # keep the first of any duplicate
                seen.add(topic)
                self.records.append((f"/{NODE_NAME}/{topic}", msgtype, st, bytes(serialize_message(msg))))

    def connect(self, topic_types: dict[str, str], conns: list[Any]) -> None:
        """Subscribe to every output, create the input publishers and start spinning."""
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile

        qos = QoSProfile(depth=100)
        self.subs = [
            self.node.create_subscription(
                self.tp.cls(mt), f"/{NODE_NAME}/{t}", lambda m, t=t, mt=mt: self._on_out(m, t, mt), qos
            )
            for t, mt in topic_types.items()
        ]
        self.pubs = {c.topic: self.node.create_publisher(self.tp.cls(c.msgtype), c.topic, qos) for c in conns}
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)

        def spin() -> None:
            while not self.stop.is_set() and self.ctx.ok():
                self.executor.spin_once(timeout_sec=0.05)

        self.spinner = threading.Thread(target=spin, name="demo_live_spin", daemon=True)
        self.spinner.start()

    def check_node(self) -> None:
        if self.node_p.poll() is not None:
            raise RuntimeError(f"{NODE_NAME} exited with code {self.node_p.returncode} (see its log above)")

    def wait_up(self, timeout_s: float) -> None:
        """Until the node subscribes to our inputs and we are matched to all its output publishers."""
        deadline = time.monotonic() + timeout_s
        while not (
            all(p.get_subscription_count() > 0 for p in self.pubs.values())
            and all(s.get_publisher_count() > 0 for s in self.subs)
        ):
            self.check_node()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{NODE_NAME} did not come up within {timeout_s:.0f} s")
            time.sleep(0.05)
        time.sleep(0.3)  # let the node's side of the matching settle (lazy outputs)

    def seen(self, stamp: int) -> set[str]:
        with self.lock:
            return set(self.got.get(stamp, ()))

    def close(self) -> None:
        import rclpy

        self.stop.set()
        if self.spinner is not None:
            self.spinner.join(timeout=5)
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self.ctx.ok():
            rclpy.shutdown(context=self.ctx)


def _importable(tp: Any, msgtype: str) -> bool:
    """Whether rclpy has ``msgtype`` (vision_msgs may be missing; the node skips those topics too)."""
    try:
        tp.cls(msgtype)
    except KeyError:
        return False
    return True


def _await_outputs(
    rec: _Recorder, st: int, expected: set[str] | None, n_topics: int, timeout_s: float, say: Any, first: str
) -> tuple[set[str] | None, bool]:
    """Wait for frame ``st``'s outputs: ``(expected topics, complete)``. The first frame teaches which
    topics to expect (depth needs a depth head): all of them, or what arrived before a 1 s pause."""
    t_end = time.monotonic() + timeout_s
    last_new, n_seen = time.monotonic(), 0
    while True:
        rec.check_node()
        now = time.monotonic()
        seen = rec.seen(st)
        if len(seen) != n_seen:
            last_new, n_seen = now, len(seen)
        if expected is not None and seen >= expected:
            return expected, True
        if expected is None and seen and (len(seen) == n_topics or now - last_new > 1.0):
            say(f"outputs: {', '.join(sorted(seen))}")
            return seen, True
        if now > t_end:
            if expected is None:
                raise RuntimeError(
                    f"{NODE_NAME} published nothing for the first image ({first}, stamp {st}) "
                    f"within {timeout_s:.0f} s (see its log above)"
                )
            say(f"frame {st}: only {sorted(seen)} within {timeout_s:.0f} s")
            return expected, False
        time.sleep(0.005)


def _infos_first(messages: Any, frame_topic: str) -> Any:
    """The bag's messages in order, except that an image follows the other messages recorded at its time
    (its camera_info), as a driver's pair arrives at a node that waits for both."""
    held: list[tuple[Any, int, bytes]] = []
    for item in messages:
        if held and item[1] != held[0][1]:
            yield from sorted(held, key=lambda m: m[0].topic == frame_topic)
            held = []
        held.append(item)
    yield from sorted(held, key=lambda m: m[0].topic == frame_topic)


def _play(
    rec: _Recorder,
    reader: Any,
    conns: list[Any],
    frame_topic: str,
    n_topics: int,
    max_frames: int | None,
    timeout_s: float,
    say: Any,
) -> tuple[list[int], list[int]]:
    """Publish the bag's messages in order, each image after the previous one's outputs arrived;
    returns ``(stamps played, stamps whose outputs did not all arrive)``."""
    from rclpy.serialization import deserialize_message

    stamps: list[int] = []
    incomplete: list[int] = []
    expected: set[str] | None = None
    for conn, _t, raw in _infos_first(reader.messages(connections=conns), frame_topic):
        msg = deserialize_message(raw, rec.tp.cls(conn.msgtype))
        if conn.topic != frame_topic:
            rec.pubs[conn.topic].publish(msg)
            continue
        if max_frames is not None and len(stamps) >= max_frames:
            break
        st = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        stamps.append(st)
        rec.pubs[conn.topic].publish(msg)
        expected, complete = _await_outputs(rec, st, expected, n_topics, timeout_s, say, frame_topic)
        if not complete:
            incomplete.append(st)
    t_end = time.monotonic() + (2.0 if incomplete else 0.0)
    while incomplete and time.monotonic() < t_end:  # stragglers of incomplete frames
        incomplete = [s for s in incomplete if not (expected and rec.seen(s) >= expected)]
        time.sleep(0.05)
    return stamps, incomplete


def run_live_demo(
    bag: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: str = "default",
    device: str = "cpu",
    resolution: tuple[int, int] = (240, 320),
    depth_head: str = "auto",
    image_topic: str | None = None,
    max_frames: int | None = None,
    frame_timeout_s: float = 30.0,
    start_timeout_s: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> LiveDemoResult:
    """Feed ``bag`` into a ``dinov3_node`` process over DDS; record its outputs to the rosbag2 ``out``.

    ``image_topic`` picks the input stream (default: see :func:`_image_topics`); ``max_frames`` limits
    the images played. Raises RuntimeError if the node exits or does not come
    up within ``start_timeout_s``, ValueError if the bag has no image topic. A frame whose outputs do
    not all arrive within ``frame_timeout_s`` is listed in ``LiveDemoResult.incomplete``.
    """
    from rosbags.highlevel import AnyReader

    from dinov3_ros.pipeline.outputs import topic_types

    say = log or (lambda s: print(f"demo-live: {s}", flush=True))
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    bag, out = Path(bag), Path(out)
    if not bag.exists():
        raise FileNotFoundError(f"input bag not found: {bag}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = out.parent / f".{out.name}.partial"
    if tmp_root.exists():
        shutil.rmtree(tmp_root)
    t0 = time.perf_counter()
    with AnyReader([bag]) as reader:
        img_t, cmp_t, info_t = _image_topics(reader, image_topic)
        frame_topic = img_t or cmp_t
        if frame_topic is None:
            raise ValueError(f"{bag}: no sensor_msgs/Image or CompressedImage topic")
        transport = "raw" if img_t else "compressed"
        env = dds_env()
        cmd = _node_command(weights, device, resolution, depth_head, transport, frame_topic, info_t)
        node_p = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        say(f"started {NODE_NAME} (pid {node_p.pid}): weights={weights} device={device} input={frame_topic}")
        rec = None
        try:
            rec = _Recorder(env, node_p)
            conns = [c for c in reader.connections if c.topic in {frame_topic, info_t}]
            types = {t: mt for t, mt in topic_types().items() if _importable(rec.tp, mt)}
            rec.connect(types, conns)
            rec.wait_up(start_timeout_s)
            say(f"{NODE_NAME} up after {time.perf_counter() - t0:.1f} s; playing {bag}")
            stamps, incomplete = _play(
                rec, reader, conns, frame_topic, len(types), max_frames, frame_timeout_s, say
            )
        finally:
            if rec is not None:
                rec.close()
            _stop_process(node_p)
            if node_p.returncode not in (0, None, -signal.SIGINT, -signal.SIGTERM):
                say(f"{NODE_NAME} exited with code {node_p.returncode}")
    with rec.lock:
        recs = list(rec.records)
    counts = _write_bag(tmp_root, out, recs)
    return LiveDemoResult(out, len(stamps), stamps, counts, incomplete, time.perf_counter() - t0)
