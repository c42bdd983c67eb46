"""msgs builders: rclpy and rosbags paths serialise to identical CDR bytes; decoders round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from dinov3_ros.msgs import builders as B
from dinov3_ros.msgs import decode as D
from dinov3_ros.msgs.provider import rosbags_types
from dinov3_ros.pipeline.types import CameraIntrinsics, FrameOutputs, MatchResult, ObjectsResult

rclpy_ser = pytest.importorskip("rclpy.serialization")


@pytest.fixture(scope="module")
def providers():
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.ros.types import ros_types

    ts = get_typestore(Stores.LATEST)
    return ros_types(), rosbags_types(ts), ts


def assert_same_cdr(rclpy_bytes: bytes, rosbags_bytes: bytes, msgtype: str, ts) -> None:
    """Identical CDR up to alignment padding.

    rclpy (Fast CDR) leaves alignment padding bytes uninitialised, so a few padding bytes may hold
    garbage. Proof of identity: same length, every differing byte is a zero in the rosbags stream,
    and the rclpy stream decodes (ignoring padding) and re-encodes to exactly the rosbags bytes.
    """
    assert len(rclpy_bytes) == len(rosbags_bytes), msgtype
    diff = [i for i, (x, y) in enumerate(zip(rclpy_bytes, rosbags_bytes)) if x != y]
    assert all(rosbags_bytes[i] == 0 for i in diff), msgtype
    assert len(diff) <= 3 * len(rclpy_bytes) // 8 + 8
    again = bytes(ts.serialize_cdr(ts.deserialize_cdr(rclpy_bytes, msgtype), msgtype))
    assert again == rosbags_bytes, msgtype


def _outputs() -> FrameOutputs:
    rng = np.random.default_rng(1)
    K = CameraIntrinsics(
        np.array([[500.0, 0, 319.5], [0, 510.0, 239.5], [0, 0, 1]]),
        640,
        480,
        np.array([0.1, -0.05, 0.001, 0.0, 0.0]),
    )
    mask = np.zeros((48, 64), np.uint16)
    mask[10:20, 5:30] = 3
    mask[30:40, 40:60] = 7
    return FrameOutputs(
        stamp_ns=1_700_000_123_456_789,
        frame_id="cam_optical",
        source="cam",
        width=64,
        height=48,
        features=rng.standard_normal((3, 4, 5)).astype(np.float32),
        features_pca=rng.integers(0, 255, (3, 4, 3), dtype=np.uint8),
        depth=rng.uniform(0.5, 4, (48, 64)).astype(np.float32),
        depth_info=K.resized(64, 48),
        points=rng.standard_normal((11, 3)).astype(np.float32),
        points_rgb=rng.integers(0, 255, (11, 3), dtype=np.uint8),
        matches=MatchResult(
            rng.uniform(0, 60, (6, 2)).astype(np.float32),
            rng.uniform(0, 60, (6, 2)).astype(np.float32),
            rng.uniform(0, 1, 6).astype(np.float32),
            np.array([1, 0, 1, 1, 0, 1], bool),
            1_700_000_100_000_000_1,
            "cam_optical",
        ),
        objects=ObjectsResult(
            mask,
            np.array([3, 7], np.uint32),
            np.array([[5, 10, 30, 20], [40, 30, 60, 40]], np.float32),
            np.array([0.9, 0.4], np.float32),
            np.array([250, 200], np.uint32),
        ),
        debug=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
    )


def test_frame_messages_identical_cdr(providers):
    rp, bp, ts = providers
    out = _outputs()
    m_r = B.frame_messages(rp, out)
    m_b = B.frame_messages(bp, out)
    assert set(m_r) == {
        "features",
        "features/pca",
        "depth",
        "depth/camera_info",
        "points",
        "matches",
        "objects/mask",
        "objects/boxes",
        "debug",
    }
    for topic, msg in m_r.items():
        a = bytes(rclpy_ser.serialize_message(msg))
        b = bytes(ts.serialize_cdr(m_b[topic], B.TOPIC_TYPES[topic]))
        assert_same_cdr(a, b, B.TOPIC_TYPES[topic], ts)


def test_other_messages_identical_cdr(providers):
    rp, bp, ts = providers
    rgb = np.random.default_rng(2).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    cases = []
    for tp in (rp, bp):
        h = B.header(tp, 5_000_000_007, "f")
        statuses = [
            {
                "level": "WARN",
                "name": "dinov3: cam",
                "message": "ok",
                "hardware_id": "cpu",
                "values": {"latency_p50_ms": 12.5, "dropped": 3},
            }
        ]
        cases.append(
            {
                "diagnostic_msgs/msg/DiagnosticArray": B.diagnostics(tp, 5_000_000_007, statuses),
                "sensor_msgs/msg/CompressedImage": B.compressed_image(tp, h, rgb, "png"),
                "sensor_msgs/msg/Image": B.mask(tp, h, np.full((4, 4), 300, np.uint16), "mono16"),
            }
        )
    for t, msg in cases[0].items():
        assert_same_cdr(
            bytes(rclpy_ser.serialize_message(msg)), bytes(ts.serialize_cdr(cases[1][t], t)), t, ts
        )


def test_decoders_round_trip(providers):
    rp, bp, _ = providers
    out = _outputs()
    for tp in (rp, bp):
        msgs = B.frame_messages(tp, out, mask_encoding="mono8")
        f = D.image_to_array(msgs["features"])
        assert msgs["features"].encoding == "32FC5" and np.array_equal(f, out.features)
        assert np.array_equal(D.image_to_array(msgs["depth"]), out.depth)
        ci = D.camera_info_to_intrinsics(msgs["depth/camera_info"])
        assert (ci.width, ci.height) == (64, 48) and np.allclose(ci.K, out.depth_info.K)
        xyz, rgb = D.decode_points(msgs["points"])
        assert np.array_equal(xyz, out.points) and np.array_equal(rgb, out.points_rgb)
        m = D.decode_matches(msgs["matches"])
        assert m.ref_stamp_ns == out.matches.ref_stamp_ns
        assert np.array_equal(m.uv0, out.matches.uv0) and np.array_equal(m.uv1, out.matches.uv1)
        assert np.array_equal(m.inlier, out.matches.inlier) and np.array_equal(m.score, out.matches.score)
        bx = D.decode_boxes(msgs["objects/boxes"])
        assert list(bx.ids) == [3, 7] and np.array_equal(bx.boxes, out.objects.boxes)
        assert bx.stamp_ns == out.stamp_ns and bx.frame_id == "cam_optical"
        assert np.array_equal(D.image_to_array(msgs["objects/mask"]), out.objects.mask.astype(np.uint8))
        for msg in msgs.values():
            assert D.stamp_ns(msg) == out.stamp_ns and msg.header.frame_id == "cam_optical"


def test_empty_matches_have_no_reference(providers):
    rp, _, _ = providers
    e = np.zeros((0, 2), np.float32)
    msg = B.matches(
        rp, B.header(rp, 1, "f"), MatchResult(e, e, np.zeros(0, np.float32), np.zeros(0, bool), None)
    )
    m = D.decode_matches(msg)
    assert len(m) == 0 and m.ref_stamp_ns is None
    with pytest.raises(ValueError, match="not a dinov3_ros boxes"):
        D.decode_boxes(msg)


def test_mono8_mask_rejects_large_ids(providers):
    rp, _, _ = providers
    with pytest.raises(ValueError, match="mono16"):
        B.mask(rp, B.header(rp, 1, "f"), np.full((2, 2), 256, np.uint16), "mono8")


@pytest.mark.parametrize("frame_id", ["", "c", "cam_optical", "a/b/c"])
def test_serialized_provider_is_byte_identical(providers, frame_id):
    """The node publishes the builders' output messages as serialized bytes (``cdr.serialized_types``):
    byte-identical to rosbags' serializer for every output topic, with packed (GPU) and unpacked points,
    xyz-only clouds, empty matches/boxes and mono16 masks - and rclpy deserializes them."""
    import dataclasses

    from rclpy.serialization import deserialize_message

    from dinov3_ros.msgs.cdr import serialized_types
    from dinov3_ros.ros.types import ros_types

    _, bp, ts = providers
    sp, rp = serialized_types(), ros_types()
    base = dataclasses.replace(_outputs(), frame_id=frame_id)
    packed = np.concatenate([base.points, B.pack_rgb(base.points_rgb)[:, None]], 1)
    variants = [
        (base, "mono8"),
        (dataclasses.replace(base, points_packed=packed, points_dense=True), "mono16"),
        (dataclasses.replace(base, points_rgb=None), "mono8"),
        (
            dataclasses.replace(
                base,
                matches=MatchResult(
                    np.zeros((0, 2), np.float32),
                    np.zeros((0, 2), np.float32),
                    np.zeros(0, np.float32),
                    np.zeros(0, bool),
                    None,
                    "",
                ),
                objects=dataclasses.replace(
                    base.objects,
                    ids=np.zeros(0, np.uint32),
                    boxes=np.zeros((0, 4), np.float32),
                    scores=np.zeros(0, np.float32),
                    areas=np.zeros(0, np.uint32),
                ),
            ),
            "mono16",
        ),
    ]
    for out, enc in variants:
        got = B.frame_messages(sp, out, mask_encoding=enc)
        ref = B.frame_messages(bp, out, mask_encoding=enc)
        assert set(got) == set(ref) and len(got) == 9
        for topic, raw in got.items():
            mtype = B.TOPIC_TYPES[topic]
            assert isinstance(raw, bytes), topic
            assert raw == bytes(ts.serialize_cdr(ref[topic], mtype)), (topic, enc)
            msg = deserialize_message(raw, rp.cls(mtype))
            assert msg.header.frame_id == frame_id and msg.header.stamp.nanosec == 123_456_789
    with pytest.raises(KeyError, match="no direct CDR serializer"):
        sp.cls("diagnostic_msgs/msg/DiagnosticArray")
