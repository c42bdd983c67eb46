"""``dinov3_node``: camera stream(s) -> dense-perception topics through the shared core pipeline.

Inputs per camera namespace ``<cam>`` (``cameras`` parameter; '' = none): ``<cam>/image``
(sensor_msgs/Image, any supported encoding) and/or ``<cam>/image/compressed`` (JPEG/PNG), and
``<cam>/camera_info``. Outputs: the topics of every registered output (``dinov3_ros.pipeline.outputs``)
under ``~/[<cam>/]``, each switchable (``outputs.<name>``) and, with ``lazy``, computed only while it
has subscribers (docs/NODE.md lists them). Inputs are taken serialized and decoded by ``msgs.decode``
(the bag tool's decoder); camera_info follows ``core.camera.intrinsics_for_image``, and outputs that
need the calibration are skipped for frames without a usable one (``require_camera_info``) while
everything else keeps publishing. Every output carries the input header. Subscription callbacks only
park the newest message per camera; the worker (:mod:`dinov3_ros.ros.worker`) decodes, batches all
cameras through one engine call and, on a second thread, runs the heads and publishes. ``/diagnostics``
reports rates, latency, counters per bad-input class, camera_info state and degrades to WARN/ERROR
(:func:`dinov3_ros.ros.diagnostics.health`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import rclpy
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data, qos_profile_system_default
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import Frame
from dinov3_ros.msgs import builders as B
from dinov3_ros.msgs.decode import COMPRESSED_IMAGE, IMAGE
from dinov3_ros.pipeline.outputs import REGISTRY
from dinov3_ros.ros import dds
from dinov3_ros.ros import params as P
from dinov3_ros.ros.diagnostics import NodeStats, RateLimiter, Thresholds, health
from dinov3_ros.ros.mailbox import Mailbox
from dinov3_ros.ros.tf import odometry_transform, tf_message_type
from dinov3_ros.ros.types import ros_types
from dinov3_ros.ros.worker import FrameWorker, decode_frame

NODE_NAME = "dinov3_node"
FIRST_INFO_WAIT_S = 0.25  # how long the first frame waits for its camera_info
_FMAX = sys.float_info.max


def qos_of(name: str) -> QoSProfile:
    """``sensor_data`` (best effort, keep-last 5), ``default`` (reliable, keep-last 10), ``system_default``."""
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "system_default":
        return qos_profile_system_default
    return QoSProfile(depth=10)


@dataclass
class _Pending:
    raw: bytes  # the serialized image message
    msgtype: str  # sensor_msgs/msg/Image or CompressedImage


def _join(cam: str, name: str) -> str:
    return f"{cam}/{name}" if cam else name


def _range(default: Any, lo: Any, hi: Any) -> dict[str, Any]:
    """Descriptor range fields for a numeric parameter (floats always get one: it refuses inf and NaN)."""
    if isinstance(default, bool):
        return {}
    if isinstance(default, int):
        if lo is None and hi is None:
            return {}
        return {"integer_range": [IntegerRange(from_value=int(lo if lo is not None else -(2**63)),
                                               to_value=int(hi if hi is not None else 2**63 - 1), step=0)]}  # fmt: skip
    if isinstance(default, float):
        f, t = (-_FMAX if lo is None else float(lo)), (_FMAX if hi is None else float(hi))
        return {"floating_point_range": [FloatingPointRange(from_value=f, to_value=t, step=0.0)]}
    return {}


def _descriptor(
    name: str, default: Any, text: str, *, read_only: bool, lo: Any = None, hi: Any = None
) -> ParameterDescriptor:
    return ParameterDescriptor(
        name=name,
        description=text,
        read_only=read_only,
        dynamic_typing=True,  # types are validated by params.validate, with messages naming the parameter
        **_range(default, lo, hi),
    )


class PerceptionCore:
    """Everything of the node except the node class: shared by ``dinov3_node`` and the lifecycle node.

    ``model_read_only``: the model and transport parameters are read-only in the descriptors (the plain
    node configures at start); the lifecycle node lets them change while unconfigured.
    """

    def __init__(self, node: Node, model_read_only: bool = True) -> None:
        self.node = node
        self.log = node.get_logger()
        self.tp = ros_types()
        self.stats = NodeStats()
        self.settings: P.NodeSettings | None = None
        self.pipeline: Any = None
        self.model: Any = None
        self._pubs: dict[str, dict[str, Any]] = {}
        self._subs: list[Any] = []
        self._infos: dict[str, deque] = {}
        self._info_seen: dict[str, threading.Event] = {}  # set once a camera's first camera_info arrived
        self._mailbox = Mailbox([])
        self._worker: FrameWorker | None = None
        self._diag_timer: Any = None
        self._diag_pub: Any = None
        self._tf_pub: Any = None  # /tf publisher when publish_tf and tf2_msgs is installed
        self._diag_prev: dict[str, Any] = {}
        self._active = False
        self._limit = RateLimiter(5.0)
        self._warned: set[str] = set()
        self._declare(model_read_only)
        node.add_on_set_parameters_callback(self._on_set_parameters)

    # -- parameters -------------------------------------------------------------------------------
    def _declare(self, model_read_only: bool) -> None:
        """Every parameter with its description, range and read-only flag. Types are checked here, not by
        rclpy (``dynamic_typing``), so a wrong type gets a message that names the parameter and the type
        it needs."""
        for name, s in P.NODE_PARAMS.items():
            ro = s.read_only and model_read_only
            desc = _descriptor(name, s.default, s.description, read_only=ro, lo=s.lo, hi=s.hi)
            self._declare_one(name, s.default, desc)
        for o, head in REGISTRY.items():
            text = "publish " + ", ".join(f"~/{t.suffix}" for t in head.topics)
            self._declare_one(f"outputs.{o}", True, _descriptor(f"outputs.{o}", True, text, read_only=False))
        for name, default in P.pipeline_defaults().items():
            d = PipelineConfig.describe(name.split(".", 1)[1])
            self._declare_one(name, default, _descriptor(name, default, d["description"], read_only=False,
                                                         lo=d["lo"], hi=d["hi"]))  # fmt: skip

    def _declare_one(self, name: str, default: Any, desc: ParameterDescriptor) -> None:
        """Declare one parameter; a value out of its range given for it becomes one clear ValueError."""
        try:
            self.node.declare_parameter(name, default, desc)
        except ParameterException as exc:
            given = self.node._parameter_overrides.get(name)
            value = given.value if given is not None else None
            raise ValueError(f"parameter {name}: {value!r} is not valid ({exc})") from exc

    def _values(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        vals = {name: self.node.get_parameter(name).value for name in P.all_parameter_names()}
        vals.update(overrides or {})
        return vals

    def _channels(self) -> int | None:
        info = getattr(getattr(self.model, "engine", None), "info", None)
        dim = getattr(info, "embed_dim", None)
        return int(dim) if dim else None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        if self.settings is None:  # before configure: validated at configure time
            return SetParametersResult(successful=True)
        changes = {p.name: p.value for p in params if not p.name.startswith("qos_overrides.")}
        if not changes:  # rclpy declaring the QoS override parameters of a new publisher
            return SetParametersResult(successful=True)
        unknown = P.unknown_parameters(set(changes) - set(P.all_parameter_names()) - {"use_sim_time"},
                                       P.all_parameter_names())  # fmt: skip
        if unknown:
            return SetParametersResult(successful=False, reason="; ".join(unknown))
        changes.pop("use_sim_time", None)
        current = self._values()
        ro = sorted(k for k in changes if k in P.READ_ONLY and changes[k] != current[k])
        if ro and self.pipeline is not None:
            return SetParametersResult(
                successful=False, reason=f"{ro} cannot change while configured (cleanup + configure)"
            )
        try:
            new = P.validate(self._values(changes), self._channels())
            if self.settings.resolution is not None:
                new = new.with_resolution(self.settings.resolution)
            if self.pipeline is not None:  # also checks the settings against the loaded model
                self.pipeline.set_config(new.pipeline)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.settings = new
        self.log.info(f"parameters updated: {sorted(changes)}")
        return SetParametersResult(successful=True)

    def _check_unknown(self) -> None:
        declared = set(self.node._parameters) | set(P.all_parameter_names())
        problems = P.unknown_parameters(self.node._parameter_overrides, declared)
        if problems:
            raise ValueError("; ".join(problems))

    # -- lifecycle --------------------------------------------------------------------------------
    def configure(self) -> None:
        """Validate parameters, load the model and create publishers (raises on any failure)."""
        from dinov3_ros.pipeline.model import load_model
        from dinov3_ros.pipeline.pipeline import Pipeline

        self._check_unknown()
        s = P.validate(self._values())
        t0 = time.perf_counter()
        self.model = load_model(s.model())
        res = s.resolution or self.model.input_size or P.DEFAULT_RESOLUTION
        s = P.validate(self._values(), self._channels()).with_resolution(res)
        self.settings = s
        self.pipeline = Pipeline.from_model(self.model, s.pipeline, device=s.device)
        prec = self.model.info.get("precision", s.precision)
        how = "set" if s.resolution == P.parse_node_resolution(self._values()["resolution"]) else "auto"
        self.log.info(
            f"model {s.weights} ({self.model.info.get('arch')}) on {s.backend}/{s.device}/{prec} "
            f"at {res[0]}x{res[1]} ({how}) loaded in {time.perf_counter() - t0:.2f} s; cameras {s.cameras}"
        )
        warn = dds.stock_profile_warning()
        if warn:
            self.log.warning(warn)
        self._create_publishers(s)
        self._mailbox = Mailbox(list(s.cameras))
        self._diag_pub = self.node.create_publisher(
            self.tp.cls("diagnostic_msgs/msg/DiagnosticArray"), "/diagnostics", 10
        )
        self._diag_timer = self.node.create_timer(s.diagnostics_period, self.publish_diagnostics)

    def _create_publishers(self, s: P.NodeSettings) -> None:
        qos = qos_of(s.output_qos)
        missing: dict[str, list[str]] = {}
        for cam in s.cameras:
            pubs = self._pubs[cam] = {}
            for head in REGISTRY.values():
                for t in head.topics:
                    try:
                        cls = self.tp.cls(t.msgtype)
                    except KeyError:  # e.g. vision_msgs not installed
                        missing.setdefault(t.msgtype, []).append(t.suffix)
                        continue
                    pubs[t.suffix] = self.node.create_publisher(
                        cls,
                        "~/" + _join(cam, t.suffix),
                        qos,
                        qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                    )
            self._infos[cam] = deque(maxlen=16)
            self._info_seen[cam] = threading.Event()
        for mt, topics in missing.items():
            pkg = mt.split("/", 1)[0]
            self.log.warning(
                f"{', '.join(sorted(set(topics)))} not published: {pkg} is not installed "
                f"(apt install ros-$ROS_DISTRO-{pkg.replace('_', '-')})"
            )
        self._tf_pub = None
        if s.publish_tf:
            tf_type = tf_message_type()
            if tf_type is None:
                self.log.warning(
                    "publish_tf: TF broadcasting needs tf2_msgs; ~/odometry carries the same pose"
                )
            else:
                self._tf_pub = self.node.create_publisher(tf_type, "/tf", 100)

    def _on_info(self, cam: str, raw: bytes) -> None:
        self._infos[cam].append(raw)
        self._info_seen[cam].set()

    def activate(self) -> None:
        """Subscribe to the inputs and start the worker."""
        s = self.settings
        assert s is not None, "configure first"
        qin = qos_of(s.input_qos)
        for cam in s.cameras:
            # serialized (raw) messages: one CDR decoder for the node and the bag tool
            if s.image_transport in ("raw", "both"):
                self._subscribe(Image, _join(cam, "image"), lambda m, c=cam: self._on_image(c, m, IMAGE), qin)
            if s.image_transport in ("compressed", "both"):
                self._subscribe(
                    CompressedImage,
                    _join(cam, "image/compressed"),
                    lambda m, c=cam: self._on_image(c, m, COMPRESSED_IMAGE),
                    qin,
                )
            self._subscribe(CameraInfo, _join(cam, "camera_info"), lambda m, c=cam: self._on_info(c, m), qin)
        self._active = True
        self._worker = FrameWorker(self, self.pipeline, self._mailbox)
        self._worker.start()

    def _subscribe(self, msg_type: Any, topic: str, callback: Any, qos: Any) -> None:
        opts = QoSOverridingOptions.with_default_policies()
        self._subs.append(
            self.node.create_subscription(
                msg_type, topic, callback, qos, raw=True, qos_overriding_options=opts
            )
        )

    def deactivate(self) -> None:
        """Unsubscribe and stop the worker (model stays loaded)."""
        self._active = False
        if self._worker is not None:
            self._worker.stop(timeout=10.0)
            self._worker = None
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs.clear()
        self._mailbox.clear()

    def cleanup(self) -> None:
        """Release publishers, timer and the model."""
        if self._active:
            self.deactivate()
        for pubs in self._pubs.values():
            for pub in pubs.values():
                self.node.destroy_publisher(pub)
        self._pubs.clear()
        if self._diag_timer is not None:
            self.node.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.node.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        if self._tf_pub is not None:
            self.node.destroy_publisher(self._tf_pub)
            self._tf_pub = None
        if self.pipeline is not None:
            self.pipeline.close()  # the heads' threads
        close = getattr(getattr(self.model, "engine", None), "close", None)
        if callable(close):
            close()
        self.model = self.pipeline = None
        self.settings = None

    # -- executor side: must never block ----------------------------------------------------------
    def _on_image(self, cam: str, raw: bytes, msgtype: str) -> None:
        now = time.monotonic()
        self.stats.received(cam, now)
        s = self.settings
        if s is not None and len(raw) > s.max_input_bytes:
            text = f"{len(raw)}-byte {msgtype.rsplit('/', 1)[-1]} exceeds max_input_bytes {s.max_input_bytes}"
            self.stats.add("bad_frames")
            self.stats.add("bad_oversize", message=text)
            self._log_limited(f"oversize:{cam}", f"frame on '{_join(cam, 'image')}' dropped: {text}")
            return
        if self._mailbox.put(cam, _Pending(raw, msgtype), now):
            self.stats.add("frames_dropped")

    def _log_limited(self, key: str, text: str) -> None:
        ok, suppressed = self._limit.allow(key)
        if ok:
            self.log.error(text + (f" ({suppressed} more like it suppressed)" if suppressed else ""))

    # -- worker -----------------------------------------------------------------------------------
    def wanted_topics(self, cam: str) -> set[str]:
        """Output topics of ``cam`` to build now (enabled and, if lazy, subscribed)."""
        s = self.settings
        if s is None:
            return set()
        pubs = self._pubs.get(cam, {})
        out = set()
        for name, head in REGISTRY.items():
            if not s.outputs.get(name, False):
                continue
            for t in head.topics:
                pub = pubs.get(t.suffix)
                if pub is not None and (not s.lazy or pub.get_subscription_count() > 0):
                    out.add(t.suffix)
                    if t.deprecated and t.suffix not in self._warned:
                        self._warned.add(t.suffix)
                        self.log.warning(
                            f"~/{t.suffix} is deprecated and goes in the next release: use ~/{t.deprecated}"
                        )
        if self._tf_pub is not None and s.outputs.get("odometry", False):
            out.add("odometry")  # /tf is fed by the odometry output, subscribed or not
        return out

    def make_frame(self, cam: str, p: _Pending) -> Frame:
        """Decode a parked message into a :class:`Frame` (raises ValueError naming the problem)."""
        s = self.settings
        tol = int(s.camera_info_tolerance_ms * 1e6) if s is not None else 0
        limit = s.max_input_bytes if s is not None else 0
        seen = self._info_seen.get(cam)
        if s is not None and s.require_camera_info and seen is not None and not seen.is_set():
            # drivers publish an image and its camera_info together, in either order: at start-up only,
            # give the first camera_info a moment instead of dropping the first frame's metric outputs
            seen.wait(FIRST_INFO_WAIT_S)
        infos = list(self._infos.get(cam, ()))
        frame = decode_frame(
            cam or "/", p.msgtype, p.raw, infos, self.stats, tolerance_ns=tol, max_bytes=limit
        )
        state = self.stats.camera_info.get(cam or "/")
        if s is not None and state is not None and state.source in ("missing", "invalid"):
            what = "outputs that need it skipped" if s.require_camera_info else "fallback pinhole in use"
            self._warn_limited(
                f"info:{cam}:{state.source}",
                f"camera '{cam or '/'}': camera_info {state.source} ({state.reason}); {what}",
            )
        return frame

    def _warn_limited(self, key: str, text: str) -> None:
        ok, suppressed = self._limit.allow(key)
        if ok:
            self.log.warning(text + (f" ({suppressed} more like it suppressed)" if suppressed else ""))

    def publish(self, cam: str, msgs: dict[str, Any]) -> None:
        pubs = self._pubs[cam]
        for t, m in msgs.items():
            pubs[t].publish(m)
        if self._tf_pub is not None and "odometry" in msgs:
            self._tf_pub.publish(self._tf_pub.msg_type(transforms=[odometry_transform(msgs["odometry"])]))

    def publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        s = self.settings
        snap = self.stats.snapshot()
        info = self.model.info if self.model is not None else {}
        snap.update({k: info.get(k, "") for k in ("backend", "model", "arch", "device", "precision")})
        snap["active"] = self._active
        th, cams = Thresholds(), [""]
        if s is not None:
            th = Thresholds(s.expected_rate_hz, s.latency_budget_ms, s.stale_after_s, s.require_camera_info)
            cams = list(s.cameras)
        fqn = self.node.get_fully_qualified_name()
        statuses = health(fqn, cams, snap, self._diag_prev, th, self._active)
        self._diag_prev = snap
        hw = str(info.get("device", ""))
        for st in statuses:
            st["hardware_id"] = hw
        self._diag_pub.publish(B.diagnostics(self.tp, self.node.get_clock().now().nanoseconds, statuses))


class PerceptionNode(Node):
    """Plain node: configures and activates itself at construction (ValueError / RuntimeError naming the
    problem on a bad parameter or model)."""

    def __init__(self, name: str = NODE_NAME, **kwargs: Any) -> None:
        self.core: PerceptionCore | None = None
        super().__init__(name, **kwargs)
        try:
            self.core = PerceptionCore(self)
            self.core.configure()
            self.core.activate()
        except Exception:
            if self.core is not None:
                self.core.cleanup()
            super().destroy_node()
            raise

    def destroy_node(self) -> None:
        if self.core is not None:
            self.core.cleanup()
        super().destroy_node()


def spin_nodes(nodes: list[Node]) -> None:
    """Spin ``nodes`` on one multi-threaded executor until shutdown / Ctrl-C."""
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    ex = MultiThreadedExecutor(num_threads=2)
    for n in nodes:
        ex.add_node(n)
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ex.shutdown()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run dinov3_ros dinov3_node``."""
    applied = dds.apply_profile()
    rclpy.init(args=args)
    log = rclpy.logging.get_logger(NODE_NAME)
    if applied:
        log.info(applied)
    node = None
    try:
        try:
            node = PerceptionNode()
        except (ValueError, RuntimeError) as exc:
            log.fatal(f"cannot start: {exc}")
            return 1
        spin_nodes([node])
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
