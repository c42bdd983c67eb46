"""ROS messages -> numpy, for rclpy messages and rosbags dataclasses alike (attribute access only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics
from dinov3_ros.core.frames import MatchResult
from dinov3_ros.msgs.builders import (
    _NP_OF,
    BOX_FIELDS,
    MATCH_FIELDS,
)
from dinov3_ros.msgs.image_codec import ImageDecodeError, decode_compressed, decode_raw


def stamp_ns(msg: Any) -> int:
    """``header.stamp`` of a message in nanoseconds."""
    st = msg.header.stamp
    return int(st.sec) * 1_000_000_000 + int(st.nanosec)


def _bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data), dtype=np.uint8)


def image_to_rgb(msg: Any) -> np.ndarray:
    """Any supported ``sensor_msgs/Image`` -> (H, W, 3) RGB uint8 (``ImageDecodeError`` on bad frames)."""
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG/PNG) -> (H, W, 3) RGB uint8."""
    return decode_compressed(msg.format, msg.data)


_NUMERIC = {
    "8U": np.uint8,
    "8S": np.int8,
    "16U": np.uint16,
    "16S": np.int16,
    "32S": np.int32,
    "32F": np.float32,
    "64F": np.float64,
}


def image_to_array(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> its native array: 32FC<C> -> float32 HxWxC (HxW for C=1), mono8/16 -> HxW,
    rgb8/bgr8 -> HxWx3 uint8 as stored."""
    enc = msg.encoding
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if enc in ("mono8", "mono16", "rgb8", "bgr8", "rgba8", "bgra8"):
        dt, ch = {
            "mono8": (np.uint8, 1),
            "mono16": (np.uint16, 1),
            "rgb8": (np.uint8, 3),
            "bgr8": (np.uint8, 3),
            "rgba8": (np.uint8, 4),
            "bgra8": (np.uint8, 4),
        }[enc]
    else:
        import re

        m = re.fullmatch(r"(8U|8S|16U|16S|32S|32F|64F)C(\d+)", enc)
        if not m:
            raise ImageDecodeError(f"image_to_array: unsupported encoding {enc!r}")
        dt, ch = _NUMERIC[m.group(1)], int(m.group(2))
    dt = np.dtype(dt).newbyteorder(">" if msg.is_bigendian else "<")
    buf = _bytes(msg.data)
    row = w * ch * dt.itemsize
    if step < row or buf.size < step * h:
        raise ImageDecodeError(f"image_to_array: {buf.size} bytes for {w}x{h} {enc} step {step}")
    rows = buf[: step * h].reshape(h, step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dt).reshape(h, w, ch).astype(dt.newbyteorder("="))
    return arr[..., 0] if ch == 1 else arr


def camera_info_to_intrinsics(msg: Any) -> CameraIntrinsics:
    """``sensor_msgs/CameraInfo`` -> :class:`CameraIntrinsics` (ValueError on an invalid K or size)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    if not P.any():
        P = None
    return CameraIntrinsics(
        K, int(msg.width), int(msg.height), np.asarray(msg.d, np.float64), str(msg.distortion_model), P
    )


def point_cloud_to_array(msg: Any) -> np.ndarray:
    """``sensor_msgs/PointCloud2`` -> structured numpy array with one named field per PointField."""
    names, fmts, offs = [], [], []
    for f in msg.fields:
        base = np.dtype(_NP_OF[int(f.datatype)]).newbyteorder(">" if msg.is_bigendian else "<")
        names.append(f.name)
        fmts.append(base if int(f.count) <= 1 else (base, int(f.count)))
        offs.append(int(f.offset))
    dt = np.dtype({"names": names, "formats": fmts, "offsets": offs, "itemsize": int(msg.point_step)})
    n = int(msg.width) * int(msg.height)
    buf = _bytes(msg.data)
    if buf.size < n * int(msg.point_step):
        raise ValueError(f"PointCloud2 data has {buf.size} bytes, expected {n * int(msg.point_step)}")
    return np.frombuffer(buf[: n * int(msg.point_step)].tobytes(), dtype=dt)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """float32 packed 0x00RRGGBB -> uint8 [N, 3]."""
    c = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack([(c >> 16) & 255, (c >> 8) & 255, c & 255], axis=1).astype(np.uint8)


def _check_fields(msg: Any, expected: tuple[tuple[str, int, int], ...], what: str) -> None:
    got = [(f.name, int(f.offset), int(f.datatype)) for f in msg.fields]
    if got != list(expected):
        raise ValueError(f"not a dinov3_ros {what} message: fields {got}, expected {list(expected)}")


def decode_matches(msg: Any) -> MatchResult:
    """``~/matches`` PointCloud2 -> :class:`MatchResult` (``ref_stamp_ns`` None when empty)."""
    _check_fields(msg, MATCH_FIELDS, "matches")
    a = point_cloud_to_array(msg)
    ref = None
    if a.size:
        ref = int(a["ref_sec"][0]) * 1_000_000_000 + int(a["ref_nanosec"][0])
    return MatchResult(
        uv0=np.stack([a["u0"], a["v0"]], 1).astype(np.float32),
        uv1=np.stack([a["u1"], a["v1"]], 1).astype(np.float32),
        score=a["score"].astype(np.float32),
        inlier=a["inlier"].astype(bool),
        ref_stamp_ns=ref,
        ref_frame_id=msg.header.frame_id if a.size else "",
    )


@dataclass
class Boxes:
    """Decoded ``~/objects/boxes``: ids link to the pixel values of ``~/objects/mask``."""

    stamp_ns: int
    frame_id: str
    ids: np.ndarray  # [K] uint32
    boxes: np.ndarray  # [K, 4] float32 x_min, y_min, x_max, y_max (input pixels, max exclusive)
    scores: np.ndarray
    areas: np.ndarray


def decode_boxes(msg: Any) -> Boxes:
    """``~/objects/boxes`` PointCloud2 -> :class:`Boxes`."""
    _check_fields(msg, BOX_FIELDS, "boxes")
    a = point_cloud_to_array(msg)
    return Boxes(
        stamp_ns(msg),
        msg.header.frame_id,
        a["id"].astype(np.uint32),
        np.stack([a["x_min"], a["y_min"], a["x_max"], a["y_max"]], 1).astype(np.float32),
        a["score"].astype(np.float32),
        a["area"].astype(np.uint32),
    )


def decode_points(msg: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``~/points`` -> (xyz [N, 3] float32, rgb [N, 3] uint8 or None)."""
    a = point_cloud_to_array(msg)
    xyz = np.stack([a["x"], a["y"], a["z"]], 1).astype(np.float32)
    rgb = unpack_rgb(a["rgb"]) if "rgb" in a.dtype.names else None
    return xyz, rgb
