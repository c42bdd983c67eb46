"""Point-cloud voxel downsampling for the pipeline (numpy, deterministic, no open3d import)."""

from __future__ import annotations

import numpy as np


def voxel_downsample(
    points: np.ndarray, colors: np.ndarray | None, voxel: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Average points (and colours) per ``voxel``-sized cube; output ordered by voxel key."""
    if voxel <= 0 or points.shape[0] == 0:
        return points, colors
    keys = np.floor(points / voxel).astype(np.int64)
    _u, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    n = counts.shape[0]
    out = np.zeros((n, 3), np.float64)
    np.add.at(out, inv, points)
    out /= counts[:, None]
    cols = None
    if colors is not None:
        c = np.zeros((n, 3), np.float64)
        np.add.at(c, inv, colors.astype(np.float64))
        cols = np.clip(c / counts[:, None] + 0.5, 0, 255).astype(np.uint8)
    return out.astype(np.float32), cols
