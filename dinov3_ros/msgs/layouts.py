"""Field layouts of the PointCloud2-based outputs (points, matches, boxes) and the encodings of images.

The one definition of these layouts: the serialiser (:mod:`.cdr`), the message-object builders
(:mod:`.builders`) and the decoders (:mod:`.decode`) all use it. docs/MESSAGES.md describes them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import cv2
import numpy as np

from dinov3_ros.core.frames import MatchResult, ObjectsResult

# sensor_msgs/PointField datatypes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
NP_OF = {
    INT8: np.int8,
    UINT8: np.uint8,
    INT16: np.int16,
    UINT16: np.uint16,
    INT32: np.int32,
    UINT32: np.uint32,
    FLOAT32: np.float32,
    FLOAT64: np.float64,
}
Fields = tuple[tuple[str, int, int], ...]

#: ~/matches fields (name, offset, datatype); point_step 32
MATCH_FIELDS: Fields = (
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
#: ~/objects/boxes fields; point_step 28
BOX_FIELDS: Fields = (
    ("id", 0, UINT32),
    ("x_min", 4, FLOAT32),
    ("y_min", 8, FLOAT32),
    ("x_max", 12, FLOAT32),
    ("y_max", 16, FLOAT32),
    ("score", 20, FLOAT32),
    ("area", 24, UINT32),
)
BOX_STEP = 28
XYZ_FIELDS: Fields = (("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32))
XYZRGB_FIELDS: Fields = (*XYZ_FIELDS, ("rgb", 12, FLOAT32))


def structured_dtype(fields: Sequence[tuple[str, int, int]], step: int) -> np.dtype:
    """numpy dtype of one point of a PointCloud2 with ``fields`` (little-endian)."""
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [np.dtype(NP_OF[f[2]]).newbyteorder("<") for f in fields],
            "offsets": [f[1] for f in fields],
            "itemsize": step,
        }
    )


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) as in builtin_interfaces/Time."""
    s, ns = divmod(int(stamp_ns), 1_000_000_000)
    return int(s), int(ns)


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


def depth_image(depth_m: np.ndarray, encoding: str) -> np.ndarray:
    """Depth in metres (NaN = none) as a REP 118 depth image's data: ``32FC1`` metres as given, or
    ``16UC1`` millimetres (rounded; no depth and negatives -> 0; beyond 65.535 m saturates). Float64
    input is converted in float64."""
    d = np.asarray(depth_m)
    if encoding == "32FC1":
        return np.asarray(d, np.float32)
    if encoding != "16UC1":
        raise ValueError(f"depth encoding must be 32FC1 or 16UC1, got {encoding!r}")
    mm = np.multiply(d, 1000.0, dtype=np.float64 if d.dtype == np.float64 else np.float32)
    np.fmax(mm, 0.0, out=mm)  # fmax drops NaN: no depth -> 0
    np.fmin(mm, 65535.0, out=mm)
    np.rint(mm, out=mm)
    return mm.astype(np.uint16)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 [N, 3] -> float32 [N] holding 0x00RRGGBB (the PCL/RViz ``rgb`` field)."""
    c = rgb.astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def rgb_bits(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` -> float32 ``[...]``: :func:`pack_rgb`'s bits for any leading shape. On a
    little-endian host 0x00RRGGBB is the bytes B, G, R, 0: one OpenCV conversion and one mask."""
    c = np.ascontiguousarray(rgb, dtype=np.uint8)
    shape = c.shape[:-1]
    if sys.byteorder != "little" or c.size == 0:
        return pack_rgb(c.reshape(-1, 3)).reshape(shape)
    bgra = cv2.cvtColor(c.reshape(1, -1, 3), cv2.COLOR_RGB2BGRA).view(np.uint32).reshape(shape)
    return np.bitwise_and(bgra, np.uint32(0x00FFFFFF), out=bgra).view(np.float32)


def points_array(
    xyz: np.ndarray, rgb: np.ndarray | None, packed: np.ndarray | None = None, dense: bool | None = None
) -> tuple[Fields, np.ndarray, bool]:
    """``~/points`` rows: ``(fields, structured array, is_dense)``. ``packed`` (``[N, 3|4]`` float32,
    the same rows already laid out, e.g. on the GPU) with ``dense`` is used as is."""
    fields = XYZ_FIELDS if rgb is None else XYZRGB_FIELDS
    width = 3 if rgb is None else 4
    if (
        packed is not None
        and dense is not None
        and packed.dtype == np.float32
        and packed.shape == (xyz.shape[0], width)
        and packed.flags.c_contiguous
    ):
        return fields, packed.view(structured_dtype(fields, 4 * width)).reshape(packed.shape[0]), bool(dense)
    arr = np.zeros(xyz.shape[0], structured_dtype(fields, 12 if rgb is None else 16))
    arr["x"], arr["y"], arr["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is not None:
        arr["rgb"] = pack_rgb(rgb)
    return fields, arr, bool(np.isfinite(xyz).all())


def matches_array(m: MatchResult) -> np.ndarray:
    """``~/matches`` rows: one point per correspondence (none without a reference keyframe)."""
    n = len(m) if m.ref_stamp_ns is not None else 0
    arr = np.zeros(n, structured_dtype(MATCH_FIELDS, MATCH_STEP))
    if n:
        arr["u0"], arr["v0"] = m.uv0[:, 0], m.uv0[:, 1]
        arr["u1"], arr["v1"] = m.uv1[:, 0], m.uv1[:, 1]
        arr["score"] = m.score
        sec, nsec = split_stamp(int(m.ref_stamp_ns))  # type: ignore[arg-type]
        arr["ref_sec"], arr["ref_nanosec"] = sec, nsec
        arr["inlier"] = m.inlier.astype(np.uint8)
    return arr


def boxes_array(obj: ObjectsResult) -> np.ndarray:
    """``~/objects/boxes`` rows: one point per instance."""
    arr = np.zeros(len(obj.ids), structured_dtype(BOX_FIELDS, BOX_STEP))
    if len(obj.ids):
        arr["id"] = obj.ids
        arr["x_min"], arr["y_min"], arr["x_max"], arr["y_max"] = obj.boxes.T
        arr["score"], arr["area"] = obj.scores, obj.areas
    return arr


def mask_image(ids: np.ndarray, encoding: str = "mono8") -> np.ndarray:
    """Instance-id image (0 = background) in ``mono8`` or ``mono16``; ``ValueError`` if ids do not fit."""
    if encoding == "mono8":
        if ids.size and int(ids.max()) > 255:
            raise ValueError(f"mono8 mask cannot hold instance id {int(ids.max())}; use mono16")
        return ids.astype(np.uint8)
    if encoding == "mono16":
        return ids.astype(np.uint16)
    raise ValueError(f"mask encoding must be mono8 or mono16, got {encoding!r}")
