"""The scene distribution of the ``sim.pool`` settings, and the torch renderer of a pool.

:func:`scene_config` is what both renderers draw from. :func:`torch_pool_renderer` fills a
:class:`FramePool` with the torch ray-caster (`dinov3_ros.synthetic.torch_pool`), on the pool's
device, with scene layouts sampled by worker processes ahead of the renderer.

One renderer serves a whole pool: its first call starts a batch stream over every pool scene (the
workers keep sampling ahead while training runs), later calls take the next batches until the
requested scenes are in the pool. Scenes must be requested in order, as :class:`SimBatches` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from .pool import FramePool

if TYPE_CHECKING:
    from dinov3_ros.synthetic.generator import SceneConfig

__all__ = ["scene_config", "torch_pool_renderer"]


def scene_config(cfg: dict[str, Any]) -> SceneConfig:
    """The scene distribution of ``sim.pool`` settings ``cfg``: frame size, views per scene and, with
    ``hfov_deg``, the cameras' field-of-view range (narrow fields of view show the scene at finer
    detail per patch, as a higher-resolution camera does)."""
    from dinov3_ros.synthetic.generator import SceneConfig

    kw: dict[str, Any] = {
        "width": int(cfg["width"]),
        "height": int(cfg["height"]),
        "frames_per_scene": int(cfg["frames_per_scene"]),
    }
    fov = cfg.get("hfov_deg")
    if fov is not None:
        bad = ValueError(f"sim.pool.hfov_deg must be [lo, hi] degrees with 1 <= lo <= hi <= 179, got {fov!r}")
        try:
            lo, hi = (float(v) for v in fov)
        except (TypeError, ValueError):
            raise bad from None
        if not 1.0 <= lo <= hi <= 179.0:
            raise bad
        kw["hfov_deg"] = (lo, hi)
    return SceneConfig(**kw)


def torch_pool_renderer(cfg: dict[str, Any]) -> Callable[[FramePool, range], None]:
    """``render(pool, scenes)`` for ``sim.pool`` settings ``cfg`` (seed, size, frames, workers, batch)."""
    from dinov3_ros.synthetic.torch_pool import render_batches

    config = scene_config(cfg)
    state: dict[str, Any] = {"stream": None, "done": 0}

    def stream(pool: FramePool, start: int) -> Iterator[dict[str, torch.Tensor]]:
        return render_batches(
            config,
            int(cfg["seed"]),
            list(range(start, pool.scenes)),
            pool.device,
            workers=int(cfg.get("workers", 0)),
            batch_frames=int(cfg.get("render_batch", 64)) * config.frames_per_scene,
        )

    def render(pool: FramePool, scenes: range) -> None:
        if scenes.start < state["done"]:
            return  # already rendered ahead
        if state["stream"] is None or scenes.start != state["done"]:
            state["stream"], state["done"] = stream(pool, scenes.start), scenes.start
        F_ = config.frames_per_scene
        while state["done"] < scenes.stop:
            b = next(state["stream"])
            n = b["rgb"].shape[0] // F_
            lo = state["done"]
            if int(b["scene_index"][0]) != lo:
                raise RuntimeError(
                    f"renderer out of order: expected scene {lo}, got {int(b['scene_index'][0])}"
                )

            def by_scene(x: torch.Tensor, n: int = n) -> torch.Tensor:
                return x.reshape(n, F_, *x.shape[1:])

            pool.put(
                slice(lo, lo + n),
                rgb=by_scene(b["rgb"]),
                depth=by_scene(b["depth"]),
                instances=by_scene(b["instances"]),
                normals=by_scene(b["normals"]),
                K=by_scene(b["K"]),
                T_world_cam=by_scene(b["T_world_cam"]),
                instance_classes=b["instance_classes"],
            )
            state["done"] = lo + n

    return render
