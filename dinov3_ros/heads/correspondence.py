"""Dense correspondences between two frames' patch features, plus geometric verification.

Matching runs in torch on the features' device (one similarity matmul, ``topk``/``max``, gathers; no
Python loops): cosine similarity of L2-normalised features, mutual nearest neighbours, Lowe's ratio
test on the cosine distance ``sqrt(2 − 2s)``, a confidence threshold and sub-patch refinement by a
window soft-argmax of the similarity around each match. Coordinates are pixels of the network input
(patch ``(r, c)`` has centre ``((c + 0.5) p, (r + 0.5) p)``), mapped to input pixels by
``scale``/``offset`` or a callable. Verification (OpenCV, CPU) and 3-D rigid motion work on the small
match set. With the two input images, :func:`match` refines the matched points to sub-pixel precision by
local photometric alignment (:mod:`.subpixel`) before verification.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._common import ArrayLike, as_numpy, patch_grid
from .subpixel import refine

__all__ = [
    "Matches",
    "estimate_rigid",
    "kabsch",
    "lift_to_3d",
    "match",
    "match_tensors",
    "verify",
]


@dataclass
class Matches:
    """Matches between frame 0 and frame 1 (numpy arrays; N matches)."""

    pts0: np.ndarray  #: [N, 2] float32 (x, y) pixels in image 0
    pts1: np.ndarray  #: [N, 2] float32 (x, y) pixels in image 1
    scores: np.ndarray  #: [N] float32 cosine similarity of the matched patches
    idx0: np.ndarray  #: [N] int64 flat patch index in frame 0
    idx1: np.ndarray  #: [N] int64 flat patch index in frame 1
    inliers: np.ndarray  #: [N] bool (all True until verified)
    R: np.ndarray | None = None  #: [3, 3] rotation frame0 -> frame1 (X1 = R X0 + t)
    t: np.ndarray | None = None  #: [3] translation (unit norm from the essential matrix, metric from 3-D)
    model: np.ndarray | None = None  #: homography / fundamental / essential matrix when verified
    points0: np.ndarray | None = None  #: [N, 3] lifted 3-D points (frame-0 camera) when depth was given
    points1: np.ndarray | None = None  #: [N, 3] lifted 3-D points (frame-1 camera)
    ncc: np.ndarray | None = None  #: [N] float32 peak NCC of the image refinement (NaN: not compared)

    def __len__(self) -> int:
        return int(self.pts0.shape[0])

    def subset(self, keep: np.ndarray) -> Matches:
        """Matches restricted to a boolean/index selection (pose fields kept)."""
        pick = {k: getattr(self, k) for k in ("pts0", "pts1", "scores", "idx0", "idx1", "inliers")}
        out = {k: v[keep] for k, v in pick.items()}
        for k in ("points0", "points1", "ncc"):
            v = getattr(self, k)
            out[k] = None if v is None else v[keep]
        return Matches(**out, R=self.R, t=self.t, model=self.model)


def _centres(h: int, w: int, p: float, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([(xs.reshape(-1) + 0.5) * p, (ys.reshape(-1) + 0.5) * p], 1)


def _match_rows(
    f0: ArrayLike,
    f1: ArrayLike,
    *,
    patch_size: float,
    mutual: bool,
    ratio: float | None,
    min_score: float | None,
    refine: bool,
    window: int,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """Every patch of ``f0`` with its best ``f1`` patch, in fixed shapes and without a host sync.

    Keys: ``idx1`` [N0], ``scores`` [N0], ``keep`` [N0] bool (mutual / ratio / min_score passed),
    ``pts0``, ``pts1`` [N0, 2] (network-input pixels, ``pts1`` refined when ``refine``).
    """
    a = patch_grid(f0, name="f0")
    b = patch_grid(f1, name="f1")
    if b.device != a.device:
        b = b.to(a.device)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"f0/f1: channel mismatch {a.shape[-1]} vs {b.shape[-1]}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1, got {window}")
    if ratio is not None and not (0.0 < ratio <= 1.0):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    h0, w0, C = a.shape
    h1, w1, _ = b.shape
    dt = torch.promote_types(a.dtype, b.dtype)
    A = torch.nn.functional.normalize(a.reshape(-1, C).to(dt), dim=1)
    B = torch.nn.functional.normalize(b.reshape(-1, C).to(dt), dim=1)
    S = A @ B.T  # [N0, N1]
    k = 2 if (ratio is not None and S.shape[1] >= 2) else 1
    top_v, top_i = S.topk(k, dim=1)
    idx0 = torch.arange(S.shape[0], device=S.device)
    idx1 = top_i[:, 0]
    score = top_v[:, 0]
    keep = torch.ones_like(score, dtype=torch.bool)
    if mutual:
        back = S.argmax(dim=0)  # [N1]
        keep &= back[idx1] == idx0
    if ratio is not None and k == 2:
        d1 = (2.0 - 2.0 * top_v[:, 0]).clamp_min(0).sqrt()
        d2 = (2.0 - 2.0 * top_v[:, 1]).clamp_min(0).sqrt()
        keep &= d1 < ratio * d2
    if min_score is not None:
        keep &= score >= min_score
    p = float(patch_size)
    pts0 = _centres(h0, w0, p, S.device)
    if refine and window > 1:
        r = window // 2
        off = torch.arange(-r, r + 1, device=S.device)
        dy, dx = torch.meshgrid(off, off, indexing="ij")
        dy, dx = dy.reshape(-1), dx.reshape(-1)
        ry = (idx1 // w1)[:, None] + dy[None]
        rx = (idx1 % w1)[:, None] + dx[None]
        valid = (ry >= 0) & (ry < h1) & (rx >= 0) & (rx < w1)
        flat = ry.clamp(0, h1 - 1) * w1 + rx.clamp(0, w1 - 1)
        sims = S.gather(1, flat).float()
        sims = sims.masked_fill(~valid, float("-inf"))
        wgt = torch.softmax(sims / temperature, dim=1)
        x = ((rx.float() + 0.5) * p * wgt).sum(1)
        y = ((ry.float() + 0.5) * p * wgt).sum(1)
        pts1 = torch.stack([x, y], 1)
    else:
        pts1 = _centres(h1, w1, p, S.device)[idx1]
    return {"idx1": idx1, "scores": score, "keep": keep, "pts0": pts0, "pts1": pts1}


def match_tensors(
    f0: ArrayLike,
    f1: ArrayLike,
    *,
    patch_size: float = 16.0,
    mutual: bool = True,
    ratio: float | None = None,
    min_score: float | None = None,
    refine: bool = True,
    window: int = 5,
    temperature: float = 0.05,
    max_matches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Core matcher on ``[h, w, C]`` feature grids; returns tensors on the features' device.

    Keys: ``idx0``, ``idx1`` (flat patch indices), ``scores`` (cosine), ``pts0``, ``pts1``
    (network-input pixels, ``pts1`` sub-patch refined when ``refine``). Matches are in ``idx0`` order;
    with ``max_matches`` the best scores first (ties: lower ``idx0`` first).
    """
    t = _match_rows(
        f0,
        f1,
        patch_size=patch_size,
        mutual=mutual,
        ratio=ratio,
        min_score=min_score,
        refine=refine,
        window=window,
        temperature=temperature,
    )
    idx0 = torch.nonzero(t["keep"]).reshape(-1)
    if max_matches is not None and idx0.numel() > max_matches:
        order = torch.sort(t["scores"][idx0], descending=True, stable=True).indices[:max_matches]
        idx0 = idx0[order]
    return {
        "idx0": idx0,
        "idx1": t["idx1"][idx0],
        "scores": t["scores"][idx0],
        "pts0": t["pts0"][idx0],
        "pts1": t["pts1"][idx0],
    }


def _map(pts: np.ndarray, scale, offset, fn) -> np.ndarray:
    if fn is not None:
        return np.asarray(fn(pts), dtype=np.float32).reshape(-1, 2)
    s = np.asarray(scale if scale is not None else (1.0, 1.0), dtype=np.float32).reshape(-1)
    o = np.asarray(offset if offset is not None else (0.0, 0.0), dtype=np.float32).reshape(-1)
    return (pts * s[-2:] if s.size == 2 else pts * s[0]) + o


def _to_host(
    t: dict[str, torch.Tensor],
    max_matches: int | None,
    scale,
    offset,
    to_input: Callable[[np.ndarray], np.ndarray] | None,
) -> Matches:
    """The kept rows of :func:`_match_rows` as :class:`Matches` in input pixels (all inliers)."""
    # every row in one device->host copy, selected here: one sync per call (a GPU's queue is not
    # drained and refilled between the steps); flat indices < 2^24 are exact in float32
    rows = torch.cat(
        [
            t["pts0"].float(),
            t["pts1"].float(),
            t["scores"].float()[:, None],
            t["idx1"].float()[:, None],
            t["keep"].float()[:, None],
        ],
        1,
    )
    host = as_numpy(rows)
    idx0 = np.flatnonzero(host[:, 6] > 0.5)
    if max_matches is not None and idx0.size > max_matches:
        idx0 = idx0[np.argsort(-host[idx0, 4], kind="stable")[:max_matches]]
    sel = host[idx0]
    pts0 = _map(np.ascontiguousarray(sel[:, 0:2]), scale, offset, to_input)
    pts1 = _map(np.ascontiguousarray(sel[:, 2:4]), scale, offset, to_input)
    return Matches(
        pts0=pts0,
        pts1=pts1,
        scores=np.ascontiguousarray(sel[:, 4]),
        idx0=idx0.astype(np.int64),
        idx1=sel[:, 5].astype(np.int64),
        inliers=np.ones(pts0.shape[0], dtype=bool),
    )


def _image_radius(patch_size: float, scale, offset, to_input) -> float:
    """Three quarters of a patch in input pixels (the longer of a patch's mapped x and y edges): the
    search radius that covers the feature matches' patch quantisation (±p/2) with a margin."""
    p = float(patch_size)
    q = _map(np.array([[0.0, 0.0], [p, 0.0], [0.0, p]], np.float32), scale, offset, to_input)
    return 0.75 * float(max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[0])))


#: pixels: with ``image_refine_drop``, a refinement must also find its way back to the source point
BACK_ERROR_PX = 1.5


def _refine_with_images(m: Matches, image0, image1, radius: float, half_window: int, drop: bool) -> Matches:
    """``m`` with ``pts1`` moved by NCC template matching in the input images (:func:`.subpixel.refine`)
    and the peak NCC in ``ncc``; ``drop``: only the matches whose refinement was accepted and found its
    way back (forward-backward check within :data:`BACK_ERROR_PX`)."""
    if image0 is None or image1 is None:
        raise ValueError("image refinement needs both image0 and image1")
    back = BACK_ERROR_PX if drop else None
    r = refine(image0, image1, m.pts0, m.pts1, radius=radius, half_window=half_window, max_back_error=back)
    m.pts1, m.ncc = r.pts1, r.ncc
    return m.subset(r.consistent) if drop else m


def _lift_and_estimate(
    m: Matches,
    depth0: ArrayLike,
    depth1: ArrayLike,
    K: ArrayLike,
    K1: ArrayLike | None,
    rigid_threshold: float,
    rigid_method: str,
) -> None:
    """Lift ``m``'s points to 3-D and estimate the rigid motion; the inliers become the 3-D inliers."""
    X0, v0 = lift_to_3d(m.pts0, depth0, K)
    X1, v1 = lift_to_3d(m.pts1, depth1, K if K1 is None else K1)
    m.points0, m.points1 = X0, X1
    ok = v0 & v1 & m.inliers
    if ok.sum() >= 3:
        R, tt, inl = estimate_rigid(X0[ok], X1[ok], threshold=rigid_threshold, method=rigid_method)
        m.R, m.t = R, tt
        full = np.zeros_like(ok)
        full[np.flatnonzero(ok)[inl]] = True
        m.inliers = full
    else:
        m.inliers = np.zeros_like(ok)


def match(
    f0: ArrayLike,
    f1: ArrayLike,
    *,
    patch_size: float = 16.0,
    mutual: bool = True,
    ratio: float | None = 0.95,
    min_score: float | None = None,
    refine: bool = True,
    window: int = 5,
    temperature: float = 0.05,
    max_matches: int | None = None,
    scale: tuple[float, float] | float | None = None,
    offset: tuple[float, float] | None = None,
    to_input: Callable[[np.ndarray], np.ndarray] | None = None,
    verify_with: str | None = None,
    K: ArrayLike | None = None,
    K1: ArrayLike | None = None,
    ransac_threshold: float = 8.0,
    depth0: ArrayLike | None = None,
    depth1: ArrayLike | None = None,
    rigid_threshold: float = 0.05,
    rigid_method: str = "kabsch",
    image0: ArrayLike | None = None,
    image1: ArrayLike | None = None,
    image_refine_radius: float | None = None,
    image_refine_half_window: int = 5,
    image_refine_drop: bool = False,
) -> Matches:
    """Match two ``[h, w, C]`` feature grids; optionally refine with the images, verify and estimate
    the relative pose.

    Network pixels map to input pixels as ``pts * scale + offset`` (or ``to_input(pts)``).
    ``image0``/``image1``: the two input images (HxW or HxWx3): ``pts1`` are then refined to sub-pixel
    precision by NCC template matching (:func:`.subpixel.refine`, templates of
    ``2 image_refine_half_window + 1`` pixels, peak NCC in ``Matches.ncc``) within ``image_refine_radius``
    input pixels (default: 0.75 patch, mapped to input pixels: the patch quantisation plus a margin),
    before verification and 3-D lifting; ``image_refine_drop``: keep only the matches the images could
    refine and that pass the forward-backward check (the others are only patch-precise or doubtful).
    The mapping must then give pixel-centre coordinates (integers at pixel centres; e.g.
    ``offset=(-0.5, -0.5)`` when the network input is the image itself).
    ``verify_with``: ``None``, ``"homography"``, ``"fundamental"`` or ``"essential"`` (needs ``K``;
    ``K1`` for a second camera) - see :func:`verify`. ``depth0``/``depth1`` ``[H, W]`` metric depth at
    input resolution with ``K`` lift matches to 3-D and estimate the rigid motion
    (:func:`estimate_rigid`, inlier distance ``rigid_threshold`` metres).
    """
    t = _match_rows(
        f0,
        f1,
        patch_size=patch_size,
        mutual=mutual,
        ratio=ratio,
        min_score=min_score,
        refine=refine,
        window=window,
        temperature=temperature,
    )
    m = _to_host(t, max_matches, scale, offset, to_input)
    if image0 is not None or image1 is not None:
        if image_refine_radius is None:
            image_refine_radius = _image_radius(patch_size, scale, offset, to_input)
        m = _refine_with_images(
            m, image0, image1, image_refine_radius, image_refine_half_window, image_refine_drop
        )
    if verify_with is not None:
        verify(m, verify_with, K=K, K1=K1, threshold=ransac_threshold)
    if depth0 is not None or depth1 is not None:
        if depth0 is None or depth1 is None or K is None:
            raise ValueError("3-D lifting needs depth0, depth1 and K")
        _lift_and_estimate(m, depth0, depth1, K, K1, rigid_threshold, rigid_method)
    return m


# ----------------------------------------------------------------------------------------------
# 2-D geometric verification


def _intrinsics(K: ArrayLike, name: str) -> np.ndarray:
    k = np.asarray(as_numpy(K), dtype=np.float64)
    if k.shape != (3, 3):
        raise ValueError(f"{name}: expected a 3x3 intrinsics matrix, got shape {k.shape}")
    return k


def verify(
    m: Matches,
    method: str = "homography",
    *,
    K: ArrayLike | None = None,
    K1: ArrayLike | None = None,
    threshold: float = 8.0,
    confidence: float = 0.999,
    seed: int = 0,
) -> Matches:
    """RANSAC verification with OpenCV; updates ``m.inliers``/``m.model`` (and ``R``, ``t``) in place.

    ``homography``: ``findHomography``; ``fundamental``: ``findFundamentalMat``; ``essential``:
    ``findEssentialMat`` + ``recoverPose`` (``t`` has unit norm). ``threshold`` is in pixels
    (raw patch matches carry about ±p/2 px of noise, hence the default of 8 for p = 16).
    """
    import cv2

    if method not in ("homography", "fundamental", "essential"):
        raise ValueError(f"method must be homography, fundamental or essential, got {method!r}")
    need = {"homography": 4, "fundamental": 8, "essential": 5}[method]
    if len(m) < need:
        m.inliers = np.zeros(len(m), dtype=bool)
        return m
    cv2.setRNGSeed(seed)
    p0 = m.pts0.astype(np.float64)
    p1 = m.pts1.astype(np.float64)
    if method == "homography":
        H, mask = cv2.findHomography(p0, p1, cv2.RANSAC, threshold, maxIters=5000, confidence=confidence)
        m.model = H
    elif method == "fundamental":
        F, mask = cv2.findFundamentalMat(p0, p1, cv2.FM_RANSAC, threshold, confidence)
        m.model = None if F is None else F[:3]
    else:
        if K is None:
            raise ValueError("essential-matrix verification needs the intrinsics K")
        k0 = _intrinsics(K, "K")
        k1 = k0 if K1 is None else _intrinsics(K1, "K1")
        if K1 is None:
            E, mask = cv2.findEssentialMat(
                p0, p1, k0, method=cv2.RANSAC, prob=confidence, threshold=threshold
            )
            if E is not None and E.shape[0] > 3:
                E = E[:3]
            if E is not None:
                _, R, t, mask = cv2.recoverPose(E, p0, p1, k0, mask=mask.copy())
        else:  # two cameras: normalise each side, RANSAC in normalised coordinates
            n0 = cv2.undistortPoints(p0.reshape(-1, 1, 2), k0, None).reshape(-1, 2)
            n1 = cv2.undistortPoints(p1.reshape(-1, 1, 2), k1, None).reshape(-1, 2)
            f = 0.25 * (k0[0, 0] + k0[1, 1] + k1[0, 0] + k1[1, 1])
            I3 = np.eye(3)
            E, mask = cv2.findEssentialMat(
                n0, n1, I3, method=cv2.RANSAC, prob=confidence, threshold=threshold / f
            )
            if E is not None and E.shape[0] > 3:
                E = E[:3]
            if E is not None:
                _, R, t, mask = cv2.recoverPose(E, n0, n1, I3, mask=mask.copy())
        m.model = E
        if E is not None:
            m.R, m.t = R, t.reshape(3)
    m.inliers = np.zeros(len(m), dtype=bool) if mask is None else mask.reshape(-1).astype(bool)
    return m


# ----------------------------------------------------------------------------------------------
# 3-D


def lift_to_3d(pts: np.ndarray, depth: ArrayLike, K: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Back-project pixel ``pts [N, 2]`` with bilinearly sampled ``depth [H, W]`` -> ``([N, 3], valid)``.

    A sample is valid only if all four neighbouring depths are finite and > 0 (no mixing across holes).
    """
    d = np.asarray(as_numpy(depth)).squeeze()  # sampled first, then float64: no full-image copy
    if d.ndim != 2:
        raise ValueError(f"depth: expected [H, W], got shape {d.shape}")
    k = _intrinsics(K, "K")
    H, W = d.shape
    x = np.clip(pts[:, 0].astype(np.float64), 0, W - 1)
    y = np.clip(pts[:, 1].astype(np.float64), 0, H - 1)
    x0 = np.clip(np.floor(x).astype(int), 0, max(W - 2, 0))
    y0 = np.clip(np.floor(y).astype(int), 0, max(H - 2, 0))
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    ax, ay = x - x0, y - y0
    q = [d[y0, x0], d[y0, x1], d[y1, x0], d[y1, x1]]
    q = [v.astype(np.float64) for v in q]
    valid = np.all([np.isfinite(v) & (v > 0) for v in q], axis=0)
    q = [np.where(valid, v, 0.0) for v in q]
    z = (1 - ay) * ((1 - ax) * q[0] + ax * q[1]) + ay * ((1 - ax) * q[2] + ax * q[3])
    X = (x - k[0, 2]) * z / k[0, 0]
    Y = (y - k[1, 2]) * z / k[1, 1]
    return np.stack([X, Y, z], 1), valid


def kabsch(X0: ArrayLike, X1: ArrayLike, weights: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rigid motion with ``X1 ≈ R X0 + t`` (Kabsch/Umeyama without scale)."""
    a = np.asarray(as_numpy(X0), dtype=np.float64)
    b = np.asarray(as_numpy(X1), dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"kabsch: expected two [N, 3] arrays, got {a.shape} and {b.shape}")
    if a.shape[0] < 3:
        raise ValueError(f"kabsch: needs >= 3 points, got {a.shape[0]}")
    w = np.ones(a.shape[0]) if weights is None else np.asarray(as_numpy(weights), dtype=np.float64)
    w = w / w.sum()
    ca, cb = w @ a, w @ b
    Hm = (a - ca).T @ ((b - cb) * w[:, None])
    U, _, Vt = np.linalg.svd(Hm)
    s = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    R = Vt.T @ np.diag([1.0, 1.0, s]) @ U.T
    return R, cb - R @ ca


def _triples_loop(n: int, iterations: int, seed: int) -> np.ndarray:
    """The reference of :func:`ransac_triples`: the calls themselves."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n, 3, replace=False) for _ in range(iterations)])


def ransac_triples(n: int, iterations: int, seed: int) -> np.ndarray:
    """``[iterations, 3]`` int64: the triples ``iterations`` calls of
    ``np.random.default_rng(seed).choice(n, 3, replace=False)`` return (``n > 3``), drawn at once.

    That call takes five bounded integers from the generator's 32-bit stream (the low then the high
    half of each 64-bit output of PCG64): three for Floyd's sampling (uniform in ``[0, n-3]``,
    ``[0, n-2]``, ``[0, n-1]``, a repeat replaced by the bound) and two for the shuffle (``[0, 2]``,
    ``[0, 1]``), each Lemire's multiply-shift. Its rejection step fires with probability below
    ``n / 2**32`` per draw; when any draw here would have been rejected, the calls themselves are made.
    """
    if n <= 3:
        raise ValueError(f"ransac_triples: needs n > 3, got {n}")
    if n > 0xFFFFFFFF:  # 64-bit draws: another algorithm
        return _triples_loop(n, iterations, seed)
    raw = np.random.default_rng(seed).bit_generator.random_raw((5 * iterations + 1) // 2)
    u32 = np.stack([raw & np.uint64(0xFFFFFFFF), raw >> np.uint64(32)], 1).reshape(-1)[: 5 * iterations]
    bound = np.array([n - 3, n - 2, n - 1, 2, 1], np.uint64)
    m = u32.reshape(iterations, 5) * (bound + np.uint64(1))
    threshold = (np.uint64(0xFFFFFFFF) - bound) % (bound + np.uint64(1))
    if np.any((m & np.uint64(0xFFFFFFFF)) < threshold):
        return _triples_loop(n, iterations, seed)
    v = (m >> np.uint64(32)).astype(np.int64)
    i1 = np.where(v[:, 1] == v[:, 0], n - 2, v[:, 1])
    i2 = np.where((v[:, 2] == v[:, 0]) | (v[:, 2] == i1), n - 1, v[:, 2])
    out = np.stack([v[:, 0], i1, i2], 1)
    rows = np.arange(iterations)
    for pos, col in ((2, 3), (1, 4)):  # Fisher-Yates: swap position pos with a drawn one at or before it
        j = v[:, col]
        drawn = out[rows, j]
        out[rows, j] = out[:, pos]
        out[:, pos] = drawn
    return out


def _squared_residuals(Rs: np.ndarray, ts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[I, n]`` squared distances ``|R_i a_n + t_i - b_n|^2``: :func:`_residuals` before its square root.

    Element-wise over an ``[I, 3, n]`` layout (contiguous over the points) in that expression's order:
    numpy's einsum kernel (its baseline SSE2 build, pinned numpy) sums a three-term product in two lanes,
    ``(p0 + p2) + p1``, and the norm's reduction adds three squares as ``(x² + y²) + z²``."""
    aT = a.T
    e = Rs[:, :, 0, None] * aT[0]
    tmp = np.empty_like(e)
    e += np.multiply(Rs[:, :, 2, None], aT[2], out=tmp)
    e += np.multiply(Rs[:, :, 1, None], aT[1], out=tmp)
    e += ts[:, :, None]
    e -= b.T[None]
    e *= e
    s = e[:, 0]
    s += e[:, 1]
    s += e[:, 2]
    return s


def _residuals(Rs: np.ndarray, ts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[I, n]`` distances ``|R_i a_n + t_i - b_n|`` of every hypothesis ``i`` and point ``n``, bit for
    bit ``np.linalg.norm(np.einsum("ikl,nl->ink", Rs, a) + ts[:, None] - b[None], axis=2)`` (the RANSAC
    scores decide which hypothesis wins, so the published motion depends on every bit)."""
    s = _squared_residuals(Rs, ts, a, b)
    return np.sqrt(s, out=s)


def _squared_bound(threshold: float) -> float:
    """The least double ``q`` with ``sqrt(q) >= threshold``, so that ``sqrt(s) < threshold`` exactly when
    ``s < q`` (a correctly rounded square root is monotone): the RANSAC count without the roots."""
    t = float(threshold)
    if not t > 0.0 or math.isinf(t * t):
        return 0.0 if not t > 0.0 else math.inf  # nothing below a bound <= 0; every finite square
    q = t * t
    while math.sqrt(q) >= t:
        q = math.nextafter(q, -math.inf)
    while math.sqrt(q) < t:
        q = math.nextafter(q, math.inf)
    return q


#: RANSAC hypotheses scored at a time (their residuals stay in the cache)
RANSAC_CHUNK = 64


def _inlier_counts(
    Rs: np.ndarray, ts: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float, chunk: int = RANSAC_CHUNK
) -> np.ndarray:
    """Points within ``threshold`` of each hypothesis (``_residuals < threshold``, compared squared),
    ``chunk`` hypotheses at a time (the residuals of a chunk stay in the cache)."""
    q = _squared_bound(threshold)
    out = np.empty(len(Rs), np.int64)
    for s in range(0, len(Rs), chunk):
        out[s : s + chunk] = (_squared_residuals(Rs[s : s + chunk], ts[s : s + chunk], a, b) < q).sum(1)
    return out


def _rigid_hypotheses(a: np.ndarray, b: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kabsch motions ``(Rs [I, 3, 3], ts [I, 3])`` of the point triples ``samples [I, 3]``."""
    A = a[samples]  # [I, 3, 3]
    B = b[samples]
    ca, cb = A.mean(1, keepdims=True), B.mean(1, keepdims=True)
    Hm = np.einsum("ipk,ipl->ikl", A - ca, B - cb)
    U, _, Vt = np.linalg.svd(Hm)
    d = np.sign(np.linalg.det(np.einsum("ikl,ilm->ikm", Vt.transpose(0, 2, 1), U.transpose(0, 2, 1))))
    d[d == 0] = 1.0
    Dm = np.zeros((len(samples), 3, 3))
    Dm[:, 0, 0] = Dm[:, 1, 1] = 1.0
    Dm[:, 2, 2] = d
    Rs = Vt.transpose(0, 2, 1) @ Dm @ U.transpose(0, 2, 1)
    return Rs, cb[:, 0] - np.einsum("ikl,il->ik", Rs, ca[:, 0])


def ransac_trials(inlier_ratio: float, confidence: float, sample_size: int = 3) -> float:
    """Samples needed to draw one of ``sample_size`` inliers with probability ``confidence``."""
    w = inlier_ratio**sample_size
    if w >= 1.0:
        return 1.0
    if w <= 0.0 or confidence >= 1.0:
        return math.inf
    return math.log(1.0 - confidence) / math.log(1.0 - w)


def _ransac_kabsch(
    a: np.ndarray, b: np.ndarray, threshold: float, iterations: int, seed: int, confidence: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The best of the RANSAC hypotheses, scored ``RANSAC_CHUNK`` at a time in draw order (ties: the
    first)."""
    n = a.shape[0]
    samples = ransac_triples(n, iterations, seed) if n > 3 else np.zeros((1, 3), int) + np.arange(3)
    best_count, Rb, tb = -1, None, None
    for s in range(0, len(samples), RANSAC_CHUNK):
        Rs, ts = _rigid_hypotheses(a, b, samples[s : s + RANSAC_CHUNK])
        counts = _inlier_counts(Rs, ts, a, b, threshold)
        i = int(np.argmax(counts))
        if counts[i] > best_count:
            best_count, Rb, tb = int(counts[i]), Rs[i], ts[i]
        if confidence is not None and s + RANSAC_CHUNK >= ransac_trials(best_count / n, confidence):
            break
    assert Rb is not None and tb is not None
    return Rb, tb


def estimate_rigid(
    X0: ArrayLike,
    X1: ArrayLike,
    *,
    threshold: float = 0.05,
    iterations: int = 1000,
    method: str = "kabsch",
    seed: int = 0,
    confidence: float | None = 0.999,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust rigid motion ``X1 ≈ R X0 + t`` from 3-D correspondences -> ``(R, t, inlier mask)``.

    ``kabsch``: RANSAC over 3-point samples (vectorised, ``RANSAC_CHUNK`` at a time), then Kabsch on the
    inliers (twice). It stops once the best hypothesis's inlier ratio ``w`` makes an all-inlier sample
    among those scored likely to ``confidence`` (``1 - (1 - w^3)^k >= confidence``), at most
    ``iterations``; ``confidence=None`` scores all ``iterations``.
    ``open3d``: ``registration_ransac_based_on_correspondence``, then Kabsch on its inliers.
    """
    a = np.asarray(as_numpy(X0), dtype=np.float64)
    b = np.asarray(as_numpy(X1), dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"estimate_rigid: expected two [N, 3] arrays, got {a.shape} and {b.shape}")
    n = a.shape[0]
    if n < 3:
        raise ValueError(f"estimate_rigid: needs >= 3 correspondences, got {n}")
    if method == "open3d":
        import open3d as o3d

        p0 = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(a))
        p1 = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(b))
        corr = o3d.utility.Vector2iVector(np.stack([np.arange(n), np.arange(n)], 1).astype(np.int32))
        reg = o3d.pipelines.registration
        res = reg.registration_ransac_based_on_correspondence(
            p0,
            p1,
            corr,
            threshold,
            reg.TransformationEstimationPointToPoint(False),
            3,
            [],
            reg.RANSACConvergenceCriteria(iterations * 10, 0.999),
        )
        T = np.asarray(res.transformation)
        R, t = T[:3, :3], T[:3, 3]
    elif method == "kabsch":
        R, t = _ransac_kabsch(a, b, threshold, iterations, seed, confidence)
    else:
        raise ValueError(f"method must be 'kabsch' or 'open3d', got {method!r}")
    inl = np.linalg.norm(a @ R.T + t - b, axis=1) < threshold
    for _ in range(2):
        if inl.sum() < 3:
            break
        R, t = kabsch(a[inl], b[inl])
        inl = np.linalg.norm(a @ R.T + t - b, axis=1) < threshold
    return R, t, inl
