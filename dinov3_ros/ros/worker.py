"""The node's processing path, without rclpy: mailbox -> decode -> infer -> finish -> messages -> publish.

Two threads, so a frame's inference overlaps the previous frame's heads and message building:

- ``infer`` thread: takes the newest frame of every camera from the :class:`Mailbox` (batching the
  cameras), decodes, and runs :meth:`Pipeline.infer` (preprocessing + engine + depth head, queued on
  the device without waiting for it);
- ``finish`` thread: :meth:`Pipeline.finish` (the per-frame heads, in infer order); each output's
  messages are built and handed to ``host.publish`` as soon as that output is final, so depth, points
  and features do not wait for the slowest head (TokenCut).

One inference waits between the two (a bounded queue of 1), so the queue never grows: when the
finish thread is the bottleneck, frames are dropped in the mailbox (newest wins) and counted. Any
exception of one frame is logged and counted; the threads keep going. ``start`` freezes the objects
alive then (model, pipeline) out of the cyclic garbage collector, so no full collection stalls a frame.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from dinov3_ros.msgs import builders as B
from dinov3_ros.pipeline.types import OUTPUTS, Frame

from .mailbox import Mailbox


class WorkerHost(Protocol):
    """What :class:`FrameWorker` needs from its owner (the node core, or a benchmark)."""

    settings: Any  # .batch_window_ms, .max_age_ms, .pipeline.mask_encoding
    stats: Any  # .add(name, n=1), .published_frame(latency_s, now), .published_topics(topics, latency_s)
    log: Any  # .error(text)
    out_tp: Any  # provider of the output messages (dinov3_ros.msgs.builders): objects or serialized bytes

    def wanted_topics(self, cam: str) -> set[str]: ...

    def make_frame(self, cam: str, item: Any) -> Frame: ...

    def publish(self, cam: str, msgs: dict[str, Any]) -> None: ...


@dataclass
class _Job:
    handle: Any
    cams: list[str]
    recvs: list[float]
    topics: list[set[str]]


class FrameWorker:
    """Runs ``pipeline`` on what ``mailbox`` receives and publishes through ``host`` (see module doc)."""

    def __init__(self, host: WorkerHost, pipeline: Any, mailbox: Mailbox) -> None:
        self.host, self.pipeline, self.mailbox = host, pipeline, mailbox
        self._stop = threading.Event()
        self._jobs: queue.Queue[_Job] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # the model and everything loaded so far are long-lived: move them out of the cyclic GC's
        # generations so a full collection (tens of ms with a large heap) cannot stall a frame
        gc.collect()
        gc.freeze()
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._infer_loop, name="dinov3_infer", daemon=True),
            threading.Thread(target=self._finish_loop, name="dinov3_finish", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def is_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.mailbox.wake()
        for t in self._threads:
            t.join(timeout=timeout)
        self._threads = []

    # -- infer thread ---------------------------------------------------------------------------
    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            s = self.host.settings
            window = s.batch_window_ms / 1e3 if s is not None else 0.0
            taken = self.mailbox.take(self._stop, window)
            if not taken:
                continue
            try:
                job = self._infer(taken)
            except Exception as exc:  # noqa: BLE001 - the node must survive anything a frame triggers
                self.host.stats.add("errors")
                self.host.log.error(f"processing failed: {type(exc).__name__}: {exc}")
                continue
            while job is not None and not self._stop.is_set():
                try:
                    self._jobs.put(job, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _infer(self, taken: list[tuple[str, Any, float]]) -> _Job | None:
        h = self.host
        s = h.settings
        if s is None or self.pipeline is None:
            return None
        frames, cams, recvs, topics = [], [], [], []
        max_age = s.max_age_ms / 1e3
        for cam, item, recv in taken:
            want = h.wanted_topics(cam)
            if not want:
                h.stats.add("skipped_no_subscribers")
                continue
            if max_age and time.monotonic() - recv > max_age:
                h.stats.add("frames_stale")
                continue
            try:
                frames.append(h.make_frame(cam, item))
            except ValueError as exc:  # ImageDecodeError, bad camera_info, size mismatch
                h.stats.add("bad_frames")
                h.log.error(f"bad frame on '{cam + '/' if cam else ''}image': {exc}")
                continue
            cams.append(cam)
            recvs.append(recv)
            topics.append(want)
        if not frames:
            return None
        need = {o for o in OUTPUTS if any(set(B.TOPICS[o]) & t for t in topics)}
        handle = self.pipeline.infer(frames, need)
        h.stats.add("inferences")
        return _Job(handle, cams, recvs, topics)

    # -- finish thread --------------------------------------------------------------------------
    def _finish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._finish(job)
            except Exception as exc:  # noqa: BLE001
                self.host.stats.add("errors")
                self.host.log.error(f"processing failed: {type(exc).__name__}: {exc}")

    def _finish(self, job: _Job) -> None:
        """Heads of a job; each output is published as soon as it is final (depth and points do not
        wait for TokenCut), the rest once the frame is done."""
        h = self.host
        enc = h.settings.pipeline.mask_encoding if h.settings is not None else "mono8"
        sent: list[set[str]] = [set() for _ in job.cams]
        lock = threading.Lock()  # depth/points are reported from the pipeline's geometry thread

        def send(i: int, out: Any, topics: set[str]) -> None:
            with lock:  # claim the topics (built, failed or absent: never retried)
                topics = topics - sent[i]
                sent[i] |= topics
            if not topics:
                return
            msgs = B.frame_messages(h.out_tp, out, topics, enc)
            if msgs:
                h.publish(job.cams[i], msgs)
                h.stats.add("messages_published", len(msgs))
                h.stats.published_topics(tuple(msgs), time.monotonic() - job.recvs[i])

        def on_ready(i: int, out: Any, names: tuple[str, ...]) -> None:
            try:
                send(i, out, {t for n in names for t in B.TOPICS[n]} & job.topics[i])
            except Exception as exc:  # noqa: BLE001 - a failed publish must not stop the other heads
                h.stats.add("errors")
                h.log.error(f"publishing {', '.join(names)} failed: {type(exc).__name__}: {exc}")

        results = self.pipeline.finish(job.handle, on_ready=on_ready)
        for i, (recv, want, out) in enumerate(zip(job.recvs, job.topics, results)):
            send(i, out, want)
            now = time.monotonic()
            h.stats.published_frame(now - recv, now)
