"""Image codec: every raw encoding and JPEG/PNG decode to RGB; bad frames raise clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dinov3_ros.msgs.image_codec import ImageDecodeError, decode_compressed, decode_raw, encode_raw


def rgb_image(h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_exact(enc):
    img = rgb_image()
    data, step = encode_raw(img, enc)
    assert step == 16 * (4 if "a" in enc[3:] else 3)
    assert np.array_equal(decode_raw(enc, 12, 16, step, data), img)


def test_bgr_is_really_swapped():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 200  # red
    data = img[..., ::-1].tobytes()  # bgr8 buffer: blue channel byte first
    assert decode_raw("bgr8", 2, 2, 6, data)[0, 0].tolist() == [200, 0, 0]
    assert decode_raw("rgb8", 2, 2, 6, data)[0, 0].tolist() == [0, 0, 200]


def test_mono_encodings():
    g = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    out = decode_raw("mono8", 12, 16, 16, g.tobytes())
    assert out.shape == (12, 16, 3) and np.array_equal(out[..., 1], g)
    g16 = g.astype(np.uint16) * 257
    out16 = decode_raw("mono16", 12, 16, 32, g16.tobytes())
    assert np.array_equal(out16[..., 0], g)
    be = decode_raw("mono16", 12, 16, 32, g16.astype(">u2").tobytes(), is_bigendian=True)
    assert np.array_equal(be, out16)


@pytest.mark.parametrize(
    ("enc", "order"), [("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")]
)
def test_yuv422_byte_order_follows_ros_naming(enc, order):
    # A flat colour: U/V constant, so 4:2:2 subsampling is lossless up to colour conversion rounding.
    img = np.zeros((4, 8, 3), np.uint8)
    img[:] = (200, 80, 40)
    data, step = encode_raw(img, enc)
    assert step == 16
    b = list(data[:4])
    if order == "UYVY":  # U Y0 V Y1: bytes 1 and 3 are luma
        assert b[1] == b[3] and b[0] != b[1]
    else:  # Y0 U Y1 V: bytes 0 and 2 are luma
        assert b[0] == b[2] and b[1] != b[0]
    out = decode_raw(enc, 4, 8, step, data)
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 3
    wrong = "yuyv" if order == "UYVY" else "uyvy"
    assert np.abs(decode_raw(wrong, 4, 8, step, data).astype(int) - img.astype(int)).max() > 20


def test_row_padding_is_honoured():
    img = rgb_image(5, 7)
    step = 7 * 3 + 11
    buf = np.zeros((5, step), np.uint8)
    buf[:, :21] = img.reshape(5, 21)
    assert np.array_equal(decode_raw("rgb8", 5, 7, step, buf.tobytes()), img)


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (("weird", 2, 2, 6, bytes(12)), "unknown image encoding 'weird'"),
        (("rgb8", 0, 0, 0, b""), "zero-size image"),
        (("rgb8", 2, 2, 5, bytes(12)), "step mismatch"),
        (("rgb8", 2, 2, 6, bytes(11)), "truncated image data"),
        (("rgb8", 2, 2, 6, bytes(20)), "step mismatch: 20 data bytes"),
        (("yuyv", 2, 3, 6, bytes(12)), "even width"),
    ],
)
def test_raw_errors_are_clear(args, msg):
    with pytest.raises(ImageDecodeError, match=msg):
        decode_raw(*args)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip(fmt):
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, :16] = (255, 0, 0)
    img[:, 16:] = (0, 0, 255)
    ext = ".jpg" if fmt == "jpeg" else ".png"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    out = decode_compressed(fmt, buf.tobytes())
    tol = 0 if fmt == "png" else 30
    assert out.shape == img.shape and np.abs(out.astype(int) - img.astype(int))[:, 2:14].max() <= tol
    assert out[0, 0, 0] > 200 and out[0, 30, 2] > 200  # red left, blue right (RGB order)


def test_compressed_errors_are_clear():
    _, buf = cv2.imencode(".jpg", rgb_image(32, 32))
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_compressed("jpeg", buf.tobytes()[: len(buf) // 2])
    _, buf = cv2.imencode(".png", rgb_image(32, 32))
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode_compressed("png", buf.tobytes()[:-20])
    with pytest.raises(ImageDecodeError, match="zero-size compressed"):
        decode_compressed("jpeg", b"")
    with pytest.raises(ImageDecodeError, match="neither JPEG nor PNG"):
        decode_compressed("tiff", b"II*\x00garbage")
