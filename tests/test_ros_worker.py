"""The node's worker (no rclpy): every wanted topic of every frame is published once, each output as soon
as it is final, with per-topic latencies; a frame that fails to decode is counted and skipped."""

from __future__ import annotations

import struct
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dinov3_ros.pipeline import Frame, PipelineConfig
from dinov3_ros.pipeline.model import load_model
from dinov3_ros.pipeline.outputs import topic_types
from dinov3_ros.pipeline.pipeline import Pipeline
from dinov3_ros.ros.diagnostics import NodeStats
from dinov3_ros.ros.mailbox import Mailbox
from dinov3_ros.ros.worker import FrameWorker


class Host:
    """A :class:`~dinov3_ros.ros.worker.WorkerHost` recording what is published."""

    def __init__(self, config: PipelineConfig, topics: set[str]) -> None:
        self.settings = SimpleNamespace(batch_window_ms=0.0, max_age_ms=0.0, pipeline=config)
        self.stats = NodeStats()
        self.log = self
        self.topics = topics
        self.published: list[tuple[str, int, str]] = []  # (camera, stamp, topic)
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def error(self, text: str) -> None:
        self.errors.append(text)

    def wanted_topics(self, cam: str) -> set[str]:
        return self.topics

    def make_frame(self, cam: str, item: Any) -> Frame:
        if item is None:
            raise ValueError("undecodable test frame")
        stamp, img = item
        return Frame(img, stamp, "cam_optical", None, cam)

    def publish(self, cam: str, msgs: dict[str, Any]) -> None:
        with self.lock:
            for t, m in msgs.items():
                sec, nsec = struct.unpack_from("<iI", m, 4)  # header.stamp, after the CDR header
                self.published.append((cam, sec * 1_000_000_000 + nsec, t))


@pytest.mark.parametrize("topics", [set(topic_types()), {"depth", "depth/camera_info", "objects/mask"}])
def test_worker_publishes_each_topic_once_per_frame(topics: set[str]) -> None:
    model = load_model("random:vitt16", "torch", "cpu", "fp32", (64, 96))
    pipe = Pipeline.from_model(model, PipelineConfig(resolution=(64, 96)), device="cpu")
    host = Host(pipe.config, topics)
    box = Mailbox(["a", "b"])
    worker = FrameWorker(host, pipe, box)
    rng = np.random.default_rng(0)
    worker.start()

    def wait_for(cond: Any) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not cond():
            time.sleep(0.01)
        assert cond(), "timed out"

    def published(keys: set[tuple[str, int]]) -> bool:
        with host.lock:
            return keys <= {(c, s) for c, s, _t in host.published}

    expected: set[tuple[str, int]] = set()

    def all_out() -> bool:
        return published(expected) and host.stats.counts["frames_processed"] >= len(expected)

    try:
        for k in range(3):
            keys = {(cam, 1_000_000_000 * (k + 1) + (cam == "b")) for cam in ("a", "b")}
            for cam, stamp in sorted(keys):
                box.put(cam, (stamp, rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)))
            expected |= keys
            wait_for(all_out)
        box.put("a", None)  # a bad frame: counted, logged, skipped
        wait_for(lambda: host.stats.counts["bad_frames"] == 1)
        box.put("a", (9_000_000_000, rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)))
        expected.add(("a", 9_000_000_000))
        wait_for(all_out)
    finally:
        worker.stop()
    assert host.errors == ["bad frame on 'a/image': undecodable test frame"]
    per_frame: dict[tuple[str, int], list[str]] = {}
    for cam, stamp, t in host.published:
        per_frame.setdefault((cam, stamp), []).append(t)
    assert per_frame, "nothing published"
    for key, ts in per_frame.items():
        assert sorted(ts) == sorted(topics), (key, ts)  # every wanted topic once, no other
    snap = host.stats.snapshot()
    assert snap["frames_processed"] == len(per_frame)
    for t in topics:
        assert snap[f"latency_p99_ms[{t}]"] <= snap["latency_p99_ms"] + 1e-6  # never after the frame's end
