"""Pipelined execution of one input: read -> decode (threads) -> batched inference -> build -> write.

Threads and bounded queues (memory stays bounded whatever the input length)::

    reader thread ──q_in──> main thread (batches, Pipeline.process) ──q_out──> writer thread
         │ submits decode jobs                 │ submits message building/serialisation
         └──> decode pool                      └──> build pool

Order is deterministic: every input record gets a sequence number, batches are consecutive image
frames in input order (cut only at checkpoint barriers every ``checkpoint_every`` frames and at the
end), and the main thread forwards records to the writer strictly in sequence order. So the output
depends only on the input and the settings, never on thread timing; a resumed run (which restarts at
a barrier with the pipeline state saved there) writes exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bagout import ConnKey, OutputBag
from .sources import InputCorruptError, InputMessage, Source, decode_message

_END = object()


@dataclass
class RunOptions:
    """Execution settings of one input."""

    outputs: set[str]
    batch_size: int = 8
    decode_workers: int = 2
    build_workers: int = 2
    queue_frames: int = 32  # decoded frames in flight between reader and inference
    checkpoint_every: int = 256  # image frames between resume points (also batch barriers)
    copy_input: bool = False
    strict: bool = False  # an undecodable frame is fatal (else counted and skipped)
    progress: bool = True
    label: str = ""


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
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage/wait (see StageTimes)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        s = (
            f"{self.input}: {self.frames} frames, {self.undecodable} undecodable, {self.messages} messages, "
            f"{self.seconds:.1f} s ({self.fps:.1f} frames/s)"
        )
        if self.resumed_from_frame:
            s += f", resumed after frame {self.resumed_from_frame}"
        s += f" -> {self.output}" if self.complete else f" -> INCOMPLETE {self.output}"
        if self.error:
            s += f"\n  error: {self.error}"
        for ex in self.undecodable_examples:
            s += f"\n  undecodable: {ex}"
        if self.stages and self.frames:
            per = ", ".join(f"{k} {v * 1e3 / self.frames:.2f}" for k, v in self.stages.items() if v > 0)
            s += f"\n  ms/frame (thread time; pools summed over workers): {per}"
        return s


class StageTimes:
    """Seconds spent per stage and per queue wait, summed over the threads doing it (thread-safe).

    Busy stages: ``read`` (reader: input parsing), ``decode`` (decode pool, summed over workers),
    ``infer`` (main: preprocess + engine launch), ``finish`` (heads thread), ``build`` (build pool,
    summed), ``write`` (writer: bag writes). Waits: ``wait_*`` is time a thread sat blocked on a
    neighbour (``main_wait_input`` = main waiting for decoded frames, ``main_wait_heads`` = main
    blocked because the heads thread is behind, ``heads_wait_out`` = heads blocked by a full writer
    queue, ``writer_wait`` = writer idle or waiting for a build).
    """

    KEYS = (
        "read",
        "decode",
        "main_wait_input",
        "infer",
        "main_wait_heads",
        "finish",
        "heads_wait_in",
        "heads_wait_out",
        "build",
        "writer_wait",
        "write",
    )

    def __init__(self) -> None:
        self.t = dict.fromkeys(self.KEYS, 0.0)
        self._lock = threading.Lock()

    def add(self, key: str, dt: float) -> None:
        with self._lock:
            self.t[key] = self.t.get(key, 0.0) + dt


class Emitter:
    """Turns pipeline outputs and copied input into serialized messages (see :mod:`.emit`)."""

    def frame_messages(self, fo: Any, m: InputMessage, rgb: np.ndarray) -> list[tuple[ConnKey, int, bytes]]:
        raise NotImplementedError

    def input_messages(self, m: InputMessage, rgb: np.ndarray | None) -> list[tuple[ConnKey, int, bytes]]:
        raise NotImplementedError

    def resolve(self, key: ConnKey) -> dict[str, Any]:
        raise NotImplementedError


# ---------------------------------------------------------------------------- pipeline state


def get_state(pipeline: Any) -> bytes:
    """Serialize the pipeline's per-source state (PCA bases, keyframes, trackers)."""
    if hasattr(pipeline, "state_dict"):
        return pickle.dumps(pipeline.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)
    with pipeline._lock:
        return pickle.dumps(pipeline._states, protocol=pickle.HIGHEST_PROTOCOL)


def set_state(pipeline: Any, blob: bytes) -> None:
    """Restore what :func:`get_state` saved."""
    st = pickle.loads(blob)
    if hasattr(pipeline, "load_state_dict"):
        pipeline.load_state_dict(st)
        return
    with pipeline._lock:
        pipeline._states.clear()
        pipeline._states.update(st)


# ---------------------------------------------------------------------------- staged inference


class Stages:
    """``Pipeline.process`` split in two so the engine of batch k+1 overlaps the heads of batch k.

    ``infer(frames, outputs)`` (preprocess + engine + depth head; touches no per-source state) runs on
    the main thread, ``finish(handle)`` (heads, in call order; updates per-source state) on the heads
    thread; ``finish(infer(f, o)) == pipeline.process(f, o)``. Uses the pipeline's public
    ``infer``/``finish`` (mode ``"api"``, alias ``"split"``); a pipeline without them, or mode
    ``"process"`` (env ``DINOV3_OFFLINE_STAGES``), runs plain ``process`` on the heads thread (no
    engine/heads overlap).
    """

    def __init__(self, pipeline: Any, mode: str | None = None) -> None:
        import os

        self.p = pipeline
        if mode is None:
            mode = os.environ.get("DINOV3_OFFLINE_STAGES", "")
        has_api = hasattr(pipeline, "infer") and hasattr(pipeline, "finish")
        if mode in ("", "api", "split"):
            mode = "api" if has_api else "process"
        if mode not in ("api", "process"):
            raise ValueError(f"DINOV3_OFFLINE_STAGES must be 'api', 'split' or 'process', got {mode!r}")
        self.mode = mode

    def infer(self, frames: list[Any], outputs: set[str]) -> Any:
        if not frames:
            return ("none",)
        if self.mode == "api":
            return ("api", self.p.infer(frames, outputs))
        return ("process", frames, outputs)

    def finish(self, h: Any) -> list[Any]:
        if h[0] == "none":
            return []
        if h[0] == "api":
            return list(self.p.finish(h[1]))
        return self.p.process(h[1], h[2])


# ---------------------------------------------------------------------------- run


@dataclass
class _Img:
    m: InputMessage
    fut: Future


@dataclass
class _Barrier:
    seq_next: int
    frames_seen: int


@dataclass
class _Failure:
    seq_next: int
    error: BaseException


class _StopError(Exception):
    pass


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _StopError
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _StopError
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


def _profiler() -> Any:
    """A running cProfile profiler when ``DINOV3_OFFLINE_PROFILE`` names a directory (developer aid)."""
    import os

    if not os.environ.get("DINOV3_OFFLINE_PROFILE"):
        return None
    import cProfile

    pr = cProfile.Profile()
    pr.enable()
    return pr


def _dump_profile(pr: Any, name: str) -> None:
    import os

    if pr is None:
        return
    pr.disable()
    d = Path(os.environ["DINOV3_OFFLINE_PROFILE"])
    d.mkdir(parents=True, exist_ok=True)
    pr.dump_stats(str(d / f"{name}.prof"))


def _profiled(fn: Callable[[], None], name: str) -> Callable[[], None]:
    """``fn`` run under cProfile per thread with ``DINOV3_OFFLINE_PROFILE=DIR`` (stats in DIR/name.prof).

    Python >= 3.12 allows one cProfile at a time, which then sees every thread: only ``main.prof``.
    """
    if sys.version_info >= (3, 12):
        return fn

    def run() -> None:
        pr = _profiler()
        try:
            fn()
        finally:
            _dump_profile(pr, name)

    return run


def run_source(
    source: Source,
    bag: OutputBag,
    pipeline: Any,
    emitter: Emitter,
    opts: RunOptions,
    *,
    on_frame: Callable[[Any, np.ndarray, InputMessage], None] | None = None,
    total: int | None = None,
) -> Summary:
    """Process one input into ``bag`` (already opened); returns the summary (``complete`` False on error).

    ``on_frame(frame_outputs, rgb, message)`` runs on the writer thread in output order (previews).
    Raises ``KeyboardInterrupt`` (after stopping the threads) when interrupted; the bag is left
    resumable then.
    """
    summary = Summary(input=str(source.path))
    cp = getattr(bag, "resume_checkpoint", None)
    skip_before = int(cp["seq_next"]) if cp else 0
    frames_before = int(cp["frames_seen"]) if cp else 0
    if cp:
        summary.frames = int(cp.get("frames", 0))
        summary.undecodable = int(cp.get("undecodable", 0))
        summary.resumed_from_frame = frames_before
        blob = bag.load_state(cp)
        if blob is not None:
            set_state(pipeline, blob)

    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=max(4, opts.queue_frames))
    q_out: queue.Queue = queue.Queue(maxsize=max(4, 4 * opts.batch_size))
    decode_pool = ThreadPoolExecutor(max(1, opts.decode_workers), thread_name_prefix="decode")
    build_pool = ThreadPoolExecutor(max(1, opts.build_workers), thread_name_prefix="build")
    writer_exc: list[BaseException] = []
    t0 = time.perf_counter()
    times = StageTimes()
    clock = time.perf_counter

    def decode(m: InputMessage) -> tuple[np.ndarray, int, str]:
        t = clock()
        try:
            return decode_message(source, m)
        finally:
            times.add("decode", clock() - t)

    # -- reader ----------------------------------------------------------------------------
    def reader() -> None:
        seen = frames_before
        seq_next = skip_before
        try:
            t = clock()
            for m in source.messages(copy_input=opts.copy_input, skip_before=skip_before):
                if m.seq < skip_before:
                    continue
                seq_next = m.seq + 1
                if m.kind in ("image", "compressed", "frame", "file"):
                    fut = decode_pool.submit(decode, m)
                    times.add("read", clock() - t)
                    _put(q_in, _Img(m, fut), stop)
                    seen += 1
                    if opts.checkpoint_every > 0 and seen % opts.checkpoint_every == 0:
                        _put(q_in, _Barrier(seq_next, seen), stop)
                else:
                    times.add("read", clock() - t)
                    _put(q_in, m, stop)
                t = clock()
            _put(q_in, _END, stop)
        except _StopError:
            return
        except BaseException as err:  # noqa: BLE001 - forwarded in order, reported by the writer
            try:
                _put(q_in, _Failure(seq_next, err), stop)
            except _StopError:
                return

    # -- writer ----------------------------------------------------------------------------
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=frames_before,
        unit="frame",
        desc=opts.label or source.path.name,
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )

    def writer() -> None:
        try:
            while True:
                tw = clock()
                item = _get(q_out, stop)
                if item is _END:
                    return
                kind = item[0]
                if kind == "msgs":
                    times.add("writer_wait", clock() - tw)
                    tw = clock()
                    for key, t, raw in item[1]:
                        bag.write(key, t, raw)
                    times.add("write", clock() - tw)
                elif kind == "frame":
                    _kind, fut, m = item
                    msgs, fo, rgb = fut.result()
                    times.add("writer_wait", clock() - tw)
                    tw = clock()
                    for key, t, raw in msgs:
                        bag.write(key, t, raw)
                    summary.frames += 1
                    bar.update(1)
                    times.add("write", clock() - tw)
                    if on_frame is not None:
                        tw = clock()
                        on_frame(fo, rgb, m)
                        times.add("preview", clock() - tw)
                elif kind == "skip":
                    _kind, m, reason = item
                    summary.undecodable += 1
                    where = f"{source.path} topic {m.topic} t={m.log_ns} ns" + (
                        f" offset {m.offset}" if m.offset is not None else ""
                    )
                    if len(summary.undecodable_examples) < 5:
                        summary.undecodable_examples.append(f"{where}: {reason}")
                    bar.update(1)
                elif kind == "checkpoint":
                    _kind, b, state = item
                    bag.checkpoint(
                        {
                            "seq_next": b.seq_next,
                            "frames_seen": b.frames_seen,
                            "frames": summary.frames,
                            "undecodable": summary.undecodable,
                        },
                        state,
                    )
                elif kind == "failure":
                    raise item[1].error
        except _StopError:
            return
        except BaseException as err:  # noqa: BLE001 - surfaced on the main thread
            writer_exc.append(err)
            stop.set()

    rt = threading.Thread(target=_profiled(reader, "reader"), name="offline-reader", daemon=True)
    wt = threading.Thread(target=_profiled(writer, "writer"), name="offline-writer", daemon=True)
    rt.start()
    wt.start()

    # -- main: batching + inference ------------------------------------------------------------
    pending: list[Any] = []  # records waiting for the current batch, in order

    def build(fo: Any, m: InputMessage, rgb: np.ndarray) -> tuple[list, Any, np.ndarray]:
        t = clock()
        msgs = emitter.frame_messages(fo, m, rgb)
        if opts.copy_input and m.kind in ("frame", "file"):
            msgs = emitter.input_messages(m, rgb) + msgs
        times.add("build", clock() - t)
        return msgs, fo, rgb

    stages = Stages(pipeline)
    q_heads: queue.Queue = queue.Queue(maxsize=2)  # batches between engine (main) and heads thread

    def heads() -> None:
        """Heads + per-source state in batch order; forwards everything to the writer in order."""
        try:
            while True:
                t = clock()
                item = _get(q_heads, stop)
                times.add("heads_wait_in", clock() - t)
                if item is _END:
                    _put(q_out, _END, stop)
                    return
                if item[0] == "batch":
                    t = clock()
                    it = iter(stages.finish(item[1]))
                    times.add("finish", clock() - t)
                    for rec in item[2]:
                        t = clock()
                        if isinstance(rec, tuple) and rec[0] == "img":
                            fut = build_pool.submit(build, next(it), rec[1], rec[3])
                            _put(q_out, ("frame", fut, rec[1]), stop)
                        else:
                            _put(q_out, rec, stop)
                        times.add("heads_wait_out", clock() - t)
                elif item[0] == "checkpoint":
                    _put(q_out, ("checkpoint", item[1], get_state(pipeline)), stop)
                else:
                    _put(q_out, item[1], stop)
        except _StopError:
            return
        except BaseException as err:  # noqa: BLE001 - surfaced on the main thread
            writer_exc.append(err)
            stop.set()

    ht = threading.Thread(target=_profiled(heads, "heads"), name="offline-heads", daemon=True)
    ht.start()

    def _to_heads(rec: Any) -> None:
        _put(q_heads, rec if rec is _END else ("rec", rec), stop)

    def flush() -> None:
        frames = [rec[2] for rec in pending if isinstance(rec, tuple) and rec[0] == "img"]
        if frames:
            t = clock()
            handle = stages.infer(frames, opts.outputs)
            t1 = clock()
            times.add("infer", t1 - t)
            _put(q_heads, ("batch", handle, list(pending)), stop)
            times.add("main_wait_heads", clock() - t1)
        else:
            for rec in pending:
                _to_heads(rec)
        pending.clear()

    def copied_record(m: InputMessage) -> tuple[ConnKey, int, Any]:
        """An input message copied to the output as is (``--copy-input`` and non-image topics)."""
        return ConnKey(m.topic, source.connections[m.conn].msgtype, f"in:{m.conn}"), m.log_ns, m.raw

    interrupted: BaseException | None = None
    main_prof = _profiler()
    try:
        from dinov3_ros.pipeline.types import CameraIntrinsics, Frame

        n_batch = 0
        while True:
            if writer_exc:
                break
            t = clock()
            item = _get(q_in, stop)
            times.add("main_wait_input", clock() - t)
            if item is _END:
                flush()
                _to_heads(_END)
                break
            if isinstance(item, _Failure):
                flush()
                _to_heads(("failure", item))
                _to_heads(_END)
                break
            if isinstance(item, _Barrier):
                flush()
                n_batch = 0
                _put(q_heads, ("checkpoint", item), stop)
                continue
            if isinstance(item, InputMessage):  # copied input (camera_info, other topics)
                rec = ("msgs", [copied_record(item)])
                if pending:
                    pending.append(rec)
                else:
                    _to_heads(rec)
                continue
            assert isinstance(item, _Img)
            m = item.m
            t = clock()
            try:
                rgb, stamp, frame_id = item.fut.result()
            except Exception as err:  # noqa: BLE001 - undecodable frame
                reason = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
                if opts.strict:
                    flush()
                    err2 = InputCorruptError(
                        source.path,
                        f"undecodable frame: {reason}",
                        topic=m.topic,
                        offset=m.offset,
                        timestamp_ns=m.log_ns,
                    )
                    _to_heads(("failure", _Failure(m.seq, err2)))
                    _to_heads(_END)
                    break
                recs = [("skip", m, reason)]
                if opts.copy_input and m.raw is not None and m.conn >= 0:
                    recs.append(("msgs", [copied_record(m)]))
                if pending:
                    pending.extend(recs)
                else:
                    for r in recs:
                        _to_heads(r)
                continue
            times.add("main_wait_input", clock() - t)
            ci = _intrinsics(m.camera_info, rgb, CameraIntrinsics)
            frame = Frame(image=rgb, stamp_ns=stamp, frame_id=frame_id, camera_info=ci, source=m.topic)
            if opts.copy_input and m.raw is not None and m.conn >= 0:
                pending.append(("msgs", [copied_record(m)]))
            pending.append(("img", m, frame, rgb))
            n_batch += 1
            if n_batch >= opts.batch_size:
                flush()
                n_batch = 0
    except _StopError:
        pass
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt/SIGTERM/pipeline error: re-raised below
        interrupted = err
        stop.set()
    _dump_profile(main_prof, "main")
    if interrupted is None and not writer_exc:
        wt.join()
    stop.set()
    rt.join(timeout=5)
    ht.join(timeout=30)
    wt.join(timeout=30)
    decode_pool.shutdown(wait=True, cancel_futures=True)
    build_pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    summary.messages = bag.count
    summary.stages = dict(times.t)
    if interrupted is not None:
        raise interrupted
    if writer_exc:
        err = writer_exc[0]
        if isinstance(err, InputCorruptError):
            summary.error = str(err)
            return summary
        raise err
    summary.complete = True
    return summary


def _intrinsics(k: Any, rgb: np.ndarray, cls: Any) -> Any:
    """Intrinsics for a decoded image: a bag's ``CameraIntrinsics`` (rescaled if calibrated at another
    size) or CLI/YAML :class:`~.sources.Intrinsics`; ``None`` when absent."""
    if k is None:
        return None
    H, W = rgb.shape[:2]
    if isinstance(k, cls):
        return k if (k.width, k.height) == (W, H) else k.resized(W, H)
    w, h = (k.width or W), (k.height or H)
    intr = cls(k.k(), w, h, np.asarray(k.d, dtype=np.float64), k.distortion_model or "plumb_bob")
    return intr if (w, h) == (W, H) else intr.resized(W, H)
