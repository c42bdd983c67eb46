"""Fair floors for `dinov3-ros eval`: models without learning that any trained backbone must beat.

* ``pixels``: each 16x16 patch's normalised RGB values (768-d) as its feature, the image mean as CLS;
* ``colorhist``: each patch's joint RGB histogram (4x4x4 soft bins, 64-d, L1-normalised);
* ``random-ls1:ARCH``: a randomly initialised backbone with LayerScale 1.0, so every block transforms
  the tokens (the official init, LayerScale 1e-5, is close to a patch embedding followed by identity
  blocks, and its CLS token is nearly constant across images, a degenerate floor).
"""

from __future__ import annotations

import numpy as np

from dinov3_ros.eval.features import IMAGENET_MEAN, IMAGENET_STD, BackboneFeatures

__all__ = ["BASELINES", "ColorHistFeatures", "PixelFeatures", "resolve_model"]


def _patches(images: np.ndarray, p: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [B,H,W,3], got {images.dtype} {images.shape}")
    B, H, W, _ = images.shape
    if H % p or W % p:
        raise ValueError(f"image size {W}x{H} is not a multiple of the patch size {p}")
    x = images.reshape(B, H // p, p, W // p, p, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.astype(np.float32) / 255.0  # [B, h, w, p, p, 3]


class PixelFeatures:
    """Raw normalised patch pixels as features (no network)."""

    def __init__(self, patch_size: int = 16) -> None:
        self.patch_size = int(patch_size)
        self.name = "pixels"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _patches(images, self.patch_size)
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        B, h, w = x.shape[:3]
        feats = x.reshape(B, h, w, -1)
        return feats, feats.mean((1, 2))


class ColorHistFeatures:
    """Per-patch joint RGB histogram with ``bins`` soft (linear) bins per channel."""

    def __init__(self, patch_size: int = 16, bins: int = 4) -> None:
        self.patch_size, self.bins = int(patch_size), int(bins)
        self.name = f"colorhist:{self.bins}"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _patches(images, self.patch_size)
        B, h, w, p, _, _ = x.shape
        k = self.bins
        v = x.reshape(B, h, w, p * p, 3) * (k - 1)
        lo = np.clip(np.floor(v), 0, k - 2).astype(np.int64)
        f = v - lo  # weight of the upper bin, per channel
        n_bins = k**3
        cell = np.arange(B * h * w).reshape(B, h, w, 1) * n_bins
        hist = np.zeros(B * h * w * n_bins, np.float64)
        for corner in range(8):
            bits = [(corner >> c) & 1 for c in range(3)]
            idx = np.zeros(lo.shape[:-1], np.int64)
            wgt = np.ones(lo.shape[:-1], np.float32)
            for c in range(3):
                idx = idx * k + lo[..., c] + bits[c]
                wgt = wgt * (f[..., c] if bits[c] else 1.0 - f[..., c])
            hist += np.bincount((cell + idx).ravel(), wgt.ravel(), minlength=hist.size)
        hist = hist.reshape(B, h, w, n_bins).astype(np.float32)
        hist /= np.maximum(hist.sum(-1, keepdims=True), 1e-12)
        return hist, hist.mean((1, 2))


#: the named no-network baselines
BASELINES = ("pixels", "colorhist")


def resolve_model(spec: str, device: str = "cpu", seed: int = 0, arch: str | None = None):
    """A ``--weights`` value: a baseline above, or anything :func:`~dinov3_ros.eval.features.resolve_weights`
    accepts."""
    if spec == "pixels":
        return PixelFeatures()
    if spec == "colorhist":
        return ColorHistFeatures()
    if spec.startswith("random-ls1:"):
        from dinov3_ros import models
        from dinov3_ros.models.testing import random_backbone

        name = spec.split(":", 1)[1]
        if name not in models.ARCHS:
            raise ValueError(f"unknown arch {name!r}; known: {', '.join(sorted(models.ARCHS))}")
        bb = random_backbone(name, seed, layerscale_init=1.0)
        return BackboneFeatures(bb, name=f"random-ls1:{name}", device=device)
    from dinov3_ros.eval.features import resolve_weights

    return resolve_weights(spec, device, seed, arch)
