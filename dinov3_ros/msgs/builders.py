"""numpy -> ROS messages through a :class:`~dinov3_ros.msgs.provider.TypeProvider`.

Every builder fills every field, so rclpy and rosbags produce identical CDR bytes. Layouts of the
non-standard outputs (matches, boxes) are documented in docs/MESSAGES.md and decoded by
``dinov3_ros.msgs.decode``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from dinov3_ros.msgs.provider import TypeProvider
from dinov3_ros.pipeline.types import CameraIntrinsics, FrameOutputs, MatchResult, ObjectsResult

# sensor_msgs/PointField datatypes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
_NP_OF = {
    INT8: np.int8,
    UINT8: np.uint8,
    INT16: np.int16,
    UINT16: np.uint16,
    INT32: np.int32,
    UINT32: np.uint32,
    FLOAT32: np.float32,
    FLOAT64: np.float64,
}

#: ~/matches PointCloud2 fields (name, offset, datatype); point_step 32, see docs/MESSAGES.md
MATCH_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("u0", 0, FLOAT32),
    ("v0", 4, FLOAT32),
    ("u1", 8, FLOAT32),
    ("v1", 12, FLOAT32),
    ("score", 16, FLOAT32),
    ("ref_sec", 20, INT32),
    ("ref_nanosec", 24, UINT32),
    ("inlier", 28, UINT8),
)
MATCH_STEP = 32
#: ~/objects/boxes PointCloud2 fields; point_step 28
BOX_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("id", 0, UINT32),
    ("x_min", 4, FLOAT32),
    ("y_min", 8, FLOAT32),
    ("x_max", 12, FLOAT32),
    ("y_max", 16, FLOAT32),
    ("score", 20, FLOAT32),
    ("area", 24, UINT32),
)
BOX_STEP = 28
XYZ_FIELDS = (("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32))
XYZRGB_FIELDS = (*XYZ_FIELDS, ("rgb", 12, FLOAT32))


def structured_dtype(fields: Sequence[tuple[str, int, int]], step: int) -> np.dtype:
    """numpy dtype of one point of a PointCloud2 with ``fields`` (little-endian)."""
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [np.dtype(_NP_OF[f[2]]).newbyteorder("<") for f in fields],
            "offsets": [f[1] for f in fields],
            "itemsize": step,
        }
    )


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) as in builtin_interfaces/Time."""
    s, ns = divmod(int(stamp_ns), 1_000_000_000)
    return int(s), int(ns)


def header(tp: TypeProvider, stamp_ns: int, frame_id: str) -> Any:
    sec, nsec = split_stamp(stamp_ns)
    stamp = tp.new("builtin_interfaces/msg/Time", sec=sec, nanosec=nsec)
    return tp.new("std_msgs/msg/Header", stamp=stamp, frame_id=str(frame_id))


def image_encoding(arr: np.ndarray) -> str:
    """Default ROS encoding of an array: uint8 HxWx3 rgb8, HxW mono8/mono16, float32 32FC<C>."""
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        return "rgb8"
    if arr.dtype == np.uint8 and arr.ndim == 2:
        return "mono8"
    if arr.dtype == np.uint16 and arr.ndim == 2:
        return "mono16"
    if arr.dtype == np.float32:
        return f"32FC{1 if arr.ndim == 2 else arr.shape[2]}"
    raise ValueError(f"no default encoding for an array of shape {arr.shape} and dtype {arr.dtype}")


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


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 [N, 3] -> float32 [N] holding 0x00RRGGBB (the PCL/RViz ``rgb`` field)."""
    c = rgb.astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def points(
    tp: TypeProvider,
    hdr: Any,
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    packed: np.ndarray | None = None,
    dense: bool | None = None,
) -> Any:
    """``sensor_msgs/PointCloud2`` with fields x, y, z (float32) [+ rgb packed float32].

    ``packed``: the same rows already laid out (``[N, 3|4]`` float32, e.g. packed on the GPU by the
    pipeline) with ``dense`` = all finite; used as the message data without repacking.
    """
    fields = XYZ_FIELDS if rgb is None else XYZRGB_FIELDS
    width = 3 if rgb is None else 4
    if (
        packed is not None
        and dense is not None
        and packed.dtype == np.float32
        and packed.shape == (xyz.shape[0], width)
        and packed.flags.c_contiguous
    ):
        arr = packed.view(structured_dtype(fields, 4 * width)).reshape(packed.shape[0])
        return point_cloud(tp, hdr, fields, arr, is_dense=bool(dense))
    arr = np.zeros(xyz.shape[0], structured_dtype(fields, 12 if rgb is None else 16))
    arr["x"], arr["y"], arr["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is not None:
        arr["rgb"] = pack_rgb(rgb)
    return point_cloud(tp, hdr, fields, arr, is_dense=bool(np.isfinite(xyz).all()))


def matches(tp: TypeProvider, hdr: Any, m: MatchResult) -> Any:
    """``~/matches``: PointCloud2 with MATCH_FIELDS, one point per correspondence (docs/MESSAGES.md)."""
    n = len(m) if m.ref_stamp_ns is not None else 0
    arr = np.zeros(n, structured_dtype(MATCH_FIELDS, MATCH_STEP))
    if n:
        arr["u0"], arr["v0"] = m.uv0[:, 0], m.uv0[:, 1]
        arr["u1"], arr["v1"] = m.uv1[:, 0], m.uv1[:, 1]
        arr["score"] = m.score
        sec, nsec = split_stamp(int(m.ref_stamp_ns))  # type: ignore[arg-type]
        arr["ref_sec"], arr["ref_nanosec"] = sec, nsec
        arr["inlier"] = m.inlier.astype(np.uint8)
    return point_cloud(tp, hdr, MATCH_FIELDS, arr)


def boxes(tp: TypeProvider, hdr: Any, obj: ObjectsResult) -> Any:
    """``~/objects/boxes``: PointCloud2 with BOX_FIELDS, one point per instance (docs/MESSAGES.md)."""
    arr = np.zeros(len(obj.ids), structured_dtype(BOX_FIELDS, BOX_STEP))
    if len(obj.ids):
        arr["id"] = obj.ids
        arr["x_min"], arr["y_min"], arr["x_max"], arr["y_max"] = obj.boxes.T
        arr["score"], arr["area"] = obj.scores, obj.areas
    return point_cloud(tp, hdr, BOX_FIELDS, arr)


def mask(tp: TypeProvider, hdr: Any, ids: np.ndarray, encoding: str = "mono8") -> Any:
    """Instance-id image (0 = background) as mono8 or mono16."""
    if encoding == "mono8":
        if ids.size and int(ids.max()) > 255:
            raise ValueError(f"mono8 mask cannot hold instance id {int(ids.max())}; use mono16")
        return image(tp, hdr, ids.astype(np.uint8), "mono8")
    if encoding == "mono16":
        return image(tp, hdr, ids.astype(np.uint16), "mono16")
    raise ValueError(f"mask encoding must be mono8 or mono16, got {encoding!r}")


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


#: FrameOutputs field -> output topic suffixes (relative to the node's private namespace)
TOPICS: dict[str, tuple[str, ...]] = {
    "features": ("features",),
    "features_pca": ("features/pca",),
    "depth": ("depth", "depth/camera_info"),
    "points": ("points",),
    "matches": ("matches",),
    "objects": ("objects/mask", "objects/boxes"),
    "debug": ("debug",),
}

#: topic suffix -> ROS message type
TOPIC_TYPES: dict[str, str] = {
    "features": "sensor_msgs/msg/Image",
    "features/pca": "sensor_msgs/msg/Image",
    "depth": "sensor_msgs/msg/Image",
    "depth/camera_info": "sensor_msgs/msg/CameraInfo",
    "points": "sensor_msgs/msg/PointCloud2",
    "matches": "sensor_msgs/msg/PointCloud2",
    "objects/mask": "sensor_msgs/msg/Image",
    "objects/boxes": "sensor_msgs/msg/PointCloud2",
    "debug": "sensor_msgs/msg/Image",
}


def frame_messages(
    tp: TypeProvider, out: FrameOutputs, topics: set[str] | None = None, mask_encoding: str = "mono8"
) -> dict[str, Any]:
    """All messages of one :class:`FrameOutputs`, keyed by topic suffix (``depth/camera_info``, ...).

    Every message carries the input header (stamp + frame_id). ``topics`` restricts which are built.
    """

    def want(t: str) -> bool:
        return topics is None or t in topics

    hdr = header(tp, out.stamp_ns, out.frame_id)
    msgs: dict[str, Any] = {}
    if out.features is not None and want("features"):
        msgs["features"] = image(tp, hdr, out.features.astype(np.float32))
    if out.features_pca is not None and want("features/pca"):
        msgs["features/pca"] = image(tp, hdr, out.features_pca, "rgb8")
    if out.depth is not None:
        if want("depth"):
            msgs["depth"] = image(tp, hdr, out.depth.astype(np.float32), "32FC1")
        if want("depth/camera_info") and out.depth_info is not None:
            msgs["depth/camera_info"] = camera_info(tp, hdr, out.depth_info)
    if out.points is not None and want("points"):
        msgs["points"] = points(
            tp,
            hdr,
            out.points,
            out.points_rgb,
            out.points_packed,
            out.points_dense,
        )
    if out.matches is not None and want("matches"):
        msgs["matches"] = matches(tp, hdr, out.matches)
    if out.objects is not None:
        if want("objects/mask"):
            msgs["objects/mask"] = mask(tp, hdr, out.objects.mask, mask_encoding)
        if want("objects/boxes"):
            msgs["objects/boxes"] = boxes(tp, hdr, out.objects)
    if out.debug is not None and want("debug"):
        msgs["debug"] = image(tp, hdr, out.debug, "rgb8")
    return msgs
