"""Reference messages for tests: a frame's outputs built as message *objects* with ``msgs.builders``
(rclpy or rosbags providers), independently of the serialiser the node and the bag tool use."""

from __future__ import annotations

from typing import Any

import numpy as np

from dinov3_ros.msgs import builders as B
from dinov3_ros.msgs.layouts import XYZ_FIELDS, XYZRGB_FIELDS, structured_dtype

GREEN, RED = (0.0, 1.0, 0.0, 1.0), (1.0, 0.0, 0.0, 1.0)


def _box_lines(boxes: np.ndarray) -> np.ndarray:
    """4 edges per box through its outer pixel centres (max exclusive -> last pixel = max - 1)."""
    pts = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64):
        a, b, c, d = (x0, y0), (x1 - 1, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)
        pts += [a, b, b, c, c, d, d, a]
    return np.asarray(pts, np.float64).reshape(-1, 2)


def _id_rgba(oid: int) -> list[float]:
    rgb = np.random.default_rng(int(oid)).integers(64, 256, 3)
    return [*(rgb / 255.0), 1.0]


def _organized(tp: Any, hdr: Any, cloud: Any) -> Any:
    h, _w, c = cloud.rows.shape
    fields = XYZ_FIELDS if c == 3 else XYZRGB_FIELDS
    data = np.ascontiguousarray(cloud.rows).view(structured_dtype(fields, 4 * c)).reshape(-1)
    return B.point_cloud(
        tp, hdr, fields, data, is_dense=bool(np.isfinite(cloud.rows[..., :3]).all()), height=h
    )


def _markers(tp: Any, hdr: Any, v: dict, msgs: dict) -> None:
    if "objects_markers" in v:
        o = v["objects_markers"]
        cols = [_id_rgba(i) for i in o.ids for _ in range(8)]
        msgs["objects/markers"] = B.image_marker(
            tp, hdr, "dinov3/objects", 0, 2, _box_lines(o.boxes), cols, 2.0
        )
    if "matches_markers" in v:
        m = v["matches_markers"]
        n = len(m) if m.ref_stamp_ns is not None else 0
        pts = [p for k in range(n) for p in (m.uv0[k], m.uv1[k])]
        cols = [GREEN if m.inlier[k] else RED for k in range(n) for _ in range(2)]
        msgs["matches/markers"] = B.image_marker(
            tp, hdr, "dinov3/matches", 0, 2, np.reshape(pts, (-1, 2)), cols
        )


def _extras(tp: Any, fo: Any, msgs: dict) -> None:
    """The messages of the outputs added beside the original ones."""
    hdr = B.header(tp, fo.stamp_ns, fo.frame_id)
    v = fo.values
    if "features_info" in v:
        g = v["features_info"]
        msgs["features/camera_info"] = B.camera_info(tp, hdr, g.intrinsics, g.roi, (g.width, g.height))
    if "depth_points" in v:
        msgs["depth/points"] = _organized(tp, hdr, v["depth_points"])
    _markers(tp, hdr, v, msgs)
    if "odometry" in v:
        o = v["odometry"]
        from dinov3_ros.pipeline.outputs.odometry import quaternion

        ohdr = B.header(tp, fo.stamp_ns, o.odom_frame)
        msgs["odometry"] = B.odometry(
            tp, ohdr, fo.frame_id, o.pose[:3, 3], quaternion(o.pose[:3, :3]), o.pose_cov, o.linear, o.angular,
            o.twist_cov,
        )  # fmt: skip
    if "detections" in v:
        try:
            msgs["objects/detections"] = B.detections(tp, hdr, v["detections"])
        except KeyError:  # vision_msgs is not installed for this provider
            pass
    for name, topic in (
        ("pca_compressed", "features/pca/compressed"),
        ("mask_compressed", "objects/mask/compressed"),
        ("debug_compressed", "debug/compressed"),
    ):
        if name in v:
            msgs[topic] = B.compressed_payload(tp, hdr, v[name].format, v[name].data)


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
        msgs["depth/image"] = B.image(tp, hdr, v["depth"].image.astype(np.float32), "32FC1")
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
    _extras(tp, fo, msgs)
    return msgs
