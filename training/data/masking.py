"""iBOT block masking (BEiT-style) with the DINOv3 ratio spread and random top-up to an exact count."""

from __future__ import annotations

import math

import torch

__all__ = ["MaskingGenerator", "sample_masks"]


class MaskingGenerator:
    """Block masks on an ``h x w`` patch grid: rectangles of >= ``min_num_patches`` patches with aspect in
    ``[min_aspect, 1/min_aspect]``, at most ``max_num_patches`` per block (default ``0.5·N``), then
    topped up at random so exactly the requested number of patches is masked."""

    def __init__(
        self,
        grid: tuple[int, int],
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.height, self.width = grid
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = int(0.5 * self.num_patches) if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _u(self, g: torch.Generator, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    def _block(self, mask: torch.Tensor, max_mask_patches: int, g: torch.Generator) -> int:
        delta = 0
        for _ in range(10):
            target = self._u(g, self.min_num_patches, max_mask_patches)
            ar = math.exp(self._u(g, *self.log_aspect))
            h = round(math.sqrt(target * ar))
            w = round(math.sqrt(target / ar))
            if 0 < w < self.width and 0 < h < self.height:
                top = int(torch.randint(0, self.height - h + 1, (), generator=g))
                left = int(torch.randint(0, self.width - w + 1, (), generator=g))
                region = mask[top : top + h, left : left + w]
                n_new = h * w - int(region.sum())
                if 0 < n_new <= max_mask_patches:
                    region.fill_(True)
                    delta += n_new
            if delta > 0:
                break
        return delta

    def __call__(self, num_masking_patches: int, g: torch.Generator) -> torch.Tensor:
        """Bool mask ``[h, w]`` with exactly ``num_masking_patches`` True entries."""
        num = max(0, min(int(num_masking_patches), self.num_patches))
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num:
            max_patches = min(num - count, self.max_num_patches)
            if max_patches < self.min_num_patches:
                break
            delta = self._block(mask, max_patches, g)
            if delta == 0:
                break
            count += delta
        if count < num:  # random top-up to the exact count
            free = (~mask).flatten().nonzero().flatten()
            pick = free[torch.randperm(free.numel(), generator=g)[: num - count]]
            mask.view(-1)[pick] = True
        return mask


def sample_masks(
    n_images: int,
    grid: tuple[int, int],
    g: torch.Generator,
    mask_probability: float = 0.5,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    generator: MaskingGenerator | None = None,
) -> torch.Tensor:
    """Masks ``[n_images, h·w]`` for the student global crops: ``int(n_images·p)`` of them masked with
    ratios ``linspace(r_min, r_max, n+1)[1:]`` (so spread over the range), the rest empty, shuffled."""
    gen = generator or MaskingGenerator(grid)
    N = grid[0] * grid[1]
    n_masked = int(n_images * mask_probability)
    probs = torch.linspace(mask_ratio[0], mask_ratio[1], n_masked + 1)
    masks = [gen(int(N * float(probs[i + 1])), g).flatten() for i in range(n_masked)]
    masks += [torch.zeros(N, dtype=torch.bool) for _ in range(n_images - n_masked)]
    order = torch.randperm(n_images, generator=g).tolist()
    return torch.stack([masks[i] for i in order]) if masks else torch.zeros(0, N, dtype=torch.bool)
