"""One input through the scheduler: reader -> decoders -> ``pipeline.scheduler`` -> builders -> writer.

::

    reader thread ──> decode pool ──> feed (batches) ──> Scheduler: inference ─> heads ──> sink
                                                                                           │
                        writer thread <── build pool (messages serialized) <───────────────┘

Every input record keeps its place: batches are consecutive image frames in input order (cut only
at checkpoint barriers, every ``checkpoint_every`` frames, and at the end), non-image records travel
as passthrough items, and the writer writes strictly in input order. The output depends only on the
input and the settings, never on thread timing, so a resumed run (restarting at a barrier with the
pipeline state saved there) writes exactly what an uninterrupted run writes. Queues are bounded:
memory stays bounded whatever the input length.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinov3_ros.core.camera import intrinsics_for_image
from dinov3_ros.core.frames import Frame, FrameOutputs
from dinov3_ros.pipeline.scheduler import Barrier, Item, Passthrough, Scheduler, Work

from .bagout import ConnKey, OutputBag
from .emit import MsgEmitter
from .readers import (
    END,
    BarrierRecord,
    FailureRecord,
    ImageRecord,
    ProcessReader,
    StoppedError,
    ThreadReader,
    get,
    put,
)
from .sources import InputCorruptError, InputMessage, Source


@dataclass
class RunOptions:
    """Execution settings of one input."""

    outputs: frozenset[str]
    batch_size: int = 8
    decode_workers: int = 2
    build_workers: int = 2
    queue_frames: int = 32  # decoded frames in flight between reader and inference
    checkpoint_every: int = 256  # image frames between resume points (also batch barriers)
    copy_input: bool = False
    strict: bool = False  # an undecodable frame is fatal (else counted and skipped)
    progress: bool = True
    label: str = ""
    #: read and decode in a child process (frames in shared memory) instead of this process's threads
    reader_process: bool = False
    #: ``open_source`` arguments of the input (the child process opens it again)
    source_args: dict = field(default_factory=dict)


@dataclass
class Summary:
    """What a run did (printed at the end, also returned to callers and tests)."""

    input: str
    output: str = ""
    frames: int = 0  # frames processed by the pipeline
    undecodable: int = 0
    undecodable_examples: list[str] = field(default_factory=list)
    messages: int = 0  # messages in the output
    seconds: float = 0.0
    resumed_from_frame: int = 0
    complete: bool = False
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds of thread time per stage
    notes: list[str] = field(default_factory=list)  # more lines for the user (topics, previews)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def text(self, verbose: bool = False) -> str:
        """What the run did, for the user; ``verbose`` adds the time per stage."""
        s = (
            f"{self.input}: {self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} frames/s), "
            f"{self.undecodable} undecodable"
        )
        if self.resumed_from_frame:
            s += f", resumed after frame {self.resumed_from_frame}"
        s += f"\n  output: {self.output}" if self.complete else f"\n  output: INCOMPLETE {self.output}"
        s += f" ({self.messages} messages)"
        for note in self.notes:
            s += f"\n  {note}"
        if self.error:
            s += f"\n  error: {self.error}"
        for ex in self.undecodable_examples:
            s += f"\n  undecodable: {ex}"
        if verbose and self.stages and self.frames:
            per = ", ".join(f"{k} {v * 1e3 / self.frames:.2f}" for k, v in self.stages.items() if v > 0)
            s += f"\n  ms/frame of thread time per stage (pools summed over workers): {per}"
        return s


class StageTimes:
    """Seconds per stage, summed over the threads doing it (thread-safe): ``read``, ``decode``,
    ``wait_input`` (inference waiting for decoded frames), ``build``, ``writer_wait`` and ``write``
    (the scheduler adds ``infer`` and ``finish``)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, key: str, dt: float) -> None:
        with self._lock:
            self.t[key] = self.t.get(key, 0.0) + dt


@dataclass
class Copied:
    """Input messages copied to the output as they are (``--copy-input``, non-image topics)."""

    records: list[tuple[ConnKey, int, Any]]


@dataclass
class Skipped:
    """An undecodable frame: counted and reported, nothing written."""

    m: InputMessage
    reason: str


@dataclass
class Failed:
    """Damaged input: the run ends here (after everything before it is written)."""

    error: BaseException


@dataclass
class Built:
    """A processed frame: its messages (being serialized on the build pool) and outputs."""

    messages: Future
    frame: _Frame
    out: FrameOutputs


@dataclass
class Checkpoint:
    """A resume point: where the input restarts and the pipeline state there."""

    barrier: BarrierRecord
    state: Any


@dataclass
class _Frame:
    """The context of a frame's work item: its input record, decoded image and its reader slot."""

    m: InputMessage
    rgb: np.ndarray
    slot: int = -1


class _Feed:
    """The scheduler's feed: batches of consecutive frames (and the records between them) in order."""

    def __init__(self, source: Source, opts: RunOptions, q: queue.Queue, times: StageTimes) -> None:
        self.source, self.opts, self.q, self.times = source, opts, q, times
        self.pending: list[Item] = []
        self.n = 0  # frames in ``pending``
        self.queued: list[list[Item]] = []  # batches ready to return
        self.ended = False

    def _copied(self, m: InputMessage) -> Passthrough:
        """An input message copied to the output as is (``--copy-input`` and non-image topics)."""
        key = ConnKey(m.topic, self.source.connections[m.conn].msgtype, f"in:{m.conn}")
        return Passthrough(Copied([(key, m.log_ns, m.raw)]))

    def _emit(self, *then: list[Item], end: bool = False) -> list[Item] | None:
        """Close the pending batch; queue it and ``then``; return the first (None: the end)."""
        self.queued += [b for b in (self.pending, *then) if b]
        self.pending, self.n, self.ended = [], 0, self.ended or end
        return self.queued.pop(0) if self.queued else None

    def _add(self, items: list[Item]) -> list[Item] | None:
        """Records between frames: part of the pending batch, or a batch of their own."""
        if not self.pending:
            return items
        self.pending.extend(items)
        return None

    def __call__(self, stop: threading.Event) -> list[Item] | None:
        if self.queued:
            return self.queued.pop(0)
        if self.ended:
            return None
        while True:
            t = time.perf_counter()
            rec = get(self.q, stop)
            self.times.add("wait_input", time.perf_counter() - t)
            if rec is END:
                return self._emit(end=True)
            if isinstance(rec, FailureRecord):
                return self._emit([Passthrough(Failed(rec.error))], end=True)
            if isinstance(rec, BarrierRecord):
                return self._emit([Barrier(rec)])
            out = self._add([self._copied(rec)]) if isinstance(rec, InputMessage) else self._image(rec)
            if out is not None:
                return out

    def _image(self, rec: ImageRecord) -> list[Item] | None:
        m, opts = rec.m, self.opts
        copy = opts.copy_input and m.raw is not None and m.conn >= 0
        try:
            rgb, stamp, frame_id = rec.fut.result()
        except Exception as err:  # noqa: BLE001 - an undecodable frame
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            if opts.strict:
                where = {"topic": m.topic, "offset": m.offset, "timestamp_ns": m.log_ns}
                err2 = InputCorruptError(self.source.path, f"undecodable frame: {reason}", **where)
                return self._emit([Passthrough(Failed(err2))], end=True)
            return self._add([Passthrough(Skipped(m, reason))] + ([self._copied(m)] if copy else []))
        H, W = rgb.shape[:2]
        if m.camera_info is not None:
            ci = intrinsics_for_image(m.camera_info, W, H)[0]
        else:
            ci = m.calibration.for_image(W, H) if m.calibration is not None else None
        frame = Frame(image=rgb, stamp_ns=stamp, frame_id=frame_id, camera_info=ci, source=m.topic)
        if copy:
            self.pending.append(self._copied(m))
        self.pending.append(Work(frame, opts.outputs, _Frame(m, rgb, rec.slot)))
        self.n += 1
        return self._emit() if self.n >= opts.batch_size else None


class _BagSink:
    """The scheduler's sink: message building on the build pool, everything to the writer in order."""

    def __init__(
        self,
        emitter: MsgEmitter,
        opts: RunOptions,
        pool: ThreadPoolExecutor,
        q: queue.Queue,
        stop: threading.Event,
        times: StageTimes,
    ) -> None:
        self.emitter, self.opts, self.pool, self.q, self.stop, self.times = (
            emitter,
            opts,
            pool,
            q,
            stop,
            times,
        )

    def _build(self, out: FrameOutputs, fr: _Frame) -> list:
        t = time.perf_counter()
        msgs = self.emitter.frame_messages(out, fr.m)
        if self.opts.copy_input and fr.m.kind in ("frame", "file"):
            msgs = self.emitter.input_messages(fr.m, fr.rgb) + msgs
        self.times.add("build", time.perf_counter() - t)
        return msgs

    def ready(self, work: Work, out: FrameOutputs, names: tuple[str, ...]) -> None:
        """Outputs are written per frame, in order (see :meth:`done`)."""

    def done(self, work: Work, out: FrameOutputs) -> None:
        put(self.q, Built(self.pool.submit(self._build, out, work.tag), work.tag, out), self.stop)

    def passthrough(self, item: Passthrough) -> None:
        put(self.q, item.payload, self.stop)

    def barrier(self, item: Barrier, state: Any) -> None:
        put(self.q, Checkpoint(item.payload, state), self.stop)

    def failed(self, works: list[Work], error: Exception) -> None:
        raise error

    def end(self) -> None:
        put(self.q, END, self.stop)


class _Writer:
    """Writes the sink's records to the bag in order: messages, skipped frames, checkpoints, failures."""

    def __init__(
        self, source: Source, bag: OutputBag, summary: Summary, times: StageTimes, reader: Any
    ) -> None:
        self.source, self.bag, self.summary, self.times, self.reader = source, bag, summary, times, reader
        self.on_frame: Any = None
        self.bar: Any = None

    def _frame(self, fut: Future, fr: _Frame, out: FrameOutputs) -> None:
        t = time.perf_counter()
        msgs = fut.result()
        self.times.add("writer_wait", time.perf_counter() - t)
        t = time.perf_counter()
        for key, log_ns, raw in msgs:
            self.bag.write(key, log_ns, raw)
        self.summary.frames += 1
        self.bar.update(1)
        self.times.add("write", time.perf_counter() - t)
        if self.on_frame is not None:
            t = time.perf_counter()
            self.on_frame(out, fr.rgb, fr.m)
            self.times.add("preview", time.perf_counter() - t)
        self.reader.release(fr.slot)  # the frame's pixels are no longer needed

    def _skip(self, m: InputMessage, reason: str) -> None:
        s = self.summary
        s.undecodable += 1
        where = f"{self.source.path} topic {m.topic} t={m.log_ns} ns" + (
            f" offset {m.offset}" if m.offset is not None else ""
        )
        if len(s.undecodable_examples) < 5:
            s.undecodable_examples.append(f"{where}: {reason}")
        self.bar.update(1)

    def handle(self, item: Built | Copied | Skipped | Checkpoint | Failed) -> None:
        if isinstance(item, Built):
            self._frame(item.messages, item.frame, item.out)
        elif isinstance(item, Copied):
            for key, log_ns, raw in item.records:
                self.bag.write(key, log_ns, raw)
        elif isinstance(item, Skipped):
            self._skip(item.m, item.reason)
        elif isinstance(item, Checkpoint):
            b, s = item.barrier, self.summary
            info = {
                "seq_next": b.seq_next,
                "frames_seen": b.frames_seen,
                "frames": s.frames,
                "undecodable": s.undecodable,
            }
            self.bag.checkpoint(info, item.state)
        else:
            raise item.error

    def run(self, q: queue.Queue, stop: threading.Event, errors: list[BaseException]) -> None:
        try:
            while True:
                item = get(q, stop)
                if item is END:
                    return
                self.handle(item)
        except StoppedError:
            return
        except BaseException as err:  # noqa: BLE001 - surfaced on the calling thread
            errors.append(err)
            stop.set()


def _progress(opts: RunOptions, source: Source, total: int | None, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="frame",
        desc=opts.label or source.path.name,
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _reader(
    source: Source, opts: RunOptions, q: queue.Queue, times: StageTimes, resume: tuple[int, int]
) -> Any:
    args = (opts.copy_input, opts.checkpoint_every, opts.decode_workers, q, times, resume)
    if not opts.reader_process:
        return ThreadReader(source, *args)
    # enough slots for every frame that can be in flight: queues, batches in the scheduler, writer
    slots = opts.queue_frames + 9 * opts.batch_size + 2 * opts.decode_workers + 8
    return ProcessReader(opts.source_args, *args, slots)


def _restore(bag: OutputBag, pipeline: Any, summary: Summary) -> tuple[int, int]:
    """A resumed run: the checkpoint's counters and pipeline state; ``(seq, frames)`` to restart at."""
    cp = getattr(bag, "resume_checkpoint", None)
    if not cp:
        return 0, 0
    summary.frames, summary.undecodable = int(cp.get("frames", 0)), int(cp.get("undecodable", 0))
    summary.resumed_from_frame = int(cp["frames_seen"])
    state = bag.load_state(cp)
    if state is not None:
        pipeline.load_state_dict(state)
    return int(cp["seq_next"]), int(cp["frames_seen"])


def run_source(
    source: Source,
    bag: OutputBag,
    pipeline: Any,
    emitter: MsgEmitter,
    opts: RunOptions,
    *,
    on_frame: Callable[[FrameOutputs, np.ndarray, InputMessage], None] | None = None,
    total: int | None = None,
) -> Summary:
    """Process one input into ``bag`` (already opened); returns the summary (``complete`` False when
    the input is damaged). ``on_frame(outputs, rgb, message)`` runs on the writer thread in output
    order (previews). Raises ``KeyboardInterrupt`` (after stopping the threads) when interrupted and
    any processing error; the bag is left resumable then."""
    summary = Summary(input=str(source.path))
    resume = _restore(bag, pipeline, summary)
    t0, times, stop = time.perf_counter(), StageTimes(), threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=max(4, opts.queue_frames))
    q_out: queue.Queue = queue.Queue(maxsize=max(4, 4 * opts.batch_size))
    build_pool = ThreadPoolExecutor(max(1, opts.build_workers), thread_name_prefix="build")
    reader = _reader(source, opts, q_in, times, resume)
    writer = _Writer(source, bag, summary, times, reader)
    writer.on_frame, writer.bar = on_frame, _progress(opts, source, total, resume[1])
    sink = _BagSink(emitter, opts, build_pool, q_out, stop, times)
    sched = Scheduler(
        pipeline, _Feed(source, opts, q_in, times), sink, in_flight=2, name="offline", stop=stop
    )
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=reader.run, args=(stop,), name="offline-reader", daemon=True),
        threading.Thread(target=writer.run, args=(q_out, stop, errors), name="offline-writer", daemon=True),
    ]
    interrupted: BaseException | None = None
    try:
        for t in threads:
            t.start()
        sched.start(freeze_gc=False)
        while threads[1].is_alive():
            threads[1].join(timeout=0.2)
        sched.join()
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt/SIGTERM/pipeline error: re-raised below
        interrupted = err
    stop.set()
    sched.stop(timeout=30)
    for t in threads:
        t.join(timeout=30)
    reader.close()
    build_pool.shutdown(wait=True, cancel_futures=True)
    writer.bar.close()
    summary.seconds, summary.messages = time.perf_counter() - t0, bag.count
    summary.stages = {**times.t, **sched.times}
    err = errors[0] if errors else interrupted
    if isinstance(err, InputCorruptError):
        summary.error = str(err)
        return summary
    if err is not None:
        raise err
    summary.complete = True
    return summary
