"""The one serialiser and parser of the dense messages: CDR (XCDR1) without message objects.

Writers return a message as a list of buffers (``Parts``): small header pieces plus views of the
caller's arrays, so pixel and point data are never copied on the way to a bag file or to rclpy's
``Publisher.publish(bytes)``; the bytes equal ``rosbags``' ``serialize_cdr`` of the same message (tests
compare). Readers parse ``sensor_msgs/Image``, ``CompressedImage`` and ``CameraInfo`` from serialized
bytes (little or big endian) and return views into them.

CDR: a 4-byte encapsulation header (``00 01`` little endian, ``00 00`` big endian, 2 option bytes),
then every primitive aligned to its size relative to the byte after that header; a string is a
uint32 length (with the terminating NUL) + bytes + NUL; a sequence a uint32 count + elements; no
padding after the last field.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics
from dinov3_ros.msgs.layouts import Fields

__all__ = [
    "Buffer",
    "CameraInfoView",
    "ImageView",
    "Parts",
    "camera_info_parts",
    "image_parts",
    "join",
    "parts_len",
    "point_cloud_parts",
    "read_camera_info",
    "read_compressed_image",
    "read_image",
    "stamp_of",
]

_ENCAP = b"\x00\x01\x00\x00"
Buffer = bytes | bytearray | memoryview
Parts = list[Buffer]


class _Out:
    """Append-only little-endian CDR writer; large ``uint8[]`` payloads stay views of the caller's
    arrays (:meth:`blob`) between the written pieces (:meth:`parts`)."""

    __slots__ = ("b", "done", "pos")

    def __init__(self) -> None:
        self.b = bytearray()  #: the piece being written
        self.done: list[Buffer] = []  #: finished pieces and payload views
        self.pos = 0  #: bytes written before ``b``

    def align(self, n: int) -> None:
        pad = -(self.pos + len(self.b)) % n
        if pad:
            self.b += b"\x00" * pad

    def u32(self, v: int) -> None:
        self.align(4)
        self.b += struct.pack("<I", v)

    def i32(self, v: int) -> None:
        self.align(4)
        self.b += struct.pack("<i", v)

    def u8(self, v: int) -> None:
        self.b += struct.pack("<B", v)

    def f32(self, v: float) -> None:
        self.align(4)
        self.b += struct.pack("<f", v)

    def f64(self, v: float) -> None:
        self.align(8)
        self.b += struct.pack("<d", v)

    def raw(self, data: bytes, align: int) -> None:
        """Pre-packed little-endian elements, aligned to ``align`` (nothing to align when empty)."""
        if data:
            self.align(align)
            self.b += data

    def string(self, s: str) -> None:
        raw = s.encode()
        self.u32(len(raw) + 1)
        self.b += raw + b"\x00"

    def f64s(self, vals: np.ndarray, *, sized: bool) -> None:
        a = np.ascontiguousarray(vals, dtype="<f8").reshape(-1)
        if sized:
            self.u32(a.size)
        if a.size:
            self.align(8)
            self.b += a.tobytes()

    def header(self, stamp_ns: int, frame_id: str) -> None:
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        self.i32(sec)
        self.u32(nsec)
        self.string(str(frame_id))

    def blob(self, data: memoryview) -> None:
        """A ``uint8[]``: its count, then ``data`` as a part of its own (not copied)."""
        self.u32(data.nbytes)
        self.pos += len(self.b) + data.nbytes
        self.done += [bytes(self.b), data]
        self.b = bytearray()

    def parts(self) -> Parts:
        """The message: encapsulation header + pieces (trailing empty piece dropped)."""
        out = [*self.done, bytes(self.b)] if self.b or not self.done else list(self.done)
        out[0] = _ENCAP + bytes(out[0])
        return out


def _bytes_view(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def image_parts(stamp_ns: int, frame_id: str, arr: np.ndarray, encoding: str) -> Parts:
    """``sensor_msgs/Image`` of ``arr`` (HxW[xC]; rows tightly packed, little endian): ``height, width``
    from the array, ``is_bigendian = 0``, ``step = arr.strides[0]``. The pixel data is a view of ``arr``
    (no copy): keep ``arr`` unchanged until the parts are written."""
    arr = np.ascontiguousarray(arr)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image array must be non-empty HxW or HxWxC, got {arr.shape}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(arr.shape[0]))
    o.u32(int(arr.shape[1]))
    o.string(str(encoding))
    o.u8(0)
    o.u32(int(arr.strides[0]))
    o.blob(_bytes_view(arr))
    return o.parts()


def camera_info_parts(
    stamp_ns: int,
    frame_id: str,
    intr: CameraIntrinsics | None,
    *,
    r: np.ndarray | None = None,
    binning: tuple[int, int] = (0, 0),
    roi: tuple[int, int, int, int, bool] = (0, 0, 0, 0, False),
    size: tuple[int, int] | None = None,
) -> Parts:
    """``sensor_msgs/CameraInfo`` of ``intr``; by default R = identity, no binning, an empty ROI.
    ``intr=None`` writes an uncalibrated camera (K, R, P all zero, no distortion model) of ``size``
    ``(width, height)``, the ROS convention for "no calibration"; ``roi`` = (x_offset, y_offset,
    height, width, do_rectify)."""
    if intr is None:
        if size is None:
            raise ValueError("camera_info_parts: an uncalibrated camera needs its size")
        width, height, model, D = size[0], size[1], "", np.zeros(0)
        K, r, P = np.zeros(9), np.zeros(9), np.zeros(12)
    else:
        width, height, model, D, K, P = intr.width, intr.height, intr.distortion_model, intr.D, intr.K, intr.P
        r = np.eye(3) if r is None else r
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(height))
    o.u32(int(width))
    o.string(str(model))
    o.f64s(np.asarray(D, dtype=np.float64), sized=True)
    for name, arr, n in (("k", K, 9), ("r", r, 9), ("p", P, 12)):
        a = np.asarray(arr, dtype=np.float64).reshape(-1)
        if a.size != n:
            raise ValueError(f"CameraInfo.{name} has {a.size} values, expected {n}")
        o.f64s(a, sized=False)
    for v in (*binning, *roi[:4]):  # binning_x, binning_y, roi x_offset, y_offset, height, width
        o.u32(int(v))
    o.u8(int(bool(roi[4])))  # roi.do_rectify
    return o.parts()


def point_cloud_parts(
    stamp_ns: int, frame_id: str, fields: Fields, data: np.ndarray, is_dense: bool = True, height: int = 1
) -> Parts:
    """``sensor_msgs/PointCloud2`` of a structured array laid out as ``fields`` (little endian;
    ``height`` rows of ``len(data) // height`` points). The point data is a view of ``data``."""
    step = int(data.dtype.itemsize)
    n = int(data.shape[0]) if data.ndim else 0
    width = n // height if height else 0
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(height))
    o.u32(width)
    o.u32(len(fields))
    for name, offset, datatype in fields:
        o.string(name)
        o.u32(int(offset))
        o.u8(int(datatype))
        o.u32(1)
    o.u8(0)  # is_bigendian
    o.u32(step)
    o.u32(step * width)
    o.blob(_bytes_view(data) if n else memoryview(b""))
    o.u8(int(bool(is_dense)))
    return o.parts()


def compressed_image_parts(stamp_ns: int, frame_id: str, fmt: str, data: np.ndarray | bytes) -> Parts:
    """``sensor_msgs/CompressedImage`` (``format`` as image_transport writes it, e.g.
    ``rgb8; jpeg compressed bgr8``); the payload is a view of ``data``."""
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.string(str(fmt))
    o.blob(memoryview(np.frombuffer(data, np.uint8) if isinstance(data, bytes) else _bytes_view(data)))
    return o.parts()


#: visualization_msgs/ImageMarker types and actions
MARKER_CIRCLE, MARKER_LINE_STRIP, MARKER_LINE_LIST, MARKER_POLYGON, MARKER_POINTS = range(5)
MARKER_ADD = 0


def image_marker_parts(
    stamp_ns: int,
    frame_id: str,
    ns: str,
    marker_id: int,
    marker_type: int,
    points: np.ndarray,
    colors: np.ndarray,
    scale: float = 1.0,
    outline: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
) -> Parts:
    """``visualization_msgs/ImageMarker`` (action ADD, forever) with ``points [N, 2]`` in image pixels
    and per-point ``colors [N, 4]`` (RGBA in [0, 1]); ``scale`` = line width in pixels."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    cols = np.asarray(colors, np.float32).reshape(-1, 4)
    if len(cols) != len(pts):
        raise ValueError(f"image marker: {len(pts)} points but {len(cols)} colours")
    xyz = np.zeros((len(pts), 3), "<f8")
    xyz[:, :2] = pts
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.string(ns)
    o.i32(int(marker_id))
    o.i32(int(marker_type))
    o.i32(MARKER_ADD)
    for _ in range(3):  # position
        o.f64(0.0)
    o.f32(float(scale))
    for c in outline:  # outline_color
        o.f32(float(c))
    o.u8(0)  # filled
    for _ in range(4):  # fill_color
        o.f32(0.0)
    o.i32(0)  # lifetime: 0 = forever (the next message replaces it: same ns and id)
    o.u32(0)
    o.u32(len(pts))
    o.raw(xyz.tobytes(), 8)
    o.u32(len(cols))
    o.raw(cols.astype("<f4").tobytes(), 4)
    return o.parts()


def odometry_parts(
    stamp_ns: int,
    frame_id: str,
    child_frame_id: str,
    position: np.ndarray,
    quaternion: np.ndarray,
    pose_cov: np.ndarray,
    linear: np.ndarray,
    angular: np.ndarray,
    twist_cov: np.ndarray,
) -> Parts:
    """``nav_msgs/Odometry``: pose (position, quaternion x y z w) in ``frame_id`` with its 6x6
    covariance, twist (linear, angular) in ``child_frame_id`` with its covariance."""
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.string(child_frame_id)
    for arr, n in (
        (position, 3),
        (quaternion, 4),
        (pose_cov, 36),
        (linear, 3),
        (angular, 3),
        (twist_cov, 36),
    ):
        a = np.asarray(arr, np.float64).reshape(-1)
        if a.size != n:
            raise ValueError(f"odometry field of {a.size} values, expected {n}")
        o.f64s(a, sized=False)
    return o.parts()


def detection2d_array_parts(
    stamp_ns: int,
    frame_id: str,
    ids: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_id: str = "object",
) -> Parts:
    """``vision_msgs/Detection2DArray`` (vision_msgs 4.x): one ``Detection2D`` per box ``[x_min, y_min,
    x_max, y_max]`` (input pixels, max exclusive) with ``id`` = the instance id as text, one hypothesis
    (``class_id``, score) with an identity pose, and the box as centre + size (pixel-centre convention)."""
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(len(ids))
    for oid, (x0, y0, x1, y1), score in zip(ids, np.asarray(boxes, np.float64).reshape(-1, 4), scores):
        o.header(stamp_ns, frame_id)
        o.u32(1)  # results
        o.string(class_id)
        o.f64(float(score))
        for v in (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0):  # pose: position, orientation (identity)
            o.f64(v)
        o.f64s(np.zeros(36), sized=False)  # pose covariance
        o.f64((x0 + x1) / 2.0 - 0.5)  # bbox.center.position.x
        o.f64((y0 + y1) / 2.0 - 0.5)
        o.f64(0.0)  # theta
        o.f64(float(x1 - x0))  # size_x
        o.f64(float(y1 - y0))
        o.string(str(int(oid)))
    return o.parts()


def parts_len(parts: Buffer | Sequence[Buffer]) -> int:
    """Total size in bytes of a serialized message given as one buffer or a list of parts."""
    if isinstance(parts, (bytes, bytearray, memoryview)):
        return memoryview(parts).nbytes
    return sum(memoryview(p).nbytes for p in parts)


def join(parts: Buffer | Sequence[Buffer]) -> bytes:
    """One ``bytes`` object from a buffer or a list of parts."""
    if isinstance(parts, (bytes, bytearray, memoryview)):
        return bytes(parts)
    return b"".join(parts)


def stamp_of(raw: Buffer) -> int:
    """``header.stamp`` (ns) of a serialized message whose first field is a ``std_msgs/Header``."""
    mv = memoryview(raw).cast("B")
    end = "<" if bytes(mv[:2]) == b"\x00\x01" else ">"
    sec, nsec = struct.unpack_from(end + "iI", mv, 4)
    return sec * 1_000_000_000 + nsec


# ----------------------------------------------------------------------------------------- reading


class _In:
    """Bounds-checked CDR reader over a serialized message (either byte order)."""

    __slots__ = ("body", "end", "n", "pos")

    def __init__(self, raw: Buffer) -> None:
        mv = memoryview(raw).cast("B")
        if len(mv) < 12 or bytes(mv[:1]) != b"\x00" or bytes(mv[1:2]) not in (b"\x00", b"\x01"):
            raise ValueError("not a CDR buffer (bad encapsulation header)")
        self.end = "<" if bytes(mv[1:2]) == b"\x01" else ">"
        self.body = mv[4:]
        self.n = len(self.body)
        self.pos = 0

    def _take(self, fmt: str, size: int) -> Any:
        self.pos += -self.pos % size
        if self.pos + size > self.n:
            raise ValueError("CDR buffer truncated")
        v = struct.unpack_from(self.end + fmt, self.body, self.pos)[0]
        self.pos += size
        return v

    def u8(self) -> int:
        return self._take("B", 1)

    def u32(self) -> int:
        return self._take("I", 4)

    def i32(self) -> int:
        return self._take("i", 4)

    def string(self) -> str:
        ln = self.u32()
        if ln == 0 or self.pos + ln > self.n:
            raise ValueError("CDR string out of range")
        s = bytes(self.body[self.pos : self.pos + ln - 1]).decode()
        self.pos += ln
        return s

    def f64s(self, n: int | None = None) -> np.ndarray:
        if n is None:
            n = self.u32()
        if n:
            self.pos += -self.pos % 8
        if self.pos + 8 * n > self.n:
            raise ValueError("CDR float64 array out of range")
        a = np.frombuffer(self.body, dtype=self.end + "f8", count=n, offset=self.pos).astype(np.float64)
        self.pos += 8 * n
        return a

    def blob(self) -> memoryview:
        size = self.u32()
        if self.pos + size > self.n:
            raise ValueError(f"CDR data of {size} bytes exceeds the buffer ({self.n - self.pos} left)")
        out = self.body[self.pos : self.pos + size]
        self.pos += size
        return out

    def header(self) -> tuple[int, str]:
        sec, nsec = self.i32(), self.u32()
        return sec * 1_000_000_000 + nsec, self.string()


@dataclass
class ImageView:
    """A parsed ``sensor_msgs/Image``; ``data`` is a view into the serialized bytes."""

    stamp_ns: int
    frame_id: str
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


@dataclass
class CameraInfoView:
    """A parsed ``sensor_msgs/CameraInfo`` (the fields the pipeline uses)."""

    stamp_ns: int
    frame_id: str
    height: int
    width: int
    distortion_model: str
    d: np.ndarray
    k: np.ndarray
    r: np.ndarray
    p: np.ndarray


def read_image(raw: Buffer) -> ImageView:
    """Parse a serialized ``sensor_msgs/Image`` (``ValueError`` on anything malformed)."""
    r = _In(raw)
    stamp, frame_id = r.header()
    h, w, enc, big, step = r.u32(), r.u32(), r.string(), r.u8(), r.u32()
    return ImageView(stamp, frame_id, h, w, enc, big, step, r.blob())


def read_compressed_image(raw: Buffer) -> tuple[int, str, str, memoryview]:
    """Parse a serialized ``sensor_msgs/CompressedImage``: ``(stamp_ns, frame_id, format, data)``."""
    r = _In(raw)
    stamp, frame_id = r.header()
    fmt = r.string()
    return stamp, frame_id, fmt, r.blob()


def read_camera_info(raw: Buffer) -> CameraInfoView:
    """Parse a serialized ``sensor_msgs/CameraInfo`` (``ValueError`` on anything malformed)."""
    r = _In(raw)
    stamp, frame_id = r.header()
    h, w, model = r.u32(), r.u32(), r.string()
    d = r.f64s()
    k, rr, p = r.f64s(9), r.f64s(9), r.f64s(12)
    return CameraInfoView(stamp, frame_id, h, w, model, d, k, rr, p)
