"""The objects head: a learned linear map of patch tokens into the space TokenCut cuts.

TokenCut joins two patches when the cosine of their features exceeds ``tau``. On a backbone whose raw
tokens put patches of *different* objects above ``tau`` too, the cut takes several objects and the
background at once. The objects head ``z = tokens @ weight + bias`` is trained (``dinov3-train
objects``) with an instance contrast loss on frozen tokens so that patches of one object stay above
the threshold and patches of different objects (background included) fall below it; TokenCut itself
is unchanged and runs on ``z``.

Files are ``.npz`` archives read with ``allow_pickle=False`` (nothing is unpickled): ``weight
[C, D]``, ``bias [D]`` (float32) and ``meta``, a UTF-8 JSON document stored as uint8, with the format
tag, version, ``arch``, ``embed_dim`` and ``out_dim``. Writes are atomic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dinov3_ros.fsutil import atomic_write

__all__ = ["FORMAT", "VERSION", "ObjectsHead", "load_objects_head", "save_objects_head"]

FORMAT = "dinov3_ros.objects_head"
VERSION = 1
_ARRAYS = ("weight", "bias", "meta")


@dataclass
class ObjectsHead:
    """``weight [C, D]`` and ``bias [D]`` (float32 numpy); ``meta`` is what the file records."""

    weight: np.ndarray
    bias: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.weight = np.ascontiguousarray(self.weight, np.float32)
        self.bias = np.ascontiguousarray(self.bias, np.float32)
        _check_arrays(self.weight, self.bias, "ObjectsHead")

    @property
    def embed_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[1])

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [..., C]`` (any float dtype, any device) -> ``[..., D]`` float32 on that device."""
        if tokens.shape[-1] != self.embed_dim:
            raise ValueError(
                f"objects head expects {self.embed_dim}-d tokens, got shape {tuple(tokens.shape)}"
            )
        key = str(tokens.device)
        if key not in self._cache:
            self._cache[key] = (
                torch.from_numpy(self.weight).to(tokens.device),
                torch.from_numpy(self.bias).to(tokens.device),
            )
        w, b = self._cache[key]
        return torch.addmm(b, tokens.reshape(-1, self.embed_dim).float(), w).reshape(
            *tokens.shape[:-1], self.out_dim
        )

    def apply_numpy(self, tokens: np.ndarray) -> np.ndarray:
        """The same map on host arrays ``[..., C] -> [..., D]`` float32."""
        return np.asarray(self(torch.from_numpy(np.ascontiguousarray(tokens, np.float32))).numpy())


def _check_arrays(weight: np.ndarray, bias: np.ndarray, where: str) -> None:
    if weight.ndim != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"{where}: weight must be [embed_dim, out_dim], got shape {weight.shape}")
    if bias.shape != (weight.shape[1],):
        raise ValueError(f"{where}: bias must be [{weight.shape[1]}], got shape {bias.shape}")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError(f"{where}: weight/bias hold NaN or inf")


def save_objects_head(path: str | os.PathLike, head: ObjectsHead, meta: dict[str, Any]) -> None:
    """Write ``head`` with ``meta`` (JSON-able; must give ``arch``) atomically to ``path`` (``.npz``)."""
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        raise ValueError("meta['arch'] must name the backbone architecture the head was trained on")
    full = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "embed_dim": head.embed_dim,
        "out_dim": head.out_dim,
    }
    try:
        blob = np.frombuffer(json.dumps(full, sort_keys=True).encode(), np.uint8)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must be JSON-serialisable ({e})") from None
    with atomic_write(path) as f:
        np.savez(f, weight=head.weight, bias=head.bias, meta=blob)


def load_objects_head(
    path: str | os.PathLike, *, expect_arch: str | None = None, expect_embed_dim: int | None = None
) -> ObjectsHead:
    """Read an objects head file; every inconsistency is a ``ValueError`` naming the file and problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"objects head file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: not an objects head file (missing {missing})")
            weight, bias, blob = z["weight"], z["bias"], z["meta"]
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(path) else f"{path}: not readable ({e})") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not an .npz archive ({type(e).__name__}: {e})") from None
    meta = _parse_meta(blob, path)
    if weight.dtype != np.float32 or bias.dtype != np.float32:
        raise ValueError(f"{path}: weight/bias must be float32, got {weight.dtype}/{bias.dtype}")
    _check_arrays(weight, bias, path)
    if (meta.get("embed_dim"), meta.get("out_dim")) != weight.shape:
        raise ValueError(
            f"{path}: meta says {meta.get('embed_dim')}->{meta.get('out_dim')}, weight is {weight.shape}"
        )
    if expect_arch is not None and meta.get("arch") != expect_arch:
        raise ValueError(
            f"{path}: objects head was trained for arch {meta.get('arch')!r}, backbone is {expect_arch!r}"
        )
    if expect_embed_dim is not None and weight.shape[0] != expect_embed_dim:
        raise ValueError(
            f"{path}: objects head expects {weight.shape[0]}-d tokens, backbone gives {expect_embed_dim}"
        )
    return ObjectsHead(weight, bias, meta)


def _parse_meta(blob: np.ndarray, path: str) -> dict[str, Any]:
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"{path}: meta must be a uint8 JSON blob, got {blob.dtype} {blob.shape}")
    try:
        meta = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: meta is not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dinov3_ros objects head file (format tag missing)")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported objects head version {meta.get('version')!r} (expected {VERSION})"
        )
    return meta
