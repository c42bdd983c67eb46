"""Newest-frame mailbox: bounded, replacement counted as a drop, multi-camera batch window, stop.

No timing thresholds: waits are bounded only as deadlock guards (far above any normal duration)."""

from __future__ import annotations

import threading

from dinov3_ros.ros.mailbox import Mailbox

GUARD_S = 30.0  # a deadlock guard, not a speed requirement


def test_put_replaces_and_counts_drops():
    box = Mailbox(["a"])
    stop = threading.Event()
    for i in range(1000):
        box.put("a", i)
    assert box.dropped == 999 and box.pending() == 1
    ((key, item, _recv),) = box.take(stop)
    assert (key, item) == ("a", 999) and box.pending() == 0


def _take_in_thread(box: Mailbox, stop: threading.Event, **kw) -> tuple[threading.Thread, list]:
    out: list = []
    th = threading.Thread(target=lambda: out.append(box.take(stop, **kw)))
    th.start()
    return th, out


def test_batch_window_collects_the_other_camera():
    box = Mailbox(["a", "b"])
    stop = threading.Event()
    box.put("a", 1)
    th, out = _take_in_thread(box, stop, batch_window_s=10 * GUARD_S)  # waits for b, not for the window
    box.put("b", 2)
    th.join(timeout=GUARD_S)
    assert not th.is_alive(), "take kept waiting although every camera had a frame"
    assert sorted((k, v) for k, v, _ in out[0]) == [("a", 1), ("b", 2)]


def test_batch_window_expires_with_one_camera():
    box = Mailbox(["a", "b"])
    stop = threading.Event()
    box.put("a", 3)
    assert [(k, v) for k, v, _ in box.take(stop, batch_window_s=0.05)] == [("a", 3)]
    assert box.pending() == 0


def test_stop_wakes_a_waiting_take():
    box = Mailbox(["a"])
    stop = threading.Event()
    th, out = _take_in_thread(box, stop, poll_s=10 * GUARD_S)  # only a wake can end it in time
    stop.set()
    box.wake()
    th.join(timeout=GUARD_S)
    assert not th.is_alive() and out == [[]]
