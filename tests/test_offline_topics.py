"""``dinov3-ros process`` input selection, output namespaces, ``--outputs all`` and preview failures.

A bag holds what robots record: a colour camera (raw and its ``/compressed`` transport), a mono8
camera, a 32FC1 depth image, a 16UC1 instance mask, a ``compressedDepth`` topic and an empty image
topic. By default only the cameras are processed, each into its own namespace.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore

from dinov3_ros.cli import main as cli_main
from dinov3_ros.offline.emit import camera_namespaces
from dinov3_ros.offline.sources import BagSource, InputError

TS = get_typestore(Stores.ROS2_HUMBLE)
W, H, N = 64, 48, 3
BASE_T = 1_700_000_000_000_000_000


def _hdr(t: int, frame: str):
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame)


def _image(t: int, enc: str, arr: np.ndarray) -> bytes:
    Image = TS.types["sensor_msgs/msg/Image"]
    a = np.ascontiguousarray(arr)
    msg = Image(
        header=_hdr(t, "cam"),
        height=a.shape[0],
        width=a.shape[1],
        encoding=enc,
        is_bigendian=0,
        step=a.strides[0],
        data=a.view(np.uint8).ravel(),
    )
    return TS.serialize_cdr(msg, "sensor_msgs/msg/Image")


def _compressed(t: int, fmt: str, rgb: np.ndarray) -> bytes:
    CImg = TS.types["sensor_msgs/msg/CompressedImage"]
    _ok, buf = cv2.imencode(".png", rgb)
    return TS.serialize_cdr(
        CImg(header=_hdr(t, "cam"), format=fmt, data=buf.ravel()), "sensor_msgs/msg/CompressedImage"
    )


def make_robot_bag(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with Writer(path, version=9) as w:
        add = lambda topic, typ: w.add_connection(topic, f"sensor_msgs/msg/{typ}", typestore=TS)  # noqa: E731
        c_raw, c_comp = (
            add("/camera/color/image_raw", "Image"),
            add("/camera/color/image_raw/compressed", "CompressedImage"),
        )
        c_mono = add("/ir/image_raw", "Image")
        c_depth = add("/camera/depth/image_rect_raw", "Image")
        c_mask = add("/camera/instances", "Image")
        c_cd = add("/camera/depth/image_rect_raw/compressedDepth", "CompressedImage")
        add("/camera/empty/image_raw", "Image")
        for i in range(N):
            t = BASE_T + i * 100_000_000
            rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            w.write(c_raw, t + 1, _image(t, "rgb8", rgb))
            w.write(c_comp, t + 2, _compressed(t, "png", rgb))
            w.write(c_mono, t + 3, _image(t, "mono8", rgb[..., 0]))
            w.write(c_depth, t + 4, _image(t, "32FC1", rng.random((H, W), dtype=np.float32)))
            w.write(c_mask, t + 5, _image(t, "16UC1", rng.integers(0, 5, (H, W)).astype(np.uint16)))
            w.write(c_cd, t + 6, _compressed(t, "16UC1; compressedDepth png", rgb))
    return path


def run(*argv: str) -> int:
    args = ["process", *argv, "--weights", "random:vitt16", "--resolution", "32x32", "--no-progress"]
    return cli_main([*args, "--device", "cpu", "--batch-size", "2"])


def _topics(bag: Path) -> dict[str, int]:
    with Reader(bag) as r:
        out: dict[str, int] = {}
        for c in r.connections:
            out[c.topic] = out.get(c.topic, 0) + c.msgcount
        return out


def _count(bag: Path) -> int:
    return sum(_topics(bag).values())


def test_default_selection_takes_only_cameras(tmp_path: Path):
    src = BagSource(make_robot_bag(tmp_path / "in"))
    try:
        assert src.image_topics == ["/camera/color/image_raw", "/ir/image_raw"]
        skipped = src.skipped_topics
        assert "32FC1" in skipped["/camera/depth/image_rect_raw"]
        assert "16UC1" in skipped["/camera/instances"]
        assert "compressed depth" in skipped["/camera/depth/image_rect_raw/compressedDepth"]
        assert "same camera as /camera/color/image_raw" in skipped["/camera/color/image_raw/compressed"]
        assert skipped["/camera/empty/image_raw"] == "no messages"
    finally:
        src.close()


def test_process_writes_one_namespace_per_camera(tmp_path: Path, capsys: pytest.CaptureFixture):
    bag = make_robot_bag(tmp_path / "in")
    out = tmp_path / "out"
    assert run(str(bag), "--out", str(out), "--preview", str(tmp_path / "p.mp4")) == 0
    topics = _topics(out)
    assert set(topics.values()) == {N}, topics  # one message per input frame on every topic
    assert {t.rsplit("/", 2)[0] for t in topics if t.endswith("/features/pca")} == {
        "/dinov3/camera/color",
        "/dinov3/ir",
    }
    err = capsys.readouterr().err
    assert "0 undecodable" in err and "/camera/instances (16UC1" in err
    assert "preview:" in err and (tmp_path / "p.mp4").is_file()


def test_explicit_topics_that_share_a_namespace_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    bag = make_robot_bag(tmp_path / "in")
    topics = ["/camera/color/image_raw", "/camera/color/image_raw/compressed"]
    assert run(str(bag), "--out", str(tmp_path / "out"), "--topics", *topics) == 1
    err = capsys.readouterr().err
    assert "/camera/color/image_raw and /camera/color/image_raw/compressed" in err
    assert not (tmp_path / "out").exists()


def test_namespaces_of_topics_with_one_camera_base_are_distinct():
    ns = camera_namespaces(
        "/dinov3", ["/camera/image_raw/compressed", "/camera/instances", "/cam2/image_raw"]
    )
    assert ns == {
        "/camera/image_raw/compressed": "/dinov3/camera/image_raw",
        "/camera/instances": "/dinov3/camera/instances",
        "/cam2/image_raw": "/dinov3/cam2",
    }
    assert camera_namespaces("/dinov3", ["/a/image_raw"]) == {"/a/image_raw": "/dinov3"}
    with pytest.raises(InputError, match="/c/image_raw and /c/image_raw/compressed"):
        camera_namespaces("/dinov3", ["/c/image_raw", "/c/image_raw/compressed"])


def test_outputs_all(tmp_path: Path):
    from dinov3_ros.pipeline.outputs import REGISTRY

    bag = make_robot_bag(tmp_path / "in")
    out = tmp_path / "out"
    assert run(str(bag), "--out", str(out), "--outputs", "all", "--topics", "/camera/color/image_raw") == 0
    topics = set(_topics(out))
    expected = {f"/dinov3/{t.suffix}" for o in REGISTRY.values() for t in o.topics if not t.needs_intrinsics}
    assert expected <= topics, sorted(expected - topics)


def test_a_preview_that_cannot_be_written_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    bag = make_robot_bag(tmp_path / "in")
    blocker = tmp_path / "p.mp4"
    blocker.mkdir()  # a directory where the preview file should go
    assert run(str(bag), "--out", str(tmp_path / "out"), "--preview", str(blocker)) == 1
    err = capsys.readouterr().err
    # refused before the model loads: one line naming the path, nothing written
    assert err.strip().splitlines() == [
        f"dinov3-ros process: error: output {blocker} is a directory; give a file name"
    ]
    assert not (tmp_path / "out").exists()


def test_preview_codec_falls_back(tmp_path: Path):
    from dinov3_ros.offline.preview import CODECS, PreviewVideo, video_codec

    assert video_codec()[1] in {name for _, name in CODECS}
    pv = PreviewVideo(tmp_path / "a.mp4", codecs=(("zzzz", "none"), ("mp4v", "MPEG-4 Part 2")))
    assert (pv.fourcc, pv.codec) == ("mp4v", "MPEG-4 Part 2")
    nothing = PreviewVideo(tmp_path / "b.mp4", codecs=(("zzzz", "none"),))
    with pytest.raises(OSError, match="cannot encode"):
        nothing.add({}, np.zeros((16, 16, 3), np.uint8))


def test_depth_tile_has_a_legend():
    from dinov3_ros.core.frames import DepthImage
    from dinov3_ros.pipeline.outputs.depth import Depth, depth_range

    d = np.tile(np.linspace(1.0, 5.0, 64, dtype=np.float32), (48, 1))
    img, _ = Depth().tile(DepthImage(d, None), np.zeros((48, 64, 3), np.uint8), (128, 96))
    lo, hi = depth_range(d)
    assert lo < 1.2 and hi > 4.8
    bar = img[-8:, 20:100]
    assert bar.std(axis=1).mean() > 20  # a colour ramp along the bottom, not the image


def test_a_preview_path_that_names_the_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    from dinov3_ros.synthetic.generator import SceneGenerator
    from dinov3_ros.synthetic.writers import write_video

    gen = SceneGenerator(seed=1, width=64, height=48, frames_per_scene=2)
    clip = write_video(iter(gen.sequence(0)), tmp_path / "clip.mp4")
    before = clip.read_bytes()
    assert run(str(clip), "--out", str(tmp_path / "out"), "--preview", str(clip)) == 1
    err = capsys.readouterr().err
    assert f"--preview {clip} is an input" in err
    assert clip.read_bytes() == before and not (tmp_path / "out").exists()


def test_summary_is_for_users_and_stage_times_need_verbose(tmp_path: Path, capsys: pytest.CaptureFixture):
    bag = make_robot_bag(tmp_path / "in")
    topic = ["--topics", "/ir/image_raw"]
    assert run(str(bag), "--out", str(tmp_path / "a"), *topic) == 0
    err = capsys.readouterr().err
    assert f"{N} frames in " in err and f"output: {tmp_path / 'a'} ({_count(tmp_path / 'a')} messages)" in err
    assert "processed: /ir/image_raw" in err and "ms/frame" not in err
    assert run(str(bag), "--out", str(tmp_path / "b"), *topic, "--verbose") == 0
    assert "ms/frame of thread time per stage" in capsys.readouterr().err
