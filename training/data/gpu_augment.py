"""Batched multi-crop augmentation on the training device (GPU or CPU), from uint8 frames.

The per-image CPU pipeline (:mod:`training.data.augment`) costs tens of milliseconds per image; these
functions apply the same DINOv3 photometric recipe to a whole batch with a handful of kernels, with
per-sample random parameters drawn from one ``torch.Generator`` (so a batch is a pure function of its
seed). Images are float ``[N, 3, H, W]`` in ``[0, 1]``.

Two simplifications against the per-image recipe, both common in GPU augmentation libraries: the four
colour-jitter adjustments run in one random order per batch (not per image), and the hue shift is a
rotation of the chroma plane in YIQ space rather than a shift in HSV.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "color_jitter",
    "crop_grid",
    "gaussian_blur",
    "grayscale",
    "normalize",
    "photometric",
    "random_boxes",
    "resized_crops",
    "solarize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)


def _rand(n: int, g: torch.Generator, device, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def random_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    g: torch.Generator,
    device: torch.device | str,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """``[n, 4]`` float boxes ``(x0, y0, w, h)`` in pixels: area fraction ``U(scale)``, log-uniform aspect
    in ``ratio``; sides clamped to the frame (so a box is always inside it)."""
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    area = _rand(n, g, device, *scale) * (height * width)
    log_r = _rand(n, g, device, math.log(ratio[0]), math.log(ratio[1]))
    w = torch.sqrt(area * log_r.exp()).clamp(1.0, float(width))
    h = torch.sqrt(area / log_r.exp()).clamp(1.0, float(height))
    x0 = _rand(n, g, device) * (width - w)
    y0 = _rand(n, g, device) * (height - h)
    return torch.stack([x0, y0, w, h], 1)


def crop_grid(boxes: Tensor, size: tuple[int, int], frame_hw: tuple[int, int]) -> Tensor:
    """``grid_sample`` grid ``[n, h, w, 2]`` (``align_corners=False``) that maps output pixel centres of a
    ``size = (h, w)`` crop onto the box region ``(x0, y0, w, h)`` of a ``frame_hw`` frame."""
    oh, ow = size
    H, W = frame_hw
    dev = boxes.device
    u = (torch.arange(ow, device=dev, dtype=torch.float32) + 0.5) / ow
    v = (torch.arange(oh, device=dev, dtype=torch.float32) + 0.5) / oh
    x = (boxes[:, 0:1] + u[None] * boxes[:, 2:3]) / W * 2 - 1  # [n, ow]
    y = (boxes[:, 1:2] + v[None] * boxes[:, 3:4]) / H * 2 - 1  # [n, oh]
    return torch.stack([x[:, None, :].expand(-1, oh, -1), y[:, :, None].expand(-1, -1, ow)], -1)


def resized_crops(images: Tensor, boxes: Tensor, size: tuple[int, int], per_image: int = 1) -> Tensor:
    """Bilinear crops of ``images [M, 3, H, W]`` (float): ``per_image`` boxes per image, boxes ordered
    ``[k * M + m]`` (crop-major); returns ``[per_image * M, 3, h, w]`` crop-major."""
    M, _, H, W = images.shape
    oh, ow = size
    if boxes.shape[0] != per_image * M:
        raise ValueError(f"need {per_image * M} boxes for {M} images x {per_image}, got {boxes.shape[0]}")
    grid = crop_grid(boxes, size, (H, W)).view(per_image, M, oh, ow, 2)
    grid = grid.permute(1, 0, 2, 3, 4).reshape(M, per_image * oh, ow, 2)  # crops stacked vertically
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.view(M, 3, per_image, oh, ow).permute(2, 0, 1, 3, 4).reshape(per_image * M, 3, oh, ow)
    return out.clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _const(values: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A constant on ``device``, copied there once: a copy from host memory per call would make the
    host wait for the device's queue."""
    with torch.inference_mode(False):  # usable later outside inference mode too
        return torch.tensor(values, dtype=dtype).to(device)


@functools.lru_cache(maxsize=16)
def _yiq(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RGB->YIQ and its inverse (inverted on the host: a device inverse would wait on its check)."""
    with torch.inference_mode(False):
        m = torch.tensor(
            [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=dtype
        )
        return m.to(device), torch.linalg.inv(m).to(device)


def _luma(x: Tensor) -> Tensor:
    w = _const(_LUMA, x.device, x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """Luma replicated to 3 channels where ``apply [N]`` is true."""
    return torch.where(apply.view(-1, 1, 1, 1), _luma(x).expand_as(x), x)


def _hue_rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate the I/Q chroma plane of YIQ by ``angle [N]`` radians."""
    to_yiq, to_rgb = _yiq(x.device, x.dtype)
    c, s = angle.cos(), angle.sin()
    rot = torch.zeros(angle.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = to_rgb @ rot @ to_yiq  # [N, 3, 3]
    return torch.einsum("nij,njhw->nihw", m, x)


def color_jitter(
    x: Tensor,
    g: torch.Generator,
    apply: Tensor,
    strength: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    order_g: torch.Generator | None = None,
) -> Tensor:
    """Brightness, contrast, saturation (factors ``U(1-s, 1+s)``) and hue (``U(-h, h)`` turns) where
    ``apply [N]`` is true, in one random order for the batch; clamped to ``[0, 1]`` after each step.

    ``order_g`` (a CPU generator) draws that order without reading a device tensor back to the host;
    by default it comes from ``g``."""
    n, dev = x.shape[0], x.device
    b, c, s, h = strength
    keep = ~apply

    def factor(amount: float) -> Tensor:
        f = _rand(n, g, dev, max(0.0, 1 - amount), 1 + amount)
        return torch.where(keep, torch.ones_like(f), f).view(-1, 1, 1, 1)

    fb, fc, fs = factor(b), factor(c), factor(s)
    hue = torch.where(keep, torch.zeros(n, device=dev), _rand(n, g, dev, -h, h)) * (2 * math.pi)
    ops = [
        lambda y: y * fb,
        lambda y: fc * y + (1 - fc) * _luma(y).mean((2, 3), keepdim=True),
        lambda y: fs * y + (1 - fs) * _luma(y),
        lambda y: _hue_rotate(y, hue),
    ]
    order = (
        torch.randperm(4, generator=order_g)
        if order_g is not None
        else torch.randperm(4, generator=g, device=dev)
    )
    for k in order.tolist():
        x = ops[k](x).clamp_(0.0, 1.0)
    return x


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int = 9) -> Tensor:
    """Separable Gaussian blur with per-image ``sigma [N]`` (``<= 0`` leaves the image unchanged),
    reflect padding."""
    n, ch, H, W = x.shape
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    sig = sigma.to(x.dtype).clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t[None] / sig) ** 2)
    k = k / k.sum(1, keepdim=True)
    delta = (t == 0).to(x.dtype)[None].expand_as(k)
    k = torch.where((sigma > 0).view(-1, 1), k, delta)
    w = k.repeat_interleave(ch, 0)  # [n*ch, K]
    y = F.pad(x.reshape(1, n * ch, H, W), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, w.view(n * ch, 1, 1, -1), groups=n * ch)
    y = F.conv2d(y, w.view(n * ch, 1, -1, 1), groups=n * ch)
    return y.view(n, ch, H, W)


def solarize(x: Tensor, apply: Tensor, threshold: float = 128 / 255) -> Tensor:
    """Invert pixels at or above ``threshold`` where ``apply [N]`` is true."""
    inv = torch.where(x >= threshold, 1.0 - x, x)
    return torch.where(apply.view(-1, 1, 1, 1), inv, x)


def photometric(
    x: Tensor,
    g: torch.Generator,
    *,
    blur_p: float,
    solarize_p: float = 0.0,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    order_g: torch.Generator | None = None,
) -> Tensor:
    """DINOv3's photometric chain on a batch: colour jitter (p), grayscale (p), blur (p), solarize (p).
    ``order_g``: see :func:`color_jitter`."""
    n, dev = x.shape[0], x.device
    x = color_jitter(x, g, _rand(n, g, dev) < jitter_p, jitter, order_g)
    x = grayscale(x, _rand(n, g, dev) < grayscale_p)
    sigma = _rand(n, g, dev, *blur_sigma)
    x = gaussian_blur(x, torch.where(_rand(n, g, dev) < blur_p, sigma, torch.zeros_like(sigma)))
    if solarize_p > 0:
        x = solarize(x, _rand(n, g, dev) < solarize_p)
    return x


def normalize(x: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """``(x - mean) / std`` per channel."""
    m = _const(tuple(mean), x.device, x.dtype).view(1, 3, 1, 1)
    s = _const(tuple(std), x.device, x.dtype).view(1, 3, 1, 1)
    return (x - m) / s
