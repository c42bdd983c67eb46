"""The bag tool writes every output, the new layouts included, and a plain rosbags reader (with the
definitions the bag carries) reads them back as documented in docs/MESSAGES.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_golden_outputs as g
from rosbags.highlevel import AnyReader

from dinov3_ros.cli import main as cli_main
from dinov3_ros.msgs import decode as D
from dinov3_ros.pipeline.outputs import OUTPUTS, topic_types

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_offline_bag_holds_every_output_in_its_documented_layout(tmp_path: Path) -> None:
    src = g.make_bag(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["process", str(src), "--out", str(out), "--outputs", ",".join(OUTPUTS), "--weights", "random:vitt16",
            "--resolution", "64x96", "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    msgs: dict[str, list] = {}
    with AnyReader([out]) as r:
        for c, _t, raw in r.messages():
            msgs.setdefault(c.topic, []).append((c.msgtype, r.deserialize(raw, c.msgtype)))
    for cam in ("cam", "cam2"):
        have = {
            t.split(f"/dinov3/{cam}/", 1)[1]: v for t, v in msgs.items() if t.startswith(f"/dinov3/{cam}/")
        }
        assert set(have) == set(topic_types()), sorted(set(topic_types()) ^ set(have))
        assert all(len(v) == g.N for v in have.values())
        for (_, pc), (_, d) in zip(have["depth/points"], have["depth/image"]):
            assert (pc.height, pc.width) == (d.height, d.width) == (g.H, g.W)  # organized like the depth
            xyz, _rgb = D.decode_points(pc)
            z = D.image_to_array(d).reshape(-1)
            ok = np.isfinite(z)
            assert np.allclose(xyz[ok, 2], z[ok])
        for (_, det), (_, box) in zip(have["objects/detections"], have["objects/boxes"]):
            b = D.decode_boxes(box)
            assert [x.id for x in det.detections] == [str(i) for i in b.ids]
            for x, (x0, _y0, x1, _y1) in zip(det.detections, b.boxes):
                assert x.bbox.size_x == pytest.approx(x1 - x0) and x.bbox.center.position.x == pytest.approx(
                    (x0 + x1) / 2 - 0.5
                )
        for (_, mk), (_, box) in zip(have["objects/markers"], have["objects/boxes"]):
            assert mk.type == 2 and len(mk.points) == 8 * len(D.decode_boxes(box).ids)
        for (_, mk), (_, m) in zip(have["matches/markers"], have["matches"]):
            assert len(mk.points) == 2 * len(D.decode_matches(m))
        odo = [m for _, m in have["odometry"]]
        assert odo[0].header.frame_id == f"{odo[0].child_frame_id}_odom"
        assert odo[0].pose.pose.orientation.w == pytest.approx(1.0)  # the first frame is the origin
        # the deprecated alias carries the same image as depth/image
        assert all(
            bytes(a.data) == bytes(b.data) for (_, a), (_, b) in zip(have["depth"], have["depth/image"])
        )
    # cam has a camera_info: the feature grid is calibrated; cam2 has none: K all zero (uncalibrated)
    fi = msgs["/dinov3/cam/features/camera_info"][0][1]
    assert fi.k[0] > 0 and (fi.width, fi.height) == (96 // 16, 64 // 16)
    assert fi.roi.width > 0 and fi.roi.x_offset + fi.roi.width <= fi.width
    assert not any(msgs["/dinov3/cam2/features/camera_info"][0][1].k)
