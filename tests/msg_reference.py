"""Reference messages for tests: a frame's outputs built as message *objects* with ``msgs.builders``
(rclpy or rosbags providers), independently of the serialiser the node and the bag tool use."""

from __future__ import annotations

from typing import Any

import numpy as np

from dinov3_ros.msgs import builders as B


def reference_messages(tp: Any, fo: Any, mask_encoding: str = "mono8") -> dict[str, Any]:
    """Topic suffix -> message object of every computed output of ``fo`` (a ``FrameOutputs``)."""
    hdr = B.header(tp, fo.stamp_ns, fo.frame_id)
    v = fo.values
    msgs: dict[str, Any] = {}
    if "features" in v:
        msgs["features"] = B.image(tp, hdr, v["features"].astype(np.float32))
    if "features_pca" in v:
        msgs["features/pca"] = B.image(tp, hdr, v["features_pca"], "rgb8")
    if "depth" in v:
        msgs["depth"] = B.image(tp, hdr, v["depth"].image.astype(np.float32), "32FC1")
        msgs["depth/camera_info"] = B.camera_info(tp, hdr, v["depth"].info)
    if "points" in v:
        p = v["points"]
        msgs["points"] = B.points(tp, hdr, p.xyz, p.rgb, p.packed, p.dense)
    if "matches" in v:
        msgs["matches"] = B.matches(tp, hdr, v["matches"])
    if "objects" in v:
        msgs["objects/mask"] = B.mask(tp, hdr, v["objects"].mask, mask_encoding)
        msgs["objects/boxes"] = B.boxes(tp, hdr, v["objects"])
    if "debug" in v:
        msgs["debug"] = B.image(tp, hdr, v["debug"], "rgb8")
    return msgs
