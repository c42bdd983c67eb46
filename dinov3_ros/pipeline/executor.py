"""Runs the registered heads of one inference: where each runs, CUDA streams, waiting for what a head
reads, and reporting every output the moment it is final.

Per batch: each head's ``prepare`` (batched host copies), then every frame's heads. With
``parallel_heads`` a head whose ``worker`` is ``"own"`` runs in a thread of its own (one thread: a
source's frames stay in order, as its state needs) and ``"pool"`` heads in a shared pool; heads that
read nothing computed on the calling thread start for every frame of the batch at once. The other
heads run on the calling thread in frame order. On CUDA every worker thread has its own stream that
waits for the inference, so one head's synchronisations never wait for another head's kernels.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from dinov3_ros.core.frames import FrameOutputs
from dinov3_ros.heads._common import to_host
from dinov3_ros.pipeline.outputs.base import BatchContext, FrameJob, Output

#: ``on_ready(frame index, outputs, output names)``: outputs ``names`` of frame ``index`` are final
ReadyCallback = Callable[[int, FrameOutputs, tuple[str, ...]], None]
#: threads of the shared pool (stateless per-frame heads; numpy/OpenCV/torch release the GIL)
POOL_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))


class HeadRunner:
    """Thread pools and CUDA streams of one pipeline's heads (see module doc)."""

    def __init__(self, device: str) -> None:
        dev = torch.device(device)
        self.device = dev
        self.cuda = dev.type == "cuda" and torch.cuda.is_available()
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._local = threading.local()  # .stream: each worker thread's own CUDA stream
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the worker threads (after their current work)."""
        with self._lock:
            pools, self._pools = self._pools, {}
        for p in pools.values():
            p.shutdown(wait=True)

    def _pool(self, head: Output) -> ThreadPoolExecutor:
        key, n = (head.name, 1) if head.worker == "own" else ("pool", POOL_WORKERS)
        with self._lock:
            ex = self._pools.get(key)
            if ex is None:
                ex = self._pools[key] = ThreadPoolExecutor(n, thread_name_prefix=f"dinov3_{key}")
        return ex

    def _event(self) -> Any:
        """A CUDA event recorded now on the calling thread's stream (None off CUDA)."""
        if not self.cuda:
            return None
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return ev

    def _submit(self, head: Output, fn: Callable[[], None], ready: Any) -> Future:
        if not self.cuda:
            return self._pool(head).submit(fn)

        def on_stream() -> None:
            own = getattr(self._local, "stream", None)
            if own is None:
                own = self._local.stream = torch.cuda.Stream(device=self.device)
            own.wait_event(ready)
            with torch.cuda.stream(own):
                fn()

        return self._pool(head).submit(on_stream)

    def run(self, batch: BatchContext, heads: list[Output], on_ready: ReadyCallback | None = None) -> None:
        """Compute ``heads`` (in message order) for every frame of ``batch`` into ``batch.outs``;
        raises the first error of any head after every other head has finished."""
        _BatchRun(self, batch, heads, on_ready).run()


class _BatchRun:
    """One batch through :meth:`HeadRunner.run`."""

    def __init__(self, runner: HeadRunner, batch: BatchContext, heads: list[Output], on_ready: Any) -> None:
        self.r, self.b, self.heads, self.on_ready = runner, batch, heads, on_ready
        self.names = {h.name for h in heads}
        self.read = {n for h in heads for n in (*h.requires, *h.uses) if n in self.names}
        self.done: dict[tuple[int, str], Future] = {}
        self.deferred: list[tuple[int, Output, torch.Tensor]] = []
        self.lock = threading.Lock()

    def value(self, i: int) -> Callable[[str], Any]:
        def get(name: str) -> Any:
            if name not in self.names:
                return None
            self.done[(i, name)].result()  # waits; re-raises that head's error
            return self.b.outs[i].values.get(name)

        return get

    def _store(self, i: int, head: Output, value: Any, ms: float) -> None:
        out = self.b.outs[i]
        out.timings_ms[head.name] = ms
        if head.batch_copy and isinstance(value, torch.Tensor):
            if head.name not in self.read:
                with self.lock:
                    self.deferred.append((i, head, value))
                return
            value = to_host(value)
        out.values[head.name] = value
        if self.on_ready is not None:
            self.on_ready(i, out, (head.name,))

    def _execute(self, i: int, head: Output) -> None:
        fut = self.done[(i, head.name)]
        try:
            job = FrameJob(self.b, i, self.b.states[i].get(head.name), self.value(i))
            for name in head.requires:
                job.value(name)
            t = time.perf_counter()
            value = head.compute(job)
            self._store(i, head, value, (time.perf_counter() - t) * 1e3)
        except BaseException as exc:  # noqa: BLE001 - reported by run() once every head is done
            fut.set_exception(exc)
            return
        fut.set_result(None)

    def _execute_many(self, frames: tuple[int, ...], head: Output) -> None:
        for i in frames:
            self._execute(i, head)

    def _chunk(self, head: Output, n: int) -> int:
        """Frames per task: all of a batch for an own-thread head (it runs them in order anyway), an
        even share of the pool's threads for a pool head; one submission per frame would cost more
        than a light head's work."""
        return n if head.worker == "own" else max(1, -(-n // POOL_WORKERS))

    def run(self) -> None:
        b = self.b
        t = time.perf_counter()
        for h in self.heads:
            h.prepare(b)
        prep_ms = (time.perf_counter() - t) * 1e3
        for out in b.outs:
            out.timings_ms["transfer"] = prep_ms
        n = len(b.frames)
        self.done = {(i, h.name): Future() for i in range(n) for h in self.heads}
        aside = [h for h in self.heads if b.cfg.parallel_heads and h.worker != "finish"]
        self._submit_independent(aside, n)
        self._run_frames(aside, n)
        errors = [f.exception() for f in self.done.values()]
        self._settle()
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def _submit_independent(self, aside: list[Output], n: int) -> None:
        """Heads reading nothing computed on this thread start at once, for every frame, in chunks."""
        ready = self.r._event()
        for h in aside:
            if not h.requires:
                k = self._chunk(h, n)
                for lo in range(0, n, k):
                    frames = tuple(range(lo, min(n, lo + k)))
                    self.r._submit(h, lambda f=frames, h=h: self._execute_many(f, h), ready)

    def _run_frames(self, aside: list[Output], n: int) -> None:
        """The remaining heads in frame order: this thread's own, the others submitted in chunks once
        the chunk's frames are through this thread (a chunk's event covers their work), and any chunk
        a head here waits for is submitted before the head runs."""
        pending: dict[str, list[int]] = {}
        by_name = {h.name: h for h in aside}

        def flush(name: str) -> None:
            h, frames = by_name[name], pending.pop(name, [])
            if frames:
                for dep in (*h.requires, *h.uses):  # what it waits for is queued before it
                    if dep in pending:
                        flush(dep)
                self.r._submit(h, lambda f=tuple(frames), h=h: self._execute_many(f, h), self.r._event())

        for i in range(n):
            for h in self.heads:
                if h in aside:
                    if h.requires:
                        pending.setdefault(h.name, []).append(i)
                        if len(pending[h.name]) == self._chunk(h, n):
                            flush(h.name)
                    continue
                for dep in (*h.requires, *h.uses):
                    if dep in pending:
                        flush(dep)
                self._execute(i, h)
        for name in list(pending):
            if name in pending:
                flush(name)

    def _settle(self) -> None:
        """Copy the deferred ``batch_copy`` results to the host, one copy per output, and report them."""
        by_head: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for i, head, v in self.deferred:
            by_head.setdefault(head.name, []).append((i, v))
        for name, items in by_head.items():
            t = time.perf_counter()
            host = torch.stack([v for _i, v in items]).cpu().numpy()
            per = (time.perf_counter() - t) * 1e3 / len(items)
            for (i, _v), value in zip(items, host):
                out = self.b.outs[i]
                out.values[name] = value
                out.timings_ms[name] = out.timings_ms.get(name, 0.0) + per
                if self.on_ready is not None:
                    self.on_ready(i, out, (name,))
