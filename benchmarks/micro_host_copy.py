"""Host-side copies of the offline tool's batch upload, alone and next to busy decoder threads.

    python benchmarks/micro_host_copy.py --frames 32 --decoders 8

Times (ms per batch of ``--frames`` 640x480 RGB frames): allocating the pinned batch buffer, copying the
decoded frames into it (numpy per frame, one ``torch.stack``), the same into pageable memory, and the
per-frame host->device copies from pinned frame slots; each alone and while ``--decoders`` threads
decode JPEGs as the tool's decode pool does.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import cv2
import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--decoders", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    img = np.stack([127 + 100 * np.sin(xx / 17), 127 + 100 * np.cos(yy / 13), (xx + yy) % 255], -1)
    img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    frames = [cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR) for _ in range(args.frames)]
    n = len(frames)
    dev = torch.device("cuda:0" if cuda else "cpu")

    def pinned_numpy() -> None:
        host = torch.empty((n, 480, 640, 3), dtype=torch.uint8, pin_memory=cuda)
        hn = host.numpy()
        for k, a in enumerate(frames):
            hn[k] = a
        host.to(dev, non_blocking=cuda)

    def pinned_stack() -> None:
        host = torch.empty((n, 480, 640, 3), dtype=torch.uint8, pin_memory=cuda)
        torch.stack([torch.from_numpy(a) for a in frames], out=host)
        host.to(dev, non_blocking=cuda)

    def pageable_stack() -> None:
        host = torch.empty((n, 480, 640, 3), dtype=torch.uint8)
        torch.stack([torch.from_numpy(a) for a in frames], out=host)
        host.to(dev)

    slots = torch.empty((n, 480, 640, 3), dtype=torch.uint8, pin_memory=cuda)
    for k, a in enumerate(frames):
        slots[k].numpy()[:] = a
    slot_views = [slots[k] for k in range(n)]

    def from_slots() -> None:
        torch.stack([s.to(dev, non_blocking=cuda) for s in slot_views])

    def alloc_only() -> None:
        torch.empty((n, 480, 640, 3), dtype=torch.uint8, pin_memory=cuda)

    stop = threading.Event()

    def decoder() -> None:
        buf = np.frombuffer(jpg, np.uint8)
        while not stop.is_set():
            cv2.imdecode(buf, cv2.IMREAD_COLOR)

    tests = {
        "alloc pinned": alloc_only,
        "copy numpy->pinned (per frame)": pinned_numpy,
        "copy torch.stack->pinned": pinned_stack,
        "copy torch.stack->pageable + H2D": pageable_stack,
        "H2D from pinned slots": from_slots,
    }
    res = {}
    for busy in (False, True):
        ths = []
        if busy:
            stop.clear()
            ths = [threading.Thread(target=decoder, daemon=True) for _ in range(args.decoders)]
            for t in ths:
                t.start()
        for name, fn in tests.items():
            fn()
            ts = []
            for _ in range(args.repeats):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize()
                ts.append((time.perf_counter() - t) * 1e3)
            key = f"{name}{' | ' + str(args.decoders) + ' decoders busy' if busy else ''}"
            res[key] = statistics.median(ts)
            print(f"{key:60s} {res[key]:8.2f} ms / {n} frames", flush=True)
        stop.set()
        for t in ths:
            t.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
