"""Render the frames of many scenes on one device in batches, sampling scenes in worker processes meanwhile.

Scene sampling (:func:`generator.sample_scene`) is numpy work on the CPU; with ``workers > 0`` it runs
in a process pool ahead of the renderer, which takes the sampled scenes in order, a batch at a time.
Frames are those of :class:`generator.SceneGenerator` with the same ``(config, seed)``: the same poses,
intrinsics and pixels (as far as the torch renderer equals the open3d one).

Ground truth can be kept at a stride (``gt_stride``): depth, instances and normals of the pixel centres
``(gt_offset + gt_stride * i, gt_offset + gt_stride * j)``, exact values, not averages; RGB is always
full resolution.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from dinov3_ros.synthetic.generator import SceneConfig
from dinov3_ros.synthetic.packing import sample_packed
from dinov3_ros.synthetic.torch_pack import PackedScenes
from dinov3_ros.synthetic.torch_render import render


def _check(config: SceneConfig, scenes: Sequence[int], frames, gt_stride: int, gt_offset) -> tuple:
    if config.noise_std > 0:
        raise ValueError("render_pool renders clean frames: set noise_std=0 and add noise on the device")
    scenes = [int(s) for s in scenes]
    if not scenes or min(scenes) < 0:
        raise ValueError("scenes must be a non-empty list of scene indices >= 0")
    n = config.frames_per_scene
    frames = list(range(n)) if frames is None else [int(i) for i in frames]
    if not frames or not all(0 <= i < n for i in frames):
        raise ValueError(f"frames must be a non-empty list of frame indices in 0..{n - 1}")
    if gt_stride < 1:
        raise ValueError(f"gt_stride must be >= 1, got {gt_stride}")
    gt_offset = gt_stride // 2 if gt_offset is None else int(gt_offset)
    if not 0 <= gt_offset < gt_stride:
        raise ValueError(f"gt_offset must be in 0..{gt_stride - 1}, got {gt_offset}")
    return scenes, frames, gt_offset


def _sampled(config, seed, chunks, workers: int, mp_context: str) -> Iterator[dict]:
    if workers <= 0:
        for ch, frames in chunks:
            yield sample_packed(config, seed, ch, frames)
        return
    ctx = mp.get_context(mp_context)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        futures = [ex.submit(sample_packed, config, seed, ch, frames) for ch, frames in chunks]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def render_batches(
    config: SceneConfig,
    seed: int,
    scenes: Sequence[int],
    device: torch.device | str = "cpu",
    *,
    frames: Sequence[int] | None = None,
    workers: int = 0,
    batch_frames: int = 256,
    mp_context: str = "spawn",
    chunk_rays: int | None = None,
    max_elems: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield rendered batches (full resolution, on ``device``) of the frames ``frames`` of each scene.

    Each batch holds whole scenes (about ``batch_frames`` frames): ``rgb [B,H,W,3] uint8``, ``depth``,
    ``instances``, ``normals`` (as :class:`torch_render.RenderOut`), ``K [B,3,3]`` and ``T_world_cam
    [B,4,4]`` float64, ``scene_index``/``frame_index [B]`` int64 and ``instance_classes [S_b, I]`` int32
    (``-1`` padded) of the batch's scenes with ``scene_row [B]`` indexing it.
    """
    scenes, frames, _ = _check(config, scenes, frames, 1, 0)
    per = max(1, int(batch_frames) // len(frames))
    chunks = [(scenes[i : i + per], frames) for i in range(0, len(scenes), per)]
    nf = len(frames)
    for res in _sampled(config, seed, chunks, workers, mp_context):
        packed = PackedScenes.from_arrays(res["arrays"], device)
        ns = len(res["scenes"])
        sid = torch.arange(ns, device=packed.device).repeat_interleave(nf)
        T = torch.from_numpy(res["T_world_cam"].reshape(-1, 4, 4)).to(packed.device)
        K = torch.from_numpy(np.repeat(res["K"], nf, 0)).to(packed.device)
        out = render(
            packed, sid, T, K, config.height, config.width, chunk_rays=chunk_rays, max_elems=max_elems
        )
        yield {
            "rgb": out.rgb,
            "depth": out.depth,
            "instances": out.instances,
            "normals": out.normals,
            "K": K,
            "T_world_cam": T,
            "scene_index": torch.from_numpy(np.repeat(res["scenes"], nf)).to(packed.device),
            "frame_index": torch.tensor(frames * ns, dtype=torch.int64, device=packed.device),
            "scene_row": sid,
            "instance_classes": packed.instance_classes,
        }


def render_pool(
    config: SceneConfig,
    seed: int,
    scenes: Sequence[int],
    device: torch.device | str = "cpu",
    *,
    frames: Sequence[int] | None = None,
    workers: int = 0,
    batch_frames: int = 256,
    gt_stride: int = 1,
    gt_offset: int | None = None,
    out_device: torch.device | str | None = None,
    mp_context: str = "spawn",
    chunk_rays: int | None = None,
    max_elems: int | None = None,
) -> dict[str, torch.Tensor]:
    """Render frames ``frames`` (default: all) of every scene in ``scenes`` into one dict of tensors.

    Per frame (scene-major order): ``rgb [N,H,W,3] uint8``; ``depth [N,h,w] float32``, ``instances
    [N,h,w] int32``, ``normals [N,h,w,3] float32`` at pixels ``gt_offset + gt_stride * k`` (default
    offset ``gt_stride // 2``); ``K [N,3,3]``, ``T_world_cam [N,4,4]`` float64; ``scene_index``,
    ``frame_index``, ``scene_row [N]`` int64. Per scene (rows of ``scenes``): ``instance_classes [S,I]``
    int32 (``-1`` padded). ``gt_stride``/``gt_offset`` are returned as 0-d tensors. Outputs live on
    ``out_device`` (default ``device``). ``workers`` processes sample scenes while the device renders;
    with the default ``spawn`` context a calling script needs an ``if __name__ == "__main__"`` guard.
    """
    scenes, frames, off = _check(config, scenes, frames, gt_stride, gt_offset)
    dev = torch.device(device)
    odev = dev if out_device is None else torch.device(out_device)
    N, H, W, s = len(scenes) * len(frames), config.height, config.width, gt_stride
    h, w = len(range(off, H, s)), len(range(off, W, s))
    out = {
        "rgb": torch.empty((N, H, W, 3), dtype=torch.uint8, device=odev),
        "depth": torch.empty((N, h, w), dtype=torch.float32, device=odev),
        "instances": torch.empty((N, h, w), dtype=torch.int32, device=odev),
        "normals": torch.empty((N, h, w, 3), dtype=torch.float32, device=odev),
        "K": torch.empty((N, 3, 3), dtype=torch.float64, device=odev),
        "T_world_cam": torch.empty((N, 4, 4), dtype=torch.float64, device=odev),
        "scene_index": torch.empty(N, dtype=torch.int64, device=odev),
        "frame_index": torch.empty(N, dtype=torch.int64, device=odev),
        "scene_row": torch.empty(N, dtype=torch.int64, device=odev),
        "instance_classes": torch.full(
            (len(scenes), config.max_objects + 1), -1, dtype=torch.int32, device=odev
        ),
    }
    pos = row = 0
    batches = render_batches(
        config, seed, scenes, dev, frames=frames, workers=workers, batch_frames=batch_frames,
        mp_context=mp_context, chunk_rays=chunk_rays, max_elems=max_elems,
    )  # fmt: skip
    for b in batches:
        n, ns = b["rgb"].shape[0], b["instance_classes"].shape[0]
        sl = slice(pos, pos + n)
        out["rgb"][sl] = b["rgb"]
        for k in ("depth", "instances", "normals"):
            out[k][sl] = b[k][:, off::s, off::s]
        for k in ("K", "T_world_cam", "scene_index", "frame_index"):
            out[k][sl] = b[k]
        out["scene_row"][sl] = b["scene_row"] + row
        ic = b["instance_classes"]
        out["instance_classes"][row : row + ns, : ic.shape[1]] = ic
        pos, row = pos + n, row + ns
    out["gt_stride"] = torch.tensor(s)
    out["gt_offset"] = torch.tensor(off)
    return out
