"""Multi-crop batches built on the training device from uint8 frames (``data.augment_on: device``).

The DataLoader workers only decode each image and resize it to a fixed square uint8 frame (shorter side
to ``S``, centre crop); the iBOT masks are drawn there too (cheap, on the CPU, exactly as the CPU path
does). The crops, flips, photometric recipe and normalisation of the whole batch then run on the
training device with a handful of batched kernels (:mod:`training.data.gpu_augment`), with per-batch
randomness from a generator seeded by ``(seed, iteration, rank)``, so a resumed run replays it.

Differences against the per-image CPU recipe (:class:`~training.data.augment.MultiCropAugmentation`):
crops come from the centre square of the frame, are resampled bilinearly (no antialiasing), and the
photometric simplifications of :mod:`training.data.gpu_augment` apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from . import gpu_augment as ga
from .augment import MultiCropAugmentation
from .collate import BatchMasks
from .dataset import MultiCropDataset, sample_seed
from .loader import IterationBatchSampler, batch_loader, build_augmentations, sources_of

__all__ = [
    "DeviceMultiCrop",
    "DeviceMultiCropBatches",
    "FrameCollate",
    "FrameResize",
    "build_device_pretrain_loader",
    "frame_size",
]


def frame_size(aug: MultiCropAugmentation) -> int:
    """Side ``S`` of the uint8 frame for ``aug``: large enough that the smallest global crop
    (area fraction ``global_crops_scale[0]``) still holds as many pixels as it is rendered at."""
    size = max(aug.global_crops_size, aug.gram_teacher_crops_size or 0)
    return int(math.ceil(size / math.sqrt(aug.global_crops_scale[0]) / 8) * 8)


class FrameResize:
    """HxWx3 uint8 RGB -> uint8 ``[3, S, S]``: shorter side resized to ``S`` (area filter when
    shrinking), then the centre square. Used as the per-sample transform of the device path's dataset."""

    def __init__(self, size: int, aug_index: int = 0) -> None:
        self.size, self.aug_index = int(size), int(aug_index)

    def __call__(self, image: np.ndarray, _g: torch.Generator) -> dict[str, Any]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        k = self.size / min(h, w)
        nh, nw = max(self.size, round(h * k)), max(self.size, round(w * k))
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        img = cv2.resize(image, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else image
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        img = img[top : top + self.size, left : left + self.size]
        frame = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
        return {"frame": frame, "aug_index": self.aug_index}


class FrameCollate:
    """Stacks frames to uint8 ``frames [B, 3, S, S]`` and adds the iBOT mask keys of the batch's global
    crops (same draws as :class:`~training.data.collate.MultiCropCollate` for the same samples)."""

    def __init__(
        self,
        global_sizes: Sequence[int],
        n_global: int = 2,
        patch_size: int = 16,
        mask_probability: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
    ) -> None:
        self.global_sizes = [int(s) for s in global_sizes]
        self.n_global, self.patch_size = n_global, patch_size
        self.masks = BatchMasks(mask_probability, mask_ratio)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        a = int(samples[0]["aug_index"])
        side = self.global_sizes[a] // self.patch_size
        grid = (side, side)
        out: dict[str, Any] = {"frames": torch.stack([s["frame"] for s in samples]), "aug_index": a}
        out.update(self.masks(samples, self.n_global * len(samples), grid))
        return out


class DeviceMultiCrop:
    """The multi-crop recipe of ``aug`` on a batch of uint8 frames, on their device.

    Crop-major output like the CPU collate: ``global_crops [2B, 3, G, G]`` (crop 1: blur p=1; crop 2:
    blur p=0.1, solarize p=0.2), ``local_crops [L·B, 3, l, l]`` (blur p=0.5), all with colour jitter
    p=0.8 and grayscale p=0.2; optional ``gram_teacher_crops`` share the global crops' boxes and flips
    and get no photometric change. Float32, normalised with ``aug.mean`` / ``aug.std``.
    """

    def __init__(self, aug: MultiCropAugmentation) -> None:
        self.aug = aug

    def _flip(self, x: Tensor, flip: Tensor) -> Tensor:
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)

    def _photo(self, x: Tensor, g: torch.Generator, og: torch.Generator, blur_p: float, sol_p: float):
        a = self.aug
        if not a.photometric:
            return x
        return ga.photometric(
            x,
            g,
            blur_p=blur_p,
            solarize_p=sol_p,
            jitter_p=a.jitter_p,
            grayscale_p=a.grayscale_p,
            jitter=tuple(a.jitter),
            blur_sigma=tuple(a.blur_sigma),
            order_g=og,
        )

    def __call__(self, frames: Tensor, g: torch.Generator, order_g: torch.Generator) -> dict[str, Tensor]:
        """``frames`` uint8 ``[B, 3, S, S]``; ``g`` on the frames' device, ``order_g`` on the CPU."""
        a = self.aug
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected uint8 frames [B, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
        B, _, H, W = frames.shape
        dev = frames.device
        x = frames.float().div_(255.0)
        mean, std = tuple(a.mean), tuple(a.std)
        out: dict[str, Tensor] = {}
        gs = a.global_crops_size
        boxes = ga.random_boxes(2 * B, H, W, tuple(a.global_crops_scale), g, dev)
        flip = (torch.rand(2 * B, generator=g, device=dev) < 0.5) & a.horizontal_flips
        crops = self._flip(ga.resized_crops(x, boxes, (gs, gs), per_image=2), flip)
        glob = [
            self._photo(crops[:B], g, order_g, 1.0, 0.0),
            self._photo(crops[B:], g, order_g, 0.1, 0.2),
        ]
        out["global_crops"] = ga.normalize(torch.cat(glob), mean, std)
        if a.local_crops_number:
            n, ls = a.local_crops_number, a.local_crops_size
            lboxes = ga.random_boxes(n * B, H, W, tuple(a.local_crops_scale), g, dev)
            lflip = (torch.rand(n * B, generator=g, device=dev) < 0.5) & a.horizontal_flips
            local = self._flip(ga.resized_crops(x, lboxes, (ls, ls), per_image=n), lflip)
            out["local_crops"] = ga.normalize(self._photo(local, g, order_g, 0.5, 0.0), mean, std)
        if a.gram_teacher_crops_size:
            s = a.gram_teacher_crops_size
            gram = self._flip(ga.resized_crops(x, boxes, (s, s), per_image=2), flip)
            out["gram_teacher_crops"] = ga.normalize(gram, mean, std)
        return out


class DeviceMultiCropBatches:
    """Iterates a frame loader from ``start_iter`` and turns each uint8 batch into the multi-crop batch
    the training step consumes (same keys as the CPU path), built on ``device``.

    Batch ``it`` draws from a generator seeded by ``(seed, it, rank)``: a run resumed at ``it`` gets
    the same batches as an uninterrupted one."""

    def __init__(
        self,
        loader: DataLoader,
        augmenters: Sequence[DeviceMultiCrop],
        device: torch.device | str,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
    ) -> None:
        self.loader, self.augmenters = loader, list(augmenters)
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size, self.start_iter = seed, rank, world_size, start_iter

    def generators(self, iteration: int) -> tuple[torch.Generator, torch.Generator]:
        """The device and CPU generators of ``iteration`` on this rank."""
        s = sample_seed(self.seed ^ 0xD1CE, iteration * self.world_size + self.rank)
        return (
            torch.Generator(device=self.device).manual_seed(s),
            torch.Generator().manual_seed(s),
        )

    def build(self, batch: dict[str, Any], iteration: int) -> dict[str, Any]:
        """The step's batch from the collated frame ``batch`` of ``iteration``."""
        g, og = self.generators(iteration)
        frames = batch["frames"].to(self.device, non_blocking=True)
        out = {k: v for k, v in batch.items() if k not in ("frames", "aug_index")}
        out.update(self.augmenters[int(batch["aug_index"])](frames, g, og))
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # the loader's iterator is made now, as with a plain DataLoader: it draws its base seed from the
        # global RNG, which a resumed run restores only after making the iterator
        return self._build_all(iter(self.loader))

    def _build_all(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for k, batch in enumerate(batches):
            yield self.build(batch, self.start_iter + k)

    def __len__(self) -> int:
        return len(self.loader)


def build_device_pretrain_loader(
    cfg: dict[str, Any],
    *,
    batch_size: int,
    device: torch.device | str,
    patch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    max_iter: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    mean=None,
    std=None,
) -> DeviceMultiCropBatches:
    """The device-augmentation counterpart of :func:`~training.data.loader.build_pretrain_loader`
    (same ``cfg`` and sample addressing): workers decode and resize, ``device`` builds the crops."""
    sources, weights = sources_of(cfg)
    augs, ratios = build_augmentations(cfg.get("crops", {}), mean, std)
    resizers = [FrameResize(frame_size(a), i) for i, a in enumerate(augs)]
    dataset = MultiCropDataset(sources, resizers, weights, seed=seed)
    sampler = IterationBatchSampler(batch_size, rank, world_size, start_iter, ratios, seed, max_iter)
    collate = FrameCollate(
        [a.global_crops_size for a in augs],
        patch_size=patch_size,
        mask_probability=float(cfg.get("mask_probability", 0.5)),
        mask_ratio=tuple(cfg.get("mask_ratio", (0.1, 0.5))),
    )
    loader = batch_loader(
        dataset, sampler, collate, num_workers, pin_memory=torch.device(device).type == "cuda"
    )
    return DeviceMultiCropBatches(
        loader,
        [DeviceMultiCrop(a) for a in augs],
        device,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
    )
