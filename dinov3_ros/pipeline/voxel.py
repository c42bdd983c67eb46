"""Point-cloud voxel downsampling for the pipeline (numpy, deterministic, no open3d import)."""

from __future__ import annotations

import numpy as np


def _voxel_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inverse [N], counts [M]) of the integer voxel keys ``[N, 3]``, voxels in lexicographic order."""
    lo = keys.min(0)
    span = keys.max(0) - lo + 1
    if float(span[0]) * float(span[1]) * float(span[2]) < 2.0**62:
        k = keys - lo  # one packed int64 key per point: same (lexicographic) order, a 1-D unique
        packed = (k[:, 0] * span[1] + k[:, 1]) * span[2] + k[:, 2]
        _u, inv, counts = np.unique(packed, return_inverse=True, return_counts=True)
    else:
        _u, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return inv.reshape(-1), counts


def voxel_downsample(
    points: np.ndarray, colors: np.ndarray | None, voxel: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Average points (and colours) per ``voxel``-sized cube; output ordered by voxel key."""
    if voxel <= 0 or points.shape[0] == 0:
        return points, colors
    keys = np.floor(points / voxel).astype(np.int64)
    inv, counts = _voxel_index(keys)
    n = counts.shape[0]
    # bincount sums in point order (float64), like a sequential np.add.at, but vectorised
    out = np.stack([np.bincount(inv, points[:, j].astype(np.float64), n) for j in range(3)], 1)
    out /= counts[:, None]
    cols = None
    if colors is not None:
        c = np.stack([np.bincount(inv, colors[:, j].astype(np.float64), n) for j in range(3)], 1)
        cols = np.clip(c / counts[:, None] + 0.5, 0, 255).astype(np.uint8)
    return out.astype(np.float32), cols
