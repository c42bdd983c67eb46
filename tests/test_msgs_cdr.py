"""Direct CDR serialisation (msgs.cdr) is byte-identical to rosbags' serializer of the builders' messages."""

from __future__ import annotations

import numpy as np
import pytest

from dinov3_ros.msgs import builders, cdr
from dinov3_ros.pipeline.types import CameraIntrinsics

rosbags_typesys = pytest.importorskip("rosbags.typesys", reason="rosbags is needed for the reference CDR")


@pytest.fixture(scope="module")
def ts():
    from dinov3_ros.msgs.provider import rosbags_types

    store = rosbags_typesys.get_typestore(rosbags_typesys.Stores.LATEST)
    return store, rosbags_types(store)


STAMP = 1_700_000_123_456_789


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "cam_optical_frame"])
def test_image_parts_identical(ts, frame_id):
    store, tp = ts
    rng = np.random.default_rng(0)
    cases = [
        (rng.random((5, 7), dtype=np.float32), "32FC1"),
        (rng.integers(0, 256, (3, 5, 3), dtype=np.uint8), "rgb8"),
        (rng.integers(0, 256, (3, 5), dtype=np.uint8), "mono8"),
        (rng.integers(0, 65535, (3, 5), dtype=np.uint16), "mono16"),
        (rng.random((2, 3, 5), dtype=np.float32), "32FC5"),
        (rng.random((4, 6), dtype=np.float32)[:, ::2], "32FC1"),  # non-contiguous input
    ]
    hdr = builders.header(tp, STAMP, frame_id)
    for arr, enc in cases:
        ref = bytes(store.serialize_cdr(builders.image(tp, hdr, arr, enc), "sensor_msgs/msg/Image"))
        parts = cdr.image_parts(STAMP, frame_id, arr, enc)
        assert cdr.join(parts) == ref, enc
        assert cdr.parts_len(parts) == len(ref)


@pytest.mark.parametrize("model", ["plumb_bob", "rational_polynomial", ""])
@pytest.mark.parametrize("n_d", [0, 5, 8])
def test_camera_info_identical(ts, model, n_d):
    store, tp = ts
    K = np.array([[500.5, 0.0, 319.5], [0.0, 501.0, 239.5], [0.0, 0.0, 1.0]])
    k = CameraIntrinsics(K, 640, 480, np.arange(n_d, dtype=np.float64) * 0.01, model)
    for fid in ("", "cam", "left_optical"):
        msg = builders.camera_info(tp, builders.header(tp, STAMP, fid), k)
        ref = bytes(store.serialize_cdr(msg, "sensor_msgs/msg/CameraInfo"))
        got = cdr.camera_info_bytes(STAMP, fid, k.height, k.width, k.distortion_model, k.D, k.K, k.P)
        assert got == ref


def test_read_compressed_image_equals_rosbags_deserializer():
    """The offline tool's direct CDR read of CompressedImage gives what rosbags' deserializer gives."""
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.msgs import builders
    from dinov3_ros.msgs.cdr import read_compressed_image
    from dinov3_ros.msgs.provider import rosbags_types

    ts = get_typestore(Stores.LATEST)
    tp = rosbags_types(ts)
    img = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    for fid in ("cam_optical", "", "a/b"):
        msg = builders.compressed_image(tp, builders.header(tp, 1_700_000_000_123_456_789, fid), img)
        raw = ts.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
        stamp, frame_id, fmt, data = read_compressed_image(raw)
        ref = ts.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")
        assert stamp == ref.header.stamp.sec * 1_000_000_000 + ref.header.stamp.nanosec
        assert (frame_id, fmt, bytes(data)) == (ref.header.frame_id, ref.format, bytes(ref.data))
    with pytest.raises(ValueError):
        read_compressed_image(bytes(raw)[:-10])  # truncated payload
    with pytest.raises(ValueError):
        read_compressed_image(b"\x00\x00\x00\x00" + bytes(raw)[4:])  # big-endian / not CDR LE
