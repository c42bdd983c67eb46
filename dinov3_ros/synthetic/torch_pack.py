"""Packed scenes as device tensors for the torch renderer (:mod:`dinov3_ros.synthetic.torch_render`).

Slot ``g`` of scene ``s`` is row ``s * G + g`` of the flattened slot tables (see :mod:`packing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from dinov3_ros.synthetic.packing import LIST_KEYS, SCENE_KEYS, SLOT_KEYS, pack_arrays


@dataclass
class PackedScenes:
    """Device tensors of :func:`pack_arrays` (``slots[k]`` flattened to ``[S*G, ...]``)."""

    n_scenes: int
    n_slots: int  # G
    slots: dict[str, torch.Tensor]
    scenes: dict[str, torch.Tensor]
    lists: dict[str, torch.Tensor]
    instance_classes: torch.Tensor  # [S, I] int32, -1 padded
    host_lists: dict[str, np.ndarray]  # ``lists`` on the host (the renderer plans its work from them)

    @property
    def device(self) -> torch.device:
        return self.instance_classes.device

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> PackedScenes:
        S, G = arrays["kind"].shape[:2]

        def dev(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)

        slots = {k: dev(arrays[k].reshape(S * G, *arrays[k].shape[2:])) for k in SLOT_KEYS}
        slots["kind"], slots["cls"], slots["map"] = (slots[k].long() for k in ("kind", "cls", "map"))
        slots["tex"] = slots["tex"].long()
        return cls(
            n_scenes=int(S),
            n_slots=int(G),
            slots=slots,
            scenes={k: dev(arrays[k]) for k in SCENE_KEYS},
            lists={k: dev(arrays[k]) for k in LIST_KEYS},
            instance_classes=dev(arrays["instance_classes"]),
            host_lists={k: np.asarray(arrays[k]) for k in LIST_KEYS},
        )

    def to(self, device: torch.device | str) -> PackedScenes:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("slots", "scenes", "lists"):
            moved[k] = {n: x.to(device) for n, x in moved[k].items()}
        moved["instance_classes"] = self.instance_classes.to(device)
        return PackedScenes(**moved)


def pack_scenes(specs: Sequence, device: torch.device | str = "cpu") -> PackedScenes:
    """Pack scenes (``SceneSpec`` from :func:`generator.sample_scene`, or :class:`Scene`) onto ``device``."""
    return PackedScenes.from_arrays(pack_arrays(specs), device)
