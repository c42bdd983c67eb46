"""``dinov3-ros demo --live`` end to end: bag -> real DDS -> dinov3_node process -> recorded rosbag2.

Each test runs ``python -m dinov3_ros.demo --live`` in its own process session (which starts the node
in another), on a small synthetic bag written here (JPEG camera stream plus 16UC1 instance-id and
32FC1 depth images that must not be taken for the camera) with a random ViT-Ti/16. The DDS domain
comes from tests/conftest.py. Every process is stopped in ``finally`` whatever happens.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rclpy  # noqa: F401 - installed with the project: a missing one must fail, not skip
import rosbags  # noqa: F401

from dinov3_ros.pipeline.outputs import topic_types

ROOT = Path(__file__).resolve().parent.parent
W, H = 128, 96
NODE = "/dinov3_node"
#: every output topic but objects/detections (vision_msgs is not installed here: the node skips it)
OUT_TOPICS = {t: mt for t, mt in topic_types().items() if not mt.startswith("vision_msgs/")}


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory) -> Path:
    from dinov3_ros.synthetic.generator import SceneGenerator
    from dinov3_ros.synthetic.writers import write_bag

    gen = SceneGenerator(seed=5, width=W, height=H, frames_per_scene=40)
    return write_bag(gen.sequence(0), tmp_path_factory.mktemp("bag") / "in", compressed=True)


def _input_stamps(bag: Path, topic: str = "/camera/image_raw/compressed") -> list[tuple[int, str]]:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as r:
        conns = [c for c in r.connections if c.topic == topic]
        out = []
        for c, _t, raw in r.messages(connections=conns):
            m = r.deserialize(raw, c.msgtype)
            out.append((m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec, m.header.frame_id))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:  # a zombie waits only for its parent's reap
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _kill_group(pid: int | None) -> None:
    if pid is None:
        return
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if _wait_gone(pid, 5.0):
            return


class Demo:
    """``python -m dinov3_ros.demo --live ...`` in its own session, output collected line by line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dinov3_ros.demo", "--live", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def node_pid(self) -> int | None:
        m = re.search(r"started dinov3_node \(pid (\d+)\)", self.text)
        return int(m.group(1)) if m else None

    def wait_for(self, pattern: str, timeout_s: float) -> bool:
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if re.search(pattern, self.text):
                return True
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                return bool(re.search(pattern, self.text))
            time.sleep(0.05)
        return False

    def wait(self, timeout_s: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not finish within {timeout_s} s; its output:\n{self.text}")
        self._reader.join(timeout=5)
        return rc

    def close(self) -> None:
        """Stop the demo and its node whatever state they are in."""
        node = self.node_pid()
        _kill_group(self.proc.pid if self.proc.poll() is None else None)
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        if node is not None and _alive(node):
            _kill_group(node)


def test_live_demo_records_every_output_with_input_stamps(small_bag, tmp_path):
    from rosbags.highlevel import AnyReader

    n = 4
    out = tmp_path / "demo"
    demo = Demo("--bag", str(small_bag), "--weights", "random:vitt16", "--frames", str(n), "--out", str(out))
    try:
        rc = demo.wait(timeout_s=50)
        assert rc == 0, demo.text
        node = demo.node_pid()
        assert node is not None, demo.text
        assert _wait_gone(node, 5.0), f"dinov3_node (pid {node}) still running after the demo exited"
    finally:
        demo.close()
    rec = out / "live_outputs"
    assert f"live outputs   {rec}" in demo.text  # the demo says where the recording is
    assert not (out / ".live_outputs.partial").exists()
    want = _input_stamps(small_bag)[:n]
    stamps = [s for s, _ in want]
    assert len(set(stamps)) == n
    got: dict[str, list[int]] = {}
    with AnyReader([rec]) as r:
        assert {c.topic: c.msgtype for c in r.connections} == {
            f"{NODE}/{t}": mt for t, mt in OUT_TOPICS.items()
        }
        for c, t_ns, raw in r.messages():
            m = r.deserialize(raw, c.msgtype)
            st = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
            assert t_ns == st, c.topic
            suffix = c.topic.removeprefix(NODE + "/")
            if suffix == "odometry":  # REP 105: the pose of the camera frame (child) in its odometry frame
                assert m.child_frame_id == want[0][1] and m.header.frame_id != m.child_frame_id, c.topic
            else:
                assert m.header.frame_id == want[0][1], c.topic
            got.setdefault(c.topic, []).append(st)
            if suffix in ("depth", "depth/image", "debug", "objects/mask", "depth/camera_info"):
                assert (m.height, m.width) == (H, W), c.topic  # input resolution, not the network's
            if suffix == "depth":
                assert m.encoding == "32FC1"
    for topic in OUT_TOPICS:
        assert got[f"{NODE}/{topic}"] == stamps, topic
    # the summary lists every topic with its count
    for topic in OUT_TOPICS:
        assert re.search(rf"{re.escape(NODE + '/' + topic)}\s+{n} messages", demo.text), topic


def test_live_demo_node_failure_exits_1_and_leaves_nothing(small_bag, tmp_path):
    out = tmp_path / "demo"
    demo = Demo("--bag", str(small_bag), "--weights", str(tmp_path / "missing.pth"), "--out", str(out))
    try:
        rc = demo.wait(timeout_s=40)
        assert rc == 1, demo.text
        assert "live run failed: dinov3_node exited with code" in demo.text, demo.text
        assert "weights file not found" in demo.text, demo.text  # the node's own reason is shown
        node = demo.node_pid()
        assert node is not None and _wait_gone(node, 5.0)
    finally:
        demo.close()
    assert not (out / "live_outputs").exists()


def test_live_demo_killed_takes_the_node_down(small_bag, tmp_path):
    demo = Demo("--bag", str(small_bag), "--weights", "random:vitt16", "--out", str(tmp_path / "demo"))
    try:
        assert demo.wait_for(r"playing ", timeout_s=40), demo.text
        node = demo.node_pid()
        assert node is not None and _alive(node)
        os.killpg(demo.proc.pid, signal.SIGKILL)  # no cleanup in the demo process at all
        demo.wait(timeout_s=10)
        assert _wait_gone(node, 15.0), f"dinov3_node (pid {node}) survived its parent's death"
    finally:
        demo.close()
