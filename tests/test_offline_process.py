"""``dinov3-ros process``: real bags/videos/folders in, real rosbag2 out, compared with the pipeline run
directly on the same frames (tiny random-init ViT-T at 48x64, CPU)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
rosbags = pytest.importorskip("rosbags")

from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from dinov3_ros.cli import main as cli_main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TS = get_typestore(Stores.LATEST)
RES = (48, 64)
W, H = 64, 48
WEIGHTS = "random:vitt16"
BASE_T = 1_700_000_000_000_000_000
OUTS = "features_pca,depth,matches,objects"
K = np.array([50.0, 0, 31.5, 0, 50.0, 23.5, 0, 0, 1])


# ------------------------------------------------------------------------------------------ inputs


def _frame(i: int, cam: int = 0) -> np.ndarray:
    """A textured frame that changes smoothly over time (so matches/PCA have structure)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r = 127 + 100 * np.sin((xx + 3 * i) / 6.0 + cam)
    g = 127 + 100 * np.cos((yy - 2 * i) / 5.0)
    b = ((xx // 8 + yy // 8 + i) % 2) * 200 + 20
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def _hdr(t: int, frame_id: str):
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame_id)


def _caminfo(t: int):
    CI, ROI = TS.types["sensor_msgs/msg/CameraInfo"], TS.types["sensor_msgs/msg/RegionOfInterest"]
    return CI(
        header=_hdr(t, "cam_optical"),
        height=H,
        width=W,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=K.copy(),
        r=np.eye(3).ravel(),
        p=np.zeros(12),
        binning_x=0,
        binning_y=0,
        roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def make_bag(path: Path, storage: str = "mcap", n: int = 8, corrupt_at: int | None = None) -> Path:
    """Bag with /cam/image_raw (rgb8) + /cam/camera_info, /cam2/image_raw/compressed (jpeg), /imu-ish chatter."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    Image, CImg = TS.types["sensor_msgs/msg/Image"], TS.types["sensor_msgs/msg/CompressedImage"]
    Str = TS.types["std_msgs/msg/String"]
    with Writer(path, version=9, storage_plugin=plugin) as w:
        ci = w.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        im = w.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        cc = w.add_connection("/cam2/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=TS)
        st = w.add_connection("/status", "std_msgs/msg/String", typestore=TS)
        for i in range(n):
            t = BASE_T + i * 100_000_000
            w.write(ci, t + 10, TS.serialize_cdr(_caminfo(t), "sensor_msgs/msg/CameraInfo"))
            img = _frame(i)
            raw = TS.serialize_cdr(
                Image(
                    header=_hdr(t, "cam_optical"),
                    height=H,
                    width=W,
                    encoding="rgb8",
                    is_bigendian=0,
                    step=W * 3,
                    data=img.ravel(),
                ),
                "sensor_msgs/msg/Image",
            )
            if corrupt_at == i:
                raw = b"\x00\x01\x00\x00garbage"
            w.write(im, t + 20, raw)
            _ok, buf = cv2.imencode(".png", cv2.cvtColor(_frame(i, 1), cv2.COLOR_RGB2BGR))
            w.write(
                cc,
                t + 30,
                TS.serialize_cdr(
                    CImg(header=_hdr(t + 5, "cam2_optical"), format="png", data=buf.ravel()),
                    "sensor_msgs/msg/CompressedImage",
                ),
            )
            w.write(st, t + 40, TS.serialize_cdr(Str(data=f"tick {i}"), "std_msgs/msg/String"))
    return path


def tree_hash(p: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run(*argv: str) -> int:
    return cli_main(
        [
            "process",
            *argv,
            "--weights",
            WEIGHTS,
            "--resolution",
            f"{RES[0]}x{RES[1]}",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )


def read_bag(path: Path) -> tuple[list[tuple[str, str, int, bytes]], dict[str, object], dict]:
    """Messages (topic, type, log time, raw) in stored order, connections by topic, metadata."""
    import yaml

    with Reader(path) as r:
        conns = {c.topic: c for c in r.connections}
        msgs = [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in r.messages()]
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return msgs, conns, meta


# ------------------------------------------------------------------------------------------ reference


def reference(
    frames: list[tuple[str, int, np.ndarray, int, str, object]],
    outputs: set[str],
    batch: int,
    prefix_of: dict[str, str],
) -> list[tuple[str, int, bytes]]:
    """Run the pipeline directly: consecutive frames in input order, ``batch`` at a time; build the
    messages as objects (``msgs.builders``) and serialize them with rosbags."""
    from msg_reference import reference_messages

    from dinov3_ros.core import Frame, PipelineConfig
    from dinov3_ros.msgs.provider import rosbags_types
    from dinov3_ros.pipeline.model import load_model
    from dinov3_ros.pipeline.outputs import topic_types
    from dinov3_ros.pipeline.pipeline import Pipeline

    model = load_model(WEIGHTS, "torch", "cpu", "fp32", RES)
    pipe = Pipeline.from_model(model, PipelineConfig(resolution=RES), device="cpu")
    tp = rosbags_types(TS)
    out = []
    for s in range(0, len(frames), batch):
        chunk = frames[s : s + batch]
        fos = pipe.process(
            [Frame(rgb, stamp, fid, ci, topic) for topic, _t, rgb, stamp, fid, ci in chunk], outputs
        )
        for (topic, t, *_), fo in zip(chunk, fos):
            for suffix, msg in reference_messages(tp, fo).items():
                mt = topic_types()[suffix]
                out.append((f"{prefix_of[topic]}/{suffix}", t, bytes(TS.serialize_cdr(msg, mt))))
    return out


def bag_frames(path: Path) -> list[tuple[str, int, np.ndarray, int, str, object]]:
    """Decode the test bag independently of the tool (numpy reshape / cv2.imdecode)."""
    from dinov3_ros.core import CameraIntrinsics

    frames = []
    ci = None
    with Reader(path) as r:
        for c, t, raw in r.messages():
            if c.topic == "/cam/camera_info":
                m = TS.deserialize_cdr(raw, c.msgtype)
                ci = CameraIntrinsics(np.asarray(m.k).reshape(3, 3), W, H, np.asarray(m.d), "plumb_bob")
            elif c.topic == "/cam/image_raw":
                try:
                    m = TS.deserialize_cdr(raw, c.msgtype)
                except Exception:  # noqa: BLE001 - the deliberately corrupt message
                    continue
                rgb = np.asarray(m.data).reshape(H, W, 3).copy()
                frames.append(
                    (
                        c.topic,
                        t,
                        rgb,
                        m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                        m.header.frame_id,
                        ci,
                    )
                )
            elif c.topic == "/cam2/image_raw/compressed":
                m = TS.deserialize_cdr(raw, c.msgtype)
                rgb = cv2.cvtColor(cv2.imdecode(np.asarray(m.data), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                frames.append(
                    (
                        c.topic,
                        t,
                        rgb,
                        m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                        m.header.frame_id,
                        None,
                    )
                )
    return frames


PREFIX2 = {"/cam/image_raw": "/dinov3/cam", "/cam2/image_raw/compressed": "/dinov3/cam2"}


def output_only(msgs: list, prefix: str = "/dinov3") -> list[tuple[str, int, bytes]]:
    return [(tp, t, raw) for tp, _mt, t, raw in msgs if tp.startswith(prefix + "/")]


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("in_storage,out_storage", [("mcap", "mcap"), ("sqlite3", "sqlite3")])
def test_bag_output_identical_to_direct_pipeline(tmp_path: Path, in_storage: str, out_storage: str) -> None:
    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", in_storage, n=6)
    before = tree_hash(src)
    out = tmp_path / "out"
    rc = run(
        str(src),
        "--out",
        str(out),
        "--outputs",
        OUTS,
        "--batch-size",
        "3",
        "--storage",
        out_storage,
        "--copy-input",
        "--checkpoint-every",
        "6",
    )
    assert rc == 0
    assert tree_hash(src) == before, "input bag was modified"
    assert not (tmp_path / "out.partial").exists()
    msgs, conns, meta = read_bag(out)
    assert meta["storage_identifier"] == out_storage
    assert meta["custom_data"]["dinov3_ros.complete"] == "true"
    # outputs: byte-identical to the pipeline + msgs builders run directly on independently decoded frames
    ref = reference(bag_frames(src), set(OUTS.split(",")), 3, PREFIX2)
    got = output_only(msgs)
    assert len(got) == len(ref) > 0
    assert sorted(got) == sorted(ref)
    # message order in the bag: per input frame, in input log-time order
    assert [t for _tp, t, _r in got] == sorted(t for _tp, t, _r in got)
    # every output carries the input log time and header stamp; message definitions embedded
    ts_in = {t for _tp, _mt, t, _r in msgs if _tp in ("/cam/image_raw", "/cam2/image_raw/compressed")}
    assert {t for _tp, t, _r in got} == ts_in
    depth = next(
        TS.deserialize_cdr(r, "sensor_msgs/msg/Image") for tp, mt, t, r in msgs if tp == "/dinov3/cam2/depth"
    )
    assert depth.header.frame_id == "cam2_optical" and depth.encoding == "32FC1"
    assert depth.header.stamp.sec * 10**9 + depth.header.stamp.nanosec == BASE_T + 5
    for tp in (
        "/dinov3/cam/features/pca",
        "/dinov3/cam/depth",
        "/dinov3/cam/depth/camera_info",
        "/dinov3/cam/matches",
        "/dinov3/cam/objects/mask",
        "/dinov3/cam/objects/boxes",
    ):
        assert tp in conns, tp
        assert conns[tp].msgdef.data and conns[tp].digest.startswith("RIHS01_")
    # --copy-input: same raw bytes, same log times, for every input topic
    with Reader(src) as r:
        inp = sorted((c.topic, t, bytes(raw)) for c, t, raw in r.messages())
    copied = sorted((tp, t, raw) for tp, _mt, t, raw in msgs if not tp.startswith("/dinov3/"))
    assert copied == inp


def test_video_and_folder_inputs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    frames = [_frame(i) for i in range(5)]
    vid = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    before = tree_hash(vid), tree_hash(folder)
    intr = ["--fx", "50", "--fy", "50", "--cx", "31.5", "--cy", "23.5"]
    assert (
        run(
            str(vid),
            "--out",
            str(tmp_path / "ov"),
            "--outputs",
            "features_pca,depth",
            "--batch-size",
            "2",
            *intr,
        )
        == 0
    )
    assert (
        run(
            str(folder),
            "--out",
            str(tmp_path / "of"),
            "--outputs",
            "features_pca,depth",
            "--batch-size",
            "2",
            "--fps",
            "10",
            *intr,
            "--copy-input",
        )
        == 0
    )
    assert (tree_hash(vid), tree_hash(folder)) == before
    from dinov3_ros.core import CameraIntrinsics

    ci = CameraIntrinsics(K.reshape(3, 3), W, H, np.zeros(0), "plumb_bob")
    cap = cv2.VideoCapture(str(vid))
    dec = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        dec.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    assert len(dec) == 5

    def refs(imgs: list[np.ndarray]) -> list:
        fr = [
            ("/camera/image_raw", i * 100_000_000, im, i * 100_000_000, "camera_optical_frame", ci)
            for i, im in enumerate(imgs)
        ]
        return reference(fr, {"features_pca", "depth"}, 2, {"/camera/image_raw": "/dinov3"})

    got_v = output_only(read_bag(tmp_path / "ov")[0])
    assert sorted(got_v) == sorted(refs(dec))
    msgs_f = read_bag(tmp_path / "of")[0]
    assert sorted(output_only(msgs_f)) == sorted(refs(frames))
    # --copy-input for a folder: the frames themselves as rgb8 images + camera_info
    imgs = [TS.deserialize_cdr(r, mt) for tp, mt, t, r in msgs_f if tp == "/camera/image_raw"]
    assert len(imgs) == 5 and np.array_equal(np.asarray(imgs[3].data).reshape(H, W, 3), frames[3])
    assert sum(tp == "/camera/camera_info" for tp, *_ in msgs_f) == 5


def test_refuses_existing_output_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_bag(tmp_path / "in", n=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run(str(src), "--out", str(out), "--outputs", "features_pca") == 1
    assert "exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "precious"
    assert run(str(src), "--out", str(out), "--outputs", "features_pca", "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "metadata.yaml").exists()
    # a stale partial run is refused too (needs --resume or --overwrite)
    (tmp_path / "out2.partial").mkdir()
    assert run(str(src), "--out", str(tmp_path / "out2"), "--outputs", "features_pca") == 1
    assert "--resume" in capsys.readouterr().err


def _cmd(*argv: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dinov3_ros.cli",
        "process",
        *argv,
        "--weights",
        WEIGHTS,
        "--resolution",
        f"{RES[0]}x{RES[1]}",
        "--no-progress",
        "--device",
        "cpu",
    ]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def _start_until_checkpoints(src: Path, out: Path, args: list[str], n: int) -> subprocess.Popen:
    """``dinov3-ros process`` started in a child process, returned once its journal holds ``n``
    checkpoints (still running, so the caller can kill or stop it)."""
    journal = out.with_name(out.name + ".partial") / "journal.jsonl"
    p = subprocess.Popen(
        _cmd(str(src), "--out", str(out), *args),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= n + 1:  # fingerprint + n
            break
        time.sleep(0.02)
    assert p.poll() is None, f"run ended before it could be stopped: {p.stderr.read().decode()[-2000:]}"
    return p


@pytest.mark.slow
def test_kill_and_resume_gives_identical_output(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", n=40)
    args = [
        "--outputs",
        "features_pca,depth,matches",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "4",
        "--copy-input",
    ]
    full = tmp_path / "ref" / "out"  # same name: the name is stored in the bag's metadata
    assert run(str(src), "--out", str(full), *args) == 0
    out = tmp_path / "out"
    p = _start_until_checkpoints(src, out, args, 3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists(), "a killed run must not leave a complete-looking output"
    assert (tmp_path / "out.partial").is_dir()
    # without --resume the partial run is refused; with it the run completes
    assert run(str(src), "--out", str(out), *args) == 1
    assert run(str(src), "--out", str(out), *args, "--resume") == 0
    assert not (tmp_path / "out.partial").exists()
    a, _, meta_a = read_bag(full)
    b, _, meta_b = read_bag(out)
    assert a == b
    assert meta_a["custom_data"] == meta_b["custom_data"]
    assert (full / "out.mcap").read_bytes() == (out / "out.mcap").read_bytes()


def test_resume_refuses_changed_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_bag(tmp_path / "in", n=2)
    from dinov3_ros.offline.bagout import JOURNAL

    part = tmp_path / "out.partial"
    part.mkdir()
    (part / JOURNAL).write_text(json.dumps({"fingerprint": {"outputs": ["depth"]}}) + "\n")
    assert run(str(src), "--out", str(tmp_path / "out"), "--outputs", "features_pca", "--resume") == 1
    assert "different inputs/settings" in capsys.readouterr().err


def test_truncated_mcap_processes_prefix_then_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", n=12)
    full = tmp_path / "full"
    assert run(str(src), "--out", str(full), "--outputs", "features_pca", "--batch-size", "2") == 0
    data = (src / "in.mcap").read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    before = tree_hash(cut)
    out = tmp_path / "o"
    rc = run(str(cut), "--out", str(out), "--outputs", "features_pca", "--batch-size", "2")
    err = capsys.readouterr().err
    assert rc == 3
    assert tree_hash(cut) == before
    assert "corrupt input" in err and str(cut) in err and "byte offset" in err and "topic /" in err
    assert not out.exists()
    partial = tmp_path / "o.partial" / "o"
    msgs, _, meta = read_bag(partial)
    assert meta["custom_data"]["dinov3_ros.complete"] == "false"
    assert "byte offset" in meta["custom_data"]["dinov3_ros.error"]
    got = output_only(msgs)
    ref = output_only(read_bag(full)[0])
    assert 0 < len(got) < len(ref)
    assert got == ref[: len(got)], "frames before the damage must be processed exactly as in a full run"


def test_corrupt_message_is_skipped_or_fatal_with_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", n=6, corrupt_at=3)
    assert run(str(src), "--out", str(tmp_path / "a"), "--outputs", "features_pca", "--batch-size", "2") == 0
    err = capsys.readouterr().err
    assert "1 undecodable" in err and "/cam/image_raw" in err
    msgs, _, meta = read_bag(tmp_path / "a")
    assert meta["custom_data"]["dinov3_ros.undecodable"] == "1"
    assert sum(tp == "/dinov3/cam/features/pca" for tp, *_ in msgs) == 5
    assert (
        run(
            str(src),
            "--out",
            str(tmp_path / "b"),
            "--outputs",
            "features_pca",
            "--batch-size",
            "2",
            "--strict",
        )
        == 3
    )
    err = capsys.readouterr().err
    assert (
        "undecodable frame" in err and "topic /cam/image_raw" in err and f"{BASE_T + 3 * 10**8 + 20}" in err
    )
    msgs_b, _, _ = read_bag(tmp_path / "b.partial" / "b")
    # everything before the bad frame was written (frames 0-2 of /cam, 0-2 of /cam2)
    assert sum(tp == "/dinov3/cam/features/pca" for tp, *_ in msgs_b) == 3
    assert sum(tp == "/dinov3/cam2/features/pca" for tp, *_ in msgs_b) == 3


@pytest.mark.slow
def test_two_ranks_match_serial(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    bags = tmp_path / "bags"
    bags.mkdir()
    for i, n in enumerate((3, 5, 4)):
        make_bag(bags / f"run{i}.mcap.d", n=n)
        (bags / f"run{i}.mcap.d" / f"run{i}.mcap.d.mcap").rename(bags / f"run{i}.mcap")
        import shutil

        shutil.rmtree(bags / f"run{i}.mcap.d")
    args = ["--outputs", "features_pca,depth", "--batch-size", "2"]
    assert run(str(bags / "*.mcap"), "--out", str(tmp_path / "serial"), *args) == 0
    procs = [
        subprocess.Popen(
            _cmd(str(bags / "*.mcap"), "--out", str(tmp_path / "sharded"), *args),
            env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r)),
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all("1 inputs" not in e for e in errs)
    names = sorted(x.name for x in (tmp_path / "serial").iterdir())
    assert names == ["run0", "run1", "run2"]
    assert sorted(x.name for x in (tmp_path / "sharded").iterdir()) == names
    for n in names:
        assert read_bag(tmp_path / "serial" / n)[0] == read_bag(tmp_path / "sharded" / n)[0]
        assert (tmp_path / "serial" / n / f"{n}.mcap").read_bytes() == (
            tmp_path / "sharded" / n / f"{n}.mcap"
        ).read_bytes()
    # each rank did a disjoint share
    done = [sorted(n for n in names if f"/{n}:" in e or f"{n}.mcap:" in e) for e in errs]
    assert sorted(done[0] + done[1]) == names and not set(done[0]) & set(done[1])


def test_preview_and_contact_sheet(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", n=4)
    pv, cs = tmp_path / "p.mp4", tmp_path / "s.png"
    assert (
        run(
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--outputs",
            OUTS,
            "--batch-size",
            "4",
            "--topics",
            "/cam/image_raw",
            "--preview",
            str(pv),
            "--contact-sheet",
            str(cs),
            "--contact-frames",
            "3",
        )
        == 0
    )
    cap = cv2.VideoCapture(str(pv))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4
    sheet = cv2.imread(str(cs))
    assert sheet is not None and sheet.shape[0] == 3 * 160 and sheet.shape[1] >= 5 * 160
    msgs = read_bag(tmp_path / "o")[0]
    assert {tp for tp, *_ in msgs} == {
        "/dinov3/features/pca",
        "/dinov3/depth/image",
        "/dinov3/depth",
        "/dinov3/depth/camera_info",
        "/dinov3/matches",
        "/dinov3/objects/mask",
        "/dinov3/objects/boxes",
    }


def test_ros1_bag_input(tmp_path: Path) -> None:
    """ROS 1 .bag: frames decoded from ROS 1 serialization give the same outputs as the direct pipeline."""
    torch.set_num_threads(1)
    from rosbags.rosbag1 import Writer as Writer1

    ts1 = get_typestore(Stores.ROS1_NOETIC)
    Image1, Header1, Time1 = (
        ts1.types[k] for k in ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time")
    )
    bag = tmp_path / "old.bag"
    frames = [_frame(i) for i in range(3)]
    with Writer1(bag) as w:
        c = w.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=ts1)
        for i, f in enumerate(frames):
            t = BASE_T + i * 10**8
            msg = Image1(
                header=Header1(seq=i, stamp=Time1(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam"),
                height=H,
                width=W,
                encoding="rgb8",
                is_bigendian=0,
                step=W * 3,
                data=f.ravel(),
            )
            w.write(c, t, ts1.serialize_ros1(msg, "sensor_msgs/msg/Image"))
    before = tree_hash(bag)
    assert (
        run(str(bag), "--out", str(tmp_path / "o"), "--outputs", "features_pca,depth", "--batch-size", "2")
        == 0
    )
    assert tree_hash(bag) == before
    fr = [
        ("/cam/image_raw", BASE_T + i * 10**8, f, BASE_T + i * 10**8, "cam", None)
        for i, f in enumerate(frames)
    ]
    ref = reference(fr, {"features_pca", "depth"}, 2, {"/cam/image_raw": "/dinov3"})
    assert sorted(output_only(read_bag(tmp_path / "o")[0])) == sorted(ref)
    assert run(str(bag), "--out", str(tmp_path / "o2"), "--copy-input") == 1  # refused with a clear reason


def test_truncated_sqlite_processes_prefix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", "sqlite3", n=12)
    assert (
        run(str(src), "--out", str(tmp_path / "full"), "--outputs", "features_pca", "--batch-size", "2") == 0
    )
    data = (src / "in.db3").read_bytes()
    cut = tmp_path / "cut.db3"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    before = tree_hash(cut)
    assert run(str(cut), "--out", str(tmp_path / "o"), "--outputs", "features_pca", "--batch-size", "2") == 3
    err = capsys.readouterr().err
    assert tree_hash(cut) == before
    assert "corrupt input" in err and str(cut) in err and "truncated" in err and "timestamp" in err
    got = output_only(read_bag(tmp_path / "o.partial" / "o")[0])
    ref = output_only(read_bag(tmp_path / "full")[0])
    assert 0 < len(got) < len(ref) and got == ref[: len(got)]


@pytest.mark.slow
def test_sigterm_leaves_resumable_partial(tmp_path: Path) -> None:
    """SIGTERM (like Ctrl-C) stops cleanly with exit 130; --resume then finishes identically."""
    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", n=30)
    args = ["--outputs", "features_pca,depth", "--batch-size", "2", "--checkpoint-every", "4"]
    out = tmp_path / "out"
    journal = tmp_path / "out.partial" / "journal.jsonl"
    p = _start_until_checkpoints(src, out, args, 2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err.decode()[-2000:]
    assert "--resume" in err.decode() and not out.exists() and journal.exists()
    assert run(str(src), "--out", str(out), *args, "--resume") == 0
    ref = tmp_path / "ref" / "out"
    assert run(str(src), "--out", str(ref), *args) == 0
    assert read_bag(out)[0] == read_bag(ref)[0]


def test_thread_settings_auto_on_cuda_only() -> None:
    """``--cv-threads``/``--torch-threads`` auto: one thread each when the model runs on CUDA (the
    decode workers own the cores), the libraries' defaults on CPU; explicit values win. Run in a child
    process: the settings are process-wide."""
    import subprocess
    import sys

    code = """
import argparse, cv2, torch
from dinov3_ros.offline.process import add_arguments, apply_thread_settings
p = argparse.ArgumentParser(); add_arguments(p)
def now():
    return cv2.getNumThreads(), torch.get_num_threads()
cv2.setNumThreads(3); torch.set_num_threads(3)  # stand-ins for the libraries' defaults
cv0, t0 = now()
apply_thread_settings(p.parse_args(["in", "--out", "o"]), "cpu")
assert now() == (cv0, t0), "cpu: defaults kept"
apply_thread_settings(p.parse_args(["in", "--out", "o"]), "cuda:0")
assert now() == (1, 1), "cuda: one thread each"
apply_thread_settings(p.parse_args(["in", "--out", "o", "--cv-threads", "2", "--torch-threads", "2"]), "cuda:0")
assert now() == (2, 2), "explicit values win"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_reader_process_writes_the_same_bags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--reader process`` (reading and decoding in a child process, frames in shared memory) gives the
    bytes of the threaded reader: copied inputs, a corrupt frame, a folder, a truncated bag (exit 3
    with the same partial bag) and a strict run."""
    import shutil

    torch.set_num_threads(1)
    src = make_bag(tmp_path / "in", n=7, corrupt_at=2)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"img_{i}.png"), cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR))
    cut = tmp_path / "cut.mcap"
    data = (make_bag(tmp_path / "whole", n=12) / "whole.mcap").read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    cases = [
        (src, ["--outputs", OUTS, "--copy-input", "--checkpoint-every", "3"], 0),
        (
            folder,
            [
                "--outputs",
                "features_pca,depth",
                "--copy-input",
                "--fx",
                "50",
                "--fy",
                "50",
                "--cx",
                "31.5",
                "--cy",
                "23.5",
            ],
            0,
        ),
        (cut, ["--outputs", "features_pca"], 3),
        (src, ["--outputs", "features_pca", "--strict"], 3),
    ]
    for k, (inp, args, code) in enumerate(cases):
        bags = {}
        for reader in ("thread", "process"):
            out = tmp_path / reader / f"o{k}"
            assert run(str(inp), "--out", str(out), "--batch-size", "2", "--reader", reader, *args) == code, (
                reader
            )
            bag = out if code == 0 else tmp_path / reader / f"o{k}.partial" / f"o{k}"
            bags[reader] = (bag / f"o{k}.mcap").read_bytes()
        assert bags["thread"] == bags["process"], inp
        err = capsys.readouterr().err
        if inp == src and code == 0:
            assert err.count("1 undecodable") == 2
    shutil.rmtree(tmp_path / "thread")


@pytest.mark.slow
def test_reader_process_kill_and_resume(tmp_path: Path) -> None:
    """A run with the process reader killed by SIGKILL resumes to the uninterrupted output, its reader
    process does not outlive it, and no shared-memory frame file is left behind (the slot files are
    unlinked as soon as they are created; their descriptors travel over the socket)."""
    from dinov3_ros.offline.readers import slot_dir

    def frame_files() -> set[str]:
        return {p.name for p in Path(slot_dir()).glob("dinov3-frame-*")}

    torch.set_num_threads(1)
    before = frame_files()
    src = make_bag(tmp_path / "in", n=40)
    args = [
        "--outputs",
        "features_pca,matches",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "4",
        "--reader",
        "process",
    ]
    full = tmp_path / "ref" / "out"
    assert run(str(src), "--out", str(full), *args) == 0
    out = tmp_path / "out"
    p = _start_until_checkpoints(src, out, args, 3)
    children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.1)
    assert children and not any(Path(f"/proc/{c}").exists() for c in children), (
        "the reader process outlived the run"
    )
    assert not frame_files() - before, "a killed run left shared-memory frame files behind"
    assert run(str(src), "--out", str(out), *args, "--resume") == 0
    assert (full / "out.mcap").read_bytes() == (out / "out.mcap").read_bytes()
