"""Deterministic split of many inputs over ``torchrun`` ranks (no collective communication needed).

Each rank reads ``RANK``/``WORLD_SIZE`` (set by ``torchrun``; ``LOCAL_RANK`` picks the GPU) and takes
its share of the sorted input list, balanced by file size (largest first, each to the least-loaded
rank, ties to the lowest rank). Every input is processed by exactly one rank, on its own, into its own
output, so the outputs are identical to a serial run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def rank_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``(0, 1, 0)`` without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is not in [0, WORLD_SIZE={world})")
    return rank, world, local


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def assign(inputs: Sequence[Path], world: int) -> list[list[Path]]:
    """Split ``inputs`` into ``world`` shares (deterministic, balanced by size)."""
    shares: list[list[Path]] = [[] for _ in range(world)]
    load = [0] * world
    for p in sorted(inputs, key=lambda q: (-_size(q), str(q))):
        r = min(range(world), key=lambda i: (load[i], i))
        shares[r].append(p)
        load[r] += max(_size(p), 1)
    order = {str(p): i for i, p in enumerate(inputs)}
    return [sorted(s, key=lambda q: order[str(q)]) for s in shares]


def my_share(inputs: Sequence[Path], rank: int, world: int) -> list[Path]:
    """The inputs rank ``rank`` of ``world`` processes (in input order)."""
    return assign(inputs, world)[rank] if world > 1 else list(inputs)
