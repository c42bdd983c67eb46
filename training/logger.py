"""Training telemetry: console progress line, TensorBoard scalars and a JSON-lines metrics file."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricLogger", "memory_gb"]


def memory_gb() -> float:
    """Peak CUDA memory allocated (GiB) on the current device, else the process's peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class MetricLogger:
    """Rank-0 logger: ``log(it, scalars)`` prints ``it/s, images/s, losses, lr, memory``, writes TensorBoard
    (when enabled and importable) and appends one JSON line per call to ``metrics.jsonl``."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        total_iters: int,
        images_per_iter: int,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.total = total_iters
        self.images_per_iter = images_per_iter
        self.dir = Path(output_dir)
        self._t = time.perf_counter()
        self._last_it: int | None = None
        self.tb: Any = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.dir / "tb"))
                except ImportError:
                    self.tb = None

    def log(self, it: int, scalars: dict[str, float]) -> str:
        if not self.enabled:
            return ""
        now = time.perf_counter()
        n = 1 if self._last_it is None else max(1, it - self._last_it)
        dt = max(now - self._t, 1e-9)
        self._t, self._last_it = now, it
        its = n / dt
        rec = {
            "iteration": it,
            "it_s": its,
            "images_s": its * self.images_per_iter,
            "mem_gb": memory_gb(),
            **scalars,
        }
        self._jsonl.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "iteration":
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, it)
        losses = " ".join(f"{k}={v:.4f}" for k, v in scalars.items() if k.startswith("loss/"))
        line = (
            f"it {it + 1}/{self.total} | {its:.2f} it/s | {rec['images_s']:.1f} img/s | {losses} | "
            f"lr {scalars.get('lr', 0):.3g} | mem {rec['mem_gb']:.2f} GiB"
        )
        print(line, flush=True)
        return line

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self.tb is not None:
                self.tb.close()
