"""Shared helpers for the heads: numpy/torch conversion and shape checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # np.ndarray | torch.Tensor


def to_tensor(x: ArrayLike, *, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``x`` as a torch tensor (numpy arrays are wrapped without copy where possible)."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if device is not None:
        t = t.to(device)
    return t


def float_tensor(x: ArrayLike, *, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Like :func:`to_tensor` but cast integer/half inputs to float32 (float64 is kept)."""
    t = to_tensor(x, name=name, device=device)
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t


def all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN or inf. A float CPU tensor is checked by numpy, in one pass (torch's
    ``isfinite(t).all()`` takes several times longer there)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(t.detach().numpy()).all())
    return bool(torch.isfinite(t).all())


def check_finite(t: torch.Tensor, *, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf."""
    if not all_finite(t):
        raise ValueError(f"{name}: contains NaN or inf values")


def patch_grid(x: ArrayLike, *, name: str = "features") -> torch.Tensor:
    """Validate a ``[h, w, C]`` patch-feature grid and return it as a float tensor."""
    t = float_tensor(x, name=name)
    if t.ndim != 3:
        raise ValueError(
            f"{name}: expected patch features [h, w, C], got shape {tuple(t.shape)}; "
            "reshape tokens to the patch grid (without CLS/register tokens) first"
        )
    if min(t.shape) == 0:
        raise ValueError(f"{name}: empty feature grid {tuple(t.shape)}")
    return t


def like_input(t: torch.Tensor, ref: ArrayLike) -> ArrayLike:
    """Return ``t`` as numpy when ``ref`` was numpy, else as a tensor."""
    if isinstance(ref, np.ndarray):
        return t.detach().cpu().numpy()
    return t


def as_numpy(x: ArrayLike) -> np.ndarray:
    """Any array/tensor -> numpy (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_host(t: torch.Tensor, sync: bool = True, buf: torch.Tensor | None = None) -> np.ndarray:
    """``t`` as numpy; CUDA tensors go through pinned (page-locked, cached) host memory, which copies
    several times faster than pageable memory, and wait for the current stream only (``sync``; without
    it the caller must synchronize that stream before reading). ``buf``: a pinned tensor of ``t``'s
    shape and dtype to copy into (reused by the caller; the result is a view of it)."""
    if t.device.type != "cuda":
        return t.numpy()
    if buf is None:
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    buf.copy_(t, non_blocking=True)
    if sync:
        torch.cuda.current_stream(t.device).synchronize()
    return buf.numpy()
