"""Messages: the builders' rclpy and rosbags objects serialise to identical CDR bytes, the outputs'
serialiser (the registry over msgs.cdr) equals both, and the decoders round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import rclpy.serialization as rclpy_ser
from msg_reference import reference_messages

from dinov3_ros.core import (
    CameraIntrinsics,
    DepthImage,
    FrameOutputs,
    MatchResult,
    ObjectsResult,
    PipelineConfig,
    PointCloud,
)
from dinov3_ros.msgs import builders as B
from dinov3_ros.msgs import decode as D
from dinov3_ros.msgs.layouts import pack_rgb
from dinov3_ros.msgs.provider import rosbags_types
from dinov3_ros.pipeline.outputs import frame_messages, topic_types

TYPES = topic_types()


@pytest.fixture(scope="module")
def providers():
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.msgs.extra_types import register_extra_types
    from dinov3_ros.ros.types import ros_types

    ts = register_extra_types(get_typestore(Stores.LATEST))
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


def _outputs(frame_id: str = "cam_optical", **changes) -> FrameOutputs:
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
    values = {
        "features": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "features_pca": rng.integers(0, 255, (3, 4, 3), dtype=np.uint8),
        "depth": DepthImage(rng.uniform(0.5, 4, (48, 64)).astype(np.float32), K.resized(64, 48)),
        "points": PointCloud(
            rng.standard_normal((11, 3)).astype(np.float32), rng.integers(0, 255, (11, 3), dtype=np.uint8)
        ),
        "matches": MatchResult(
            rng.uniform(0, 60, (6, 2)).astype(np.float32),
            rng.uniform(0, 60, (6, 2)).astype(np.float32),
            rng.uniform(0, 1, 6).astype(np.float32),
            np.array([1, 0, 1, 1, 0, 1], bool),
            1_700_000_100_000_000_1,
            "cam_optical",
        ),
        "objects": ObjectsResult(
            mask,
            np.array([3, 7], np.uint32),
            np.array([[5, 10, 30, 20], [40, 30, 60, 40]], np.float32),
            np.array([0.9, 0.4], np.float32),
            np.array([250, 200], np.uint32),
        ),
        "debug": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
    }
    _add_new_outputs(values, K, rng)
    values.update(changes)
    return FrameOutputs(1_700_000_123_456_789, frame_id, "cam", 64, 48, values)


def _add_new_outputs(values: dict, K: CameraIntrinsics, rng: np.random.Generator) -> None:
    """Values of the outputs that sit beside the original ones (markers, odometry, compressed...)."""
    from dinov3_ros.pipeline.outputs.compressed import encode
    from dinov3_ros.pipeline.outputs.depth_points import organized_cloud
    from dinov3_ros.pipeline.outputs.features_info import GridInfo
    from dinov3_ros.pipeline.outputs.odometry import Odometry

    d = values["depth"]
    holes = d.image.copy()
    holes[0, :5] = np.nan
    pose = np.eye(4)
    pose[:3, :3] = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    pose[:3, 3] = [0.5, -0.25, 2.0]
    values.update(
        {
            "features_info": GridInfo(4, 3, K.transformed(0.1, 0.1, 0.0, 0.5, 4, 3), (0, 1, 4, 2)),
            "depth_points": organized_cloud(DepthImage(holes, d.info), values["debug"]),
            "matches_markers": values["matches"],
            "objects_markers": values["objects"],
            "detections": values["objects"],
            "odometry": Odometry(
                pose, np.diag(rng.uniform(0, 1, 6)), np.ones(3), np.zeros(3), np.eye(6), 9, "odom"
            ),
            "pca_compressed": encode(values["features_pca"], "rgb8", "png"),
            "mask_compressed": encode(values["objects"].mask.astype(np.uint8), "mono8", "png"),
            "debug_compressed": encode(values["debug"], "rgb8", "jpeg", 80),
        }
    )


def _uncalibrated_grid():
    from dinov3_ros.pipeline.outputs.features_info import GridInfo

    return GridInfo(4, 3, None, (1, 0, 2, 3))


def test_frame_messages_identical_cdr(providers):
    rp, bp, ts = providers
    out = _outputs()
    m_r = reference_messages(rp, out)
    m_b = reference_messages(bp, out)
    assert set(m_r) == set(TYPES) - {"objects/detections"}  # vision_msgs is not installed for rclpy
    assert set(m_b) == set(TYPES)
    for topic, msg in m_r.items():
        a = bytes(rclpy_ser.serialize_message(msg))
        b = bytes(ts.serialize_cdr(m_b[topic], TYPES[topic]))
        assert_same_cdr(a, b, TYPES[topic], ts)


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
        msgs = reference_messages(tp, out, mask_encoding="mono8")
        v = out.values
        f = D.image_to_array(msgs["features"])
        assert msgs["features"].encoding == "32FC5" and np.array_equal(f, v["features"])
        assert np.array_equal(D.image_to_array(msgs["depth"]), v["depth"].image)
        ci = D.camera_info_to_intrinsics(msgs["depth/camera_info"])
        assert (ci.width, ci.height) == (64, 48) and np.allclose(ci.K, v["depth"].info.K)
        xyz, rgb = D.decode_points(msgs["points"])
        assert np.array_equal(xyz, v["points"].xyz) and np.array_equal(rgb, v["points"].rgb)
        m = D.decode_matches(msgs["matches"])
        assert m.ref_stamp_ns == v["matches"].ref_stamp_ns
        assert np.array_equal(m.uv0, v["matches"].uv0) and np.array_equal(m.uv1, v["matches"].uv1)
        assert np.array_equal(m.inlier, v["matches"].inlier) and np.array_equal(m.score, v["matches"].score)
        bx = D.decode_boxes(msgs["objects/boxes"])
        assert list(bx.ids) == [3, 7] and np.array_equal(bx.boxes, v["objects"].boxes)
        assert bx.stamp_ns == out.stamp_ns and bx.frame_id == "cam_optical"
        assert np.array_equal(D.image_to_array(msgs["objects/mask"]), v["objects"].mask.astype(np.uint8))
        odo = msgs.pop("odometry")
        assert odo.header.frame_id == "odom" and odo.child_frame_id == "cam_optical"
        assert D.stamp_ns(odo) == out.stamp_ns
        for msg in msgs.values():
            assert D.stamp_ns(msg) == out.stamp_ns and msg.header.frame_id == "cam_optical"
        pc = msgs["depth/points"]
        assert (pc.height, pc.width) == (48, 64) and not pc.is_dense
        xyz, rgb = D.decode_points(pc)
        cloud = v["depth_points"]
        assert np.array_equal(xyz, cloud.xyz.reshape(-1, 3), equal_nan=True)
        assert np.isnan(xyz[:5]).all() and np.isfinite(xyz[5:]).all()
        assert np.array_equal(rgb, v["debug"].reshape(-1, 3))  # colour of each pixel
        from dinov3_ros.msgs.image_codec import decode_compressed

        png = msgs["features/pca/compressed"]
        assert png.format == "rgb8; png compressed bgr8"
        assert np.array_equal(decode_compressed(png.format, png.data), v["features_pca"])  # lossless


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
def test_output_serialiser_is_byte_identical(providers, frame_id):
    """What the node publishes and the bag tool writes (``pipeline.outputs.frame_messages``: zero-copy
    CDR parts) equals rosbags' serializer of the builders' objects for every output topic - packed and
    unpacked points, xyz-only clouds, empty matches/boxes, mono16 masks - and rclpy deserializes it."""
    import dataclasses

    from rclpy.serialization import deserialize_message

    from dinov3_ros.msgs.cdr import join
    from dinov3_ros.ros.types import ros_types

    _, bp, ts = providers
    rp = ros_types()
    base = _outputs(frame_id)
    pts = base["points"]
    packed = np.concatenate([pts.xyz, pack_rgb(pts.rgb)[:, None]], 1)
    empty = MatchResult(
        np.zeros((0, 2), np.float32),
        np.zeros((0, 2), np.float32),
        np.zeros(0, np.float32),
        np.zeros(0, bool),
        None,
        "",
    )
    no_objects = dataclasses.replace(
        base["objects"],
        ids=np.zeros(0, np.uint32),
        boxes=np.zeros((0, 4), np.float32),
        scores=np.zeros(0, np.float32),
        areas=np.zeros(0, np.uint32),
    )
    variants = [
        (base, "mono8"),
        (_outputs(frame_id, points=PointCloud(pts.xyz, pts.rgb, packed, True)), "mono16"),
        (_outputs(frame_id, points=PointCloud(pts.xyz, None)), "mono8"),
        (_outputs(frame_id, matches=empty, objects=no_objects), "mono16"),
        (
            _outputs(
                frame_id,
                features_info=_uncalibrated_grid(),
                matches_markers=empty,
                objects_markers=no_objects,
                detections=no_objects,
            ),
            "mono8",
        ),
    ]
    for out, enc in variants:
        got = {t: join(parts) for t, _mt, parts in frame_messages(out, PipelineConfig(mask_encoding=enc))}
        ref = reference_messages(bp, out, enc)
        assert set(got) == set(ref) == set(TYPES)
        for topic, raw in got.items():
            mtype = TYPES[topic]
            assert raw == bytes(ts.serialize_cdr(ref[topic], mtype)), (topic, enc)
            if topic == "objects/detections":  # vision_msgs is not installed for rclpy here
                continue
            msg = deserialize_message(raw, rp.cls(mtype))
            fid = msg.child_frame_id if topic == "odometry" else msg.header.frame_id  # header: the odom frame
            assert fid == frame_id and msg.header.stamp.nanosec == 123_456_789


def test_rgb_bits_equal_pack_rgb_for_any_shape():
    from dinov3_ros.msgs.layouts import rgb_bits

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ref = pack_rgb(rgb.reshape(-1, 3)).view(np.uint32)
    assert np.array_equal(rgb_bits(rgb).view(np.uint32).reshape(-1), ref)
    assert rgb_bits(rgb).shape == (5, 7) and rgb_bits(rgb.reshape(-1, 3)).shape == (35,)
    assert np.array_equal(
        rgb_bits(rgb[:, ::2]).view(np.uint32),
        pack_rgb(rgb[:, ::2].reshape(-1, 3)).view(np.uint32).reshape(5, 4),
    )
    assert rgb_bits(np.zeros((0, 3), np.uint8)).shape == (0,)


def test_depth_image_encodings():
    from dinov3_ros.msgs.layouts import depth_image

    d = np.array([[0.0, 1.2344, 1.2346, np.nan], [-0.1, 65.5354, 70.0, np.inf]], np.float32)
    mm = depth_image(d, "16UC1")
    assert mm.dtype == np.uint16
    assert mm.tolist() == [[0, 1234, 1235, 0], [0, 65535, 65535, 65535]]
    assert depth_image(d, "32FC1").dtype == np.float32
    with pytest.raises(ValueError, match="32FC1 or 16UC1"):
        depth_image(d, "16UC2")


def test_depth_16uc1_message_is_millimetres_of_the_32fc1_one(providers):
    """``depth_encoding: 16UC1``: the same image in millimetres (half the bytes), rclpy reads it."""
    from rclpy.serialization import deserialize_message

    from dinov3_ros.msgs.cdr import join
    from dinov3_ros.ros.types import ros_types

    rp = ros_types()
    out = _outputs("cam")
    msgs = {}
    for enc in ("32FC1", "16UC1"):
        raw = {t: join(p) for t, _mt, p in frame_messages(out, PipelineConfig(depth_encoding=enc))}
        msgs[enc] = deserialize_message(raw["depth/image"], rp.cls("sensor_msgs/msg/Image"))
    m32, m16 = msgs["32FC1"], msgs["16UC1"]
    assert (m16.encoding, m16.step, m16.width, m16.height) == ("16UC1", 2 * m32.width, m32.width, m32.height)
    metres = np.frombuffer(bytes(m32.data), np.float32).reshape(m32.height, m32.width)
    mm = np.frombuffer(bytes(m16.data), np.uint16).reshape(m16.height, m16.width)
    ok = np.isfinite(metres)
    assert ok.any() and np.all(np.abs(mm[ok] - metres[ok] * 1000.0) <= 0.5 + 1e-3 * metres[ok])
    assert np.all(mm[~ok] == 0)
