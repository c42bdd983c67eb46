"""Depth training losses (imported by ``training/``): SigLoss, scale-shift invariant, gradient matching.

All take ``pred`` and ``target`` ``[B, 1, H, W]`` (or ``[B, H, W]``) and an optional boolean
``valid`` mask; by default valid = ``target > 0`` and finite.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = [
    "SigLoss",
    "gradient_matching_loss",
    "scale_shift_invariant_loss",
    "sig_loss",
    "ssi_gradient_loss",
]


def _prep(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None):
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    if pred.ndim == 3:
        pred, target = pred[:, None], target[:, None]
        valid = None if valid is None else valid[:, None] if valid.ndim == 3 else valid
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"expected depth maps [B, 1, H, W] or [B, H, W], got {tuple(pred.shape)}")
    v = torch.isfinite(target) & (target > 0)
    if valid is not None:
        if valid.shape != v.shape:
            raise ValueError(f"valid mask {tuple(valid.shape)} does not match {tuple(v.shape)}")
        v = v & valid.bool()
    return pred, torch.where(v, target, torch.ones_like(target)), v


def sig_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    eps: float = 1e-3,
    mean_weight: float = 0.15,
    use_variance: bool = True,
) -> torch.Tensor:
    """Scale-invariant log loss (DINOv3 depth probe): ``sqrt(Var(g) + 0.15 mean(g)²)``.

    ``g = log(pred + eps) − log(target + eps)`` over all valid pixels of the batch, ``Var`` the
    population variance, i.e. ``sqrt(mean(g²) − 0.85 mean(g)²)``. ``use_variance=False`` is the
    warm-up form ``sqrt(0.15 mean(g)²)``.
    """
    pred, target, v = _prep(pred, target, valid)
    if not bool(v.any()):
        return pred.sum() * 0.0
    g = torch.log(pred[v] + eps) - torch.log(target[v] + eps)
    m = g.mean()
    dg = mean_weight * m * m
    if use_variance:
        dg = dg + (g * g).mean() - m * m
    return torch.sqrt(dg.clamp_min(1e-12))


class SigLoss(nn.Module):
    """:func:`sig_loss` with the DINOv3 warm-up: the variance term joins after ``warm_up_iters`` calls."""

    def __init__(self, eps: float = 1e-3, mean_weight: float = 0.15, warm_up_iters: int = 100) -> None:
        super().__init__()
        self.eps, self.mean_weight, self.warm_up_iters = eps, mean_weight, warm_up_iters
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        use_var = int(self.step) >= self.warm_up_iters
        if self.training:
            self.step += 1
        return sig_loss(pred, target, valid, eps=self.eps, mean_weight=self.mean_weight, use_variance=use_var)


def _normalise(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-image ``(x − median) / mean|x − median|`` over valid pixels (invalid set to 0)."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        vb = v[b]
        if int(vb.sum()) == 0:
            continue
        xb = x[b][vb]
        med = xb.median()
        s = (xb - med).abs().mean().clamp_min(1e-6)
        out[b][vb] = (xb - med) / s
    return out


def _lstsq_align(pred: torch.Tensor, target: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-image least-squares scale/shift of ``pred`` onto ``target``."""
    vf = v.to(pred.dtype)
    dims = (1, 2, 3)
    a00 = (vf * pred * pred).sum(dims)
    a01 = (vf * pred).sum(dims)
    a11 = vf.sum(dims)
    b0 = (vf * pred * target).sum(dims)
    b1 = (vf * target).sum(dims)
    det = (a00 * a11 - a01 * a01).clamp_min(1e-12)
    s = (a11 * b0 - a01 * b1) / det
    t = (-a01 * b0 + a00 * b1) / det
    return s.view(-1, 1, 1, 1) * pred + t.view(-1, 1, 1, 1)


def scale_shift_invariant_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *, mode: str = "median"
) -> torch.Tensor:
    """MiDaS-style ``mean|d̂_pred − d̂_gt|`` after per-image alignment.

    ``mode="median"``: both normalised by median and mean absolute deviation; ``"lstsq"``: ``pred``
    aligned to ``target`` by least-squares scale and shift. Apply to disparity for relative depth.
    """
    pred, target, v = _prep(pred, target, valid)
    if not bool(v.any()):
        return pred.sum() * 0.0
    if mode == "median":
        p, t = _normalise(pred, v), _normalise(target, v)
    elif mode == "lstsq":
        p, t = _lstsq_align(pred, target, v), target
    else:
        raise ValueError(f"mode must be 'median' or 'lstsq', got {mode!r}")
    return (p - t).abs()[v].mean()


def gradient_matching_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *, scales: int = 4
) -> torch.Tensor:
    """Multi-scale gradient matching ``Σ_k Σ_i (|∇x R_k| + |∇y R_k|) / M`` with ``R = pred − target``.

    Scale ``k`` subsamples by ``2^k``; only gradients between two valid pixels count; ``M`` is the
    number of valid pixels at full resolution. Pass aligned/normalised maps for the SSI variant.
    """
    pred, target, v = _prep(pred, target, valid)
    M = v.sum().clamp_min(1)
    total = pred.sum() * 0.0
    for k in range(scales):
        s = 2**k
        R = (pred - target)[..., ::s, ::s]
        vk = v[..., ::s, ::s]
        R = torch.where(vk, R, torch.zeros_like(R))
        gx = (R[..., :, 1:] - R[..., :, :-1]).abs() * (vk[..., :, 1:] & vk[..., :, :-1])
        gy = (R[..., 1:, :] - R[..., :-1, :]).abs() * (vk[..., 1:, :] & vk[..., :-1, :])
        total = total + (gx.sum() + gy.sum()) / M
    return total


def ssi_gradient_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    grad_weight: float = 2.0,
    scales: int = 4,
) -> torch.Tensor:
    """Depth Anything style ``L_ssi + grad_weight · L_gm`` on median/MAD-normalised maps."""
    p4, t4, v = _prep(pred, target, valid)
    p, t = _normalise(p4, v), _normalise(t4, v)
    ssi = (p - t).abs()[v].mean() if bool(v.any()) else p4.sum() * 0.0
    return ssi + grad_weight * gradient_matching_loss(p, t, v, scales=scales)
