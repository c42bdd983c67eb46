"""Bag / folder / video writers read back with rosbags / OpenCV; sample bag; `dinov3-ros synth`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dinov3_ros.synthetic import SceneGenerator
from dinov3_ros.synthetic.writers import TOPICS, read_folder, write_bag, write_folder, write_video


@pytest.fixture(scope="module")
def frames():
    gen = SceneGenerator(seed=9, width=64, height=48, frames_per_scene=3)
    return [gen[k] for k in range(5)]  # spans two scenes


def _read_bag(path):
    from rosbags.highlevel import AnyReader

    out: dict[str, list] = {}
    types = {}
    with AnyReader([path]) as reader:
        for conn in reader.connections:
            types[conn.topic] = conn.msgtype
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return types, out


def test_bag_reads_back_raw(frames, tmp_path):
    from scipy.spatial.transform import Rotation

    bag = write_bag(frames, tmp_path / "bag", frame_rate=20.0)
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    assert not list(tmp_path.glob(".*tmp*")), "temporary directory left behind"
    types, msgs = _read_bag(bag)
    assert types == {
        TOPICS["image"]: "sensor_msgs/msg/Image",
        TOPICS["camera_info"]: "sensor_msgs/msg/CameraInfo",
        TOPICS["depth"]: "sensor_msgs/msg/Image",
        TOPICS["instances"]: "sensor_msgs/msg/Image",
        TOPICS["pose"]: "geometry_msgs/msg/PoseStamped",
        TOPICS["meta"]: "std_msgs/msg/String",
    }
    assert all(len(v) == 5 for v in msgs.values())
    stamps = [t for t, _ in msgs[TOPICS["image"]]]
    assert np.all(np.diff(stamps) == 50_000_000)
    for k, fr in enumerate(frames):
        t, img = msgs[TOPICS["image"]][k]
        assert img.header.stamp.sec * 10**9 + img.header.stamp.nanosec == t
        assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 48, 64, 64 * 3)
        assert img.header.frame_id == "camera_optical_frame"
        np.testing.assert_array_equal(img.data.reshape(48, 64, 3), fr.rgb)
        _, dep = msgs[TOPICS["depth"]][k]
        assert (dep.encoding, dep.is_bigendian, dep.step) == ("32FC1", 0, 64 * 4)
        np.testing.assert_array_equal(dep.data.view("<f4").reshape(48, 64), fr.depth)
        _, ins = msgs[TOPICS["instances"]][k]
        assert ins.encoding == "16UC1"
        np.testing.assert_array_equal(ins.data.view("<u2").reshape(48, 64), fr.instances)
        _, ci = msgs[TOPICS["camera_info"]][k]
        np.testing.assert_array_equal(ci.k.reshape(3, 3), fr.K)
        assert (ci.width, ci.height) == (64, 48)
        _, ps = msgs[TOPICS["pose"]][k]
        q = ps.pose.orientation
        R = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
        np.testing.assert_allclose(R, fr.T_world_cam[:3, :3], atol=1e-9)
        p = ps.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], fr.T_world_cam[:3, 3])
        assert ps.header.frame_id == "world"
        _, meta = msgs[TOPICS["meta"]][k]
        assert json.loads(meta.data)["instance_classes"] == fr.instance_classes.tolist()
    with pytest.raises(FileExistsError):
        write_bag(frames, bag)


def test_bag_compressed_and_16uc1(frames, tmp_path):
    bag = write_bag(frames, tmp_path / "cbag", compressed=True, depth_encoding="16UC1")
    types, msgs = _read_bag(bag)
    assert types[TOPICS["image_compressed"]] == "sensor_msgs/msg/CompressedImage"
    assert TOPICS["image"] not in types
    for k, fr in enumerate(frames):
        _, m = msgs[TOPICS["image_compressed"]][k]
        assert m.format == "jpeg"
        rgb = cv2.cvtColor(cv2.imdecode(m.data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert rgb.shape == fr.rgb.shape
        mse = np.mean((rgb.astype(float) - fr.rgb) ** 2)
        assert 10 * np.log10(255**2 / mse) > 20  # lossy, but the same picture (tiny, busy images)
        _, d = msgs[TOPICS["depth"]][k]
        mm = d.data.view("<u2").reshape(48, 64)
        assert d.encoding == "16UC1"
        assert np.abs(mm / 1000.0 - fr.depth).max() <= 0.0005 + 1e-6


def test_folder_roundtrip(frames, tmp_path):
    out = write_folder(frames, tmp_path / "folder")
    back = list(read_folder(out))
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.instances, b.instances)
        assert np.abs(a.depth - b.depth).max() <= 0.0005 + 1e-6
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)
        np.testing.assert_array_equal(a.instance_classes, b.instance_classes)


def test_video_roundtrip(frames, tmp_path):
    out = write_video(frames, tmp_path / "v.mp4")
    cap = cv2.VideoCapture(str(out))
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        assert img.shape == (48, 64, 3)
        n += 1
    cap.release()
    assert n == len(frames)
    with pytest.raises(ValueError, match=r"\.mp4 or \.avi"):
        write_video(frames, tmp_path / "v.mkv")


def test_sample_bag_is_small_deterministic_and_hash_checked(tmp_path):
    from rosbags.rosbag2 import Reader

    from dinov3_ros.synthetic.sample import SAMPLE_PARAMS, ensure_sample_bag, sample_ok

    p1 = ensure_sample_bag(tmp_path / "a" / "sample_bag")
    size = sum(f.stat().st_size for f in p1.iterdir())
    assert size <= 5 * 2**20, size
    with Reader(p1) as r:
        counts = {c.topic: c.msgcount for c in r.connections}
    assert counts[TOPICS["image_compressed"]] == SAMPLE_PARAMS["frames"] == 48
    mcap = next(p1.glob("*.mcap"))
    digest = mcap.read_bytes()
    p2 = ensure_sample_bag(tmp_path / "b" / "sample_bag")
    assert next(p2.glob("*.mcap")).read_bytes() == digest, "sample bag must be deterministic"
    # corruption is detected and repaired
    data = bytearray(digest)
    data[len(data) // 2] ^= 0xFF
    mcap.write_bytes(bytes(data))
    assert not sample_ok(p1)
    p1b = ensure_sample_bag(p1)
    assert sample_ok(p1b) and next(p1b.glob("*.mcap")).read_bytes() == digest


def test_synth_cli_folder(tmp_path):
    from dinov3_ros.cli import main

    out = tmp_path / "f"
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--format",
                "folder",
                "--frames",
                "3",
                "--size",
                "48x32",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["frames"]) == 3
    assert cv2.imread(str(out / "rgb" / "000000.png")).shape == (32, 48, 3)
    assert main(["synth", "--out", str(out), "--format", "folder", "--frames", "3"]) == 1  # exists
