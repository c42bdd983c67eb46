"""Newest-frame mailbox: bounded, replacement counted as a drop, multi-camera batch window."""

from __future__ import annotations

import threading
import time

from dinov3_ros.ros.mailbox import Mailbox


def test_put_replaces_and_counts_drops():
    box = Mailbox(["a"])
    stop = threading.Event()
    for i in range(1000):
        box.put("a", i)
    assert box.dropped == 999 and box.pending() == 1
    ((key, item, _recv),) = box.take(stop)
    assert (key, item) == ("a", 999) and box.pending() == 0


def test_batch_window_collects_the_other_camera():
    box = Mailbox(["a", "b"])
    stop = threading.Event()
    box.put("a", 1)
    threading.Timer(0.05, lambda: box.put("b", 2)).start()
    t0 = time.monotonic()
    got = box.take(stop, batch_window_s=2.0)
    assert sorted((k, v) for k, v, _ in got) == [("a", 1), ("b", 2)]
    assert time.monotonic() - t0 < 1.5  # returned as soon as both were there
    box.put("a", 3)
    t0 = time.monotonic()
    assert [(k, v) for k, v, _ in box.take(stop, batch_window_s=0.1)] == [("a", 3)]
    assert 0.08 <= time.monotonic() - t0 < 1.0


def test_stop_wakes_a_waiting_take():
    box = Mailbox(["a"])
    stop = threading.Event()
    out = []
    th = threading.Thread(target=lambda: out.append(box.take(stop, poll_s=10.0)))
    th.start()
    time.sleep(0.05)
    stop.set()
    box.wake()
    th.join(timeout=2)
    assert not th.is_alive() and out == [[]]
