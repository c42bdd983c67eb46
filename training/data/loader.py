"""Resumable data loading: a batch sampler addressed by iteration, mixed-resolution choice per step."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from .augment import MultiCropAugmentation
from .collate import MultiCropCollate
from .dataset import MultiCropDataset, sample_seed
from .sources import build_source

__all__ = [
    "IterationBatchSampler",
    "batch_loader",
    "build_augmentations",
    "build_pretrain_loader",
    "choose_resolution",
    "sources_of",
]


def choose_resolution(seed: int, iteration: int, ratios: Sequence[float]) -> int:
    """Index of the augmentation used at ``iteration`` (same on every rank), drawn by ``ratios``."""
    if len(ratios) <= 1:
        return 0
    g = torch.Generator().manual_seed(sample_seed(seed + 7919, iteration))
    w = torch.tensor([float(r) for r in ratios], dtype=torch.float64)
    return int(torch.multinomial(w / w.sum(), 1, generator=g))


class IterationBatchSampler(Sampler[list]):
    """Yields, for iterations ``start, start+1, ...``, this rank's sample indices
    ``(it·world + rank)·B + j`` (``j < B``), each paired with the augmentation of that iteration.

    The loader position is therefore just the iteration number: resuming at iteration ``i`` replays
    exactly the batches an uninterrupted run would have seen.
    """

    def __init__(
        self,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
        ratios: Sequence[float] = (1.0,),
        seed: int = 0,
        max_iter: int | None = None,
    ) -> None:
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.start_iter, self.ratios, self.seed, self.max_iter = start_iter, list(ratios), seed, max_iter

    def __iter__(self) -> Iterator[list]:
        it = self.start_iter
        while self.max_iter is None or it < self.max_iter:
            a = choose_resolution(self.seed, it, self.ratios)
            base = (it * self.world_size + self.rank) * self.batch_size
            yield [(a, base + j) for j in range(self.batch_size)]
            it += 1

    def __len__(self) -> int:
        return (self.max_iter - self.start_iter) if self.max_iter is not None else 2**31 - 1


def build_augmentations(
    crops: dict[str, Any], mean=None, std=None
) -> tuple[list[MultiCropAugmentation], list[float]]:
    """Augmentations from the ``crops`` config; ``crops.mixed`` (list of dicts with ``ratio``) gives the
    high-resolution adaptation's mixed loaders, otherwise one augmentation."""
    if crops.get("object_zoom"):
        raise ValueError(
            "crops.object_zoom needs sim.enabled: true (the object boxes come from the simulator's "
            "ground truth); set it to 0 for image data"
        )
    base = {k: v for k, v in crops.items() if k not in ("mixed", "object_zoom")}
    if mean is not None:
        base["mean"], base["std"] = tuple(mean), tuple(std)
    mixed = crops.get("mixed") or []
    if not mixed:
        return [MultiCropAugmentation(**base)], [1.0]
    augs, ratios = [], []
    for m in mixed:
        m = dict(m)
        ratios.append(float(m.pop("ratio", 1.0)))
        augs.append(MultiCropAugmentation(**{**base, **m}))
    return augs, ratios


def build_pretrain_loader(
    cfg: dict[str, Any],
    *,
    batch_size: int,
    patch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    max_iter: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    mean=None,
    std=None,
) -> DataLoader:
    """DataLoader of collated multi-crop batches from ``cfg`` = the config's ``data`` + ``crops`` + ``ibot``
    sections: ``{"sources": [...], "crops": {...}, "mask_probability":, "mask_ratio":}``."""
    sources, weights = sources_of(cfg)
    augs, ratios = build_augmentations(cfg.get("crops", {}), mean, std)
    dataset = MultiCropDataset(sources, augs, weights, seed=seed)
    sampler = IterationBatchSampler(batch_size, rank, world_size, start_iter, ratios, seed, max_iter)
    collate = MultiCropCollate(
        patch_size=patch_size,
        mask_probability=float(cfg.get("mask_probability", 0.5)),
        mask_ratio=tuple(cfg.get("mask_ratio", (0.1, 0.5))),
    )
    return batch_loader(dataset, sampler, collate, num_workers, pin_memory=torch.cuda.is_available())


def sources_of(cfg: dict[str, Any]) -> tuple[list[Any], list[float]]:
    """The image sources of a ``data`` config (procedural images when none is given) and their weights."""
    specs = cfg.get("sources") or [{"type": "procedural"}]
    return [build_source(s) for s in specs], [float(s.get("weight", 1.0)) for s in specs]


def batch_loader(
    dataset: Any, sampler: IterationBatchSampler, collate: Any, num_workers: int, pin_memory: bool
) -> DataLoader:
    """The pretraining DataLoader: batches from ``sampler``, one torch thread per worker, workers kept."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_worker_init,
    )


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)
