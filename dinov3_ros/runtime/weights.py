"""Backbones and depth heads as torch modules, from a ``weights`` value (see ``core.spec``) or a file.

The one loader behind the torch engine, ONNX export and eval: ``random:<arch>`` builds a randomly
initialised backbone with a fixed seed; a registry name or a file goes through
``dinov3_ros.models.load_backbone`` (strict, ``weights_only`` / safetensors).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dinov3_ros.core.spec import WeightsSpec

__all__ = ["load_backbone", "load_depth_head", "random_backbone"]


def random_backbone(arch: str, seed: int = 0) -> nn.Module:
    """``random:<arch>``: a seeded random backbone whose every block changes the output
    (:func:`dinov3_ros.models.testing.random_backbone`; the global RNG is untouched)."""
    from dinov3_ros import models
    from dinov3_ros.models.testing import random_backbone as draw

    if arch not in models.ARCHS:
        raise ValueError(
            f"unknown arch {arch!r} in 'random:{arch}'; known: {', '.join(sorted(models.ARCHS))}"
        )
    return draw(arch, seed)


def load_backbone(arch: str | None, weights: str | Path | WeightsSpec | None, seed: int = 0) -> nn.Module:
    """A backbone: ``weights`` (a ``core.spec`` value: file, registry name or ``random:<arch>``) with
    ``arch`` as a hint, or - without weights - a random-init ``arch``."""
    from dinov3_ros import models

    if weights is None or weights == "":
        if not arch:
            raise ValueError("give an architecture (random weights) and/or weights")
        return models.build_backbone(arch)
    spec = weights if isinstance(weights, WeightsSpec) else WeightsSpec.parse(str(weights))
    if spec.kind == "random":
        return random_backbone(spec.value, seed)
    return models.load_backbone(spec.value if spec.kind == "registry" else spec.path(), arch)


def load_depth_head(head: nn.Module | str | Path | None) -> nn.Module | None:
    """A depth head module, or one loaded with ``dinov3_ros.heads.depth.load_head(path)`` (the backbone
    blocks that feed it, ``meta['layers']``, set as ``layer_indices``)."""
    if head is None or isinstance(head, nn.Module):
        return head
    from dinov3_ros.heads.depth import load_head

    loaded = load_head(head)
    if not isinstance(loaded, tuple):
        return loaded
    module, meta = loaded
    layers = meta.get("layers") if isinstance(meta, dict) else None
    if layers:
        module.layer_indices = tuple(int(i) for i in layers)
    return module
