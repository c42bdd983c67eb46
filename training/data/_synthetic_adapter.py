"""Adapter from ``dinov3_ros.synthetic.SceneGenerator`` (``gen[k].rgb``) to an RGB uint8 frame."""

from __future__ import annotations

from typing import Any

import numpy as np


def render_rgb(src: Any, index: int) -> np.ndarray | None:
    """Flat frame ``index`` of ``src``'s generator (built lazily in each worker) as RGB uint8."""
    if src._gen is None:
        src._gen = src._cls(seed=src.seed, width=src.width, height=src.height, **src.kwargs)
    rgb = np.asarray(src._gen[int(index)].rgb)
    return np.ascontiguousarray(rgb[..., :3]) if rgb.dtype == np.uint8 else None
