"""PyTorch adapters: the generator as an infinite ``IterableDataset`` (sharded over DataLoader workers
and distributed ranks) and as a map-style ``Dataset`` (random access by flat frame index).

Each sample is a dict of tensors::

    rgb        uint8   [3, H, W]      (RGB, not normalised)
    depth      float32 [1, H, W]      metric z-depth (m), 0 = invalid
    instances  int64   [H, W]         0 = background (floor, walls, ceiling), objects 1..N
    semantic   int64   [H, W]         class id per pixel (index into CLASS_NAMES), -1 = background
    normals    float32 [3, H, W]      unit normals, camera optical frame
    K          float32 [3, 3]
    T_world_cam float32 [4, 4]        camera optical frame -> world (z up)
    scene_index, frame_index, stamp_ns: int64 scalars
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dinov3_ros.synthetic.frame import SynthFrame
from dinov3_ros.synthetic.generator import SceneConfig, SceneGenerator


def to_tensors(frame: SynthFrame) -> dict[str, torch.Tensor]:
    """Sample dict (see module doc) of one frame."""
    return {
        "rgb": torch.from_numpy(np.ascontiguousarray(frame.rgb.transpose(2, 0, 1))),
        "depth": torch.from_numpy(frame.depth[None].copy()),
        "instances": torch.from_numpy(frame.instances.astype(np.int64)),
        "semantic": torch.from_numpy(frame.semantic().astype(np.int64)),
        "normals": torch.from_numpy(np.ascontiguousarray(frame.normals.transpose(2, 0, 1))),
        "K": torch.from_numpy(frame.K.astype(np.float32)),
        "T_world_cam": torch.from_numpy(frame.T_world_cam.astype(np.float32)),
        "scene_index": torch.tensor(frame.scene_index, dtype=torch.int64),
        "frame_index": torch.tensor(frame.frame_index, dtype=torch.int64),
        "stamp_ns": torch.tensor(frame.stamp_ns, dtype=torch.int64),
    }


class SyntheticStream(IterableDataset):
    """Infinite stream of sample dicts. Shard ``s`` of ``S = world_size * num_workers`` renders scenes
    ``start_scene + s + j*S`` (all their frames, in order), so shards never repeat each other's scenes
    and the stream is deterministic given (config, seed, rank, world_size, num_workers)."""

    def __init__(
        self,
        config: SceneConfig | None = None,
        seed: int = 0,
        *,
        start_scene: int = 0,
        rank: int = 0,
        world_size: int = 1,
        **overrides,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        self.gen = SceneGenerator(config, seed, **overrides)
        self.start_scene, self.rank, self.world_size = int(start_scene), int(rank), int(world_size)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        shard, n_shards = self.rank * nw + wid, self.world_size * nw
        for frame in self.gen.stream(shard, n_shards, self.start_scene):
            yield to_tensors(frame)


class SyntheticFrames(Dataset):
    """Map-style view of ``length`` frames: index ``k`` is flat frame ``offset + k`` of the generator."""

    def __init__(
        self, length: int, config: SceneConfig | None = None, seed: int = 0, *, offset: int = 0, **overrides
    ):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.gen = SceneGenerator(config, seed, **overrides)
        self.length, self.offset = int(length), int(offset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if not 0 <= k < self.length:
            raise IndexError(k)
        return to_tensors(self.gen[self.offset + k])
