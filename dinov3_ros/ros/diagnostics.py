"""Thread-safe counters, rates and latency percentiles for ``/diagnostics``."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np


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


class NodeStats:
    """Counters of the perception node (all methods thread-safe)."""

    COUNTERS = (
        "frames_received",
        "frames_processed",
        "frames_dropped",
        "frames_stale",
        "bad_frames",
        "inferences",
        "skipped_no_subscribers",
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
        self._out = RateWindow()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def received(self, camera: str, now: float) -> None:
        with self._lock:
            self.counts["frames_received"] += 1
            self._in.setdefault(camera, RateWindow()).tick(now)

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
            out["output_rate_hz"] = self._out.rate(now)
            topic_lat = {t: np.asarray(d, dtype=np.float64) for t, d in self._topic_lat.items()}
        for t, v in sorted(topic_lat.items()):  # per output topic, e.g. latency_p50_ms[depth]
            if v.size:
                out[f"latency_p50_ms[{t}]"] = float(np.percentile(v, 50))
                out[f"latency_p99_ms[{t}]"] = float(np.percentile(v, 99))
        out["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat.size else 0.0
        out["latency_p99_ms"] = float(np.percentile(lat, 99)) if lat.size else 0.0
        out["latency_samples"] = int(lat.size)
        return out
