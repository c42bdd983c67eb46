"""Newest-frame mailbox between subscription callbacks and the worker (no rclpy import).

One slot per camera: ``put`` never blocks and replaces an unprocessed item (counted as dropped), so
the queue is bounded by the number of cameras. ``take`` waits for work and, with several cameras,
up to ``batch_window_s`` for the other cameras' frames so they share one engine call.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class Mailbox:
    """Latest item per key; thread-safe."""

    def __init__(self, keys: list[str]) -> None:
        self._slots: dict[str, tuple[Any, float] | None] = dict.fromkeys(keys)
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, key: str, item: Any, recv: float | None = None) -> bool:
        """Store ``item`` (received at ``recv``, monotonic); True if it replaced an unprocessed one."""
        with self._cond:
            replaced = self._slots.get(key) is not None
            if replaced:
                self.dropped += 1
            self._slots[key] = (item, time.monotonic() if recv is None else recv)
            self._cond.notify()
            return replaced

    def take(
        self, stop: threading.Event, batch_window_s: float = 0.0, poll_s: float = 0.5
    ) -> list[tuple[str, Any, float]]:
        """Wait for at least one item (or ``stop``); returns ``[(key, item, recv)]`` and empties those slots."""
        with self._cond:
            while not stop.is_set() and all(v is None for v in self._slots.values()):
                self._cond.wait(timeout=poll_s)
            if stop.is_set():
                return []
            if len(self._slots) > 1 and batch_window_s > 0:
                deadline = time.monotonic() + batch_window_s
                while not stop.is_set() and any(v is None for v in self._slots.values()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(timeout=left)
            out = [(k, v[0], v[1]) for k, v in self._slots.items() if v is not None]
            for k, _, _ in out:
                self._slots[k] = None
            return out

    def wake(self) -> None:
        """Wake a waiting ``take`` (e.g. after setting its stop event)."""
        with self._cond:
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            for k in self._slots:
                self._slots[k] = None

    def pending(self) -> int:
        with self._cond:
            return sum(v is not None for v in self._slots.values())
