"""Batches for the trainers from a frame pool that is rendered while training runs.

The pool holds ``pool.scenes`` scenes; ``pool.initial_scenes`` are rendered before the first step and
``pool.scenes_per_step`` more after every step until it is full, so the first step does not wait for
100k frames. What iteration ``it`` sees depends only on ``(config, seed, it)``: a resumed run first
renders the scenes an uninterrupted run would have had by then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .pool import FramePool
from .render import scene_config, torch_pool_renderer
from .views import ViewSpec, sample_views
from .zoom import ZoomSpec

__all__ = ["DEFAULT_POOL", "SimBatches", "filled_at", "view_spec"]

#: defaults of the ``sim.pool`` config section
DEFAULT_POOL: dict[str, Any] = {
    "scenes": 1024,
    "frames_per_scene": 4,
    "height": 256,
    "width": 256,
    "gt_stride": 4,
    "seed": 1,
    "initial_scenes": 256,
    "scenes_per_step": 16,
    "backend": "auto",  # auto | torch | generator (open3d, CPU)
    "render_batch": 64,  # scenes per renderer call
    "workers": 0,  # processes that sample scene layouts for the torch renderer
    "hfov_deg": None,  # [lo, hi] horizontal field of view drawn per scene; None: the generator's range
}


def filled_at(pool_cfg: dict[str, Any], iteration: int) -> int:
    """Scenes in the pool when ``iteration`` starts."""
    S = int(pool_cfg["scenes"])
    return min(S, int(pool_cfg["initial_scenes"]) + int(pool_cfg["scenes_per_step"]) * max(0, iteration))


def view_spec(crops: dict[str, Any], ibot: dict[str, Any], patch_size: int, mean=None, std=None) -> ViewSpec:
    """A :class:`ViewSpec` from the trainers' ``crops`` and ``ibot`` config sections."""
    kw: dict[str, Any] = {
        "global_size": int(crops["global_crops_size"]),
        "local_size": int(crops["local_crops_size"]),
        "local_number": int(crops["local_crops_number"]),
        "global_scale": tuple(crops["global_crops_scale"]),
        "local_scale": tuple(crops["local_crops_scale"]),
        "patch_size": int(patch_size),
        "mask_probability": float(ibot.get("mask_probability", 0.5)),
        "mask_ratio": tuple(ibot.get("mask_ratio", (0.1, 0.5))),
        "photometric": bool(crops.get("photometric", True)),
        "zoom": ZoomSpec(fraction=float(crops.get("object_zoom", 0.0))),
    }
    if mean is not None:
        kw["mean"], kw["std"] = tuple(mean), tuple(std)
    return ViewSpec(**kw)


def _generator_renderer(cfg: dict[str, Any]) -> Callable[[FramePool, range], None]:
    from dinov3_ros.synthetic import SceneGenerator

    gen = SceneGenerator(scene_config(cfg), seed=int(cfg["seed"]))

    def render(pool: FramePool, scenes: range) -> None:
        for s in scenes:
            pool.put_frames(s, list(gen.sequence(s)))

    return render


def make_renderer(cfg: dict[str, Any], device: torch.device) -> Callable[[FramePool, range], None]:
    """``render(pool, scenes)`` that fills pool scenes ``scenes`` (scene ``s`` of the pool is scene ``s``
    of the generator with ``sim.pool.seed``)."""
    backend = cfg.get("backend", "auto")
    if backend == "auto":
        try:
            import open3d  # noqa: F401

            has_o3d = True
        except ImportError:
            has_o3d = False
        backend = "torch" if device.type == "cuda" or not has_o3d else "generator"
    if backend == "generator":
        return _generator_renderer(cfg)
    if backend == "torch":
        return torch_pool_renderer(cfg)
    raise ValueError(f"sim.pool.backend must be auto, torch or generator, got {backend!r}")


class SimBatches:
    """Iterator of sim batches for iterations ``start, start+1, ...`` (see the module docstring)."""

    def __init__(
        self,
        pool_cfg: dict[str, Any],
        spec: ViewSpec,
        batch_size: int,
        *,
        device: torch.device | str,
        seed: int,
        start_iter: int = 0,
        max_iter: int | None = None,
        renderer: Callable[[FramePool, range], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = {**DEFAULT_POOL, **dict(pool_cfg or {})}
        unknown = sorted(set(self.cfg) - set(DEFAULT_POOL))
        if unknown:
            raise ValueError(f"unknown sim.pool key(s) {unknown}; valid: {sorted(DEFAULT_POOL)}")
        c = self.cfg
        self.device = torch.device(device)
        self.pool = FramePool.allocate(
            int(c["scenes"]),
            int(c["frames_per_scene"]),
            int(c["height"]),
            int(c["width"]),
            gt_stride=int(c["gt_stride"]),
            device=self.device,
        )
        self.spec, self.batch_size, self.seed = spec, int(batch_size), int(seed)
        self.it, self.max_iter = int(start_iter), max_iter
        self.render = renderer or make_renderer(c, self.device)
        t0 = time.perf_counter()
        self._fill(filled_at(c, self.it))
        if log is not None:
            dt = time.perf_counter() - t0
            n = self.pool.filled * self.pool.frames_per_scene
            log(
                f"sim pool: {n} frames of {c['height']}x{c['width']} rendered in {dt:.1f} s ({n / max(dt, 1e-9):.0f} frames/s)"
            )

    def _fill(self, target: int) -> None:
        step = max(1, int(self.cfg["render_batch"]))
        while self.pool.filled < target:
            hi = min(target, self.pool.filled + step)
            self.render(self.pool, range(self.pool.filled, hi))
            self.pool.filled = hi

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.max_iter is not None and self.it >= self.max_iter:
            raise StopIteration
        self._fill(filled_at(self.cfg, self.it))
        batch = sample_views(self.pool, self.batch_size, self.spec, self.seed, self.it)
        self.it += 1
        return batch
