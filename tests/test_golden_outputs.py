"""Golden outputs: the bag tool and the node's worker send exactly the recorded bytes for fixed frames.

``tests/data/golden_outputs-<cpu>.json`` holds the SHA-256 of every output message (and of the whole output
MCAP file) that ``dinov3-ros process`` and the node's processing path produced for a small fixed input
(two cameras: rgb8 with camera_info, PNG without; every output; the seeded ``random:vits16`` at 64x96 letterboxing
48x64 frames; CPU, one torch thread), one file per CPU kernel family (float32 results differ in the last
bits between Intel and AMD cores). Refactors must keep them. Regenerate only for an intended change
of the outputs: ``PYTHONPATH=$PWD python tests/test_golden_outputs.py --write``. Last regenerated when
``depth/image`` (the new name of ``depth``) and the outputs beside the original ones were added (markers,
odometry, organized cloud, compressed images, feature-grid camera_info): every earlier message kept its
bytes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore


def _platform() -> str:
    """The CPU kernel family the bytes depend on: vendor and torch's vectorisation level (float32 GEMMs
    and reductions take different code paths on Intel and AMD cores of the same instruction set)."""
    vendor = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{vendor}-{torch.backends.cpu.get_cpu_capability()}"


GOLDEN = Path(__file__).resolve().parent / "data" / f"golden_outputs-{_platform()}.json"
TS = get_typestore(Stores.LATEST)
W, H = 64, 48
RES = (64, 96)
N = 4
BASE_T = 1_700_000_000_000_000_000
K = [50.0, 0.0, 31.5, 0.0, 52.0, 23.5, 0.0, 0.0, 1.0]
OUTPUTS = ("features", "features_pca", "depth", "points", "matches", "objects", "debug")
WEIGHTS = "random:vits16"  # a fixed seeded draw: independent of the shipped model
CAMS = {"cam": "/cam/image_raw", "cam2": "/cam2/image_raw/compressed"}


def _sha(data: Any) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()[:24]


def frame(i: int, cam: int = 0, bump: int = 0) -> np.ndarray:
    """A textured frame that moves a little from one index to the next (matches and PCA have structure)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r = 127 + 100 * np.sin((xx + 3 * i) / 6.0 + cam)
    g = 127 + 100 * np.cos((yy - 2 * i) / 5.0)
    b = ((xx // 8 + yy // 8 + i) % 2) * 200 + 20
    img = np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)
    img[12:30, 20:44] = (240, 40 + 10 * cam, 30)  # an object for TokenCut
    img[0, 0, 0] = (int(img[0, 0, 0]) + bump) % 256
    return img


def _header(t: int, frame_id: str) -> Any:
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame_id)


def _rgb_image(i: int, t: int, bump: int) -> Any:
    """Camera 1's rgb8 frame ``i`` at stamp ``t``, as the bag records it and the node receives it."""
    return TS.types["sensor_msgs/msg/Image"](
        header=_header(t, "cam_optical"),
        height=H,
        width=W,
        encoding="rgb8",
        is_bigendian=0,
        step=W * 3,
        data=frame(i, 0, bump).ravel(),
    )


def _camera_info(t: int) -> Any:
    CI, ROI = TS.types["sensor_msgs/msg/CameraInfo"], TS.types["sensor_msgs/msg/RegionOfInterest"]
    return CI(
        header=_header(t, "cam_optical"),
        height=H,
        width=W,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.array(K),
        r=np.eye(3).ravel(),
        p=np.zeros(12),
        binning_x=0,
        binning_y=0,
        roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def stamps(i: int) -> tuple[int, int]:
    """Header stamps of frame ``i`` of cam and cam2."""
    t = BASE_T + i * 100_000_000
    return t, t + 5


def make_bag(path: Path, bump: int = 0) -> Path:
    """``/cam/image_raw`` (rgb8) + ``/cam/camera_info`` and ``/cam2/image_raw/compressed`` (PNG)."""
    CImg = TS.types["sensor_msgs/msg/CompressedImage"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ci = w.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        im = w.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        cc = w.add_connection("/cam2/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=TS)
        for i in range(N):
            t, t2 = stamps(i)
            w.write(ci, t + 10, TS.serialize_cdr(_camera_info(t), "sensor_msgs/msg/CameraInfo"))
            img = _rgb_image(i, t, bump)
            w.write(im, t + 20, TS.serialize_cdr(img, "sensor_msgs/msg/Image"))
            _ok, png = cv2.imencode(".png", cv2.cvtColor(frame(i, 1), cv2.COLOR_RGB2BGR))
            msg = CImg(header=_header(t2, "cam2_optical"), format="png", data=png.ravel())
            w.write(cc, t + 30, TS.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
    return path


# ------------------------------------------------------------------------------------------ offline


#: every run refines matches by the feature similarities only and keeps object masks as patch blocks:
#: the recorded bytes then depend on the network, the matcher and TokenCut alone (the image refinements
#: have their own tests in test_heads_subpixel.py, test_mask_refine.py and test_pipeline_core.py), so
#: one file per CPU family stays valid across changes of those refinements
BASE = ("match_refine=features", "mask_refine=none")

#: settings of the second offline run: the non-default layouts
VARIANT = (
    "depth_resolution=network",
    "features_k=3",
    "points_color=none",
    "mask_encoding=mono16",
    "max_objects=2",
)


def offline_records(tmp: Path, bump: int = 0, settings: tuple[str, ...] = ()) -> dict[str, Any]:
    """``dinov3-ros process`` over :func:`make_bag`: every output message (topic, log time, hash) in
    stored order, and the hash of the output MCAP file."""
    from dinov3_ros.cli import main as cli_main

    src = make_bag(tmp / "in", bump)
    out = tmp / "out"
    argv = ["process", str(src), "--out", str(out), "--outputs", ",".join(OUTPUTS), "--batch-size", "2"]
    for kv in BASE + tuple(settings):
        argv += ["--set", kv]
    argv += ["--weights", WEIGHTS, "--resolution", f"{RES[0]}x{RES[1]}", "--device", "cpu", "--no-progress"]
    assert cli_main(argv) == 0
    with Reader(out) as r:
        msgs = [[c.topic, t, _sha(raw)] for c, t, raw in r.messages()]
    return {"messages": msgs, "mcap": _sha((out / "out.mcap").read_bytes())}


# ------------------------------------------------------------------------------------------ node


def node_records(bump: int = 0) -> list[list[Any]]:
    """The node's processing path (serialized messages decoded, pipeline, serialized outputs) with both
    cameras batched together as the node batches them: ``[camera, stamp, topic suffix, hash]``, sorted."""
    from types import SimpleNamespace

    from dinov3_ros.msgs.cdr import stamp_of
    from dinov3_ros.pipeline import PipelineConfig
    from dinov3_ros.pipeline.model import load_model
    from dinov3_ros.pipeline.outputs import topic_types
    from dinov3_ros.pipeline.pipeline import Pipeline
    from dinov3_ros.ros.diagnostics import NodeStats
    from dinov3_ros.ros.mailbox import Mailbox
    from dinov3_ros.ros.worker import FrameWorker, decode_frame

    topics = set(topic_types())
    config = PipelineConfig(resolution=RES, match_refine="features", mask_refine="none")
    out: list[list[Any]] = []
    lock = threading.Lock()

    class Host:
        settings = SimpleNamespace(batch_window_ms=0.0, max_age_ms=0.0, pipeline=config)
        stats = NodeStats()

        def __init__(self) -> None:
            self.log = self

        def error(self, text: str) -> None:
            raise AssertionError(text)

        def wanted_topics(self, cam: str) -> set[str]:
            return topics

        def make_frame(self, cam: str, item: Any) -> Any:
            msgtype, raw, infos = item
            return decode_frame(cam, msgtype, raw, infos, self.stats)

        def publish(self, cam: str, msgs: dict[str, bytes]) -> None:
            with lock:
                out.extend([cam, stamp_of(m), t, _sha(m)] for t, m in msgs.items())

    model = load_model(WEIGHTS, "torch", "cpu", "fp32", RES)
    host = Host()
    box = Mailbox(list(CAMS))
    worker = FrameWorker(host, Pipeline.from_model(model, config, device="cpu"), box)
    worker.start()
    try:
        for k, step in enumerate(_node_messages(bump)):
            for cam, item in step.items():
                box.put(cam, item)
            deadline = time.monotonic() + 120
            while host.stats.counts["frames_processed"] < 2 * (k + 1) and time.monotonic() < deadline:
                time.sleep(0.005)
            assert host.stats.counts["frames_processed"] == 2 * (k + 1), "timed out"
    finally:
        worker.stop()
    return sorted(out)


def _node_messages(bump: int) -> list[dict[str, tuple[str, bytes, list[bytes]]]]:
    """Per step: camera -> (message type, serialized image, serialized camera_infos received so far),
    the same messages :func:`make_bag` records."""
    steps = []
    infos: list[bytes] = []
    CImg = TS.types["sensor_msgs/msg/CompressedImage"]
    for i in range(N):
        t, t2 = stamps(i)
        infos.append(bytes(TS.serialize_cdr(_camera_info(t), "sensor_msgs/msg/CameraInfo")))
        img = _rgb_image(i, t, bump)
        _ok, png = cv2.imencode(".png", cv2.cvtColor(frame(i, 1), cv2.COLOR_RGB2BGR))
        cmsg = CImg(header=_header(t2, "cam2_optical"), format="png", data=png.ravel())
        steps.append(
            {
                "cam": (
                    "sensor_msgs/msg/Image",
                    bytes(TS.serialize_cdr(img, "sensor_msgs/msg/Image")),
                    list(infos),
                ),
                "cam2": (
                    "sensor_msgs/msg/CompressedImage",
                    bytes(TS.serialize_cdr(cmsg, "sensor_msgs/msg/CompressedImage")),
                    [],
                ),
            }
        )
    return steps


def _goldens() -> list[dict[str, Any]]:
    """This CPU family's recorded outputs; for a family without a file, every recorded family's (float32
    kernels of different families often give the same bits: the test passes when one family matches)."""
    files = [GOLDEN] if GOLDEN.exists() else sorted(GOLDEN.parent.glob("golden_outputs-*.json"))
    if not files:
        pytest.fail(f"no golden outputs in {GOLDEN.parent}")
    return [json.loads(f.read_text()) for f in files]


def _n_diff(got: list, want: list) -> int:
    """Messages in which two recordings differ (a missing or extra message counts once)."""
    return sum(g != w for g, w in zip(got, want)) + abs(len(got) - len(want))


def _hint() -> str:
    if GOLDEN.exists():
        return ""
    return (
        f" (no golden file for this CPU, {_platform()}; none of the recorded families matches: on a checkout "
        f"whose outputs are known good, write {GOLDEN.name} with "
        "`PYTHONPATH=$PWD python tests/test_golden_outputs.py --write`)"
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the recorded bytes are one-thread bytes


def _write() -> None:
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as td:
        data = {
            "torch": torch.__version__,
            "offline": offline_records(Path(td) / "a"),
            "variant": offline_records(Path(td) / "b", settings=VARIANT),
            "node": node_records(),
        }
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "{",
        f' "torch": {json.dumps(data["torch"])},',
        ' "offline": {"mcap": ' + json.dumps(data["offline"]["mcap"]) + ', "messages": [',
        ",\n".join("  " + json.dumps(m) for m in data["offline"]["messages"]),
        " ]},",
        ' "variant": {"mcap": ' + json.dumps(data["variant"]["mcap"]) + ', "messages": [',
        ",\n".join("  " + json.dumps(m) for m in data["variant"]["messages"]),
        " ]},",
        ' "node": [',
        ",\n".join("  " + json.dumps(m) for m in data["node"]),
        " ]",
        "}",
    ]
    GOLDEN.write_text("\n".join(lines) + "\n")
    print(f"wrote {GOLDEN}")


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("case", ["offline", "variant"])
def test_offline_outputs_match_golden(tmp_path: Path, case: str) -> None:
    got = offline_records(tmp_path, settings=VARIANT if case == "variant" else ())
    want = min((g[case] for g in _goldens()), key=lambda w: _n_diff(got["messages"], w["messages"]))
    assert len(got["messages"]) == len(want["messages"]) > 0
    bad = [(g, w) for g, w in zip(got["messages"], want["messages"]) if g != w]
    assert not bad, f"{len(bad)} messages differ from the golden outputs{_hint()}, first: {bad[0]}"
    assert got["mcap"] == want["mcap"], "same messages but a different MCAP file"


def test_node_outputs_match_golden() -> None:
    got = node_records()
    want = min(([list(x) for x in g["node"]] for g in _goldens()), key=lambda w: _n_diff(got, w))
    from dinov3_ros.pipeline.outputs import topic_types

    assert len(got) == len(want) == 2 * N * len(topic_types())
    bad = [(g, w) for g, w in zip(got, want) if g != w]
    assert not bad, f"{len(bad)} messages differ from the golden outputs{_hint()}, first: {bad[0]}"


def test_node_and_bag_tool_send_the_same_bytes(tmp_path: Path) -> None:
    """Same frames, same batches: the node and the bag tool produce the same message bytes."""
    offline = {(topic, h) for topic, _t, h in offline_records(tmp_path)["messages"]}
    prefix = {"cam": "/dinov3/cam/", "cam2": "/dinov3/cam2/"}
    from dinov3_ros.pipeline.outputs import topics_of

    offline_topics = set(topics_of(OUTPUTS))  # the bag tool ran these outputs; the node all of them
    node = {(prefix[cam] + suffix, h) for cam, _s, suffix, h in node_records() if suffix in offline_topics}
    assert node == offline


def test_a_one_pixel_change_is_detected(tmp_path: Path) -> None:
    """Negative control: a changed input pixel (as a decoder bug would make) changes the hashes, against
    every golden file the other tests may accept."""
    goldens = _goldens()
    node = node_records(bump=1)
    assert all(node != [list(x) for x in g["node"]] for g in goldens)
    offline = offline_records(tmp_path, bump=1)["messages"]
    assert all(offline != g["offline"]["messages"] for g in goldens)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: PYTHONPATH=$PWD python tests/test_golden_outputs.py --write")
    _write()
