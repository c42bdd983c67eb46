"""Pretraining data: sources, multi-crop augmentation, iBOT masking, collation, resumable loaders."""

from __future__ import annotations

from .augment import MultiCropAugmentation
from .collate import MultiCropCollate
from .dataset import MultiCropDataset, sample_seed
from .loader import IterationBatchSampler, build_augmentations, build_pretrain_loader, choose_resolution
from .masking import MaskingGenerator, sample_masks
from .sources import (
    ImageFolderSource,
    ImageSource,
    ProceduralSource,
    RosbagSource,
    SyntheticSceneSource,
    VideoSource,
    build_source,
    decode_ros_image,
)

__all__ = [
    "ImageFolderSource",
    "ImageSource",
    "IterationBatchSampler",
    "MaskingGenerator",
    "MultiCropAugmentation",
    "MultiCropCollate",
    "MultiCropDataset",
    "ProceduralSource",
    "RosbagSource",
    "SyntheticSceneSource",
    "VideoSource",
    "build_augmentations",
    "build_pretrain_loader",
    "build_source",
    "choose_resolution",
    "decode_ros_image",
    "sample_masks",
    "sample_seed",
]
