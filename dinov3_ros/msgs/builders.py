"""numpy -> ROS message *objects* through a :class:`~dinov3_ros.msgs.provider.TypeProvider`.

For what is published or recorded as objects (``/diagnostics``, the synthetic sample bags, test
references); the pipeline's outputs go through the serialiser :mod:`dinov3_ros.msgs.cdr` instead.
Every builder fills every field, so rclpy and rosbags produce identical CDR bytes; layouts come from
:mod:`dinov3_ros.msgs.layouts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics
from dinov3_ros.core.frames import MatchResult, ObjectsResult
from dinov3_ros.msgs.layouts import (
    BOX_FIELDS,
    MATCH_FIELDS,
    boxes_array,
    image_encoding,
    mask_image,
    matches_array,
    points_array,
    split_stamp,
)
from dinov3_ros.msgs.provider import TypeProvider


def header(tp: TypeProvider, stamp_ns: int, frame_id: str) -> Any:
    sec, nsec = split_stamp(stamp_ns)
    stamp = tp.new("builtin_interfaces/msg/Time", sec=sec, nanosec=nsec)
    return tp.new("std_msgs/msg/Header", stamp=stamp, frame_id=str(frame_id))


def image(tp: TypeProvider, hdr: Any, arr: np.ndarray, encoding: str | None = None) -> Any:
    """``sensor_msgs/Image`` from an HxW[xC] array (little-endian, tightly packed rows)."""
    arr = np.ascontiguousarray(arr)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image array must be non-empty HxW or HxWxC, got {arr.shape}")
    enc = encoding or image_encoding(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    h, w = arr.shape[:2]
    return tp.new(
        "sensor_msgs/msg/Image",
        header=hdr,
        height=int(h),
        width=int(w),
        encoding=enc,
        is_bigendian=0,
        step=int(arr.strides[0]),
        data=tp.u8(arr),
    )


def raw_image(
    tp: TypeProvider, hdr: Any, data: bytes, height: int, width: int, step: int, encoding: str
) -> Any:
    """``sensor_msgs/Image`` from an already-encoded buffer (e.g. ``image_codec.encode_raw``)."""
    return tp.new(
        "sensor_msgs/msg/Image",
        header=hdr,
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=0,
        step=int(step),
        data=tp.u8(np.frombuffer(data, np.uint8)),
    )


def compressed_image(
    tp: TypeProvider, hdr: Any, rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90
) -> Any:
    """``sensor_msgs/CompressedImage`` (JPEG or PNG) from RGB uint8."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"compressed format must be 'jpeg' or 'png', got {fmt!r}")
    if not ok:
        raise ValueError(f"{fmt} encoding failed for image {rgb.shape}")
    return tp.new("sensor_msgs/msg/CompressedImage", header=hdr, format=fmt, data=tp.u8(buf))


def camera_info(
    tp: TypeProvider,
    hdr: Any,
    intr: CameraIntrinsics | None,
    roi: tuple[int, int, int, int] = (0, 0, 0, 0),
    size: tuple[int, int] | None = None,
) -> Any:
    """``sensor_msgs/CameraInfo`` for ``intr`` (R = identity, no binning); ``roi`` = (x_offset, y_offset,
    width, height). ``intr=None``: uncalibrated (K, R, P zero) of ``size`` = (width, height)."""
    x, y, w, h = roi
    r = tp.new(
        "sensor_msgs/msg/RegionOfInterest", x_offset=x, y_offset=y, height=h, width=w, do_rectify=False
    )
    if intr is None:
        assert size is not None, "an uncalibrated camera_info needs its size"
        width, height, model, D, K, R, P = (
            size[0],
            size[1],
            "",
            np.zeros(0),
            np.zeros(9),
            np.zeros(9),
            np.zeros(12),
        )
    else:
        width, height, model, D, K, R, P = (
            intr.width,
            intr.height,
            intr.distortion_model,
            intr.D,
            intr.K,
            np.eye(3),
            intr.P,
        )
    return tp.new(
        "sensor_msgs/msg/CameraInfo",
        header=hdr,
        height=int(height),
        width=int(width),
        distortion_model=model,
        d=tp.f64(D),
        k=tp.f64(K),
        r=tp.f64(R),
        p=tp.f64(P),
        binning_x=0,
        binning_y=0,
        roi=r,
    )


def compressed_payload(tp: TypeProvider, hdr: Any, fmt: str, data: bytes | np.ndarray) -> Any:
    """``sensor_msgs/CompressedImage`` from an already-encoded payload."""
    return tp.new(
        "sensor_msgs/msg/CompressedImage",
        header=hdr,
        format=fmt,
        data=tp.u8(np.frombuffer(bytes(data), np.uint8)),
    )


def _point(tp: TypeProvider, x: float, y: float, z: float = 0.0) -> Any:
    return tp.new("geometry_msgs/msg/Point", x=float(x), y=float(y), z=float(z))


def _rgba(tp: TypeProvider, c: Sequence[float]) -> Any:
    return tp.new("std_msgs/msg/ColorRGBA", r=float(c[0]), g=float(c[1]), b=float(c[2]), a=float(c[3]))


def image_marker(
    tp: TypeProvider,
    hdr: Any,
    ns: str,
    marker_id: int,
    marker_type: int,
    points: np.ndarray,
    colors: np.ndarray,
    scale: float = 1.0,
    outline: Sequence[float] = (0.0, 1.0, 0.0, 1.0),
) -> Any:
    """``visualization_msgs/ImageMarker`` (action ADD, lifetime 0) with pixel ``points [N, 2]`` and
    per-point RGBA ``colors``."""
    return tp.new(
        "visualization_msgs/msg/ImageMarker",
        header=hdr,
        ns=ns,
        id=int(marker_id),
        type=int(marker_type),
        action=0,
        position=_point(tp, 0, 0, 0),
        scale=float(scale),
        outline_color=_rgba(tp, outline),
        filled=0,
        fill_color=_rgba(tp, (0, 0, 0, 0)),
        lifetime=tp.new("builtin_interfaces/msg/Duration", sec=0, nanosec=0),
        points=[_point(tp, u, v) for u, v in np.asarray(points, np.float64).reshape(-1, 2)],
        outline_colors=[_rgba(tp, c) for c in np.asarray(colors, np.float32).reshape(-1, 4)],
    )


def odometry(
    tp: TypeProvider,
    hdr: Any,
    child_frame_id: str,
    position: Sequence[float],
    quaternion: Sequence[float],
    pose_cov: np.ndarray,
    linear: Sequence[float],
    angular: Sequence[float],
    twist_cov: np.ndarray,
) -> Any:
    """``nav_msgs/Odometry``; ``quaternion`` = (x, y, z, w)."""
    px, py, pz = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in quaternion)
    pose = tp.new(
        "geometry_msgs/msg/Pose",
        position=_point(tp, px, py, pz),
        orientation=tp.new("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw),
    )

    def vec(v: Sequence[float]) -> Any:
        return tp.new("geometry_msgs/msg/Vector3", x=float(v[0]), y=float(v[1]), z=float(v[2]))

    twist = tp.new("geometry_msgs/msg/Twist", linear=vec(linear), angular=vec(angular))
    return tp.new(
        "nav_msgs/msg/Odometry",
        header=hdr,
        child_frame_id=child_frame_id,
        pose=tp.new("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=tp.f64(pose_cov)),
        twist=tp.new("geometry_msgs/msg/TwistWithCovariance", twist=twist, covariance=tp.f64(twist_cov)),
    )


def detections(tp: TypeProvider, hdr: Any, obj: ObjectsResult, class_id: str = "object") -> Any:
    """``vision_msgs/Detection2DArray``: one detection per instance (``id`` = instance id as text, box
    centre + size in pixel-centre coordinates, one hypothesis with an identity pose)."""
    dets = []
    for oid, (x0, y0, x1, y1), score in zip(obj.ids, obj.boxes.astype(np.float64), obj.scores):
        pose = tp.new(
            "geometry_msgs/msg/Pose",
            position=_point(tp, 0, 0, 0),
            orientation=tp.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0, w=1.0),
        )
        hyp = tp.new(
            "vision_msgs/msg/ObjectHypothesisWithPose",
            hypothesis=tp.new("vision_msgs/msg/ObjectHypothesis", class_id=class_id, score=float(score)),
            pose=tp.new("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=tp.f64(np.zeros(36))),
        )
        centre = tp.new(
            "vision_msgs/msg/Pose2D",
            position=tp.new("vision_msgs/msg/Point2D", x=(x0 + x1) / 2 - 0.5, y=(y0 + y1) / 2 - 0.5),
            theta=0.0,
        )
        bbox = tp.new(
            "vision_msgs/msg/BoundingBox2D", center=centre, size_x=float(x1 - x0), size_y=float(y1 - y0)
        )
        dets.append(
            tp.new("vision_msgs/msg/Detection2D", header=hdr, results=[hyp], bbox=bbox, id=str(int(oid)))
        )
    return tp.new("vision_msgs/msg/Detection2DArray", header=hdr, detections=dets)


def point_cloud(
    tp: TypeProvider,
    hdr: Any,
    fields: Sequence[tuple[str, int, int]],
    data: np.ndarray,
    is_dense: bool = True,
    height: int = 1,
) -> Any:
    """``sensor_msgs/PointCloud2`` (``height`` rows) from a structured array laid out as ``fields``."""
    pf = [
        tp.new("sensor_msgs/msg/PointField", name=n, offset=int(o), datatype=int(t), count=1)
        for n, o, t in fields
    ]
    step = data.dtype.itemsize
    return tp.new(
        "sensor_msgs/msg/PointCloud2",
        header=hdr,
        height=int(height),
        width=int(data.shape[0]) // int(height),
        fields=pf,
        is_bigendian=False,
        point_step=int(step),
        row_step=int(step * data.shape[0]) // int(height),
        data=tp.u8(np.ascontiguousarray(data).view(np.uint8)),
        is_dense=bool(is_dense),
    )


def points(
    tp: TypeProvider,
    hdr: Any,
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    packed: np.ndarray | None = None,
    dense: bool | None = None,
) -> Any:
    """``~/points``: PointCloud2 with fields x, y, z (float32) [+ rgb packed float32]."""
    fields, arr, is_dense = points_array(xyz, rgb, packed, dense)
    return point_cloud(tp, hdr, fields, arr, is_dense=is_dense)


def matches(tp: TypeProvider, hdr: Any, m: MatchResult) -> Any:
    """``~/matches``: PointCloud2 with MATCH_FIELDS, one point per correspondence (docs/MESSAGES.md)."""
    return point_cloud(tp, hdr, MATCH_FIELDS, matches_array(m))


def boxes(tp: TypeProvider, hdr: Any, obj: ObjectsResult) -> Any:
    """``~/objects/boxes``: PointCloud2 with BOX_FIELDS, one point per instance (docs/MESSAGES.md)."""
    return point_cloud(tp, hdr, BOX_FIELDS, boxes_array(obj))


def mask(tp: TypeProvider, hdr: Any, ids: np.ndarray, encoding: str = "mono8") -> Any:
    """Instance-id image (0 = background) as mono8 or mono16."""
    return image(tp, hdr, mask_image(ids, encoding), encoding)


LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2, "STALE": 3}


def diagnostics(tp: TypeProvider, stamp_ns: int, statuses: Sequence[Mapping[str, Any]]) -> Any:
    """``diagnostic_msgs/DiagnosticArray``; each status: level (name or int), name, message,
    hardware_id, values (mapping; values become strings)."""
    out = []
    for s in statuses:
        lvl = s.get("level", 0)
        lvl = LEVELS[lvl] if isinstance(lvl, str) else int(lvl)
        kv = [
            tp.new("diagnostic_msgs/msg/KeyValue", key=str(k), value=_fmt(v))
            for k, v in s.get("values", {}).items()
        ]
        out.append(
            tp.new(
                "diagnostic_msgs/msg/DiagnosticStatus",
                level=tp.byte(lvl),
                name=str(s.get("name", "")),
                message=str(s.get("message", "")),
                hardware_id=str(s.get("hardware_id", "")),
                values=kv,
            )
        )
    return tp.new("diagnostic_msgs/msg/DiagnosticArray", header=header(tp, stamp_ns, ""), status=out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
