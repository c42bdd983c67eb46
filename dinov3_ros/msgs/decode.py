"""ROS messages -> numpy: the one decoder of input images and camera_info (live node and bag tool),
and readers of the outputs' layouts (for tools and tests).

Input images and camera_info arrive serialized (the node subscribes raw, the bag tool reads bags) and
are parsed by :mod:`.cdr`; ROS 1 bags and message objects (rclpy, rosbags) go through the same field
decoders. Every failure raises ``ValueError`` (``ImageDecodeError`` for images) naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics
from dinov3_ros.core.frames import MatchResult
from dinov3_ros.msgs import cdr
from dinov3_ros.msgs.image_codec import ImageDecodeError, decode_compressed, decode_raw
from dinov3_ros.msgs.layouts import BOX_FIELDS, MATCH_FIELDS, NP_OF

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"


def stamp_ns(msg: Any) -> int:
    """``header.stamp`` of a message object in nanoseconds."""
    st = msg.header.stamp
    return int(st.sec) * 1_000_000_000 + int(st.nanosec)


def decode_image(msgtype: str, raw: cdr.Buffer) -> tuple[np.ndarray, int, str]:
    """A serialized ``Image`` or ``CompressedImage`` -> ``(RGB uint8 [H, W, 3], stamp ns, frame_id)``."""
    try:
        if msgtype == COMPRESSED_IMAGE:
            stamp, frame_id, fmt, data = cdr.read_compressed_image(raw)
            return decode_compressed(fmt, data), stamp, frame_id
        if msgtype == IMAGE:
            v = cdr.read_image(raw)
            rgb = decode_raw(v.encoding, v.height, v.width, v.step, v.data, bool(v.is_bigendian))
            return rgb, v.stamp_ns, v.frame_id
    except ImageDecodeError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageDecodeError(f"malformed {msgtype}: {exc}", "malformed") from None
    raise ImageDecodeError(f"not an image message type: {msgtype}", "malformed")


def decode_image_msg(msg: Any) -> tuple[np.ndarray, int, str]:
    """A message object (rclpy, rosbags; ROS 1 or 2) of ``Image`` or ``CompressedImage`` -> as
    :func:`decode_image`."""
    if hasattr(msg, "encoding"):
        rgb = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
    else:
        rgb = decode_compressed(msg.format, msg.data)
    return rgb, stamp_ns(msg), str(msg.header.frame_id)


def image_to_rgb(msg: Any) -> np.ndarray:
    """Any supported ``sensor_msgs/Image`` object -> (H, W, 3) RGB uint8."""
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` object (JPEG/PNG) -> (H, W, 3) RGB uint8."""
    return decode_compressed(msg.format, msg.data)


def intrinsics_from_fields(width: int, height: int, model: str, d: Any, k: Any, p: Any) -> CameraIntrinsics:
    """CameraInfo fields -> :class:`CameraIntrinsics` (``ValueError`` on an unusable K or size; an
    all-zero P means "not given")."""
    P = np.asarray(p, dtype=np.float64).reshape(3, 4)
    K = np.asarray(k, dtype=np.float64).reshape(3, 3)
    return CameraIntrinsics(
        K, int(width), int(height), np.asarray(d, np.float64), str(model), P if P.any() else None
    )


def decode_camera_info(raw: cdr.Buffer) -> CameraIntrinsics:
    """A serialized ``sensor_msgs/CameraInfo`` -> :class:`CameraIntrinsics` (``ValueError`` if unusable)."""
    v = cdr.read_camera_info(raw)
    return intrinsics_from_fields(v.width, v.height, v.distortion_model, v.d, v.k, v.p)


def camera_info_to_intrinsics(msg: Any) -> CameraIntrinsics:
    """A ``sensor_msgs/CameraInfo`` object -> :class:`CameraIntrinsics` (``ValueError`` if unusable)."""
    return intrinsics_from_fields(msg.width, msg.height, msg.distortion_model, msg.d, msg.k, msg.p)


# ------------------------------------------------------------------------------------ output layouts

_NUMERIC = {
    "8U": np.uint8,
    "8S": np.int8,
    "16U": np.uint16,
    "16S": np.int16,
    "32S": np.int32,
    "32F": np.float32,
    "64F": np.float64,
}
_NAMED = {
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
}


def _bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data), dtype=np.uint8)


def image_to_array(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` (object or :class:`~.cdr.ImageView`) -> its native array: 32FC<C> ->
    float32 HxWxC (HxW for C=1), mono8/16 -> HxW, rgb8/bgr8 -> HxWx3 uint8 as stored."""
    import re

    enc = msg.encoding
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if enc in _NAMED:
        dt, ch = _NAMED[enc]
    else:
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


def point_cloud_to_array(msg: Any) -> np.ndarray:
    """``sensor_msgs/PointCloud2`` -> structured numpy array with one named field per PointField."""
    names, fmts, offs = [], [], []
    for f in msg.fields:
        base = np.dtype(NP_OF[int(f.datatype)]).newbyteorder(">" if msg.is_bigendian else "<")
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
