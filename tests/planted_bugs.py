"""Plausible bugs planted into the ViT forwards, for the negative controls of the equivalence tests.

Each equivalence test (ours vs a reference, torch vs ONNX Runtime, fast path vs plain path) pairs with a
control that plants one of these bugs on one side and shows that the *same* comparison then fails.
A bug is a context manager that patches the code or the model and undoes it on exit:

``relu``             wrong activation: GELU (and SiLU in SwiGLU) replaced by ReLU
``drop_block``       one transformer block skipped
``rope_interleaved`` RoPE frequencies laid out interleaved (2k, 2k+1) while rotating halves (k, k+D/2)
``rope_unscaled``    RoPE on raw patch-centre coordinates instead of the [-1, 1] normalised ones
``norm_affine``      the final LayerNorm's weight and bias not applied (e.g. not loaded)
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov3_ros.models import layers as ref_layers
from dinov3_ros.runtime import vit_infer

BUGS = ("relu", "drop_block", "rope_interleaved", "rope_unscaled", "norm_affine")


def _relu_functional() -> types.ModuleType:
    """A stand-in for ``torch.nn.functional`` whose gelu and silu are ReLU."""
    fake = types.ModuleType("functional_with_relu")
    fake.__dict__.update(vars(F))
    fake.gelu = lambda x, approximate="none": F.relu(x)
    fake.silu = lambda x, inplace=False: F.relu(x)
    return fake


@contextlib.contextmanager
def _restored(params: list[torch.Tensor]) -> Iterator[None]:
    saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


@contextlib.contextmanager
def _norm_affine_off(norm: nn.LayerNorm) -> Iterator[None]:
    with _restored([norm.weight, norm.bias]):
        with torch.no_grad():
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        yield


@contextlib.contextmanager
def _relu_modules(model: nn.Module) -> Iterator[None]:
    """Every ``nn.GELU`` submodule replaced by ``nn.ReLU`` (module attributes: not monkeypatch-safe)."""
    swapped = []
    for mod in model.modules():
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.GELU):
                setattr(mod, name, nn.ReLU())
                swapped.append((mod, name, child))
    try:
        yield
    finally:
        for mod, name, child in swapped:
            setattr(mod, name, child)


# --------------------------------------------------------------------------- the deploy forward
def _deploy_rope_tables(bug: str):
    real = vit_infer.InferenceViT._rope_tables

    def tables(self, h, w, device):
        if bug == "rope_unscaled":  # coordinates (i + 0.5) in patch units, no [-1, 1] normalisation
            n = self.n_prefix
            cos, sin = real(self, h, w, device)
            Dh = self.embed_dim // self.cfg.num_heads
            ys = torch.arange(h, dtype=torch.float32) + 0.5
            xs = torch.arange(w, dtype=torch.float32) + 0.5
            c = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
            ang = (2 * math.pi * c[:, :, None] / self.periods.float()[None, None]).reshape(-1, Dh // 2)
            ang = torch.cat([ang, ang], -1)
            s = torch.sin(ang)
            s = torch.cat([-s[:, : Dh // 2], s[:, Dh // 2 :]], -1)
            cos = torch.cat([cos[:n], torch.cos(ang)[:, None, None]], 0)
            sin = torch.cat([sin[:n], s[:, None, None]], 0)
            return cos.to(device), sin.to(device)
        cos, sin = real(self, h, w, device)  # [N, 1, 1, Dh]; rotate_half's sign folded into sin's first half
        half = cos.shape[-1] // 2
        c = cos[..., :half].repeat_interleave(2, dim=-1)
        s = sin[..., half:].repeat_interleave(2, dim=-1)
        return c, torch.cat([-s[..., :half], s[..., half:]], dim=-1)

    return tables


@contextlib.contextmanager
def deploy_bug(bug: str, vit: vit_infer.InferenceViT) -> Iterator[vit_infer.InferenceViT]:
    """Plant ``bug`` into :class:`InferenceViT` ``vit`` (eager forward and ONNX export alike)."""
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        vit._rope_cache.clear()
        if bug == "relu":
            mp.setattr(vit_infer, "F", _relu_functional())
        elif bug == "drop_block":
            blk = vit.blocks[len(vit.blocks) // 2]
            mp.setattr(blk, "forward", lambda t, cos, sin: t)
        elif bug in ("rope_interleaved", "rope_unscaled"):
            mp.setattr(vit_infer.InferenceViT, "_rope_tables", _deploy_rope_tables(bug))
        elif bug == "norm_affine":
            stack.enter_context(_norm_affine_off(vit.norm))
        else:
            raise ValueError(f"unknown bug {bug!r}; known: {BUGS}")
        try:
            yield vit
        finally:
            vit._rope_cache.clear()


# --------------------------------------------------------------------------- the reference model
def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Interleaved ("GPT-J") rotation: pairs (2k, 2k+1) -> (-x[2k+1], x[2k])."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


@contextlib.contextmanager
def model_bug(bug: str, model: nn.Module) -> Iterator[nn.Module]:
    """Plant ``bug`` into a ``dinov3_ros.models`` backbone (ConvNeXt: ``relu``, ``drop_block``, ``norm_affine``)."""
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        if bug == "relu":
            mp.setattr(ref_layers, "F", _relu_functional())  # SwiGLU's silu
            stack.enter_context(_relu_modules(model))
        elif bug == "drop_block":  # ViT blocks, or ConvNeXt blocks over all stages
            blocks = (
                list(model.blocks) if hasattr(model, "blocks") else [b for st in model.stages for b in st]
            )
            mp.setattr(blocks[len(blocks) // 2], "forward", lambda x, *args, **kwargs: x)
        elif bug == "rope_interleaved":
            mp.setattr(ref_layers, "rotate_half", _rotate_pairs)
        elif bug == "rope_unscaled":
            real = ref_layers.RopePositionEmbedding.coords

            def coords(self, h, w, device):
                return (real(self, h, w, device) + 1.0) / 2.0 * torch.tensor([h, w], device=device)

            mp.setattr(ref_layers.RopePositionEmbedding, "coords", coords)
        elif bug == "norm_affine":
            stack.enter_context(_norm_affine_off(model.norm))
        else:
            raise ValueError(f"unknown bug {bug!r}; known: {BUGS}")
        yield model
