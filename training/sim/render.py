"""Fill a :class:`FramePool` with the torch ray-caster (`dinov3_ros.synthetic.torch_pool`), on the pool's
device, with scene layouts sampled by worker processes ahead of the renderer.

One renderer serves a whole pool: its first call starts a batch stream over every pool scene (the
workers keep sampling ahead while training runs), later calls take the next batches until the
requested scenes are in the pool. Scenes must be requested in order, as :class:`SimBatches` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from .pool import FramePool

__all__ = ["torch_pool_renderer"]


def torch_pool_renderer(cfg: dict[str, Any]) -> Callable[[FramePool, range], None]:
    """``render(pool, scenes)`` for ``sim.pool`` settings ``cfg`` (seed, size, frames, workers, batch)."""
    from dinov3_ros.synthetic.torch_pool import render_batches

    from .loader import scene_config

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
