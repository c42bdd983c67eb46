"""The one serialiser (msgs.cdr) equals rosbags' serializer of the builders' message objects; the CDR
readers equal rosbags' deserializer, in both byte orders."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from dinov3_ros.core import CameraIntrinsics, MatchResult, ObjectsResult
from dinov3_ros.msgs import builders, cdr, layouts
from dinov3_ros.msgs.provider import rosbags_types

STAMP = 1_700_000_123_456_789
TS = get_typestore(Stores.LATEST)
TP = rosbags_types(TS)


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "cam_optical_frame"])
def test_image_parts_identical(frame_id):
    rng = np.random.default_rng(0)
    cases = [
        (rng.random((5, 7), dtype=np.float32), "32FC1"),
        (rng.integers(0, 256, (3, 5, 3), dtype=np.uint8), "rgb8"),
        (rng.integers(0, 256, (3, 5), dtype=np.uint8), "mono8"),
        (rng.integers(0, 65535, (3, 5), dtype=np.uint16), "mono16"),
        (rng.random((2, 3, 5), dtype=np.float32), "32FC5"),
        (rng.random((4, 6), dtype=np.float32)[:, ::2], "32FC1"),  # non-contiguous input
    ]
    hdr = builders.header(TP, STAMP, frame_id)
    for arr, enc in cases:
        ref = bytes(TS.serialize_cdr(builders.image(TP, hdr, arr, enc), "sensor_msgs/msg/Image"))
        parts = cdr.image_parts(STAMP, frame_id, arr, enc)
        assert cdr.join(parts) == ref, enc
        assert cdr.parts_len(parts) == len(ref)


@pytest.mark.parametrize("model", ["plumb_bob", "rational_polynomial", ""])
@pytest.mark.parametrize("n_d", [0, 5, 8])
def test_camera_info_identical(model, n_d):
    K = np.array([[500.5, 0.0, 319.5], [0.0, 501.0, 239.5], [0.0, 0.0, 1.0]])
    k = CameraIntrinsics(K, 640, 480, np.arange(n_d, dtype=np.float64) * 0.01, model)
    for fid in ("", "cam", "left_optical"):
        msg = builders.camera_info(TP, builders.header(TP, STAMP, fid), k)
        ref = bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/CameraInfo"))
        assert cdr.join(cdr.camera_info_parts(STAMP, fid, k)) == ref


def _clouds() -> list[tuple[layouts.Fields, np.ndarray, bool]]:
    rng = np.random.default_rng(3)
    xyz = rng.standard_normal((11, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, (11, 3), dtype=np.uint8)
    packed = np.concatenate([xyz, layouts.pack_rgb(rgb)[:, None]], 1)
    xyz_nan = xyz.copy()
    xyz_nan[2, 1] = np.nan
    e = np.zeros((0, 2), np.float32)
    m = MatchResult(
        rng.random((4, 2), np.float32),
        rng.random((4, 2), np.float32),
        np.ones(4, np.float32),
        np.ones(4, bool),
        7,
        "f",
    )
    none = MatchResult(e, e, np.zeros(0, np.float32), np.zeros(0, bool), None)
    obj = ObjectsResult(
        np.zeros((2, 2), np.uint16),
        np.array([3], np.uint32),
        np.ones((1, 4), np.float32),
        np.ones(1, np.float32),
        np.ones(1, np.uint32),
    )
    return [
        layouts.points_array(xyz, rgb),
        layouts.points_array(xyz, rgb, packed, True),
        layouts.points_array(xyz_nan, None),
        (layouts.MATCH_FIELDS, layouts.matches_array(m), True),
        (layouts.MATCH_FIELDS, layouts.matches_array(none), True),
        (layouts.BOX_FIELDS, layouts.boxes_array(obj), True),
    ]


def test_point_cloud_parts_identical():
    for fields, arr, dense in _clouds():
        for fid in ("", "abc"):
            msg = builders.point_cloud(TP, builders.header(TP, STAMP, fid), fields, arr, is_dense=dense)
            ref = bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/PointCloud2"))
            assert cdr.join(cdr.point_cloud_parts(STAMP, fid, fields, arr, dense)) == ref


@pytest.mark.parametrize("little", [True, False])
def test_readers_equal_rosbags_deserializer(little):
    img = (np.arange(6 * 8 * 3) % 251).astype(np.uint8).reshape(6, 8, 3)
    for fid in ("cam_optical", "", "a/b"):
        hdr = builders.header(TP, STAMP, fid)
        raw = TS.serialize_cdr(
            builders.compressed_image(TP, hdr, img), "sensor_msgs/msg/CompressedImage", little_endian=little
        )
        stamp, frame_id, fmt, data = cdr.read_compressed_image(raw)
        assert (stamp, frame_id, fmt) == (STAMP, fid, "jpeg") and cdr.stamp_of(raw) == STAMP
        ref = TS.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")
        assert bytes(data) == bytes(ref.data)
        raw = TS.serialize_cdr(
            builders.image(TP, hdr, img, "rgb8"), "sensor_msgs/msg/Image", little_endian=little
        )
        v = cdr.read_image(raw)
        assert (v.stamp_ns, v.frame_id, v.height, v.width, v.encoding, v.step) == (
            STAMP,
            fid,
            6,
            8,
            "rgb8",
            24,
        )
        assert bytes(v.data) == img.tobytes()
        k = CameraIntrinsics(np.array([[5.0, 0, 3], [0, 6, 2], [0, 0, 1]]), 8, 6, np.arange(5) * 0.1)
        raw = TS.serialize_cdr(
            builders.camera_info(TP, hdr, k), "sensor_msgs/msg/CameraInfo", little_endian=little
        )
        ci = cdr.read_camera_info(raw)
        assert (ci.width, ci.height, ci.distortion_model, ci.frame_id) == (8, 6, "plumb_bob", fid)
        assert (
            np.array_equal(ci.k, k.K.ravel())
            and np.array_equal(ci.d, k.D)
            and np.array_equal(ci.p, k.P.ravel())
        )


def test_readers_reject_malformed_buffers():
    hdr = builders.header(TP, STAMP, "cam")
    raw = bytes(
        TS.serialize_cdr(
            builders.compressed_image(TP, hdr, np.zeros((4, 4, 3), np.uint8)),
            "sensor_msgs/msg/CompressedImage",
        )
    )
    with pytest.raises(ValueError):
        cdr.read_compressed_image(raw[:-10])  # truncated payload
    with pytest.raises(ValueError):
        cdr.read_compressed_image(b"\x07\x07\x00\x00" + raw[4:])  # not a CDR encapsulation
    with pytest.raises(ValueError):
        cdr.read_camera_info(raw)  # another type: runs out of data
