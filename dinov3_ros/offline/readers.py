"""The input side of the bag tool: read the input in order and decode its images, in a thread pool of
this process or in a child process.

Both readers put the same records on the feed's queue, in input order: :class:`ImageRecord` (an image
and the future of its decoded pixels), copied messages (:class:`~.sources.InputMessage`),
:class:`BarrierRecord` (every ``checkpoint_every`` frames), :class:`FailureRecord` (damaged input) and
finally :data:`END`.

:class:`ProcessReader` runs the reading, the camera_info pairing and the decoding in a child process
(with its own decoder threads) and hands decoded frames over in shared memory, so none of that holds
this process's interpreter lock: the lock is then free for inference, heads and writing. Each frame
occupies a shared-memory slot until the writer has written it (:meth:`ProcessReader.release`); the
slot count bounds the memory.
"""

from __future__ import annotations

import mmap
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .sources import InputCorruptError, InputMessage, decode_message, open_source

END = object()
IMAGE_KINDS = ("image", "compressed", "frame", "file")


@dataclass
class ImageRecord:
    m: InputMessage
    fut: Future  # (RGB uint8 [H, W, 3], stamp ns, frame_id); raises ValueError when undecodable
    slot: int = -1  # shared-memory slot holding the pixels (ProcessReader), -1 otherwise


@dataclass
class BarrierRecord:
    seq_next: int
    frames_seen: int


@dataclass
class FailureRecord:
    error: BaseException


class StoppedError(Exception):
    """Raised inside the tool's threads when the run is being stopped."""


def put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    """``q.put`` that gives up (``StoppedError``) once ``stop`` is set."""
    while True:
        if stop.is_set():
            raise StoppedError
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def forward_failure(q: queue.Queue, err: BaseException, stop: threading.Event) -> None:
    """Send a reader's failure down the queue, in order, for the writer to report (unless stopping)."""
    try:
        put(q, FailureRecord(err), stop)
    except StoppedError:
        pass


def get(q: queue.Queue, stop: threading.Event) -> Any:
    """``q.get`` that gives up (``StoppedError``) once ``stop`` is set."""
    while True:
        if stop.is_set():
            raise StoppedError
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


class _Barriers:
    """Counts image records and says when a checkpoint barrier follows."""

    def __init__(self, every: int, seen: int) -> None:
        self.every, self.seen = every, seen

    def after(self, m: InputMessage) -> BarrierRecord | None:
        self.seen += 1
        if self.every > 0 and self.seen % self.every == 0:
            return BarrierRecord(m.seq + 1, self.seen)
        return None


class ThreadReader:
    """Reads on the calling thread; images are decoded on a pool of ``workers`` threads."""

    def __init__(
        self,
        source: Any,
        copy_input: bool,
        every: int,
        workers: int,
        q: queue.Queue,
        times: Any,
        resume: tuple[int, int],
    ) -> None:
        self.source, self.copy_input, self.q, self.times = source, copy_input, q, times
        self.skip_before, frames_before = resume
        self.barriers = _Barriers(every, frames_before)
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode")

    def _decode(self, m: InputMessage) -> tuple[np.ndarray, int, str]:
        t = time.perf_counter()
        try:
            return decode_message(self.source, m)
        finally:
            self.times.add("decode", time.perf_counter() - t)

    def run(self, stop: threading.Event) -> None:
        try:
            t = time.perf_counter()
            for m in self.source.messages(copy_input=self.copy_input, skip_before=self.skip_before):
                if m.seq < self.skip_before:
                    continue
                self.times.add("read", time.perf_counter() - t)
                if m.kind in IMAGE_KINDS:
                    put(self.q, ImageRecord(m, self.pool.submit(self._decode, m)), stop)
                    b = self.barriers.after(m)
                    if b is not None:
                        put(self.q, b, stop)
                else:
                    put(self.q, m, stop)
                t = time.perf_counter()
            put(self.q, END, stop)
        except StoppedError:
            return
        except BaseException as err:  # noqa: BLE001 - forwarded in order, reported by the writer
            forward_failure(self.q, err, stop)

    def release(self, slot: int) -> None:
        """Nothing to release: decoded frames are ordinary arrays."""

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def slot_dir() -> str:
    """Where the frame slots live: ``/dev/shm`` when it has room (memory), else the temp directory."""
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > (2 << 30):
            return shm
    except OSError:
        pass
    return tempfile.gettempdir()


class _Slots:
    """The parent's view of the child's slots: one unlinked file each (its descriptor passed over the
    socket, so nothing is ever left on disk, however either process ends), mapped here."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}
        self.maps: dict[int, mmap.mmap] = {}

    def add(self, k: int, fd: int | None, size: int) -> None:
        """Slot ``k`` has ``size`` bytes: a new file (``fd``) or the same one grown (``None``)."""
        if fd is not None:
            self.fds[k] = fd
        self.maps[k] = mmap.mmap(self.fds[k], size)

    def view(self, k: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(self.maps[k], dtype=np.uint8, count=int(np.prod(shape))).reshape(shape)

    def close(self) -> None:
        self.maps.clear()  # mappings close once no frame refers to them
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _corrupt_from(state: tuple) -> InputCorruptError:
    file, reason, topic, offset, ts = state
    return InputCorruptError(file, reason, topic=topic, offset=offset, timestamp_ns=ts)


class ProcessReader:
    """Reads and decodes in a child process; frames arrive in shared-memory slots (see module doc)."""

    def __init__(
        self,
        open_kwargs: dict[str, Any],
        copy_input: bool,
        every: int,
        workers: int,
        q: queue.Queue,
        times: Any,
        resume: tuple[int, int],
        max_slots: int,
    ) -> None:
        self.open_kwargs, self.copy_input, self.q, self.times = open_kwargs, copy_input, q, times
        self.workers, self.max_slots = max(1, workers), max(4, max_slots)
        self.skip_before = resume[0]
        self.barriers = _Barriers(every, resume[1])
        self.slots = _Slots()
        self.infos: dict[int, Any] = {}
        self._send_lock = threading.Lock()
        self.conn: Any = None
        self.proc: Any = None

    def _start(self) -> None:
        """A fresh interpreter (never a fork of this process, which runs CUDA and threads) connected by
        a socket pair; its settings are the first message."""
        import socket
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this package's parent, for the child's imports
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "dinov3_ros.offline.readers", str(theirs.fileno())]
        self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(
            {
                "open_kwargs": self.open_kwargs,
                "copy_input": self.copy_input,
                "skip_before": self.skip_before,
                "workers": self.workers,
                "max_slots": self.max_slots,
                "directory": slot_dir(),
            }
        )

    def _record(self, rec: tuple, stop: threading.Event) -> bool:
        """Turn one child record into queue records; False at the end of the input."""
        kind = rec[0]
        if kind == "slot":
            from multiprocessing.reduction import recv_handle

            self.slots.add(rec[1], recv_handle(self.conn) if rec[2] else None, rec[3])
        elif kind == "info":
            self.infos[rec[1]] = rec[2]
        elif kind in ("img", "bad", "msg"):
            m = rec[1]
            m.camera_info = self.infos.get(m.camera_info) if m.camera_info >= 0 else None
            if kind == "msg":
                put(self.q, m, stop)
                return True
            fut: Future = Future()
            if kind == "img":
                fut.set_result((self.slots.view(rec[2], rec[3]), rec[4], rec[5]))
            else:
                fut.set_exception(ValueError(rec[2]))
            put(self.q, ImageRecord(m, fut, rec[2] if kind == "img" else -1), stop)
            b = self.barriers.after(m)
            if b is not None:
                put(self.q, b, stop)
        elif kind == "times":
            for k, v in rec[1].items():
                self.times.add(k, v)
        elif kind == "fail":
            err = (
                _corrupt_from(rec[2])
                if rec[1] == "corrupt"
                else RuntimeError(f"reading the input failed: {rec[2]}")
            )
            put(self.q, FailureRecord(err), stop)
            return False
        else:  # "end"
            put(self.q, END, stop)
            return False
        return True

    def run(self, stop: threading.Event) -> None:
        try:
            self._start()
            while not stop.is_set():
                if not self.conn.poll(0.1):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"the reader process exited with code {self.proc.returncode}")
                    continue
                t = time.perf_counter()
                rec = self.conn.recv()
                self.times.add("receive", time.perf_counter() - t)
                if not self._record(rec, stop):
                    return
        except StoppedError:
            return
        except BaseException as err:  # noqa: BLE001 - forwarded in order, reported by the writer
            forward_failure(self.q, err, stop)

    def release(self, slot: int) -> None:
        """The writer is done with the frame in ``slot``: the child may reuse it."""
        if slot >= 0 and self.conn is not None:
            with self._send_lock:
                try:
                    self.conn.send(("free", slot))
                except OSError:  # the child is gone (end of input or a stop)
                    pass

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()  # the child sees the end of its connection and exits
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.slots.close()


# ------------------------------------------------------------------------------------- child process


class _ChildSlots:
    """The child's slot files: created on demand (up to ``max_slots``), grown when a frame is larger."""

    def __init__(self, conn: Any, directory: str, max_slots: int) -> None:
        self.conn, self.dir, self.max = conn, directory, max_slots
        self.free: list[int] = []
        self.files: list[tuple[int, mmap.mmap, int]] = []  # fd, map, size

    def _poll_free(self, block: bool) -> None:
        while block or self.conn.poll():
            msg = self.conn.recv()  # EOFError when the parent is gone: ends the child
            if msg[0] == "free":
                self.free.append(msg[1])
            block = False

    def take(self, nbytes: int) -> int:
        self._poll_free(block=False)
        if not self.free and len(self.files) < self.max:
            from multiprocessing.reduction import send_handle

            fd, path = tempfile.mkstemp(prefix="dinov3-frame-", dir=self.dir)
            os.unlink(path)  # only the descriptors keep the file: nothing is left behind
            os.ftruncate(fd, nbytes)
            self.files.append((fd, mmap.mmap(fd, nbytes), nbytes))
            self.conn.send(("slot", len(self.files) - 1, True, nbytes))
            send_handle(self.conn, fd, os.getppid())  # right after its record: read in this order
            return len(self.files) - 1
        while not self.free:
            self._poll_free(block=True)
        k = self.free.pop()
        fd, mm, size = self.files[k]
        if size < nbytes:  # a larger frame: grow this slot
            os.ftruncate(fd, nbytes)
            mm.close()
            self.files[k] = (fd, mmap.mmap(fd, nbytes), nbytes)
            self.conn.send(("slot", k, False, nbytes))
        return k

    def write(self, k: int, rgb: np.ndarray) -> None:
        np.frombuffer(self.files[k][1], dtype=np.uint8, count=rgb.size)[:] = rgb.reshape(-1)


class _Infos:
    """Camera intrinsics sent once per distinct value; records carry a token (-1: none)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sent: list[Any] = []

    def token(self, info: Any) -> int:
        if info is None:
            return -1
        last = self.sent[-1] if self.sent else None
        if last is not None and (info is last or _same_intrinsics(info, last)):
            return len(self.sent) - 1
        self.sent.append(info)
        self.conn.send(("info", len(self.sent) - 1, info))
        return len(self.sent) - 1


def _same_intrinsics(a: Any, b: Any) -> bool:
    return (
        (a.width, a.height, a.distortion_model) == (b.width, b.height, b.distortion_model)
        and np.array_equal(a.K, b.K)
        and np.array_equal(a.P, b.P)
        and np.array_equal(a.D, b.D)
    )


def _emit(
    conn: Any, slots: _ChildSlots, infos: _Infos, m: InputMessage, fut: Future | None, copy_input: bool
) -> None:
    keep_raw = fut is None or (copy_input and m.conn >= 0)
    sent = replace(m, array=None, raw=m.raw if keep_raw else None, camera_info=None)
    sent.camera_info = infos.token(m.camera_info)  # type: ignore[assignment]  # resolved by the parent
    if fut is None:
        conn.send(("msg", sent))
        return
    try:
        rgb, stamp, frame_id = fut.result()
    except Exception as err:  # noqa: BLE001 - an undecodable frame (the reason goes to the summary)
        conn.send(("bad", sent, str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"))
        return
    rgb = np.ascontiguousarray(rgb)
    k = slots.take(rgb.nbytes)
    slots.write(k, rgb)
    conn.send(("img", sent, k, rgb.shape, stamp, frame_id))


def child_main(
    conn: Any,
    open_kwargs: dict[str, Any],
    copy_input: bool,
    skip_before: int,
    workers: int,
    max_slots: int,
    directory: str,
) -> None:
    """The reader process: read, pair camera_info, decode (``workers`` threads), send in order."""
    import cv2

    cv2.setNumThreads(1)  # one image per decoder thread
    source = open_source(**open_kwargs)
    slots, infos = _ChildSlots(conn, directory, max_slots), _Infos(conn)
    pending: deque[tuple[InputMessage, Future | None]] = deque()
    pool = ThreadPoolExecutor(workers)
    t_read, t = 0.0, time.perf_counter()
    try:
        for m in source.messages(copy_input=copy_input, skip_before=skip_before):
            t_read += time.perf_counter() - t
            if m.seq >= skip_before:
                pending.append((m, pool.submit(decode_message, source, m) if m.kind in IMAGE_KINDS else None))
                while len(pending) > 2 * workers:
                    _emit(conn, slots, infos, *pending.popleft(), copy_input)
            t = time.perf_counter()
        while pending:
            _emit(conn, slots, infos, *pending.popleft(), copy_input)
        conn.send(("times", {"read": t_read}))
        conn.send(("end",))
    except InputCorruptError as err:
        while pending:
            _emit(conn, slots, infos, *pending.popleft(), copy_input)
        conn.send(("fail", "corrupt", (err.file, err.reason, err.topic, err.offset, err.timestamp_ns)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent stopped the run
    except Exception as err:  # noqa: BLE001 - reported by the parent, in order
        conn.send(("fail", "other", f"{type(err).__name__}: {err}"))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        source.close()


def _child_entry(fd: int) -> None:
    """``python -m dinov3_ros.offline.readers FD``: the reader process, on socket ``FD``."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        settings = conn.recv()
    except EOFError:
        return
    child_main(conn, **settings)


if __name__ == "__main__":
    import sys

    _child_entry(int(sys.argv[1]))
