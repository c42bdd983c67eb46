"""Image-guided sub-pixel refinement of point matches: local photometric alignment around each match.

Feature matches on a patch grid are only patch-precise. :func:`refine_matches` moves each ``pts1`` to
where a small grey-level template cut around ``pts0`` in image 0 correlates best with image 1 (zero-mean
normalised cross-correlation, NCC), searched over integer offsets around ``pts1`` and refined to sub-pixel
precision by a parabola fit per axis; ambiguous, weak or out-of-reach peaks leave the match as it was.
All matches are processed at once in torch on the images' device, in float32 only (templates and search
regions sampled bilinearly with ``grid_sample``, the correlation as one grouped ``conv2d``, the search
windows' statistics with a separable box filter).

Pixel convention: integer coordinates are pixel centres (pixel ``k`` spans ``[k - 0.5, k + 0.5)``), ``x``
is the column, ``y`` the row.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._common import ArrayLike, as_numpy, to_tensor

__all__ = ["GreyPyramid", "Refinement", "refine", "refine_matches"]

#: ITU-R BT.601 luma weights (R, G, B), as OpenCV's RGB -> grey conversion
_LUMA = (0.299, 0.587, 0.114)


def _grey(image: ArrayLike, name: str, device: torch.device | None) -> torch.Tensor:
    """``image`` (HxW or HxWx3, any dtype) as a float32 ``[1, 1, H, W]`` grey tensor (numpy arrays other
    than uint8/float32 are cast on the host, so no float64 tensor is made)."""
    if isinstance(image, np.ndarray) and image.dtype not in (np.uint8, np.float32):
        image = image.astype(np.float32)
    t = to_tensor(image, name=name, device=device)
    if t.ndim == 3 and t.shape[-1] == 3:
        t = t.to(torch.float32)
        t = t[..., 0] * _LUMA[0] + t[..., 1] * _LUMA[1] + t[..., 2] * _LUMA[2]
    elif t.ndim != 2:
        raise ValueError(f"{name}: expected an HxW or HxWx3 image, got shape {tuple(t.shape)}")
    if t.shape[0] < 2 or t.shape[1] < 2:
        raise ValueError(f"{name}: image of shape {tuple(t.shape)} is too small (at least 2x2)")
    return t.to(torch.float32)[None, None]


class GreyPyramid:
    """An image as :func:`refine` reads it: the float32 grey ``[1, 1, H, W]`` tensor on a device and its
    2x box-downsampled levels (the coarse-to-fine search's), each made on first use and kept. Pass one
    in place of an image to prepare an image once for several refinements (a matching keyframe's, read
    by every frame matched against it)."""

    def __init__(
        self, image: ArrayLike, device: torch.device | str | None = None, name: str = "image"
    ) -> None:
        self._levels = [_grey(image, name, None if device is None else torch.device(device))]
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        """Where the levels are (the refinement's device)."""
        return self._levels[0].device

    def level(self, i: int) -> torch.Tensor:
        """Level ``i``: 0 is the image, each next one :func:`_halve` of the one before."""
        with self._lock:
            while len(self._levels) <= i:
                self._levels.append(_halve(self._levels[-1]))
            return self._levels[i]


def _pyramid_of(image: ArrayLike | GreyPyramid, name: str, device: torch.device) -> GreyPyramid:
    """``image`` as a :class:`GreyPyramid` on ``device`` (a pyramid is used as it is)."""
    if not isinstance(image, GreyPyramid):
        return GreyPyramid(image, device, name)
    if image.device != device:
        raise ValueError(f"{name}: a GreyPyramid on {image.device}; the refinement runs on {device}")
    return image


def _points(pts: ArrayLike, name: str) -> np.ndarray:
    """``pts`` as a new float32 ``[N, 2]`` host array."""
    a = np.array(as_numpy(pts), dtype=np.float32)  # a copy: the caller's array is never touched
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name}: expected [N, 2] (x, y) points, got shape {a.shape}")
    return a


def _sample(img: torch.Tensor, centres: torch.Tensor, half: int) -> torch.Tensor:
    """Bilinear samples of ``img [1, 1, H, W]`` on the ``(2 half + 1)^2`` integer offsets around each of
    ``centres [N, 2]`` -> ``[N, 2 half + 1, 2 half + 1]`` (rows = y)."""
    H, W = img.shape[-2:]
    k = 2 * half + 1
    off = torch.arange(-half, half + 1, device=img.device, dtype=torch.float32)
    x = centres[:, 0, None, None] + off[None, None, :]  # [N, 1, k]
    y = centres[:, 1, None, None] + off[None, :, None]  # [N, k, 1]
    # align_corners=True: -1 and +1 are the centres of the first and last pixel
    gx = (x * (2.0 / (W - 1)) - 1.0).expand(-1, k, k)
    gy = (y * (2.0 / (H - 1)) - 1.0).expand(-1, k, k)
    grid = torch.stack([gx, gy], -1).reshape(1, -1, k * k, 2)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(-1, k, k)


def _inside(c: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float, size: int) -> torch.Tensor:
    """Whether ``[c + lo, c + hi]`` lies within the pixel centres ``[0, size - 1]`` (False for NaN)."""
    return (c + lo >= 0) & (c + hi <= size - 1)


def _ncc_maps(
    tmpl: torch.Tensor, region: torch.Tensor, min_texture: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """NCC of each template ``[N, k, k]`` at every offset of its search region ``[N, S, S]`` ->
    ``([N, M, M]`` NCC with ``M = S - k + 1``, ``[N]`` template textured)."""
    N, k, _ = tmpl.shape
    n = float(k * k)
    t0 = tmpl - tmpl.mean((1, 2), keepdim=True)
    t_energy = (t0 * t0).sum((1, 2))  # n * variance
    textured = t_energy >= n * (min_texture * min_texture)
    # centre each region on its own mean: the window statistics below stay well conditioned in float32
    r = (region - region.mean((1, 2), keepdim=True))[None]  # [1, N, S, S]
    num = F.conv2d(r, t0[:, None], groups=N)[0]  # [N, M, M]; t0 is zero-mean: the window mean drops out
    # window means of r and r^2: a separable grouped box filter (faster than avg_pool2d on CPU)
    box = torch.full((N, 1, 1, k), 1.0 / k, device=r.device, dtype=r.dtype)
    mean, sq = (F.conv2d(F.conv2d(x, box, groups=N), box.transpose(2, 3), groups=N)[0] for x in (r, r * r))
    w_energy = sq.sub_(mean * mean).mul_(n).clamp_min_(0.0)  # in place: the convolutions' own results
    den = (w_energy * t_energy[:, None, None]).sqrt_()
    ok = w_energy > n * 1e-4  # flat windows (std below 0.01 grey levels) correlate with nothing
    ncc = torch.where(ok, num.div_(den), 0.0)  # the other windows' quotients (0 / 0 among them): dropped
    return ncc, textured


def _parabola(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Vertex offset of the parabola through three equally spaced samples, clamped to ``[-0.5, 0.5]``."""
    den = left - 2.0 * centre + right
    curved = den < 0
    off = 0.5 * (left - right) / torch.where(curved, den, -1.0)
    return torch.where(curved, off, 0.0).clamp(-0.5, 0.5)


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each 3x3 neighbourhood of ``x [N, M, M]`` (separable; faster than ``max_pool2d``)."""
    M = x.shape[-1]
    p = F.pad(x, (1, 1, 1, 1), value=-math.inf)
    rows = torch.maximum(torch.maximum(p[:, :, :M], p[:, :, 1 : M + 1]), p[:, :, 2:])
    return torch.maximum(torch.maximum(rows[:, :M], rows[:, 1 : M + 1]), rows[:, 2:])


def _peaks(
    ncc: torch.Tensor, valid: torch.Tensor, any_valid: torch.Tensor, penalty: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The peak of each NCC map ``[N, M, M]`` (centre = no offset; ``any_valid [N]``: the map has a valid
    offset): of its local maxima (3x3), the one with the best score ``NCC - penalty (|offset| / R)^2`` ->
    (``[N, 2]`` sub-pixel (x, y) offset, ``[N]`` its NCC (NaN without a valid offset), ``[N]`` interior
    (its four neighbours are valid offsets, so it is a real maximum), ``[N]`` its score, ``[N]`` the best
    score of the local maxima more than one offset away (-inf if none))."""
    N, M, _ = ncc.shape
    R = (M - 1) // 2
    o = torch.arange(-R, R + 1, device=ncc.device, dtype=torch.float32)
    pen = (o[:, None] ** 2 + o[None, :] ** 2) * (penalty / R**2)
    masked = torch.where(valid, ncc, -math.inf)
    local = (_max3x3(masked) == masked) & valid
    score = torch.where(local, ncc - pen, -math.inf)
    best, flat = score.reshape(N, -1).max(1)
    iy, ix = flat // M, flat % M
    rows = torch.arange(N, device=ncc.device)
    ym, yp = (iy - 1).clamp_min(0), (iy + 1).clamp_max(M - 1)
    xm, xp = (ix - 1).clamp_min(0), (ix + 1).clamp_max(M - 1)
    interior = (iy > 0) & (iy < M - 1) & (ix > 0) & (ix < M - 1) & any_valid
    for yy, xx in ((ym, ix), (yp, ix), (iy, xm), (iy, xp)):
        interior &= valid[rows, yy, xx]  # clamped indices belong to border peaks, rejected anyway
    c = ncc[rows, iy, ix]
    dx = _parabola(ncc[rows, iy, xm], c, ncc[rows, iy, xp])
    dy = _parabola(ncc[rows, ym, ix], c, ncc[rows, yp, ix])
    d = torch.stack([ix.to(torch.float32) - R + dx, iy.to(torch.float32) - R + dy], 1)
    peak = torch.where(best > -math.inf, c, math.nan)
    # the 3x3 offsets around the peak (clamped indices repeat ones inside) leave the second best's race
    k3 = torch.arange(-1, 2, device=ncc.device)
    near = (iy[:, None] + k3).clamp(0, M - 1)[:, :, None] * M + (ix[:, None] + k3).clamp(0, M - 1)[:, None, :]
    second = score.reshape(N, -1).scatter_(1, near.reshape(N, 9), -math.inf).amax(1)  # score: not read after
    return d, peak, interior, best, second


def _number(value, name: str, ok, want: str) -> float:
    """``value`` as a float, or ``ValueError`` naming the argument unless ``ok(value)``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


def _check_args(
    radius: float, half_window: int, min_ncc: float, min_texture: float, ratio: float, penalty: float
) -> int:
    """Validate the scalar arguments; the integer search radius."""
    r = _number(radius, "radius", lambda v: v > 0, "a finite number > 0")
    if isinstance(half_window, bool) or not isinstance(half_window, (int, np.integer)) or half_window < 1:
        raise ValueError(f"half_window must be an integer >= 1, got {half_window!r}")
    _number(min_ncc, "min_ncc", lambda v: -1 <= v <= 1, "in [-1, 1]")
    _number(min_texture, "min_texture", lambda v: v >= 0, "a finite number >= 0")
    _number(ratio, "ratio", lambda v: 0 < v <= 1, "in (0, 1]")
    _number(penalty, "distance_penalty", lambda v: v >= 0, "a finite number >= 0")
    return math.ceil(r)


#: search radii above this run coarse to fine: the search on 2x-downsampled images (radius halved),
#: then a ±2 px search at the full resolution; the cost of one level grows with the radius squared
PYRAMID_RADIUS = 12


@dataclass(frozen=True)
class Refinement:
    """What :func:`refine` did to each match."""

    pts1: np.ndarray  #: [N, 2] float32 refined ``pts1`` (the input where not accepted)
    ncc: np.ndarray  #: [N] float32 peak NCC (NaN where no window could be compared)
    accepted: np.ndarray  #: [N] bool: ``pts1`` moved to an accepted NCC peak (else patch-precise)
    #: [N] bool: accepted and, with ``max_back_error``, confirmed by the search back into image 0
    consistent: np.ndarray


def refine(
    image0: ArrayLike | GreyPyramid,
    image1: ArrayLike | GreyPyramid,
    pts0: ArrayLike,
    pts1: ArrayLike,
    *,
    radius: float,
    half_window: int = 5,
    min_ncc: float = 0.6,
    min_texture: float = 0.5,
    ratio: float = 0.99,
    distance_penalty: float = 0.1,
    max_back_error: float | None = None,
) -> Refinement:
    """Refine match targets ``pts1`` by NCC template matching -> :class:`Refinement`.

    ``image0``/``image1``: HxW or HxWx3 (RGB) uint8/float numpy arrays or torch tensors, grey levels in
    0..255, or :class:`GreyPyramid` of such images; computed on ``image0``'s device. ``pts0``/``pts1``: ``[N, 2]`` (x, y) pixel centres (see
    the module docstring). The ``(2 half_window + 1)^2`` template around ``pts0`` in image 0 is compared
    with the windows at every integer offset in ``[-R, R]^2`` (``R = ceil(radius)``) around ``pts1`` in
    image 1; offsets whose window leaves image 1 are skipped. Of the NCC map's local maxima, the one
    with the best ``NCC - distance_penalty (|offset| / R)^2`` is taken (on a repetitive texture: the copy
    nearest to the feature match), refined by a parabola per axis and added to ``pts1``. Radii above
    :data:`PYRAMID_RADIUS` search coarse to fine (2x-downsampled images with half the radius, then ±2 px
    at full resolution; a match the fine search rejects keeps the coarse result).

    A match keeps its input ``pts1`` when its template leaves image 0 or has a grey-level standard
    deviation below ``min_texture``, when the peak NCC is below ``min_ncc``, when the peak lies on the
    border of the searched offsets (not a real maximum: the match may lie beyond ``radius``), or when
    another local maximum (more than one offset away) is nearly as good: Lowe's ratio test, best
    distance ``< ratio`` x second best, on the distances ``sqrt(2 - 2 score)`` (a repetitive texture or
    an edge). The NCC is NaN where no window could be compared. Inputs are never modified; ``N = 0``
    gives empty results.

    ``max_back_error`` (pixels): a forward-backward check. The template around each refined point in
    image 1 is searched back in image 0 around ``pts0`` (same radius and criteria); a refinement is
    ``consistent`` only where that search is accepted and lands within ``max_back_error`` of ``pts0``.
    A peak that correlates only one way (a smooth or repetitive window matching the wrong place) fails
    it. It does not change ``pts1`` or ``accepted``: callers choose what to keep.
    """
    R = _check_args(radius, half_window, min_ncc, min_texture, ratio, distance_penalty)
    if max_back_error is not None:
        _number(max_back_error, "max_back_error", lambda v: v > 0, "a finite number > 0 or None")
    p0, p1 = _points(pts0, "pts0"), _points(pts1, "pts1")
    if p0.shape[0] != p1.shape[0]:
        raise ValueError(f"pts0 and pts1 hold different numbers of points: {p0.shape[0]} vs {p1.shape[0]}")
    dev = image0.device if isinstance(image0, (torch.Tensor, GreyPyramid)) else torch.device("cpu")
    g0, g1 = _pyramid_of(image0, "image0", dev), _pyramid_of(image1, "image1", dev)
    if p0.shape[0] == 0:
        return Refinement(p1, np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, bool))
    pts = np.nan_to_num(np.concatenate([p0, p1], 1), nan=-1e6, posinf=-1e6, neginf=-1e6)
    c = torch.from_numpy(pts).to(dev)  # one copy to the device for both point sets
    c0, c1 = c[:, :2], c[:, 2:]
    crit = _Criteria(
        int(half_window), float(min_ncc), float(min_texture), float(ratio), float(distance_penalty)
    )
    out, peak, ok = _pyramid(g0, g1, c0, c1, R, crit)
    both = ok if max_back_error is None else ok & _back_consistent(g0, g1, c0, out, R, crit, max_back_error)
    flags = torch.stack([ok, both], 1).to(torch.float32)
    host = as_numpy(torch.cat([out, peak[:, None], flags], 1))
    res = p1.copy()
    keep = host[:, 3] > 0.5
    res[keep] = host[keep, :2]
    return Refinement(res, np.ascontiguousarray(host[:, 2]), keep, host[:, 4] > 0.5)


def _back_consistent(
    g0: GreyPyramid,
    g1: GreyPyramid,
    c0: torch.Tensor,
    q1: torch.Tensor,
    R: int,
    crit: _Criteria,
    tol: float,
) -> torch.Tensor:
    """``[N]`` whether the template around ``q1`` in image 1, searched in image 0 around ``c0``, is
    accepted there and lands within ``tol`` pixels of ``c0``."""
    back, _, ok = _pyramid(g1, g0, q1, c0, R, crit)
    return ok & ((back - c0).square().sum(1) <= tol * tol)


def refine_matches(
    image0: ArrayLike, image1: ArrayLike, pts0: ArrayLike, pts1: ArrayLike, **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`refine` (same arguments) -> (``[N, 2]`` float32 refined ``pts1``, ``[N]`` float32 peak NCC)."""
    r = refine(image0, image1, pts0, pts1, **options)
    return r.pts1, r.ncc


@dataclass(frozen=True)
class _Criteria:
    half_window: int
    min_ncc: float
    min_texture: float
    ratio: float
    penalty: float


def _halve(g: torch.Tensor) -> torch.Tensor:
    """2x2 box downsampling of ``[1, 1, H, W]``: half-resolution pixel ``j`` is centred on ``2 j + 0.5``."""
    return F.avg_pool2d(g, 2)


def _pyramid(
    p0: GreyPyramid,
    p1: GreyPyramid,
    c0: torch.Tensor,
    c1: torch.Tensor,
    R: int,
    crit: _Criteria,
    level: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coarse-to-fine search on the pyramids' ``level`` -> (``[N, 2]`` refined points, ``[N]`` peak NCC,
    ``[N]`` accepted)."""
    g0, g1 = p0.level(level), p1.level(level)
    small = min(g0.shape[-2:] + g1.shape[-2:]) // 2 < 4 * crit.half_window + 2
    if R <= PYRAMID_RADIUS or small:
        d, peak, ok = _search(g0, g1, c0, c1, R, crit)
        return c1 + d, peak, ok
    half = (c0 - 0.5) / 2, (c1 - 0.5) / 2
    q, peak_c, ok_c = _pyramid(p0, p1, *half, math.ceil(R / 2), crit, level + 1)
    start = torch.where(ok_c[:, None], q * 2 + 0.5, c1)
    d, peak, ok = _search(g0, g1, c0, start, 2, crit)
    out = torch.where(ok[:, None], start + d, start)
    return out, torch.where(ok, peak, peak_c), ok | ok_c


def _search(
    g0: torch.Tensor, g1: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, R: int, crit: _Criteria
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level: NCC over ``[-R, R]^2`` offsets -> (``[N, 2]`` offset, ``[N]`` peak NCC, ``[N]`` accepted)."""
    hw = crit.half_window
    (H0, W0), (H1, W1) = g0.shape[-2:], g1.shape[-2:]
    tmpl_in = _inside(c0[:, 0], -hw, hw, W0) & _inside(c0[:, 1], -hw, hw, H0)
    # sample coordinates far outside are clamped by the border padding; only a finite grid is needed
    ncc, textured = _ncc_maps(_sample(g0, c0, hw), _sample(g1, c1, hw + R), crit.min_texture)
    off = torch.arange(-R, R + 1, device=g0.device, dtype=torch.float32)
    # valid offsets [N, M, M]: the outer product of the valid rows and the valid columns (none for a
    # template that cannot be compared)
    vx = _inside(c1[:, 0, None] + off, -hw, hw, W1) & (tmpl_in & textured)[:, None]  # [N, M]
    vy = _inside(c1[:, 1, None] + off, -hw, hw, H1)
    valid = vy[:, :, None] & vx[:, None, :]
    d, peak, interior, best, second = _peaks(ncc, valid, vy.any(1) & vx.any(1), crit.penalty)
    d1 = (2.0 - 2.0 * best).clamp_min(0.0).sqrt()
    d2 = (2.0 - 2.0 * second.clamp_min(-1.0)).clamp_min(0.0).sqrt()
    return d, peak, interior & (peak >= crit.min_ncc) & (d1 < crit.ratio * d2)
