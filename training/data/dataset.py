"""Weighted mixture of image sources turned into multi-crop samples, deterministic per sample index."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import MultiCropAugmentation
from .sources import ImageSource

__all__ = ["MultiCropDataset", "sample_seed"]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed derived from ``(seed, index)`` (stable across processes and runs)."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class MultiCropDataset(Dataset):
    """Item ``k`` = a source drawn by ``weights``, an item of it drawn uniformly, and its multi-crop
    views; every draw is seeded by ``(seed, k)`` so sample ``k`` is identical across runs and workers.

    Unreadable items are skipped (another item is drawn) and counted in the sample's ``n_skipped``;
    after ``max_retries`` consecutive failures a ``RuntimeError`` names the source.
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        augmentation: MultiCropAugmentation | Sequence[MultiCropAugmentation],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        max_retries: int = 50,
    ) -> None:
        if not sources:
            raise ValueError("MultiCropDataset needs at least one source")
        w = np.ones(len(sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(sources),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"source weights {list(w)} must be {len(sources)} non-negative numbers, not all 0"
            )
        self.sources = list(sources)
        self.cum = np.cumsum(w / w.sum())
        self.augmentations = (
            [augmentation] if isinstance(augmentation, MultiCropAugmentation) else list(augmentation)
        )
        self.seed = seed
        self.max_retries = max_retries

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """``index`` is a sample index, or ``(augmentation index, sample index)`` for mixed resolutions."""
        aug_idx, index = (0, index) if isinstance(index, (int, np.integer)) else index
        s = sample_seed(self.seed, int(index))
        g = torch.Generator().manual_seed(s)
        skipped = 0
        for _ in range(self.max_retries):
            si = min(
                int(np.searchsorted(self.cum, float(torch.rand((), generator=g)), side="right")),
                len(self.sources) - 1,
            )
            src = self.sources[si]
            item = int(torch.randint(0, len(src), (), generator=g))
            try:
                img = src.get(item)
            except (OSError, ValueError):
                img = None
            if img is None or img.ndim != 3 or min(img.shape[:2]) < 8:
                skipped += 1
                continue
            out: dict[str, Any] = dict(self.augmentations[int(aug_idx)](img, g))
            out.update(seed=s, n_skipped=skipped, source=src.name)
            return out
        raise RuntimeError(f"{self.max_retries} unreadable items in a row (last source {src.name})")
