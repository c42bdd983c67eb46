"""`FramePool`: rendered synthetic frames with their ground truth, held on the training device.

Scene-major (``[S, F, ...]``): every scene has ``F`` frames, so two views of one scene are one index
away. RGB is kept at full resolution (uint8); depth, instances and normals are kept on a sub-grid of
stride ``gt_stride`` (entry ``q`` is the value at pixel centre ``q * gt_stride + gt_stride // 2``), which
is all the per-patch targets need and keeps 100k frames within one GPU's memory. The pool can be filled
progressively (``filled`` scenes are usable), so training can start before all frames are rendered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["FramePool"]


@dataclass
class FramePool:
    """Frames ``[S, F]`` of ``H x W`` pixels; see the module docstring for the ground-truth grid."""

    rgb: Tensor  #: [S, F, H, W, 3] uint8
    depth: Tensor  #: [S, F, h, w] float32 z-depth in metres, 0 = no surface
    instances: Tensor  #: [S, F, h, w] int16, 0 = background
    normals: Tensor  #: [S, F, h, w, 3] float16, camera frame
    K: Tensor  #: [S, F, 3, 3] float32, full-resolution pixels (centres at integers)
    T_world_cam: Tensor  #: [S, F, 4, 4] float32
    classes: Tensor  #: [S, I] int64 class of instance id (-1: background / unused)
    gt_stride: int = 1
    filled: int = 0

    @property
    def scenes(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def frames_per_scene(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.rgb.shape[2]), int(self.rgb.shape[3])

    @property
    def device(self) -> torch.device:
        return self.rgb.device

    @classmethod
    def allocate(
        cls,
        scenes: int,
        frames: int,
        height: int,
        width: int,
        *,
        gt_stride: int = 4,
        max_instances: int = 16,
        device: torch.device | str = "cpu",
    ) -> FramePool:
        """An empty pool (``filled = 0``)."""
        if scenes < 1 or frames < 1:
            raise ValueError(f"a pool needs >= 1 scene and >= 1 frame, got {scenes} x {frames}")
        if gt_stride < 1 or height % gt_stride or width % gt_stride:
            raise ValueError(f"gt_stride {gt_stride} must divide the frame size {width}x{height}")
        h, w = height // gt_stride, width // gt_stride
        dev = torch.device(device)

        def z(*shape, dtype):
            return torch.zeros(*shape, dtype=dtype, device=dev)

        return cls(
            rgb=z(scenes, frames, height, width, 3, dtype=torch.uint8),
            depth=z(scenes, frames, h, w, dtype=torch.float32),
            instances=z(scenes, frames, h, w, dtype=torch.int16),
            normals=z(scenes, frames, h, w, 3, dtype=torch.float16),
            K=z(scenes, frames, 3, 3, dtype=torch.float32),
            T_world_cam=z(scenes, frames, 4, 4, dtype=torch.float32),
            classes=torch.full((scenes, max_instances), -1, dtype=torch.int64, device=dev),
            gt_stride=gt_stride,
        )

    def subsample(self, x: Tensor) -> Tensor:
        """Full-resolution ``[..., H, W, (C)]`` ground truth -> this pool's sub-grid."""
        s = self.gt_stride
        H, W = self.image_hw
        if x.shape[-2:] == (H, W):
            return x[..., s // 2 :: s, s // 2 :: s]
        return x[..., s // 2 :: s, s // 2 :: s, :]

    def put(
        self,
        scene: int | Tensor,
        *,
        rgb: Tensor,
        depth: Tensor,
        instances: Tensor,
        normals: Tensor,
        K: Tensor,
        T_world_cam: Tensor,
        instance_classes: Tensor,
    ) -> None:
        """Store the ``F`` frames of one scene (or of ``[n]`` scenes, leading dim) at full resolution;
        the ground truth is sub-sampled here. Does not change ``filled``."""
        dev = self.device
        self.rgb[scene] = rgb.to(dev, torch.uint8)
        self.depth[scene] = self.subsample(depth.to(dev, torch.float32))
        self.instances[scene] = self.subsample(instances.to(dev)).to(torch.int16)
        self.normals[scene] = self.subsample(normals.to(dev)).to(torch.float16)
        self.K[scene] = K.to(dev, torch.float32)
        self.T_world_cam[scene] = T_world_cam.to(dev, torch.float32)
        ic = instance_classes.to(dev, torch.int64)
        n = min(ic.shape[-1], self.classes.shape[-1])
        if ic.shape[-1] > self.classes.shape[-1] and bool((ic[..., n:] >= 0).any()):
            raise ValueError(f"scene has more than {self.classes.shape[-1] - 1} object instances")
        self.classes[scene] = -1
        self.classes[scene, ..., :n] = ic[..., :n]

    def put_frames(self, scene: int, frames: Sequence) -> None:
        """Store ``F`` :class:`dinov3_ros.synthetic.SynthFrame` of one scene."""
        if len(frames) != self.frames_per_scene:
            raise ValueError(f"scene needs {self.frames_per_scene} frames, got {len(frames)}")

        def st(name: str, dtype) -> Tensor:
            return torch.from_numpy(np.stack([np.asarray(getattr(f, name), dtype) for f in frames]))

        self.put(
            scene,
            rgb=st("rgb", np.uint8),
            depth=st("depth", np.float32),
            instances=st("instances", np.int32),
            normals=st("normals", np.float32),
            K=st("K", np.float32),
            T_world_cam=st("T_world_cam", np.float32),
            instance_classes=torch.from_numpy(np.asarray(frames[0].instance_classes, np.int64)),
        )

    @classmethod
    def from_generator(
        cls, generator, scenes: Sequence[int], *, gt_stride: int = 4, device: torch.device | str = "cpu"
    ) -> FramePool:
        """Render ``scenes`` of a :class:`dinov3_ros.synthetic.SceneGenerator` (all its frames) into a
        full pool. For small pools and tests; large pools are rendered on the GPU."""
        c = generator.config
        pool = cls.allocate(
            len(scenes), c.frames_per_scene, c.height, c.width, gt_stride=gt_stride, device=device
        )
        for k, s in enumerate(scenes):
            pool.put_frames(k, list(generator.sequence(int(s))))
        pool.filled = len(scenes)
        return pool
