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


def camera_info(tp: TypeProvider, hdr: Any, intr: CameraIntrinsics) -> Any:
    """``sensor_msgs/CameraInfo`` for ``intr`` (R = identity, no binning, full ROI)."""
    roi = tp.new(
        "sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return tp.new(
        "sensor_msgs/msg/CameraInfo",
        header=hdr,
        height=int(intr.height),
        width=int(intr.width),
        distortion_model=intr.distortion_model,
        d=tp.f64(intr.D),
        k=tp.f64(intr.K),
        r=tp.f64(np.eye(3)),
        p=tp.f64(intr.P),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def point_cloud(
    tp: TypeProvider,
    hdr: Any,
    fields: Sequence[tuple[str, int, int]],
    data: np.ndarray,
    is_dense: bool = True,
) -> Any:
    """``sensor_msgs/PointCloud2`` (height 1) from a structured array laid out as ``fields``."""
    pf = [
        tp.new("sensor_msgs/msg/PointField", name=n, offset=int(o), datatype=int(t), count=1)
        for n, o, t in fields
    ]
    step = data.dtype.itemsize
    return tp.new(
        "sensor_msgs/msg/PointCloud2",
        header=hdr,
        height=1,
        width=int(data.shape[0]),
        fields=pf,
        is_bigendian=False,
        point_step=int(step),
        row_step=int(step * data.shape[0]),
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
