"""DINO multi-crop augmentations in plain torch (no torchvision): crops, colour jitter, blur, solarize.

Images are float tensors ``[3, H, W]`` in ``[0, 1]``; every random draw comes from an explicit
``torch.Generator`` so a sample is a pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CropBox",
    "MultiCropAugmentation",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "gaussian_blur",
    "random_resized_crop_box",
    "resized_crop",
    "solarize",
    "to_grayscale",
    "to_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def to_tensor(image: np.ndarray) -> Tensor:
    """``HxWx3`` uint8 RGB -> float ``[3, H, W]`` in ``[0, 1]``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@dataclass(frozen=True)
class CropBox:
    """Crop rectangle in input pixels (top, left, height, width)."""

    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    g: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> CropBox:
    """RandomResizedCrop box: area fraction in ``scale``, log-uniform aspect in ``ratio``, 10 tries,
    then a centre crop with the aspect clamped to ``ratio``."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _u(g, *scale)
        ar = math.exp(_u(g, *log_r))
        w = round(math.sqrt(target * ar))
        h = round(math.sqrt(target / ar))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            return CropBox(top, left, h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def resized_crop(img: Tensor, box: CropBox, size: int | tuple[int, int]) -> Tensor:
    """Crop ``box`` from ``[3, H, W]`` and resize it (bicubic, antialiased) to ``size``; clamps to [0, 1]."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    patch = img[:, box.top : box.top + box.height, box.left : box.left + box.width]
    out = F.interpolate(patch[None], size=hw, mode="bicubic", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def _gray(img: Tensor) -> Tensor:
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)


def to_grayscale(img: Tensor) -> Tensor:
    """ITU-R 601 luma replicated to 3 channels."""
    return _gray(img).expand(3, -1, -1).clone()


def adjust_brightness(img: Tensor, factor: float) -> Tensor:
    return (img * factor).clamp(0, 1)


def adjust_contrast(img: Tensor, factor: float) -> Tensor:
    mean = _gray(img).mean()
    return (factor * img + (1 - factor) * mean).clamp(0, 1)


def adjust_saturation(img: Tensor, factor: float) -> Tensor:
    return (factor * img + (1 - factor) * _gray(img)).clamp(0, 1)


def _rgb_to_hsv(img: Tensor) -> Tensor:
    r, g, b = img
    maxc, _ = img.max(0)
    minc, _ = img.min(0)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    dz = delta.clamp(min=1e-12)
    rc, gc, bc = (maxc - r) / dz, (maxc - g) / dz, (maxc - b) / dz
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v])


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    h, s, v = hsv
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v])
    g = torch.stack([t, v, v, q, p, p])
    b = torch.stack([p, p, t, v, v, q])
    idx = i.unsqueeze(0)
    return torch.stack([r.gather(0, idx)[0], g.gather(0, idx)[0], b.gather(0, idx)[0]])


def adjust_hue(img: Tensor, shift: float) -> Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, in [-0.5, 0.5])."""
    hsv = _rgb_to_hsv(img)
    hsv[0] = (hsv[0] + shift) % 1.0
    return _hsv_to_rgb(hsv).clamp(0, 1)


def color_jitter(
    img: Tensor, g: torch.Generator, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
) -> Tensor:
    """ColorJitter: the four adjustments in a random order with factors ``U(1-x, 1+x)`` / hue ``U(-h, h)``."""
    ops = []
    if brightness > 0:
        ops.append(lambda x: adjust_brightness(x, _u(g, max(0.0, 1 - brightness), 1 + brightness)))
    if contrast > 0:
        ops.append(lambda x: adjust_contrast(x, _u(g, max(0.0, 1 - contrast), 1 + contrast)))
    if saturation > 0:
        ops.append(lambda x: adjust_saturation(x, _u(g, max(0.0, 1 - saturation), 1 + saturation)))
    if hue > 0:
        ops.append(lambda x: adjust_hue(x, _u(g, -hue, hue)))
    for k in torch.randperm(len(ops), generator=g).tolist():
        img = ops[k](img)
    return img


def gaussian_blur(img: Tensor, sigma: float, kernel_size: int = 9) -> Tensor:
    """Gaussian blur (``kernel_size``, ``sigma``) with reflect padding (OpenCV, separable)."""
    arr = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
    out = cv2.GaussianBlur(
        arr, (kernel_size, kernel_size), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )
    if out.ndim == 2:
        out = out[:, :, None]
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def solarize(img: Tensor, threshold: float = 128 / 255) -> Tensor:
    """Invert pixels at or above ``threshold``."""
    return torch.where(img >= threshold, 1.0 - img, img)


@dataclass
class MultiCropAugmentation:
    """DINOv3 multi-crop: 2 global crops, ``local_crops_number`` local crops, optional Gram-teacher crops.

    Global crop 1: blur p=1; global crop 2: blur p=0.1 + solarize p=0.2; locals: blur p=0.5; all:
    colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8 then grayscale p=0.2. Gram-teacher crops share the global
    crops' boxes (and flips), are rendered at ``gram_teacher_crops_size`` and get no photometric change.
    """

    global_crops_size: int = 224
    local_crops_size: int = 96
    local_crops_number: int = 8
    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    gram_teacher_crops_size: int | None = None
    horizontal_flips: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    photometric: bool = True
    _mean: Tensor = field(init=False, repr=False)
    _std: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.global_crops_scale = tuple(self.global_crops_scale)
        self.local_crops_scale = tuple(self.local_crops_scale)
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def _photometric(self, img: Tensor, g: torch.Generator, blur_p: float, solarize_p: float) -> Tensor:
        if not self.photometric:
            return img
        if _u(g) < self.jitter_p:
            img = color_jitter(img, g, *self.jitter)
        if _u(g) < self.grayscale_p:
            img = to_grayscale(img)
        if _u(g) < blur_p:
            img = gaussian_blur(img, _u(g, *self.blur_sigma), self.blur_kernel)
        if solarize_p > 0 and _u(g) < solarize_p:
            img = solarize(img)
        return img

    def _norm(self, img: Tensor) -> Tensor:
        return (img - self._mean) / self._std

    def __call__(self, image: np.ndarray | Tensor, g: torch.Generator) -> dict[str, list[Tensor]]:
        img = to_tensor(image) if isinstance(image, np.ndarray) else image
        _, H, W = img.shape
        out: dict[str, list[Tensor]] = {"global_crops": [], "local_crops": []}
        if self.gram_teacher_crops_size:
            out["gram_teacher_crops"] = []
        for blur_p, sol_p in ((1.0, 0.0), (0.1, 0.2)):
            box = random_resized_crop_box(H, W, self.global_crops_scale, g)
            flip = self.horizontal_flips and _u(g) < 0.5
            crop = resized_crop(img, box, self.global_crops_size)
            if flip:
                crop = crop.flip(-1)
            out["global_crops"].append(self._norm(self._photometric(crop, g, blur_p, sol_p)))
            if self.gram_teacher_crops_size:
                gcrop = resized_crop(img, box, self.gram_teacher_crops_size)
                out["gram_teacher_crops"].append(self._norm(gcrop.flip(-1) if flip else gcrop))
        for _ in range(self.local_crops_number):
            box = random_resized_crop_box(H, W, self.local_crops_scale, g)
            crop = resized_crop(img, box, self.local_crops_size)
            if self.horizontal_flips and _u(g) < 0.5:
                crop = crop.flip(-1)
            out["local_crops"].append(self._norm(self._photometric(crop, g, 0.5, 0.0)))
        return out
