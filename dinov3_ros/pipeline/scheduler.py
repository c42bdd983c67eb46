"""One scheduler for the live node and the bag tool: feed -> inference thread -> finish thread -> sink.

The caller supplies a *feed* (the next batch of items, in order; ``None`` at the end of the input) and
a *sink* (where results go). The inference thread turns each batch's frames into one
:meth:`Pipeline.infer` call; the finish thread runs :meth:`Pipeline.finish` on it while the next
batch's inference already runs (``in_flight`` inferences wait between the two), then hands every item
of the batch to the sink in feed order. Per-source order follows: batches are finished in feed order
and each head keeps a source's frames in order.

Items are typed: :class:`Work` (a frame and the outputs wanted), :class:`Passthrough` (a record that
only keeps its place in the order, e.g. a copied input message) and :class:`Barrier` (the sink gets
the pipeline state at that point, e.g. a checkpoint). Each output reaches ``Sink.ready`` the moment
it is final, from the thread that computed it; ``Sink.done`` follows once the frame is complete.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dinov3_ros.core.frames import Frame, FrameOutputs


@dataclass
class Work:
    """A frame to process, the outputs wanted from it, and the caller's context (``tag``)."""

    frame: Frame
    outputs: frozenset[str]
    tag: Any = None


@dataclass
class Passthrough:
    """A record that needs no processing but keeps its place in the output order."""

    payload: Any


@dataclass
class Barrier:
    """A point in the stream at which the sink receives the pipeline's per-source state."""

    payload: Any


Item = Work | Passthrough | Barrier
#: ``feed(stop) -> items`` of the next batch, in order (``[]``: nothing yet; ``None``: end of input)
Feed = Callable[[threading.Event], "list[Item] | None"]


class Sink(Protocol):
    """Where the scheduler delivers results. Only :meth:`ready` is called from several threads."""

    def ready(self, work: Work, out: FrameOutputs, names: tuple[str, ...]) -> None:
        """Outputs ``names`` of ``work`` are final in ``out`` (any thread, as soon as they are)."""

    def done(self, work: Work, out: FrameOutputs) -> None:
        """Every output of ``work`` is final (finish thread, feed order)."""

    def passthrough(self, item: Passthrough) -> None:
        """A passthrough item, in feed order."""

    def barrier(self, item: Barrier, state: Any) -> None:
        """A barrier, in feed order, with ``Pipeline.state_dict()`` taken after every earlier frame."""

    def failed(self, works: list[Work], error: Exception) -> None:
        """Processing ``works`` raised ``error``; raise to stop the scheduler, return to go on."""

    def end(self) -> None:
        """The feed ended and every item was delivered."""


_END = object()


class Scheduler:
    """Runs ``pipeline`` on what ``feed`` yields and delivers to ``sink`` (see module doc)."""

    def __init__(
        self,
        pipeline: Any,
        feed: Feed,
        sink: Sink,
        *,
        in_flight: int = 1,
        name: str = "dinov3",
        stop: threading.Event | None = None,
    ) -> None:
        self.pipeline, self.feed, self.sink = pipeline, feed, sink
        self.name = name
        self._q: queue.Queue = queue.Queue(maxsize=max(1, in_flight))
        self._stop = stop if stop is not None else threading.Event()
        #: seconds the threads spent in ``Pipeline.infer`` / ``Pipeline.finish``
        self.times = {"infer": 0.0, "finish": 0.0}
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None

    # -- control ----------------------------------------------------------------------------------
    def start(self, freeze_gc: bool = True) -> None:
        """Start both threads. ``freeze_gc`` moves everything alive now (model, pipeline) out of the
        cyclic garbage collector's reach, so no full collection of a large heap stalls a frame."""
        if freeze_gc:
            gc.collect()
            gc.freeze()
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._guard(self._infer_loop), name=f"{self.name}_infer", daemon=True),
            threading.Thread(target=self._guard(self._finish_loop), name=f"{self.name}_finish", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads (work in progress is abandoned) and wait for them."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=timeout)

    def join(self, poll: float = 0.2) -> None:
        """Wait until the feed's end was delivered (or an error stopped the run); re-raise that error.

        Waits in short slices so a ``KeyboardInterrupt`` reaches the calling thread.
        """
        for t in self._threads:
            while t.is_alive():
                t.join(timeout=poll)
        if self._error is not None:
            raise self._error

    def is_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except _StoppedError:
                pass
            except BaseException as exc:  # noqa: BLE001 - the first error stops the run; join() raises it
                if self._error is None:
                    self._error = exc
                self._stop.set()

        return run

    def _put(self, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _StoppedError
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self) -> Any:
        while True:
            if self._stop.is_set():
                raise _StoppedError
            try:
                return self._q.get(timeout=0.1)
            except queue.Empty:
                continue

    # -- threads ----------------------------------------------------------------------------------
    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            items = self.feed(self._stop)
            if items is None:
                self._put(_END)
                return
            if not items:
                continue
            works = [it for it in items if isinstance(it, Work)]
            handle = None
            if works:
                wanted = frozenset().union(*(w.outputs for w in works))
                t = time.perf_counter()
                try:
                    handle = self.pipeline.infer([w.frame for w in works], wanted)
                except Exception as exc:  # noqa: BLE001 - the sink decides: go on, or stop the run
                    self.sink.failed(works, exc)
                    items = [it for it in items if not isinstance(it, Work)]
                self.times["infer"] += time.perf_counter() - t
            self._put((items, handle))

    def _finish_loop(self) -> None:
        while True:
            got = self._get()
            if got is _END:
                self.sink.end()
                return
            items, handle = got
            works = [it for it in items if isinstance(it, Work)]
            outs: list[FrameOutputs] = []
            if handle is not None:
                t = time.perf_counter()
                try:
                    outs = self.pipeline.finish(handle, on_ready=self._on_ready(works))
                except Exception as exc:  # noqa: BLE001 - the sink decides: go on, or stop the run
                    self.sink.failed(works, exc)
                    items = [it for it in items if not isinstance(it, Work)]
                self.times["finish"] += time.perf_counter() - t
            self._deliver(items, iter(outs))

    def _on_ready(self, works: list[Work]) -> Callable[[int, FrameOutputs, tuple[str, ...]], None]:
        def ready(i: int, out: FrameOutputs, names: tuple[str, ...]) -> None:
            self.sink.ready(works[i], out, names)

        return ready

    def _deliver(self, items: list[Item], outs: Any) -> None:
        for it in items:
            if isinstance(it, Work):
                self.sink.done(it, next(outs))
            elif isinstance(it, Passthrough):
                self.sink.passthrough(it)
            else:
                self.sink.barrier(it, self.pipeline.state_dict())


class _StoppedError(Exception):
    """Raised inside the scheduler's threads when :meth:`Scheduler.stop` was called."""
