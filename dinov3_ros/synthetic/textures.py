"""Texture bank: procedural patterns/noise and real photographs shipped inside scikit-image.

Every texture is a square ``float32`` RGB image in ``[0, 1]`` of side :data:`TEXTURE_SIZE`. The bank is
built once per process (deterministically, from a fixed seed) and cached; it is never pickled.
"""

from __future__ import annotations

import functools
import warnings

import cv2
import numpy as np

#: side of every texture in texels
TEXTURE_SIZE = 256
#: scikit-image sample images used as photographic textures (all ship with the package, no download)
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "brick",
    "grass",
    "gravel",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "text",
    "colorwheel",
    "clock",
    "cell",
    "retina",
)
#: procedural texture kinds
PROCEDURAL_KINDS: tuple[str, ...] = ("checker", "stripes", "noise", "dots", "grid", "marble")
N_PROCEDURAL_PER_KIND = 4


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = img[y0 : y0 + s, x0 : x0 + s]
    img = cv2.resize(img, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255.0


def _value_noise(rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Tileable-ish fractal value noise in [0, 1], shape (S, S)."""
    s = TEXTURE_SIZE
    out = np.zeros((s, s), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = 4 * 2**o
        grid = rng.random((n, n)).astype(np.float32)
        grid = np.pad(grid, ((0, 1), (0, 1)), mode="wrap")
        up = cv2.resize(grid, (s + s // n, s + s // n), interpolation=cv2.INTER_CUBIC)[:s, :s]
        out += amp * up
        total += amp
        amp *= 0.5
    out /= total
    return np.clip((out - out.min()) / max(float(np.ptp(out)), 1e-6), 0.0, 1.0)


def _two_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.random(3).astype(np.float32) * 0.6 + 0.4 * rng.random()
    b = rng.random(3).astype(np.float32)
    if np.abs(a - b).sum() < 0.6:
        b = 1.0 - a
    return a, b


def _procedural(kind: str, rng: np.random.Generator) -> np.ndarray:
    s = TEXTURE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    a, b = _two_colors(rng)
    if kind == "checker":
        n = int(rng.integers(4, 12))
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    elif kind == "stripes":
        n = int(rng.integers(3, 10))
        ang = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * n * (np.cos(ang) * xx + np.sin(ang) * yy))
        t = (t > 0.5).astype(np.float32) * 0.8 + 0.2 * t
    elif kind == "noise":
        t = _value_noise(rng, octaves=5)
    elif kind == "dots":
        n = int(rng.integers(4, 10))
        fx, fy = (xx * n) % 1.0 - 0.5, (yy * n) % 1.0 - 0.5
        t = (np.hypot(fx, fy) < rng.uniform(0.2, 0.4)).astype(np.float32)
    elif kind == "grid":
        n = int(rng.integers(4, 10))
        w = rng.uniform(0.05, 0.15)
        t = (((xx * n) % 1.0 < w) | ((yy * n) % 1.0 < w)).astype(np.float32)
    elif kind == "marble":
        noise = _value_noise(rng, octaves=4)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * rng.uniform(2, 5) + 4.0 * noise))
    else:  # pragma: no cover - guarded by PROCEDURAL_KINDS
        raise ValueError(f"unknown procedural texture kind {kind!r}")
    t = t[..., None].astype(np.float32)
    return (a * (1.0 - t) + b * t).astype(np.float32)


@functools.lru_cache(maxsize=1)
def texture_bank() -> tuple[np.ndarray, tuple[str, ...]]:
    """Return ``(textures [T, S, S, 3] float32 in [0,1], names)``; built once per process."""
    rng = np.random.default_rng(12345)
    images: list[np.ndarray] = []
    names: list[str] = []
    for kind in PROCEDURAL_KINDS:
        for i in range(N_PROCEDURAL_PER_KIND):
            images.append(_procedural(kind, rng))
            names.append(f"{kind}_{i}")
    for name in PHOTO_NAMES:
        images.append(_load_photo(name))
        names.append(f"photo_{name}")
    bank = np.ascontiguousarray(np.stack(images, 0))
    bank.setflags(write=False)
    return bank, tuple(names)


def n_textures() -> int:
    """Number of textures in the bank."""
    return len(PROCEDURAL_KINDS) * N_PROCEDURAL_PER_KIND + len(PHOTO_NAMES)
