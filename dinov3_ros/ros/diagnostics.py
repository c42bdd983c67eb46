"""Counters, rates, latency percentiles and the node's health for ``/diagnostics`` (no rclpy).

:class:`NodeStats` is updated from the subscription callbacks and the worker (thread-safe);
:func:`health` turns two snapshots (now and at the previous report) and the thresholds into
``DiagnosticStatus`` entries: one summary (``perception``), one per camera (input rate, stale input,
camera_info), one per bad-input class, latency and engine. A condition shows while it lasts (stale
input, missing camera_info) or for the report period in which it happened (a bad frame, an engine
error), so the level returns to OK by itself. :class:`RateLimiter` keeps repeated log lines to one per
interval per key.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

#: bad-input classes, each with a counter ``bad_<class>`` and a diagnostics entry
BAD_INPUT = ("encoding", "size", "compressed", "malformed", "camera_info", "oversize")
LEVELS = ("OK", "WARN", "ERROR", "STALE")


class RateWindow:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._t: deque[float] = deque(maxlen=100_000)

    def tick(self, now: float) -> None:
        self._t.append(now)

    def rate(self, now: float) -> float:
        while self._t and now - self._t[0] > self.window:
            self._t.popleft()
        if len(self._t) < 2:
            return 0.0
        span = max(now - self._t[0], 1e-9)
        return (len(self._t) - 1) / span if span < self.window else len(self._t) / self.window


class RateLimiter:
    """``allow(key)`` is True at most once per ``interval_s`` per key; ``suppressed(key)`` counts the rest
    since the last allowed one (for "... (N more suppressed)")."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> tuple[bool, int]:
        """(log this one?, how many were suppressed before it)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._skipped[key] = self._skipped.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._skipped.pop(key, 0)


@dataclass
class CameraInfoState:
    """What the newest frame of a camera had for intrinsics."""

    source: str  # camera_info | rescaled | missing | invalid
    reason: str = ""


class NodeStats:
    """Counters of the perception node (all methods thread-safe)."""

    COUNTERS = (
        "frames_received",
        "frames_processed",
        "frames_dropped",
        "frames_stale",
        "bad_frames",
        *(f"bad_{k}" for k in BAD_INPUT),
        "inferences",
        "skipped_no_subscribers",
        "skipped_uncalibrated",
        "camera_info_missing",
        "camera_info_rescaled",
        "camera_info_invalid",
        "messages_published",
        "errors",
    )

    def __init__(self, latency_window: int = 1000) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self._lat: deque[float] = deque(maxlen=latency_window)
        self._window = latency_window
        self._topic_lat: dict[str, deque[float]] = {}
        self._in: dict[str, RateWindow] = {}
        self._last_in: dict[str, float] = {}
        self._out = RateWindow()
        self.camera_info: dict[str, CameraInfoState] = {}
        self.last_error: dict[str, str] = {}  # counter -> newest message

    def add(self, name: str, n: int = 1, message: str | None = None) -> None:
        with self._lock:
            self.counts[name] += n
            if message is not None:
                self.last_error[name] = message

    def received(self, camera: str, now: float) -> None:
        with self._lock:
            self.counts["frames_received"] += 1
            self._in.setdefault(camera, RateWindow()).tick(now)
            self._last_in[camera] = now

    def set_camera_info(self, camera: str, state: CameraInfoState) -> None:
        with self._lock:
            self.camera_info[camera] = state

    def published_frame(self, latency_s: float, now: float) -> None:
        with self._lock:
            self.counts["frames_processed"] += 1
            self._lat.append(latency_s * 1e3)
            self._out.tick(now)

    def published_topics(self, topics: tuple[str, ...], latency_s: float) -> None:
        """Receive -> publish latency of some outputs of a frame (each output is sent when ready)."""
        with self._lock:
            for t in topics:
                d = self._topic_lat.get(t)
                if d is None:
                    d = self._topic_lat[t] = deque(maxlen=self._window)
                d.append(latency_s * 1e3)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            lat = np.asarray(self._lat, dtype=np.float64)
            out["input_rate_hz"] = sum(r.rate(now) for r in self._in.values())
            for cam, r in self._in.items():
                out[f"input_rate_hz[{cam or '/'}]"] = r.rate(now)
                out[f"input_age_s[{cam or '/'}]"] = now - self._last_in[cam]
            for cam, st in self.camera_info.items():
                out[f"camera_info[{cam or '/'}]"] = st.source + (f": {st.reason}" if st.reason else "")
            out["output_rate_hz"] = self._out.rate(now)
            topic_lat = {t: np.asarray(d, dtype=np.float64) for t, d in self._topic_lat.items()}
            for k, msg in self.last_error.items():
                out[f"last_error[{k}]"] = msg
        for t, v in sorted(topic_lat.items()):  # per output topic, e.g. latency_p50_ms[depth]
            if v.size:
                out[f"latency_p50_ms[{t}]"] = float(np.percentile(v, 50))
                out[f"latency_p99_ms[{t}]"] = float(np.percentile(v, 99))
        out["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat.size else 0.0
        out["latency_p99_ms"] = float(np.percentile(lat, 99)) if lat.size else 0.0
        out["latency_samples"] = int(lat.size)
        return out


@dataclass
class Thresholds:
    """When /diagnostics warns (0 = that check off)."""

    expected_rate_hz: float = 0.0
    latency_budget_ms: float = 0.0
    stale_after_s: float = 2.0
    require_camera_info: bool = True


def _status(name: str, level: str, message: str, values: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "level": level, "message": message, "values": values}


def _camera(cam: str, snap: dict[str, Any], th: Thresholds, active: bool) -> tuple[str, list[str]]:
    """Level and problems of one camera's input."""
    key = cam or "/"
    problems: list[str] = []
    age = snap.get(f"input_age_s[{key}]")
    rate = snap.get(f"input_rate_hz[{key}]", 0.0)
    if active and age is None and th.expected_rate_hz > 0:
        problems.append("no input received")
    if active and age is not None and th.stale_after_s > 0 and age > th.stale_after_s:
        problems.append(f"stale input: none for {age:.1f} s")
    elif active and age is not None and th.expected_rate_hz > 0 and rate < th.expected_rate_hz:
        problems.append(f"input rate {rate:.1f} Hz below the expected {th.expected_rate_hz:g} Hz")
    ci = snap.get(f"camera_info[{key}]", "")
    if ci and not ci.startswith(("camera_info", "rescaled")):
        what = "depth/points, points, odometry and depth/camera_info off"
        if not th.require_camera_info:
            what = "fallback pinhole in use (metric outputs approximate)"
        problems.append(f"camera_info {ci}: {what}")
    return ("WARN" if problems else "OK"), problems


def health(
    prefix: str,
    cameras: list[str],
    snap: dict[str, Any],
    prev: dict[str, Any],
    th: Thresholds,
    active: bool,
) -> list[dict[str, Any]]:
    """``DiagnosticStatus`` entries (dicts for ``msgs.builders.diagnostics``) from the snapshot now and at
    the previous report; the first is the summary whose level is the worst of all."""

    def delta(k: str) -> int:
        return int(snap.get(k, 0)) - int(prev.get(k, 0))

    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for cam in cameras:
        level, cam_problems = _camera(cam, snap, th, active)
        key = cam or "/"
        vals = {k: v for k, v in snap.items() if k.endswith(f"[{key}]")}
        out.append(_status(f"{prefix}: input {key}", level, "; ".join(cam_problems) or "ok", vals))
        problems += [f"{key}: {p}" for p in cam_problems]
    for kind in BAD_INPUT:
        k = f"bad_{kind}"
        new = delta(k)
        msg = f"{new} new: {snap.get(f'last_error[{k}]', '')}" if new > 0 else "ok"
        out.append(
            _status(
                f"{prefix}: bad input {kind}", "WARN" if new > 0 else "OK", msg, {"count": snap.get(k, 0)}
            )
        )
        if new > 0:
            problems.append(f"{new} bad input ({kind})")
    p99 = float(snap.get("latency_p99_ms", 0.0))
    slow = th.latency_budget_ms > 0 and snap.get("latency_samples", 0) and p99 > th.latency_budget_ms
    lat_msg = f"p99 {p99:.1f} ms over the budget of {th.latency_budget_ms:g} ms" if slow else "ok"
    lat_vals = {k: v for k, v in snap.items() if k.startswith("latency_")}
    out.append(_status(f"{prefix}: latency", "WARN" if slow else "OK", lat_msg, lat_vals))
    if slow:
        problems.append(lat_msg)
    err = delta("errors")
    eng_msg = f"{err} errors: {snap.get('last_error[errors]', '')}" if err > 0 else "ok"
    out.append(
        _status(f"{prefix}: engine", "ERROR" if err > 0 else "OK", eng_msg, {"errors": snap.get("errors", 0)})
    )
    if err > 0:
        problems.append(eng_msg)
    worst = max((LEVELS.index(s["level"]) for s in out), default=0)
    if not active:
        worst, problems = max(worst, 1), ["inactive", *problems]
    summary = "; ".join(problems) if problems else "running"
    return [_status(f"{prefix}: perception", LEVELS[worst], summary, dict(snap)), *out]
