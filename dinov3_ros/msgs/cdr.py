"""Direct CDR serialisation of the dense messages (``sensor_msgs/Image``, ``CameraInfo``, ``PointCloud2``).

Byte-identical to ``rosbags`` ``typestore.serialize_cdr`` (and to rclpy) for the layouts the builders
in :mod:`dinov3_ros.msgs.builders` produce (tests compare them), but without building message objects
and without copying the pixel buffer: :func:`image_parts` returns the serialized message as a list of
buffers (small header bytes + a view of the array + padding) that a writer can hand to the OS as is.

:func:`serialized_types` is a builders' provider whose ``Image``, ``CameraInfo`` and ``PointCloud2``
come out as serialized ``bytes``, for ``rclpy`` ``Publisher.publish(bytes)``: the payload is copied
once, by ``bytes.join`` (then by rclpy into its serialized message) - instead of the message path's three
copies (into an ``array.array``, into the C message, into the serialized buffer).

CDR (XCDR1, little endian): a 4-byte encapsulation header ``00 01 00 00``, then every primitive
aligned to its size relative to the byte after that header; strings are a uint32 length (with the
terminating NUL) + bytes + NUL; sequences a uint32 count + elements; no padding after the last field
(as ``rosbags`` writes it).
"""

from __future__ import annotations

import struct
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dinov3_ros.msgs.provider import TypeProvider

__all__ = [
    "SERIALIZED_TYPES",
    "camera_info_bytes",
    "image_parts",
    "join",
    "parts_len",
    "read_compressed_image",
    "serialized_types",
]

_ENCAP = b"\x00\x01\x00\x00"
Buffer = bytes | bytearray | memoryview


class _Out:
    """Append-only CDR writer (positions relative to the encapsulation end); large ``uint8[]`` payloads
    stay views of the caller's arrays (:meth:`blob`) between the written pieces (:meth:`parts`)."""

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

    def parts(self) -> list[Buffer]:
        """The message: encapsulation header + pieces (trailing empty piece dropped)."""
        out = [*self.done, bytes(self.b)] if self.b or not self.done else list(self.done)
        out[0] = _ENCAP + bytes(out[0])
        return out


def image_parts(stamp_ns: int, frame_id: str, arr: np.ndarray, encoding: str) -> list[Buffer]:
    """``sensor_msgs/Image`` of ``arr`` (C-contiguous, little endian, rows tightly packed) as buffers.

    Same fields as :func:`dinov3_ros.msgs.builders.image`: ``height, width`` from the array,
    ``is_bigendian = 0``, ``step = arr.strides[0]``. The pixel data is a view of ``arr`` (no copy):
    keep ``arr`` unchanged until the parts are written.
    """
    arr = np.ascontiguousarray(arr)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image array must be non-empty HxW or HxWxC, got {arr.shape}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return _image_out(
        stamp_ns,
        frame_id,
        arr.shape[0],
        arr.shape[1],
        encoding,
        0,
        arr.strides[0],
        memoryview(arr.reshape(-1).view(np.uint8)),
    ).parts()


def _image_out(
    stamp_ns: int,
    frame_id: str,
    height: int,
    width: int,
    encoding: str,
    is_bigendian: int,
    step: int,
    data: memoryview,
) -> _Out:
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(height))
    o.u32(int(width))
    o.string(str(encoding))
    o.u8(int(is_bigendian))
    o.u32(int(step))
    o.blob(data)
    return o


def camera_info_bytes(
    stamp_ns: int,
    frame_id: str,
    height: int,
    width: int,
    distortion_model: str,
    d: np.ndarray,
    k: np.ndarray,
    p: np.ndarray,
    *,
    r: np.ndarray | None = None,
    binning: tuple[int, int] = (0, 0),
    roi: tuple[int, int, int, int, bool] = (0, 0, 0, 0, False),
) -> bytes:
    """``sensor_msgs/CameraInfo``; the defaults are what :func:`dinov3_ros.msgs.builders.camera_info`
    fills (R = identity, binning 0, empty ROI, ``do_rectify`` false)."""
    r = np.eye(3) if r is None else r
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(height))
    o.u32(int(width))
    o.string(str(distortion_model))
    o.f64s(np.asarray(d, dtype=np.float64), sized=True)
    for name, arr, n in (("k", k, 9), ("r", r, 9), ("p", p, 12)):
        a = np.asarray(arr, dtype=np.float64).reshape(-1)
        if a.size != n:
            raise ValueError(f"CameraInfo.{name} has {a.size} values, expected {n}")
        o.f64s(a, sized=False)
    for v in (*binning, *roi[:4]):  # binning_x, binning_y, roi x_offset, y_offset, height, width
        o.u32(int(v))
    o.u8(int(bool(roi[4])))  # roi.do_rectify
    return join(o.parts())


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


def read_compressed_image(raw: Buffer) -> tuple[int, str, str, memoryview]:
    """Parse a little-endian CDR ``sensor_msgs/CompressedImage`` without building a message object.

    Returns ``(stamp_ns, frame_id, format, data)`` with ``data`` a view into ``raw`` (no copy).
    Raises ``ValueError`` on anything malformed (the caller may then fall back to a full deserializer).
    """
    mv = memoryview(raw).cast("B")
    if len(mv) < 16 or bytes(mv[:2]) != b"\x00\x01":
        raise ValueError("not a little-endian CDR buffer")
    body = mv[4:]
    n = len(body)

    def u32(pos: int) -> tuple[int, int]:
        pos += -pos % 4
        if pos + 4 > n:
            raise ValueError("CDR buffer truncated")
        return struct.unpack_from("<I", body, pos)[0], pos + 4

    def string(pos: int) -> tuple[str, int]:
        ln, pos = u32(pos)
        if ln == 0 or pos + ln > n:
            raise ValueError("CDR string out of range")
        return bytes(body[pos : pos + ln - 1]).decode(), pos + ln

    sec, nsec = struct.unpack_from("<iI", body, 0)
    frame_id, pos = string(8)
    fmt, pos = string(pos)
    size, pos = u32(pos)
    if pos + size > n:
        raise ValueError(f"CDR data of {size} bytes exceeds the buffer ({n - pos} left)")
    return sec * 1_000_000_000 + nsec, frame_id, fmt, body[pos : pos + size]


# ----------------------------------------------------------------------------------------------
# builders' provider with serialized top-level messages


def _stamp_ns(hdr: Any) -> int:
    return int(hdr.stamp.sec) * 1_000_000_000 + int(hdr.stamp.nanosec)


def _image(m: Any) -> bytes:
    o = _image_out(
        _stamp_ns(m.header), m.header.frame_id, m.height, m.width, m.encoding, m.is_bigendian, m.step, m.data
    )
    return join(o.parts())


def _camera_info(m: Any) -> bytes:
    roi = m.roi
    return camera_info_bytes(
        _stamp_ns(m.header),
        m.header.frame_id,
        m.height,
        m.width,
        m.distortion_model,
        m.d,
        m.k,
        m.p,
        r=m.r,
        binning=(m.binning_x, m.binning_y),
        roi=(roi.x_offset, roi.y_offset, roi.height, roi.width, roi.do_rectify),
    )


def _point_cloud2(m: Any) -> bytes:
    o = _Out()
    o.header(_stamp_ns(m.header), m.header.frame_id)
    o.u32(int(m.height))
    o.u32(int(m.width))
    o.u32(len(m.fields))
    for f in m.fields:
        o.string(str(f.name))
        o.u32(int(f.offset))
        o.u8(int(f.datatype))
        o.u32(int(f.count))
    o.u8(int(bool(m.is_bigendian)))
    o.u32(int(m.point_step))
    o.u32(int(m.row_step))
    o.blob(m.data)
    o.u8(int(bool(m.is_dense)))
    return join(o.parts())


#: message type -> serializer of the fields the builders pass
SERIALIZED_TYPES: dict[str, Callable[[Any], bytes]] = {
    "sensor_msgs/msg/Image": _image,
    "sensor_msgs/msg/CameraInfo": _camera_info,
    "sensor_msgs/msg/PointCloud2": _point_cloud2,
}


def serialized_types() -> TypeProvider:
    """Builders' provider: ``Image``, ``CameraInfo`` and ``PointCloud2`` come out as serialized CDR
    ``bytes`` (what ``rclpy`` ``Publisher.publish`` takes as an already serialized message), nested
    types as plain objects; other top-level types are refused. ``uint8[]`` fields are views of the
    builders' arrays until the message is serialized (no copy before the final join)."""

    def resolve(msgtype: str) -> type:
        ser = SERIALIZED_TYPES.get(msgtype)

        def make(**fields: Any) -> Any:
            ns = types.SimpleNamespace(**fields)
            return ser(ns) if ser is not None else ns

        if ser is None and msgtype.split("/")[-1] not in _NESTED:
            raise KeyError(f"message type {msgtype!r} has no direct CDR serializer")
        return make  # type: ignore[return-value]

    return TypeProvider(
        "serialized",
        resolve,
        u8=lambda a: memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)),
        f64=lambda a: np.asarray(a, dtype=np.float64).reshape(-1),
        byte=int,
    )


#: nested types the serializers read (``builtin_interfaces/Time``, ``std_msgs/Header``, ...)
_NESTED = ("Time", "Header", "PointField", "RegionOfInterest")
