"""Direct CDR serialisation of the dense messages (``sensor_msgs/Image``, ``sensor_msgs/CameraInfo``).

Byte-identical to ``rosbags`` ``typestore.serialize_cdr`` (and to rclpy) for the layouts the builders
in :mod:`dinov3_ros.msgs.builders` produce (tests compare them), but without building message objects
and without copying the pixel buffer: :func:`image_parts` returns the serialized message as a list of
buffers (small header bytes + a view of the array + padding) that a writer can hand to the OS as is.

CDR (XCDR1, little endian): a 4-byte encapsulation header ``00 01 00 00``, then every primitive
aligned to its size relative to the byte after that header; strings are a uint32 length (with the
terminating NUL) + bytes + NUL; sequences a uint32 count + elements; no padding after the last field
(as ``rosbags`` writes it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

__all__ = ["camera_info_bytes", "image_parts", "join", "parts_len", "read_compressed_image"]

_ENCAP = b"\x00\x01\x00\x00"
Buffer = bytes | bytearray | memoryview


class _Out:
    """Append-only CDR writer for the small fields (positions relative to the encapsulation end)."""

    __slots__ = ("b",)

    def __init__(self) -> None:
        self.b = bytearray()

    def align(self, n: int) -> None:
        pad = -len(self.b) % n
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
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(arr.shape[0]))
    o.u32(int(arr.shape[1]))
    o.string(encoding)
    o.u8(0)
    o.u32(int(arr.strides[0]))
    o.u32(int(arr.nbytes))
    data = memoryview(arr.reshape(-1).view(np.uint8))
    return [_ENCAP + bytes(o.b), data]


def camera_info_bytes(
    stamp_ns: int,
    frame_id: str,
    height: int,
    width: int,
    distortion_model: str,
    d: np.ndarray,
    k: np.ndarray,
    p: np.ndarray,
) -> bytes:
    """``sensor_msgs/CameraInfo`` as :func:`dinov3_ros.msgs.builders.camera_info` fills it
    (R = identity, binning 0, empty ROI, ``do_rectify`` false)."""
    o = _Out()
    o.header(stamp_ns, frame_id)
    o.u32(int(height))
    o.u32(int(width))
    o.string(distortion_model)
    o.f64s(np.asarray(d, dtype=np.float64), sized=True)
    for arr, n in ((k, 9), (np.eye(3), 9), (p, 12)):
        a = np.asarray(arr, dtype=np.float64).reshape(-1)
        if a.size != n:
            raise ValueError(f"CameraInfo matrix with {a.size} values, expected {n}")
        o.f64s(a, sized=False)
    o.u32(0)  # binning_x
    o.u32(0)  # binning_y
    for _ in range(4):  # roi x_offset, y_offset, height, width
        o.u32(0)
    o.u8(0)  # roi.do_rectify
    return _ENCAP + bytes(o.b)


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
