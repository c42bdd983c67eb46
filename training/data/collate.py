"""Batch collation for multi-crop pretraining: crop-major stacking and iBOT masks."""

from __future__ import annotations

from typing import Any

import torch

from .masking import MaskingGenerator, sample_masks

__all__ = ["BatchMasks", "MultiCropCollate", "mask_fields"]


def mask_fields(
    n_images: int,
    grid: tuple[int, int],
    seed: int,
    mask_probability: float,
    mask_ratio: tuple[float, float],
    generator: MaskingGenerator,
) -> dict[str, Any]:
    """iBOT mask keys of a batch (``masks``, ``mask_indices``, ``n_masked_patches``, ``masks_weight``) for
    ``n_images`` global crops on a ``grid`` of patches, drawn from a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    masks = sample_masks(n_images, grid, g, mask_probability, mask_ratio, generator)
    return {
        "masks": masks,
        "mask_indices": masks.flatten().nonzero().flatten(),
        "n_masked_patches": int(masks.sum()),
        "masks_weight": (1.0 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks],
    }


class BatchMasks:
    """The keys every collated pretraining batch carries beside its images: the iBOT masks of its global
    crops (:func:`mask_fields`, one masking generator per patch grid) and the bookkeeping (``n_skipped``,
    ``batch_seed``, ``sources``), all from the batch's samples."""

    def __init__(self, mask_probability: float = 0.5, mask_ratio: tuple[float, float] = (0.1, 0.5)) -> None:
        self.mask_probability = mask_probability
        self.mask_ratio = tuple(mask_ratio)
        self._gens: dict[tuple[int, int], MaskingGenerator] = {}

    def __call__(self, samples: list[dict[str, Any]], n_images: int, grid: tuple[int, int]) -> dict[str, Any]:
        if grid not in self._gens:
            self._gens[grid] = MaskingGenerator(grid)
        seed = int(samples[0].get("seed", 0))
        out = mask_fields(n_images, grid, seed, self.mask_probability, self.mask_ratio, self._gens[grid])
        out["n_skipped"] = int(sum(int(s.get("n_skipped", 0)) for s in samples))
        out["batch_seed"] = seed
        out["sources"] = [s.get("source", "") for s in samples]
        return out


class MultiCropCollate:
    """Stacks samples crop-major (``[crop0 of all images, crop1 of all images, ...]``) and draws iBOT
    masks for the global crops with a generator seeded from the batch seed (deterministic).

    Output keys: ``global_crops [G·B,3,H,W]``, ``local_crops [L·B,3,h,w]`` (if any),
    ``gram_teacher_crops [G·B,3,Hg,Wg]`` (if any), ``masks [G·B, N]`` bool, ``mask_indices`` (flat
    indices of masked patches), ``n_masked_patches``, ``masks_weight`` (1/n_masked of each masked
    patch's image), ``n_skipped`` (unreadable images replaced while building the batch), ``batch_seed``.
    """

    def __init__(
        self,
        patch_size: int = 16,
        mask_probability: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        dtype: torch.dtype | None = None,
    ) -> None:
        self.patch_size = patch_size
        self.dtype = dtype
        self.masks = BatchMasks(mask_probability, mask_ratio)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        n_g = len(samples[0]["global_crops"])
        out: dict[str, Any] = {}
        out["global_crops"] = torch.stack([s["global_crops"][i] for i in range(n_g) for s in samples])
        n_l = len(samples[0].get("local_crops", []))
        if n_l:
            out["local_crops"] = torch.stack([s["local_crops"][i] for i in range(n_l) for s in samples])
        if "gram_teacher_crops" in samples[0]:
            out["gram_teacher_crops"] = torch.stack(
                [s["gram_teacher_crops"][i] for i in range(n_g) for s in samples]
            )
        if self.dtype is not None:
            for k in ("global_crops", "local_crops", "gram_teacher_crops"):
                if k in out:
                    out[k] = out[k].to(self.dtype)
        H, W = out["global_crops"].shape[-2:]
        grid = (H // self.patch_size, W // self.patch_size)
        out.update(self.masks(samples, out["global_crops"].shape[0], grid))
        return out
