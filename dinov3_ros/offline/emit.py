"""Output messages of the bag tool: the node's topics under a namespace, serialized by the registry.

Topics mirror the node's private namespace (every registered output's topics, ``pipeline.outputs``):
``<ns>/features``, ``<ns>/features/pca``, ``<ns>/depth``, ... ``<ns>`` is ``--prefix`` (default
``/dinov3``) for a single camera; with several image topics it is ``<prefix>/<camera base>``
(``/dinov3/cam_left`` for ``/cam_left/image_raw``), or ``<prefix>/<image topic>`` for topics that share
a camera base, so two inputs never write to one output topic (:func:`camera_namespaces` refuses a
selection where they would).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import FrameOutputs
from dinov3_ros.msgs.cdr import Parts, camera_info_parts, image_parts
from dinov3_ros.pipeline.outputs import frame_messages

from .bagout import ConnKey
from .sources import InputError, InputMessage, Source, camera_info_topic

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"


def output_typestore() -> Any:
    """The rosbags typestore whose message definitions (and RIHS01 hashes) are embedded in the output."""
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.msgs.extra_types import register_extra_types

    return register_extra_types(get_typestore(Stores.LATEST))


def camera_namespace(prefix: str, image_topic: str, n_topics: int) -> str:
    """Output namespace of one input camera (see module docstring)."""
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    if n_topics <= 1:
        return prefix or "/"
    base = camera_info_topic(image_topic).rsplit("/", 1)[0]
    return (prefix + base) if base else (prefix + "/" + image_topic.strip("/").replace("/", "_"))


def camera_namespaces(prefix: str, image_topics: list[str]) -> dict[str, str]:
    """Output namespace of every input image topic, distinct per topic.

    Topics whose camera bases coincide (``/camera/image_raw`` and ``/camera/instances``) get their
    full topic name (without a ``/compressed`` transport suffix) instead; ``InputError`` names the
    topics that would still share a namespace (``/cam/image_raw`` and ``/cam/image_raw/compressed``).
    """
    ns = {t: camera_namespace(prefix, t, len(image_topics)).rstrip("/") for t in image_topics}
    if len(image_topics) > 1:
        base = "/" + prefix.strip("/") if prefix.strip("/") else ""
        shared = [t for t in image_topics if list(ns.values()).count(ns[t]) > 1]
        for t in shared:
            full = t[: -len("/compressed")] if t.endswith("/compressed") else t
            ns[t] = base + "/" + full.strip("/")
    by_ns: dict[str, list[str]] = {}
    for t, n in ns.items():
        by_ns.setdefault(n, []).append(t)
    clash = {n: ts for n, ts in by_ns.items() if len(ts) > 1}
    if clash:
        n, ts = next(iter(clash.items()))
        raise InputError(
            f"input topics {' and '.join(ts)} would write to the same output topics ({n or '/'}/...); "
            "process one of them (--topics)"
        )
    return ns


class MsgEmitter:
    """Serialized output messages of every processed frame, and copies of video/folder frames."""

    def __init__(
        self, source: Source, config: PipelineConfig, prefix: str = "/dinov3", typestore: Any = None
    ) -> None:
        self.source = source
        self.config = config
        self.ts = typestore if typestore is not None else output_typestore()
        self.ns = camera_namespaces(prefix, list(source.image_topics))
        self._defs: dict[str, tuple[str, str]] = {}

    def resolve(self, key: ConnKey) -> dict[str, Any]:
        """Definition, hash, serialization format and QoS of an output connection."""
        if key.source.startswith("in:"):
            spec = self.source.connections[int(key.source[3:])]
            return {
                "msgdef": spec.msgdef,
                "rihs01": spec.digest,
                "serialization_format": spec.serialization_format,
                "qos": spec.qos,
            }
        d = self._defs.get(key.msgtype)
        if d is None:
            msgdef, _ = self.ts.generate_msgdef(key.msgtype, ros_version=2)
            d = self._defs[key.msgtype] = (msgdef, self.ts.hash_rihs01(key.msgtype))
        return {"msgdef": d[0], "rihs01": d[1], "serialization_format": "cdr", "qos": ()}

    def frame_messages(self, fo: FrameOutputs, m: InputMessage) -> list[tuple[ConnKey, int, Parts]]:
        """The frame's messages in message order, at the input's log time."""
        ns = self.ns[m.topic]
        return [
            (ConnKey(f"{ns}/{suffix}", msgtype, "out"), m.log_ns, parts)
            for suffix, msgtype, parts in frame_messages(fo, self.config)
        ]

    def input_messages(self, m: InputMessage, rgb: np.ndarray) -> list[tuple[ConnKey, int, Parts]]:
        """Videos/folders with ``--copy-input``: the decoded frame as an rgb8 Image (+ its camera_info)."""
        out = [(ConnKey(m.topic, IMAGE, "out"), m.log_ns, image_parts(m.stamp_ns, m.frame_id, rgb, "rgb8"))]
        if m.calibration is not None:
            intr = m.calibration.for_image(rgb.shape[1], rgb.shape[0])
            if intr is not None:
                parts = camera_info_parts(m.stamp_ns, m.frame_id, intr)
                out.append((ConnKey(camera_info_topic(m.topic), CAMERA_INFO, "out"), m.log_ns, parts))
        return out
