"""The node's side of the scheduler, without rclpy: newest frames in, each output published when final.

:class:`FrameWorker` feeds :class:`~dinov3_ros.pipeline.scheduler.Scheduler` from the newest-frame
:class:`Mailbox` (every camera's latest message, decoded on the inference thread and batched into one
engine call) and is its sink: each output's messages are serialized and handed to ``host.publish`` the
moment that output is final, so depth or features never wait for the slowest head. One inference waits
between inference and heads, so nothing queues: when the heads are the bottleneck, frames are replaced
in the mailbox (newest wins) and counted. A frame that cannot be decoded, or a failing batch, is
counted and logged; the worker goes on with the next frame.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from dinov3_ros.core.camera import CameraIntrinsics, IntrinsicsSource, intrinsics_for_image
from dinov3_ros.core.frames import Frame, FrameOutputs
from dinov3_ros.msgs.cdr import join, stamp_of
from dinov3_ros.msgs.decode import decode_camera_info, decode_image
from dinov3_ros.msgs.image_codec import ImageDecodeError
from dinov3_ros.pipeline.outputs import REGISTRY, frame_messages
from dinov3_ros.pipeline.scheduler import Barrier, Item, Passthrough, Scheduler, Work

from .diagnostics import CameraInfoState, RateLimiter
from .mailbox import Mailbox

#: topic suffix -> the output it belongs to
TOPIC_OUTPUT = {t.suffix: o.name for o in REGISTRY.values() for t in o.topics}


def _uncalibrated_topics() -> frozenset[str]:
    """Topics that state or need the camera's calibration: those of outputs that need intrinsics (or
    require such an output) and the messages marked ``needs_intrinsics``."""
    need = {n for n, o in REGISTRY.items() if o.needs_intrinsics}
    grew = True
    while grew:
        more = {n for n, o in REGISTRY.items() if set(o.requires) & need} - need
        need |= more
        grew = bool(more)
    return frozenset(
        t.suffix for n, o in REGISTRY.items() for t in o.topics if n in need or t.needs_intrinsics
    )


#: topics skipped for a frame without a usable camera_info (``require_camera_info``)
NEEDS_CALIBRATION = _uncalibrated_topics()


class WorkerHost(Protocol):
    """What :class:`FrameWorker` needs from its owner (the node core, or a benchmark)."""

    settings: Any  # .batch_window_ms, .max_age_ms, .pipeline (PipelineConfig)
    stats: Any  # .add(name, n=1), .published_frame(latency_s, now), .published_topics(topics, latency_s)
    log: Any  # .error(text)

    def wanted_topics(self, cam: str) -> set[str]: ...

    def make_frame(self, cam: str, item: Any) -> Frame: ...

    def publish(self, cam: str, msgs: dict[str, bytes]) -> None: ...


def _pick_info(infos: list[bytes], stamp: int, tolerance_ns: int) -> bytes | None:
    """The camera_info nearest in stamp to ``stamp`` (within ``tolerance_ns``; 0 = any), newest on ties."""
    best, best_dt = None, None
    for raw in infos:
        try:
            dt = abs(stamp_of(raw) - stamp)
        except (ValueError, struct.error):
            dt = None
        if dt is None:
            continue
        if best_dt is None or dt <= best_dt:
            best, best_dt = raw, dt
    if best is None and infos:
        return infos[-1]  # unreadable stamps: the decoder names the fault
    if best_dt is not None and tolerance_ns > 0 and best_dt > tolerance_ns:
        return None
    return best


def _intrinsics(
    infos: list[bytes], stamp: int, width: int, height: int, stats: Any, tolerance_ns: int = 0
) -> tuple[CameraIntrinsics | None, CameraInfoState]:
    """The camera_info paired with the frame (see :func:`_pick_info`) through the one camera_info policy
    (``core.camera.intrinsics_for_image``); what it did is counted in ``stats`` and returned."""
    if not infos:
        stats.add("camera_info_missing")
        return None, CameraInfoState("missing", "none received")
    raw = _pick_info(infos, stamp, tolerance_ns)
    if raw is None:
        stats.add("camera_info_missing")
        return None, CameraInfoState("missing", f"none within {tolerance_ns / 1e6:g} ms of the frame")
    try:
        info = decode_camera_info(raw)
    except ValueError as exc:  # unparseable, or K all zero (uncalibrated), NaN, negative focal lengths...
        stats.add("camera_info_invalid")
        stats.add("bad_camera_info", message=str(exc))
        return None, CameraInfoState("invalid", str(exc))
    intr, source = intrinsics_for_image(info, width, height)
    if source is not IntrinsicsSource.CAMERA_INFO:
        stats.add(f"camera_info_{source.value}")
    if source is IntrinsicsSource.INVALID:
        why = (
            f"calibrated for {info.width}x{info.height}, another aspect ratio than the {width}x{height} image"
        )
        stats.add("bad_camera_info", message=why)
        return None, CameraInfoState("invalid", why)
    return intr, CameraInfoState(source.value)


def decode_frame(
    source: str,
    msgtype: str,
    raw: bytes,
    infos: list[bytes],
    stats: Any,
    *,
    tolerance_ns: int = 0,
    max_bytes: int = 0,
) -> Frame:
    """A serialized image message (+ the camera's recent serialized camera_info) -> :class:`Frame`;
    ``ImageDecodeError`` (its ``kind`` says the class; ``oversize`` for a decoded image over
    ``max_bytes``) naming the problem for an undecodable image."""
    try:
        rgb, stamp, frame_id = decode_image(msgtype, raw)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"(stamp {_stamp_text(raw)}) {exc}", exc.kind) from exc
    if max_bytes and rgb.nbytes > max_bytes:
        raise OversizeError(
            f"(stamp {stamp}) decoded image of {rgb.nbytes} bytes exceeds max_input_bytes {max_bytes}"
        )
    intr, state = _intrinsics(infos, stamp, rgb.shape[1], rgb.shape[0], stats, tolerance_ns)
    if hasattr(stats, "set_camera_info"):
        stats.set_camera_info(source, state)
    return Frame(rgb, stamp, frame_id, intr, source=source)


class OversizeError(ValueError):
    """An input image over the node's ``max_input_bytes``."""

    kind = "oversize"


def _stamp_text(raw: bytes) -> str:
    try:
        return str(stamp_of(raw))
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


@dataclass
class _Tag:
    """A frame's context: its camera, when it was received, the topics wanted and those sent."""

    cam: str
    recv: float
    topics: set[str]
    sent: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FrameWorker:
    """Runs ``pipeline`` on what ``mailbox`` receives and publishes through ``host`` (see module doc)."""

    def __init__(
        self, host: WorkerHost, pipeline: Any, mailbox: Mailbox, log_interval_s: float = 5.0
    ) -> None:
        self.host, self.pipeline, self.mailbox = host, pipeline, mailbox
        self._limit = RateLimiter(log_interval_s)
        self.scheduler = Scheduler(pipeline, self._feed, self, in_flight=1, name="dinov3")

    def start(self) -> None:
        self.scheduler.start()

    def is_alive(self) -> bool:
        return self.scheduler.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self.scheduler.stopping.set()
        self.mailbox.wake()
        self.scheduler.stop(timeout)

    # -- feed (inference thread) ------------------------------------------------------------------
    def _feed(self, stop: threading.Event) -> list[Item]:
        h = self.host
        s = h.settings
        taken = self.mailbox.take(stop, s.batch_window_ms / 1e3 if s is not None else 0.0)
        if s is None or not taken:
            return []
        works: list[Item] = []
        for cam, item, recv in taken:
            want = h.wanted_topics(cam)
            if not want:
                h.stats.add("skipped_no_subscribers")
                continue
            if s.max_age_ms and time.monotonic() - recv > s.max_age_ms / 1e3:
                h.stats.add("frames_stale")
                continue
            try:
                frame = h.make_frame(cam, item)
            except ValueError as exc:  # undecodable image, unusable message
                self._bad_frame(cam, exc)
                continue
            if frame.camera_info is None and getattr(s, "require_camera_info", False):
                skip = want & NEEDS_CALIBRATION
                if skip:
                    h.stats.add("skipped_uncalibrated")
                    want = want - skip
                    if not want:
                        continue
            outputs = frozenset(TOPIC_OUTPUT[t] for t in want)
            works.append(Work(frame, outputs, _Tag(cam, recv, set(want))))
        if works:
            h.stats.add("inferences")
        return works

    def _bad_frame(self, cam: str, exc: ValueError) -> None:
        """Count an undecodable frame under its class and log it (at most once per class and interval)."""
        kind = getattr(exc, "kind", "malformed")
        self.host.stats.add("bad_frames")
        self.host.stats.add(f"bad_{kind}", message=str(exc))
        self._error(f"bad:{cam}:{kind}", f"bad frame on '{cam + '/' if cam else ''}image': {exc}")

    def _error(self, key: str, text: str) -> None:
        ok, suppressed = self._limit.allow(key)
        if ok:
            more = f" ({suppressed} more like it suppressed)" if suppressed else ""
            self.host.log.error(text + more)

    # -- sink -------------------------------------------------------------------------------------
    def _send(self, work: Work, out: FrameOutputs, topics: set[str]) -> None:
        tag: _Tag = work.tag
        h = self.host
        with tag.lock:  # claim the topics (built, failed or absent: never retried)
            topics = (topics & tag.topics) - tag.sent
            tag.sent |= topics
        if not topics:
            return
        cfg = h.settings.pipeline if h.settings is not None else self.pipeline.config
        msgs = {t: join(parts) for t, _mt, parts in frame_messages(out, cfg, topics)}
        if msgs:
            h.publish(tag.cam, msgs)
            h.stats.add("messages_published", len(msgs))
            h.stats.published_topics(tuple(msgs), time.monotonic() - tag.recv)

    def _guarded_send(self, work: Work, out: FrameOutputs, topics: set[str], what: str) -> None:
        try:
            self._send(work, out, topics)
        except Exception as exc:  # noqa: BLE001 - a failed publish must not stop the other heads
            text = f"publishing {what} failed: {type(exc).__name__}: {exc}"
            self.host.stats.add("errors", message=text)
            self._error(f"publish:{what}", text)

    def ready(self, work: Work, out: FrameOutputs, names: tuple[str, ...]) -> None:
        topics = {t.suffix for n in names for t in REGISTRY[n].topics}
        self._guarded_send(work, out, topics, ", ".join(names))

    def done(self, work: Work, out: FrameOutputs) -> None:
        self._guarded_send(work, out, set(work.tag.topics), "outputs")
        now = time.monotonic()
        self.host.stats.published_frame(now - work.tag.recv, now)

    def failed(self, works: list[Work], error: Exception) -> None:
        text = f"processing failed: {type(error).__name__}: {error}"
        self.host.stats.add("errors", message=text)
        self._error("failed", text)

    def passthrough(self, item: Passthrough) -> None:
        """Not used by the node."""

    def barrier(self, item: Barrier, state: Any) -> None:
        """Not used by the node."""

    def end(self) -> None:
        """The node's feed never ends."""
