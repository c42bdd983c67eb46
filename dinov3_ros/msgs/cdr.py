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
    intr: CameraIntrinsics,
    *,
    r: np.ndarray | None = None,
    binning: tuple[int, int] = (0, 0),
    roi: tuple[int, int, int, int, bool] = (0, 0, 0, 0, False),
) -> Parts:
    """``sensor_msgs/CameraInfo`` of ``intr``; by default R = identity, no binning, an empty ROI."""
    r = np.eye(3) if r is None else r
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(intr.height))
    o.u32(int(intr.width))
    o.string(str(intr.distortion_model))
    o.f64s(np.asarray(intr.D, dtype=np.float64), sized=True)
    for name, arr, n in (("k", intr.K, 9), ("r", r, 9), ("p", intr.P, 12)):
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
