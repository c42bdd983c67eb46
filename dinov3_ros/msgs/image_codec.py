"""Decode raw ``sensor_msgs/Image`` buffers and ``CompressedImage`` payloads to RGB ``uint8``.

Pure numpy/OpenCV: no ROS import. Every failure raises :class:`ImageDecodeError` (a ``ValueError``)
whose message names the problem (unknown encoding, zero size, step mismatch, truncated data, ...).

YUV 4:2:2 naming follows ROS (``sensor_msgs/image_encodings``): ``yuv422`` / ``uyvy`` are byte order
U Y0 V Y1; ``yuv422_yuy2`` / ``yuyv`` are Y0 U Y1 V.
"""

from __future__ import annotations

import cv2
import numpy as np

#: encoding -> (channels, numpy dtype); YUV 4:2:2 formats are 2 bytes per pixel.
RAW_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "mono8": (1, np.dtype(np.uint8)),
    "8uc1": (1, np.dtype(np.uint8)),
    "8uc3": (3, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "16uc1": (1, np.dtype(np.uint16)),
    "yuv422": (2, np.dtype(np.uint8)),
    "uyvy": (2, np.dtype(np.uint8)),
    "yuv422_yuy2": (2, np.dtype(np.uint8)),
    "yuyv": (2, np.dtype(np.uint8)),
}
_UYVY = {"yuv422", "uyvy"}
_YUYV = {"yuv422_yuy2", "yuyv"}


#: classes of undecodable input (the node counts each on /diagnostics)
DECODE_KINDS = ("encoding", "size", "compressed", "malformed")


class ImageDecodeError(ValueError):
    """A frame that cannot be decoded; the message says why. ``kind`` is its class: ``encoding``
    (unknown encoding), ``size`` (zero size, step or data size mismatch), ``compressed`` (not JPEG/PNG,
    truncated or corrupt payload) or ``malformed`` (the message itself cannot be parsed)."""

    def __init__(self, message: str, kind: str = "size") -> None:
        super().__init__(message)
        self.kind = kind if kind in DECODE_KINDS else "malformed"


def bytes_per_pixel(encoding: str) -> int:
    """Bytes per pixel of a raw encoding (``ImageDecodeError`` if unknown)."""
    ch, dt = _lookup(encoding)
    return ch * dt.itemsize


def _lookup(encoding: str) -> tuple[int, np.dtype]:
    key = encoding.lower()
    if key not in RAW_ENCODINGS:
        raise ImageDecodeError(
            f"unknown image encoding {encoding!r}; supported: {', '.join(sorted(RAW_ENCODINGS))}", "encoding"
        )
    return RAW_ENCODINGS[key]


def _as_u8(data: object) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data), dtype=np.uint8)  # type: ignore[arg-type]


def decode_raw(
    encoding: str, height: int, width: int, step: int, data: object, is_bigendian: bool = False
) -> np.ndarray:
    """Decode a raw image buffer to an ``(H, W, 3)`` RGB ``uint8`` array (a new array)."""
    ch, dt = _lookup(encoding)
    enc = encoding.lower()
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"zero-size image ({width}x{height}, encoding {encoding!r})")
    if enc in _UYVY | _YUYV and width % 2:
        raise ImageDecodeError(f"{encoding} needs an even width, got {width}")
    row = width * ch * dt.itemsize
    if step < row:
        raise ImageDecodeError(
            f"step mismatch: step {step} < width {width} x {ch * dt.itemsize} bytes/pixel = {row} ({encoding})"
        )
    buf = _as_u8(data)
    need = step * (height - 1) + row
    if buf.size < need:
        raise ImageDecodeError(
            f"truncated image data: {buf.size} bytes, expected {step * height} "
            f"({width}x{height} {encoding}, step {step})"
        )
    if buf.size > step * height:
        raise ImageDecodeError(
            f"step mismatch: {buf.size} data bytes but step {step} x height {height} = {step * height}"
        )
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row), strides=(step, 1))
    px = np.ascontiguousarray(rows).view(
        dt.newbyteorder(">" if is_bigendian else "<") if dt.itemsize > 1 else dt
    )
    px = px.reshape(height, width, ch)
    if enc in ("rgb8", "8uc3"):
        return px.copy() if enc == "rgb8" else px[..., ::-1].copy()
    if enc == "bgr8":
        return px[..., ::-1].copy()
    if enc == "rgba8":
        return px[..., :3].copy()
    if enc == "bgra8":
        return px[..., 2::-1].copy()
    if enc in ("mono8", "8uc1"):
        return np.repeat(px, 3, axis=2)
    if enc in ("mono16", "16uc1"):
        v = px.astype(np.uint16)
        hi = max(int(v.max()), 1)
        # Full 16-bit range -> 8 bits; low-range (e.g. 12-bit) sensors are stretched to their maximum.
        scale = 255.0 / (65535.0 if hi > 4095 else float(hi))
        g = np.clip(v.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g, 3, axis=2)
    packed = px.reshape(height, width, 2)
    code = cv2.COLOR_YUV2RGB_UYVY if enc in _UYVY else cv2.COLOR_YUV2RGB_YUYV
    return cv2.cvtColor(np.ascontiguousarray(packed), code)


def decode_compressed(fmt: str, data: object) -> np.ndarray:
    """Decode a ``CompressedImage`` payload (JPEG or PNG) to ``(H, W, 3)`` RGB ``uint8``.

    ``fmt`` is the message's ``format`` string (``jpeg``, ``png``, ``rgb8; jpeg compressed bgr8``, ...).
    The container is detected from the magic bytes; a truncated JPEG (no end-of-image marker) is rejected.
    """
    buf = _as_u8(data)
    if buf.size == 0:
        raise ImageDecodeError(f"zero-size compressed image (format {fmt!r})", "compressed")
    head = bytes(buf[:8])
    if head[:3] == b"\xff\xd8\xff":
        kind = "jpeg"
        tail = bytes(buf[-2:]) if buf.size >= 2 else b""
        if tail != b"\xff\xd9":
            # Some encoders pad after EOI; accept only if an EOI marker exists in the last 1 KiB.
            if b"\xff\xd9" not in bytes(buf[-1024:]):
                raise ImageDecodeError(
                    f"truncated JPEG: no end-of-image marker ({buf.size} bytes)", "compressed"
                )
    elif head == b"\x89PNG\r\n\x1a\n":
        kind = "png"
        if b"IEND" not in bytes(buf[-16:]):
            raise ImageDecodeError(f"truncated PNG: no IEND chunk ({buf.size} bytes)", "compressed")
    else:
        raise ImageDecodeError(
            f"unsupported compressed format {fmt!r}: payload is neither JPEG nor PNG (starts {head[:4].hex()})",
            "compressed",
        )
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    if kind == "jpeg" and rgb_flag is not None:
        # 8-bit JPEG straight to RGB (gray replicated): the same pixels as decode + BGR->RGB, one pass less
        img = cv2.imdecode(buf, rgb_flag)
        if img is None or img.size == 0:
            raise ImageDecodeError(f"corrupt {kind} payload ({buf.size} bytes, format {fmt!r})", "compressed")
        return img
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageDecodeError(f"corrupt {kind} payload ({buf.size} bytes, format {fmt!r})", "compressed")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_raw(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """Encode an RGB ``uint8`` image to a raw ``encoding`` buffer; returns ``(data, step)``.

    The inverse of :func:`decode_raw` for colour encodings (used by tests, tools and the debug output).
    """
    enc = encoding.lower()
    _lookup(encoding)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if enc in ("rgb8", "8uc3"):
        out = rgb if enc == "rgb8" else rgb[..., ::-1]
    elif enc == "bgr8":
        out = rgb[..., ::-1]
    elif enc == "rgba8":
        out = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif enc == "bgra8":
        out = np.concatenate([rgb[..., ::-1], np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif enc in ("mono8", "8uc1"):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif enc in ("mono16", "16uc1"):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    else:
        if w % 2:
            raise ValueError(f"{encoding} needs an even width, got {w}")
        # BT.601 video range, the convention OpenCV's YUV2RGB_UYVY/YUYV decoders invert
        f = rgb.astype(np.float64)
        r, g, b = f[..., 0], f[..., 1], f[..., 2]
        y = np.clip(np.rint(16 + 0.257 * r + 0.504 * g + 0.098 * b), 0, 255).astype(np.int32)
        uu = 128 - 0.148 * r - 0.291 * g + 0.439 * b
        vv = 128 + 0.439 * r - 0.368 * g - 0.071 * b
        u = np.clip(np.rint((uu[:, 0::2] + uu[:, 1::2]) / 2), 0, 255).astype(np.int32)
        v = np.clip(np.rint((vv[:, 0::2] + vv[:, 1::2]) / 2), 0, 255).astype(np.int32)
        out = np.empty((h, w // 2, 4), np.uint8)
        if enc in _UYVY:
            out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
        else:
            out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    out = np.ascontiguousarray(out)
    return out.tobytes(), out.strides[0]
