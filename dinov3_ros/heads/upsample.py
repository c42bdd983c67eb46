"""Patch features to image resolution: bilinear/bicubic/nearest, or edge-aware guided by the RGB image.

Two edge-aware modes: ``"guided"`` (alias ``"jbu"``, the recommended one) - joint bilateral upsampling (Kopf et al., SIGGRAPH 2007): each
output pixel is a weighted mean of the 3x3 neighbouring patch features, weights = spatial Gaussian
(patch units) x range Gaussian between the pixel's colour and the patch's mean colour; ``"guided_filter"`` -
the guided filter (He, Sun, Tang; TPAMI 2013) applied per feature channel to
the bilinearly upsampled features, with the image as guide (grey or colour), in its fast form: the
linear coefficients are computed at ``1/subsample`` of the output resolution and upsampled. Pure torch,
CPU or GPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._common import ArrayLike, float_tensor, like_input

MODES = ("bilinear", "bicubic", "nearest", "guided", "jbu", "guided_filter")

__all__ = ["MODES", "box_mean", "guided_filter", "joint_bilateral_upsample", "upsample"]


def _box_sum_dim(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sums over the ``2r+1`` window along ``dim`` (clipped at the borders) from one cumulative sum.

    The cumulative sum is extended by ``r+1`` zeros before and ``r`` copies of its last value after,
    so every window is one difference of two slices: four kernels whatever the size."""
    n = x.shape[dim]
    c = torch.cumsum(x, dim=dim)
    shape = list(c.shape)
    shape[dim] = r + 1
    head = c.new_zeros(shape)
    shape[dim] = r
    tail = c.narrow(dim, n - 1, 1).expand(shape)
    ext = torch.cat([head, c, tail], dim)
    return ext.narrow(dim, 2 * r + 1, n) - ext.narrow(dim, 0, n)


def _window_counts(n: int, r: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """How many of ``n`` positions each clipped ``2r+1`` window holds (exact integers)."""
    i = torch.arange(n, device=device)
    return ((i + r).clamp(max=n - 1) - (i - r).clamp(min=0) + 1).to(dtype)


@functools.lru_cache(maxsize=32)
def _window_areas(H: int, W: int, r: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[H, W]`` pixels of each clipped ``(2r+1)²`` window, made once per size: a plain tensor (outside
    inference mode, without grad) that is complete before it is returned, so any thread's stream may read
    it."""
    with torch.inference_mode(False), torch.no_grad():
        cnt = _window_counts(H, r, device, dtype)[:, None] * _window_counts(W, r, device, dtype)
    if cnt.is_cuda:
        torch.cuda.current_stream(cnt.device).synchronize()
    return cnt


def box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a ``(2r+1)²`` window of ``[..., H, W]`` (windows clipped at the border)."""
    H, W = x.shape[-2:]
    return _box_sum_dim(_box_sum_dim(x, r, -2), r, -1) / _window_areas(H, W, r, x.device, x.dtype)


def _inv_sym3(v: torch.Tensor) -> torch.Tensor:
    """Per-pixel inverse of symmetric 3x3 matrices ``v [B, 6, H, W]`` (entries 00 01 02 11 12 22) -> the
    inverse's entries in the same order. Each cofactor is one product minus another, all six in one pass
    per operation (the same arithmetic per entry as one by one)."""
    a, b, c, d, e, f = v.unbind(1)
    cof = torch.stack([d, c, b, a, b, a], 1) * torch.stack([f, e, e, f, c, d], 1)
    cof = cof - torch.stack([e, b, c, c, a, b], 1) * torch.stack([e, f, d, c, e, b], 1)
    t = torch.stack([a, b, c], 1) * cof[:, :3]
    det = t[:, 0] + t[:, 1] + t[:, 2]
    return cof * (1.0 / det)[:, None]


def _pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, G, ...]`` -> the left and right factors of every channel pair ``(i, j)``, ``i <= j``, in the
    order ``(0, 0), (0, 1), ..., (G-1, G-1)``: one product gives all of them."""
    G = x.shape[1]
    left = torch.cat([x[:, i : i + 1].expand(-1, G - i, *x.shape[2:]) for i in range(G)], 1)
    right = torch.cat([x[:, i:] for i in range(G)], 1)
    return left, right


def _terms_sum(t: torch.Tensor) -> torch.Tensor:
    """``0 + t[:, 0] + t[:, 1] + ...`` in that order (Python's ``sum`` over the terms of dim 1)."""
    acc = 0 + t[:, 0]
    for k in range(1, t.shape[1]):
        acc = acc + t[:, k]
    return acc


def guided_filter(
    p: torch.Tensor, guide: torch.Tensor, radius: int, eps: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided-filter coefficients for input ``p [B, C, H, W]`` and guide ``[B, 1|3, H, W]``.

    Returns ``(A, b)`` averaged over windows so that the output is ``Σ_k A_k I_k + b``; ``A`` is
    ``[B, G, C, H, W]``. Every window mean of one pass is taken in one batched box filter (two in
    all), and each step of the per-pixel algebra is one operation over all channels and pairs, so the
    kernel count does not grow with the channels.
    """
    B, C = p.shape[:2]
    G = guide.shape[1]
    if G not in (1, 3):
        raise ValueError(f"guide: expected 1 or 3 channels, got {G}")
    hw = p.shape[-2:]
    Ip = (guide[:, :, None] * p[:, None]).reshape(B, G * C, *hw)  # I_k p, k-major
    left, right = _pairs(guide)
    m = box_mean(torch.cat([guide, p, Ip, left * right], 1), radius)
    mI, mp = m[:, :G], m[:, G : G + C]
    mIp = m[:, G + C : G + C * (G + 1)].reshape(B, G, C, *hw)
    mII = m[:, G + C * (G + 1) :]  # [B, pairs, H, W]
    cov = mIp - mI[:, :, None] * mp[:, None]  # [B, G, C, H, W]
    if G == 1:
        var = mII[:, 0][:, None] - mI * mI
        a = (cov[:, 0] / (var + eps))[:, None]
    else:
        mleft, mright = _pairs(mI)
        S = mII - mleft * mright
        for k in (0, 3, 5):  # the diagonal entries
            S[:, k] += eps
        Si = _inv_sym3(S)
        full = torch.stack([Si[:, i] for i in (0, 1, 2, 1, 3, 4, 2, 4, 5)], 1).reshape(B, 3, 3, *hw)
        a = _terms_sum(full[:, :, :, None] * cov[:, :, None])  # Σ_j Si[k][j] cov_j (Si symmetric)
    b = mp - _terms_sum(a * mI[:, :, None])
    Ab = box_mean(torch.cat([a.reshape(B, G * C, *hw), b], 1), radius)
    return Ab[:, : G * C].reshape(B, G, C, *Ab.shape[-2:]), Ab[:, G * C :]


def joint_bilateral_upsample(
    t: torch.Tensor,
    guide: torch.Tensor,
    factor: int,
    sigma_spatial: float = 1.0,
    sigma_range: float = 0.1,
    radius: int = 1,
) -> torch.Tensor:
    """JBU of ``t [B, C, h, w]`` by an integer ``factor`` with guide ``[B, G, h*factor, w*factor]``.

    One batched ``[C, k] x [k, factor²]`` product per patch (k = (2·radius+1)² neighbours), so the
    cost is independent of the channel count except for that product.
    """
    B, C, h, w = t.shape
    s = int(factor)
    G = guide.shape[1]
    k = 2 * radius + 1
    g_low = F.avg_pool2d(guide, s)  # [B, G, h, w] mean colour per patch
    # neighbour colours / features per patch: [B, G|C, k*k, h, w]
    g_nb = F.unfold(F.pad(g_low, (radius,) * 4, mode="replicate"), k).reshape(B, G, k * k, h, w)
    f_nb = F.unfold(F.pad(t, (radius,) * 4, mode="replicate"), k).reshape(B, C, k * k, h, w)
    # guide pixels grouped by patch: [B, G, h, s, w, s]
    gp = guide.reshape(B, G, h, s, w, s)
    diff = gp[:, :, None] - g_nb[:, :, :, :, None, :, None]  # [B, G, kk, h, s, w, s]
    rng_w = torch.exp(-(diff * diff).sum(1) / (2 * sigma_range**2))  # [B, kk, h, s, w, s]
    off = torch.arange(-radius, radius + 1, device=t.device, dtype=t.dtype)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    sub = (torch.arange(s, device=t.device, dtype=t.dtype) + 0.5) / s - 0.5  # sub-pixel pos in patch units
    dy = sub[None, :] - oy.reshape(-1, 1)  # [kk, s]
    dx = sub[None, :] - ox.reshape(-1, 1)
    sp = torch.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * sigma_spatial**2))  # [kk, s, s]
    wgt = rng_w * sp[None, :, None, :, None, :]
    wgt = wgt / wgt.sum(1, keepdim=True).clamp_min(1e-12)
    # out[b, c, i, u, j, v] = sum_n f_nb[b, c, n, i, j] * wgt[b, n, i, u, j, v]
    wq = wgt.permute(0, 2, 4, 1, 3, 5).reshape(B * h * w, k * k, s * s)
    fq = f_nb.permute(0, 3, 4, 1, 2).reshape(B * h * w, C, k * k)
    out = torch.bmm(fq, wq).reshape(B, h, w, C, s, s)
    return out.permute(0, 3, 1, 4, 2, 5).reshape(B, C, h * s, w * s)


def _guide_tensor(guide: ArrayLike, B: int, size: tuple[int, int], device, dtype, gray: bool) -> torch.Tensor:
    g = guide if isinstance(guide, torch.Tensor) else torch.from_numpy(guide)
    g = g.to(device)
    if g.ndim == 2:
        g = g[None, None]
    elif g.ndim == 3:
        if g.shape[-1] in (1, 3) and g.shape[0] not in (1, 3):
            g = g.permute(2, 0, 1)
        elif g.shape[-1] in (1, 3) and g.shape[0] in (1, 3) and g.shape[-1] != g.shape[0]:
            g = g.permute(2, 0, 1) if g.shape[-1] == 3 else g
        g = g[None]
    if g.ndim != 4 or g.shape[1] not in (1, 3):
        raise ValueError(
            f"guide: expected an image [H, W, 3] / [H, W] or [B, 3|1, H, W], got {tuple(g.shape)}"
        )
    is_uint8 = g.dtype == torch.uint8
    g = g.to(dtype)
    if is_uint8:
        g = g / 255.0
    if g.shape[0] == 1 and B > 1:
        g = g.expand(B, -1, -1, -1)
    if g.shape[0] != B:
        raise ValueError(f"guide: batch {g.shape[0]} does not match features batch {B}")
    if tuple(g.shape[-2:]) != tuple(size):
        g = F.interpolate(g, size=size, mode="bilinear", align_corners=False, antialias=True)
    if gray and g.shape[1] == 3:
        g = (0.299 * g[:, 0] + 0.587 * g[:, 1] + 0.114 * g[:, 2])[:, None]
    return g


def upsample(
    features: ArrayLike,
    size: tuple[int, int],
    mode: str = "bilinear",
    guide: ArrayLike | None = None,
    *,
    radius: int | None = None,
    eps: float = 1e-3,
    subsample: int | None = None,
    gray: bool = False,
    sigma_spatial: float = 1.0,
    sigma_range: float = 0.1,
) -> ArrayLike:
    """Upsample ``[h, w, C]`` (returns ``[H, W, C]``) or ``[B, C, h, w]`` (returns ``[B, C, H, W]``).

    ``mode="guided"`` (= ``"jbu"``) needs ``guide``; ``sigma_spatial`` (patch units) and ``sigma_range`` (colour in
    [0, 1]) set its kernels; it works at the next integer factor and resizes bilinearly if needed.
    ``mode="guided_filter"`` needs ``guide`` (the RGB image, uint8 or float in [0, 1], any resolution):
    ``radius`` defaults to the upsampling factor (one patch) in output pixels, ``eps`` is the
    regulariser in guide units (smaller = sharper edges), ``subsample`` the fast-guided-filter factor
    (default: ``max(1, factor // 4)``), ``gray`` uses a luminance guide (cheaper) instead of colour.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    x = float_tensor(features, name="features")
    if x.ndim == 3:
        t = x.permute(2, 0, 1)[None]
        hwc = True
    elif x.ndim == 4:
        t, hwc = x, False
    else:
        raise ValueError(f"features: expected [h, w, C] or [B, C, h, w], got shape {tuple(x.shape)}")
    H, W = (int(s) for s in size)
    if H <= 0 or W <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if mode == "nearest":
        out = F.interpolate(t, size=(H, W), mode="nearest")
    elif mode in ("bilinear", "bicubic"):
        out = F.interpolate(t, size=(H, W), mode=mode, align_corners=False)
    else:
        if guide is None:
            raise ValueError(f"mode={mode!r} needs guide= (the RGB image)")
    if mode in ("guided", "jbu"):
        h, w = t.shape[-2:]
        s = max(1, int(-(-max(H / h, W / w) // 1)))
        g = _guide_tensor(guide, t.shape[0], (h * s, w * s), t.device, t.dtype, gray)
        out = joint_bilateral_upsample(t, g, s, sigma_spatial=sigma_spatial, sigma_range=sigma_range)
        if tuple(out.shape[-2:]) != (H, W):
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
    elif mode == "guided_filter":
        factor = max(H / t.shape[-2], W / t.shape[-1])
        s = max(1, int(factor) // 4) if subsample is None else int(subsample)
        r_full = max(1, round(factor)) if radius is None else int(radius)
        r = max(1, round(r_full / s))
        hs, ws = max(1, H // s), max(1, W // s)
        g_full = _guide_tensor(guide, t.shape[0], (H, W), t.device, t.dtype, gray)
        g_low = (
            F.interpolate(g_full, size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)
            if s > 1
            else g_full
        )
        p_low = F.interpolate(t, size=(hs, ws), mode="bilinear", align_corners=False)
        A, b = guided_filter(p_low, g_low, r, eps)
        G, C = A.shape[1:3]
        Ab = torch.cat([A.flatten(1, 2), b], 1)
        if s > 1:
            Ab = F.interpolate(Ab, size=(H, W), mode="bilinear", align_corners=False)
        prod = Ab[:, : G * C].reshape(Ab.shape[0], G, C, H, W) * g_full[:, :, None]  # A_k I_k, all k
        out = Ab[:, G * C :]
        for k in range(G):
            out = out + prod[:, k]
    if hwc:
        out = out[0].permute(1, 2, 0)
    return like_input(out, features)
