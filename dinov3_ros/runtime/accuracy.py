"""How close a reduced-precision engine's patch features are to an fp32 reference.

Feature-level numbers (per-token cosine, max-abs) and two downstream ones: nearest-neighbour patch
matching between two related images (does the int8 engine pick the same match as fp32?) and the PCA-RGB
view (the fp32 PCA basis applied to both; mean absolute colour difference in 8-bit levels).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["feature_agreement", "nn_match_agreement", "pca_rgb_difference", "related_pair"]


def _tokens(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().float().cpu()
    return t.reshape(-1, t.shape[-1])


def feature_agreement(ref: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray) -> dict[str, float]:
    """``{"cos_min", "cos_mean", "max_abs", "max_abs_rel"}`` over tokens (``[..., C]`` arrays, same shape)."""
    a, b = _tokens(ref), _tokens(test)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    err = (a - b).abs().max().item()
    return {
        "cos_min": cos.min().item(),
        "cos_mean": cos.mean().item(),
        "max_abs": err,
        "max_abs_rel": err / max(a.abs().max().item(), 1e-12),
    }


def _nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    return (a @ b.T).argmax(dim=1)


def nn_match_agreement(
    ref_a: torch.Tensor | np.ndarray,
    ref_b: torch.Tensor | np.ndarray,
    test_a: torch.Tensor | np.ndarray,
    test_b: torch.Tensor | np.ndarray,
) -> float:
    """Fraction of patches of image A whose nearest neighbour (cosine) in image B is the same patch with the
    test features as with the reference features."""
    ref_nn = _nn(_tokens(ref_a), _tokens(ref_b))
    test_nn = _nn(_tokens(test_a), _tokens(test_b))
    return (ref_nn == test_nn).float().mean().item()


def pca_rgb_difference(ref: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray) -> float:
    """Mean |RGB difference| (0-255 levels) of the 3-component PCA view, with the reference's basis and range."""
    a, b = _tokens(ref).double(), _tokens(test).double()
    mean = a.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(a - mean, full_matrices=False)
    basis = v[:3].T
    pa, pb = (a - mean) @ basis, (b - mean) @ basis
    lo, hi = pa.min(0).values, pa.max(0).values
    scale = (hi - lo).clamp_min(1e-12)
    ra = ((pa - lo) / scale).clamp(0, 1) * 255.0
    rb = ((pb - lo) / scale).clamp(0, 1) * 255.0
    return (ra - rb).abs().mean().item()


def related_pair(image: np.ndarray, size: tuple[int, int], shift: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Two views of one RGB ``uint8`` image at ``size`` (H, W): a centre crop and one shifted by ``shift``
    pixels right/down with a brightness change (the pair for :func:`nn_match_agreement`)."""
    import cv2

    H, W = size
    h0, w0 = image.shape[:2]
    s = max((H + shift) / h0, (W + shift) / w0)
    big = cv2.resize(image, (int(np.ceil(w0 * s)), int(np.ceil(h0 * s))), interpolation=cv2.INTER_AREA)
    a = np.ascontiguousarray(big[:H, :W])
    b = big[shift : shift + H, shift : shift + W].astype(np.float32) * 0.85 + 12.0
    return a, np.ascontiguousarray(b.clip(0, 255).astype(np.uint8))
