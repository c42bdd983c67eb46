"""Where each thread of this process spends its time: Python stacks sampled at a fixed interval.

A daemon thread reads every other thread's current frame (``sys._current_frames``) every ``interval``
seconds and counts ``(thread group, innermost frames)``. A thread inside a C call (a system call, a
NumPy or OpenCV routine, a CUDA wait) shows the Python line that made it. Pool threads are grouped by
name without their index (``tool-build_3`` -> ``tool-build``). No dependency beyond the standard
library, so it runs where py-spy is not installed; sampling holds the interpreter lock for a few
microseconds per sample.

    with StackSampler(interval=0.002) as s:
        work()
    print(s.table(top=30))
"""

from __future__ import annotations

import re
import sys
import threading
from collections import Counter
from types import FrameType, TracebackType

__all__ = ["StackSampler", "thread_group"]

_INDEX = re.compile(r"[_-]\d+$")


def thread_group(name: str) -> str:
    """A thread's name without a trailing pool index (``ThreadPoolExecutor-0_3`` -> ``ThreadPoolExecutor-0``)."""
    return _INDEX.sub("", name)


def _where(frame: FrameType | None, depth: int) -> tuple[str, ...]:
    out = []
    while frame is not None and len(out) < depth:
        code = frame.f_code
        path = code.co_filename.replace("\\", "/")
        short = "/".join(path.split("/")[-2:])
        out.append(f"{short}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return tuple(out)


class StackSampler:
    """Counts the innermost ``depth`` frames of every thread every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002, depth: int = 3) -> None:
        if interval <= 0 or depth < 1:
            raise ValueError(f"interval must be > 0 and depth >= 1, got {interval}, {depth}")
        self.interval, self.depth = float(interval), int(depth)
        self.counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    group = thread_group(names.get(ident, f"thread-{ident}"))
                    self.counts[group, _where(frame, self.depth)] += 1
            self.samples += 1

    def __enter__(self) -> StackSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def rows(self, top: int = 40) -> list[dict[str, object]]:
        """The ``top`` (thread group, stack) pairs by share of samples (a share of 1.0 = one thread
        there all the time; a group of n threads can reach n)."""
        n = max(1, self.samples)
        return [
            {"thread": group, "share": count / n, "stack": list(stack)}
            for (group, stack), count in self.counts.most_common(top)
        ]

    def table(self, top: int = 40) -> str:
        """:meth:`rows` as text, innermost frame first."""
        lines = [f"{self.samples} samples every {self.interval * 1e3:g} ms"]
        for r in self.rows(top):
            lines.append(f"{r['share']:6.2f}  {r['thread']:<28} {' <- '.join(r['stack'])}")
        return "\n".join(lines)
