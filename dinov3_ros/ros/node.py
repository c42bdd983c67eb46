"""``dinov3_node``: camera stream(s) -> dense-perception topics through the shared core pipeline.

Inputs per camera namespace ``<cam>`` (``cameras`` parameter; '' = none): ``<cam>/image``
(sensor_msgs/Image, any supported encoding) and/or ``<cam>/image/compressed`` (JPEG/PNG), optional
``<cam>/camera_info``. Outputs: the topics of every registered output (``dinov3_ros.pipeline.outputs``) under
``~/[<cam>/]`` (``features``, ``features/pca``, ``depth``, ``depth/camera_info``, ``points``,
``matches``, ``objects/mask``, ``objects/boxes``, ``debug``); each output switchable
(``outputs.<name>``) and, with ``lazy``, computed only while it has subscribers. Inputs are taken
serialized and decoded by ``msgs.decode`` (the bag tool's decoder); camera_info follows the one policy
of ``core.camera.intrinsics_for_image``. Every
output carries the input header. Subscription callbacks only park the newest message per camera; the
worker (:mod:`dinov3_ros.ros.worker`) decodes, batches all cameras through one engine call and, on a
second thread, overlapped with the next frame's inference, runs the heads and publishes; a message
replaced before the worker took it is counted in ``frames_dropped``. ``/diagnostics`` reports rates,
latency (receive -> publish) p50/p99, counters, backend and model.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data, qos_profile_system_default
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import Frame
from dinov3_ros.msgs import builders as B
from dinov3_ros.msgs.decode import COMPRESSED_IMAGE, IMAGE
from dinov3_ros.pipeline.outputs import REGISTRY, topic_types
from dinov3_ros.ros import params as P
from dinov3_ros.ros.diagnostics import NodeStats
from dinov3_ros.ros.mailbox import Mailbox
from dinov3_ros.ros.types import ros_types
from dinov3_ros.ros.worker import FrameWorker, decode_frame

NODE_NAME = "dinov3_node"


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


class PerceptionCore:
    """Everything of the node except the node class: shared by ``dinov3_node`` and the lifecycle node."""

    def __init__(self, node: Node) -> None:
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
        self._mailbox = Mailbox([])
        self._worker: FrameWorker | None = None
        self._diag_timer: Any = None
        self._diag_pub: Any = None
        self._active = False
        self._declare()
        node.add_on_set_parameters_callback(self._on_set_parameters)

    # -- parameters -------------------------------------------------------------------------------
    def _declare(self) -> None:
        n = self.node
        for name, default in P.NODE_DEFAULTS.items():
            desc = ParameterDescriptor(
                description=P.NODE_DESCRIPTIONS.get(name, ""),
                read_only=False,
                dynamic_typing=isinstance(default, float),
            )
            n.declare_parameter(name, default, desc)
        for o in REGISTRY:
            n.declare_parameter(f"outputs.{o}", True, ParameterDescriptor(description=f"enable output {o}"))
        for name, default in P.pipeline_defaults().items():
            dyn = isinstance(default, float) and not isinstance(default, bool)
            text = PipelineConfig.describe(name.split(".", 1)[1])["description"]
            n.declare_parameter(name, default, ParameterDescriptor(description=text, dynamic_typing=dyn))

    def _values(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        vals = {name: self.node.get_parameter(name).value for name in P.all_parameter_names()}
        vals.update(overrides or {})
        return vals

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        if self.settings is None:  # before configure: validated at configure time
            return SetParametersResult(successful=True)
        changes = {p.name: p.value for p in params}
        ro = sorted(k for k in changes if k in P.READ_ONLY and changes[k] != self._values()[k])
        if ro and self.pipeline is not None:
            return SetParametersResult(
                successful=False, reason=f"{ro} cannot change while configured (cleanup + configure)"
            )
        try:
            new = P.validate(self._values(changes))
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.settings = new
        if self.pipeline is not None:
            self.pipeline.set_config(new.pipeline)
        self.log.info(f"parameters updated: {sorted(changes)}")
        return SetParametersResult(successful=True)

    # -- lifecycle --------------------------------------------------------------------------------
    def configure(self) -> None:
        """Validate parameters, load the model and create publishers (raises on any failure)."""
        from dinov3_ros.pipeline.model import load_model
        from dinov3_ros.pipeline.pipeline import Pipeline

        s = P.validate(self._values())
        self.settings = s
        t0 = time.perf_counter()
        self.model = load_model(s.model())
        self.pipeline = Pipeline.from_model(self.model, s.pipeline, device=s.device)
        self.log.info(
            f"model {s.weights} ({self.model.info.get('arch')}) on {s.backend}/{s.device}/{s.precision} "
            f"at {s.resolution[0]}x{s.resolution[1]} loaded in {time.perf_counter() - t0:.2f} s; cameras {s.cameras}"
        )
        qos = qos_of(s.output_qos)
        for cam in s.cameras:
            self._pubs[cam] = {
                t: self.node.create_publisher(self.tp.cls(mt), "~/" + _join(cam, t), qos)
                for t, mt in topic_types().items()
            }
            self._infos[cam] = deque(maxlen=16)
        self._mailbox = Mailbox(list(s.cameras))
        self._diag_pub = self.node.create_publisher(
            self.tp.cls("diagnostic_msgs/msg/DiagnosticArray"), "/diagnostics", 10
        )
        self._diag_timer = self.node.create_timer(s.diagnostics_period, self.publish_diagnostics)

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
            self._subscribe(
                CameraInfo, _join(cam, "camera_info"), lambda m, c=cam: self._infos[c].append(m), qin
            )
        self._active = True
        self._worker = FrameWorker(self, self.pipeline, self._mailbox)
        self._worker.start()

    def _subscribe(self, msg_type: Any, topic: str, callback: Any, qos: Any) -> None:
        self._subs.append(self.node.create_subscription(msg_type, topic, callback, qos, raw=True))

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
        if self._mailbox.put(cam, _Pending(raw, msgtype), now):
            self.stats.add("frames_dropped")

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
        return out

    def make_frame(self, cam: str, p: _Pending) -> Frame:
        """Decode a parked message into a :class:`Frame` (raises ValueError naming the problem)."""
        return decode_frame(cam or "/", p.msgtype, p.raw, list(self._infos.get(cam, ())), self.stats)

    def publish(self, cam: str, msgs: dict[str, Any]) -> None:
        pubs = self._pubs[cam]
        for t, m in msgs.items():
            pubs[t].publish(m)

    def publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        snap = self.stats.snapshot()
        info = self.model.info if self.model is not None else {}
        values = {
            **snap,
            "backend": info.get("backend", ""),
            "model": info.get("model", ""),
            "arch": info.get("arch", ""),
            "device": info.get("device", ""),
            "precision": info.get("precision", ""),
            "active": self._active,
        }
        level = "OK" if self._active else "WARN"
        msg = "running" if self._active else "inactive"
        if snap["bad_frames"] or snap["errors"]:
            msg += f"; {snap['bad_frames']} bad frames, {snap['errors']} errors"
        now_ns = self.node.get_clock().now().nanoseconds
        status = {
            "level": level,
            "name": f"{self.node.get_fully_qualified_name()}: perception",
            "message": msg,
            "hardware_id": str(info.get("device", "")),
            "values": values,
        }
        self._diag_pub.publish(B.diagnostics(self.tp, now_ns, [status]))


class PerceptionNode(Node):
    """Plain node: configures and activates itself at construction (raises on a bad model)."""

    def __init__(self, name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.core = PerceptionCore(self)
        self.core.configure()
        self.core.activate()

    def destroy_node(self) -> None:
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
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = PerceptionNode()
        except (ValueError, RuntimeError) as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
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
