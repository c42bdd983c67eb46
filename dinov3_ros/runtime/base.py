"""The engine interface every backend implements: ``Engine.run(batch) -> named outputs`` and ``EngineInfo``.

``engine.run(batch [B, 3, H, W] normalised float) -> {"patch_tokens": [B, h, w, C], "cls": [B, C],
"depth": [B, 1, H, W] (with a depth head)}``: torch tensors on ``engine.device`` (CPU tensors may share
memory with the backend's arrays).
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from dinov3_ros.core.spec import BACKENDS, PRECISIONS

from .preprocess import Preprocessor, Target

__all__ = ["BACKENDS", "PRECISIONS", "Engine", "EngineInfo", "resolution_mismatch"]


@dataclass
class EngineInfo:
    """What an engine runs and how."""

    backend: str
    precision: str
    device: str
    arch: str
    input_size: tuple[int, int] | None  # fixed network (H, W); None when dynamic
    patch_size: int = 16
    embed_dim: int = 0
    norm_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    norm_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    outputs: tuple[str, ...] = ("patch_tokens", "cls")
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(abc.ABC):
    """Backbone (+ heads) on one backend. Subclasses implement :meth:`_run`."""

    info: EngineInfo
    device: torch.device

    def run(self, batch: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Run a normalised ``[B, 3, H, W]`` batch; returns the named outputs."""
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"batch must be [B, 3, H, W], got {tuple(batch.shape)}")
        p = self.info.patch_size
        H, W = int(batch.shape[2]), int(batch.shape[3])
        if H % p or W % p:
            raise ValueError(f"batch size {H}x{W} is not a multiple of the patch size {p}")
        if self.info.input_size is not None and (H, W) != tuple(self.info.input_size):
            raise ValueError(
                f"engine was built for {self.info.input_size[0]}x{self.info.input_size[1]}, got {H}x{W}"
            )
        return self._run(batch)

    @abc.abstractmethod
    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def preprocessor(self, target: Target | str | None = None, *, fit: str = "pad") -> Preprocessor:
        """A :class:`Preprocessor` with this engine's constants, on its device (fixed size by default)."""
        if target is None:
            if self.info.input_size is None:
                raise ValueError("dynamic engine: pass a target (short side or HxW)")
            target = tuple(self.info.input_size)
        return Preprocessor(
            target, self.info.patch_size, self.info.norm_mean, self.info.norm_std, self.device, fit=fit
        )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""

    def __repr__(self) -> str:
        i = self.info
        size = "dynamic" if i.input_size is None else f"{i.input_size[0]}x{i.input_size[1]}"
        return f"<{type(self).__name__} {i.backend} {i.precision} {i.device} {i.arch} {size}>"


def resolution_mismatch(weights: object, built: tuple[int, int], wanted: tuple[int, int]) -> str:
    """The one message for a fixed-size engine asked to run at another resolution."""
    return (
        f"{weights} was built for {built[0]}x{built[1]} input, the configured resolution is "
        f"{wanted[0]}x{wanted[1]}: set resolution to {built[0]}x{built[1]} (or leave it unset to use the "
        f"model's size), or export the model again at {wanted[0]}x{wanted[1]}"
    )
