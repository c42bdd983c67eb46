"""Depth-head batches from frame pools rendered on the training device, one pool per image size.

Iteration ``it`` uses size ``it % len(sizes)``; its frames, horizontal flips and brightness factors
are drawn from ``sample_seed(seed, it)``, so a resumed run replays the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from training.data.dataset import sample_seed
from training.data.gpu_augment import normalize

from .loader import DEFAULT_POOL, make_renderer
from .pool import FramePool

__all__ = ["PoolDepthBatches"]


class PoolDepthBatches:
    """``(images [B,3,H,W] normalised, depth [B,1,H,W] metres)`` for iterations ``start..stop-1``."""

    def __init__(
        self,
        pool_cfg: dict[str, Any],
        sizes: Sequence[Sequence[int]],
        batch_sizes: Sequence[int],
        *,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        start: int = 0,
        stop: int | None = None,
        hflip: bool = True,
        brightness: tuple[float, float] = (0.75, 1.25),
    ) -> None:
        if len(sizes) != len(batch_sizes) or not sizes:
            raise ValueError(f"need one batch size per image size, got {list(sizes)} / {list(batch_sizes)}")
        self.device = torch.device(device)
        self.pools: list[FramePool] = []
        for h, w in sizes:
            cfg = {**DEFAULT_POOL, **dict(pool_cfg or {}), "height": int(h), "width": int(w)}
            pool = FramePool.allocate(
                int(cfg["scenes"]),
                int(cfg["frames_per_scene"]),
                int(h),
                int(w),
                gt_stride=1,
                device=self.device,
            )
            render = make_renderer(cfg, self.device)
            step = max(1, int(cfg["render_batch"]))
            for lo in range(0, pool.scenes, step):
                render(pool, range(lo, min(pool.scenes, lo + step)))
            pool.filled = pool.scenes
            self.pools.append(pool)
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.seed, self.it, self.stop = int(seed), int(start), stop
        self.hflip, self.brightness = bool(hflip), tuple(brightness)
        self.mean, self.std = tuple(mean), tuple(std)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.stop is not None and self.it >= self.stop:
            raise StopIteration
        k = self.it % len(self.pools)
        pool, B = self.pools[k], self.batch_sizes[k]
        g = torch.Generator(device=self.device).manual_seed(sample_seed(self.seed, self.it))
        n = pool.scenes * pool.frames_per_scene
        idx = torch.randint(0, n, (B,), generator=g, device=self.device)
        img = pool.rgb.flatten(0, 1)[idx].permute(0, 3, 1, 2).float().div_(255.0)
        depth = pool.depth.flatten(0, 1)[idx][:, None]
        lo, hi = self.brightness
        f = lo + (hi - lo) * torch.rand(B, generator=g, device=self.device)
        img = (img * f.view(-1, 1, 1, 1)).clamp_(0, 1)
        if self.hflip:
            flip = (torch.rand(B, generator=g, device=self.device) < 0.5).view(-1, 1, 1, 1)
            img = torch.where(flip, img.flip(-1), img)
            depth = torch.where(flip, depth.flip(-1), depth)
        self.it += 1
        return normalize(img, self.mean, self.std), depth
