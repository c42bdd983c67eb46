"""Output messages of the offline tool, built with the same ``dinov3_ros.msgs`` builders as the node.

Topics mirror the node's private namespace (``msgs.builders.TOPICS``): ``<ns>/features``,
``<ns>/features/pca``, ``<ns>/depth``, ``<ns>/depth/camera_info``, ``<ns>/points``, ``<ns>/matches``,
``<ns>/objects/mask``, ``<ns>/objects/boxes``, ``<ns>/debug``. ``<ns>`` is ``--prefix`` (default
``/dinov3``) for a single camera; with several image topics it is ``<prefix>/<camera base>``
(``/dinov3/cam_left`` for ``/cam_left/image_raw``) so cameras never share a topic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinov3_ros.msgs import builders, cdr
from dinov3_ros.msgs.provider import rosbags_types

from .bagout import ConnKey
from .execute import Emitter
from .sources import InputMessage, Source, camera_info_topic


def output_typestore() -> Any:
    """The rosbags typestore used for output messages (message definitions are embedded from it)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.LATEST)


def camera_namespace(prefix: str, image_topic: str, n_topics: int) -> str:
    """Output namespace of one input camera (see module docstring)."""
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    if n_topics <= 1:
        return prefix or "/"
    base = camera_info_topic(image_topic).rsplit("/", 1)[0]
    return (prefix + base) if base else (prefix + "/" + image_topic.strip("/").replace("/", "_"))


def output_topics(
    prefix: str, image_topics: list[str], outputs: set[str]
) -> dict[str, list[tuple[str, str]]]:
    """image topic -> [(output topic, msgtype)] in the order messages are written."""
    res: dict[str, list[tuple[str, str]]] = {}
    for t in image_topics:
        ns = camera_namespace(prefix, t, len(image_topics)).rstrip("/")
        res[t] = [
            (f"{ns}/{suffix}", builders.TOPIC_TYPES[suffix])
            for name in builders.TOPICS
            if name in outputs
            for suffix in builders.TOPICS[name]
        ]
    return res


class MsgEmitter(Emitter):
    """Builds + serializes the node's messages for every processed frame."""

    def __init__(
        self,
        source: Source,
        outputs: set[str],
        prefix: str = "/dinov3",
        mask_encoding: str = "mono8",
        typestore: Any = None,
    ) -> None:
        self.source = source
        self.outputs = set(outputs)
        self.ts = typestore if typestore is not None else output_typestore()
        self.tp = rosbags_types(self.ts)
        self.mask_encoding = mask_encoding
        self.topics = output_topics(prefix, source.image_topics, self.outputs)
        self._suffix = {
            t: {
                f"{s}": f"{camera_namespace(prefix, t, len(source.image_topics)).rstrip('/')}/{s}"
                for name in builders.TOPICS
                if name in self.outputs
                for s in builders.TOPICS[name]
            }
            for t in source.image_topics
        }
        self._defs: dict[str, tuple[str, str]] = {}

    def _def(self, msgtype: str) -> tuple[str, str]:
        d = self._defs.get(msgtype)
        if d is None:
            msgdef, _ = self.ts.generate_msgdef(msgtype, ros_version=2)
            d = self._defs[msgtype] = (msgdef, self.ts.hash_rihs01(msgtype))
        return d

    def resolve(self, key: ConnKey) -> dict[str, Any]:
        if key.source.startswith("in:"):
            spec = self.source.connections[int(key.source[3:])]
            return {
                "msgdef": spec.msgdef,
                "rihs01": spec.digest,
                "serialization_format": spec.serialization_format,
                "qos": spec.qos,
            }
        msgdef, rihs = self._def(key.msgtype)
        return {"msgdef": msgdef, "rihs01": rihs, "serialization_format": "cdr", "qos": ()}

    def _ser(self, msg: Any, msgtype: str) -> bytes:
        return bytes(self.ts.serialize_cdr(msg, msgtype))

    def frame_messages(self, fo: Any, m: InputMessage, rgb: np.ndarray) -> list[tuple[ConnKey, int, Any]]:
        """The frame's messages in ``builders.frame_messages`` order. Images and camera_info are
        serialized directly (:mod:`dinov3_ros.msgs.cdr`, same bytes, pixel data not copied: the
        serialized message is a list of buffers); point clouds and masks go through the builders."""
        names = self._suffix[m.topic]
        stamp, fid = fo.stamp_ns, fo.frame_id
        built: dict[str, Any] = {}
        slow = [s for s in ("points", "matches", "objects/mask", "objects/boxes") if s in names]
        if slow:
            built = builders.frame_messages(self.tp, fo, set(slow), self.mask_encoding)
        out = []

        def add(suffix: str, raw: Any) -> None:
            out.append((ConnKey(names[suffix], builders.TOPIC_TYPES[suffix], "out"), m.log_ns, raw))

        if fo.features is not None and "features" in names:
            f = np.ascontiguousarray(fo.features, dtype=np.float32)
            add("features", cdr.image_parts(stamp, fid, f, builders.image_encoding(f)))
        if fo.features_pca is not None and "features/pca" in names:
            add("features/pca", cdr.image_parts(stamp, fid, fo.features_pca, "rgb8"))
        if fo.depth is not None:
            if "depth" in names:
                add("depth", cdr.image_parts(stamp, fid, np.asarray(fo.depth, dtype=np.float32), "32FC1"))
            k = fo.depth_info
            if k is not None and "depth/camera_info" in names:
                p = k.P if k.P is not None else np.hstack([k.K, np.zeros((3, 1))])
                raw = cdr.camera_info_bytes(stamp, fid, k.height, k.width, k.distortion_model, k.D, k.K, p)
                add("depth/camera_info", raw)
        for suffix in slow:
            if suffix in built:
                add(suffix, self._ser(built[suffix], builders.TOPIC_TYPES[suffix]))
        if fo.debug is not None and "debug" in names:
            add("debug", cdr.image_parts(stamp, fid, fo.debug, "rgb8"))
        return out

    def input_messages(self, m: InputMessage, rgb: np.ndarray | None) -> list[tuple[ConnKey, int, bytes]]:
        """Videos/folders with ``--copy-input``: the decoded frame as rgb8 Image (+ camera_info)."""
        if rgb is None:
            return []
        hdr = builders.header(self.tp, m.stamp_ns, m.frame_id)
        img = builders.image(self.tp, hdr, rgb, "rgb8")
        out = [
            (
                ConnKey(m.topic, "sensor_msgs/msg/Image", "out"),
                m.log_ns,
                self._ser(img, "sensor_msgs/msg/Image"),
            )
        ]
        k = m.camera_info
        if k is not None:
            from dinov3_ros.pipeline.types import CameraIntrinsics

            from .execute import _intrinsics

            ci = builders.camera_info(self.tp, hdr, _intrinsics(k, rgb, CameraIntrinsics))
            out.append(
                (
                    ConnKey(camera_info_topic(m.topic), "sensor_msgs/msg/CameraInfo", "out"),
                    m.log_ns,
                    self._ser(ci, "sensor_msgs/msg/CameraInfo"),
                )
            )
        return out
