"""PCA view of patch features: 3 principal components -> RGB, stable across a video.

Recipe of the DINOv3 notebooks: PCA with whitening fitted on foreground patches only, colour =
``sigmoid(2 · projection)``, background black. For video the basis is fitted once and then kept
(``momentum=0``) or updated slowly (EMA of the mean and second moment, ``momentum`` in (0, 1]); after
every refit each component is matched to the previous basis (permutation by |cosine|) and its sign
aligned, so colours do not flicker. Everything is deterministic (float64 ``eigh``, fixed sign rules).
The device computes in float32 only (batch mean and centred covariance, projections); the statistics'
EMA, the eigen-decomposition and the alignment run in float64 on the host (``C x C``, copied once per fit).

Foreground: an explicit ``fg_mask``, or - with ``fg_threshold`` set - the first principal component
of all patches, min-max scaled to [0, 1] and thresholded; its sign is chosen so the foreground is the
smaller side (objects are usually smaller than the background), then kept aligned across frames.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from ._common import ArrayLike, check_finite, float_tensor, to_host

__all__ = ["PCAView"]


def _flatten(features: ArrayLike) -> tuple[torch.Tensor, tuple[int, ...]]:
    x = float_tensor(features, name="features")
    if x.ndim == 3:
        lead = (1, *x.shape[:2])
    elif x.ndim == 4:
        lead = tuple(x.shape[:3])
    else:
        raise ValueError(f"features: expected [h, w, C] or [B, h, w, C], got shape {tuple(x.shape)}")
    check_finite(x, name="features")
    return x.reshape(-1, x.shape[-1]).float(), lead


def _batch_stats(X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[C]`` and centred covariance ``[C, C]`` of rows ``X`` (float32 on X's device), in float64
    on the host (one copy)."""
    mu = X.mean(0)
    Xc = X - mu
    out = to_host(torch.cat([mu[None], Xc.T @ Xc / X.shape[0]], 0)).astype(np.float64)
    return out[0], out[1:]


def _top_eigh(C: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs of a symmetric float64 matrix, largest first."""
    import scipy.linalg

    n = C.shape[0]
    C = 0.5 * (C + C.T)
    lam, V = scipy.linalg.eigh(C, subset_by_index=[n - k, n - 1], driver="evr")
    if V.shape[1] != k or not np.isfinite(lam).all():  # syevr inside a cluster of equal eigenvalues
        lam, V = np.linalg.eigh(C)
        lam, V = lam[n - k :], V[:, n - k :]
    return lam[::-1].copy(), V[:, ::-1].copy()


def _sign_fix(V: np.ndarray) -> np.ndarray:
    """Deterministic sign: the largest-magnitude loading of each component is positive."""
    idx = np.abs(V).argmax(0)
    s = np.sign(V[idx, np.arange(V.shape[1])])
    s[s == 0] = 1
    return V * s


def _host64(t: torch.Tensor) -> np.ndarray:
    return np.asarray(t.detach().cpu(), dtype=np.float64)


class PCAView:
    """Patch features -> RGB uint8 through a foreground-fitted, whitened, sign-stable PCA basis."""

    def __init__(
        self,
        n_components: int = 3,
        *,
        whiten: bool = True,
        scale: float = 2.0,
        fg_threshold: float | None = None,
        momentum: float = 0.0,
        background: tuple[int, int, int] = (0, 0, 0),
        min_fg: int = 8,
    ) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if not (0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if fg_threshold is not None and not (0.0 <= fg_threshold <= 1.0):
            raise ValueError(
                f"fg_threshold must be in [0, 1] (on the min-max scaled PC1), got {fg_threshold}"
            )
        self.n_components = n_components
        self.whiten = whiten
        self.scale = scale
        self.fg_threshold = fg_threshold
        self.momentum = momentum
        self.background = background
        self.min_fg = min_fg
        self.mean: torch.Tensor | None = None  # [C] float32, on the features' device
        self.components: torch.Tensor | None = None  # [C, k] float32
        self.variances: torch.Tensor | None = None  # [k] float32
        self._mean64: np.ndarray | None = None  # EMA of the mean (host, float64)
        self._cov64: np.ndarray | None = None  # EMA of the covariance (host, float64)
        self._fg_dir: torch.Tensor | None = None  # [C] PC1 of all patches (float32, device)
        self._fg_mean: torch.Tensor | None = None
        self._fg_dir64: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.components is not None

    def reset(self) -> None:
        """Forget the basis (the next call fits a new one)."""
        self.__init__(
            self.n_components,
            whiten=self.whiten,
            scale=self.scale,
            fg_threshold=self.fg_threshold,
            momentum=self.momentum,
            background=self.background,
            min_fg=self.min_fg,
        )

    # -- foreground --------------------------------------------------------------------------

    def _fg_direction(self, X: torch.Tensor) -> None:
        mu64, C = _batch_stats(X)
        d = _top_eigh(C, 1)[1][:, 0]
        mu = torch.from_numpy(mu64.astype(np.float32)).to(X.device)
        if self._fg_dir64 is None:
            p = (X - mu) @ torch.from_numpy(d.astype(np.float32)).to(X.device)
            p = (p - p.min()) / (p.max() - p.min()).clamp_min(1e-12)
            thr = self.fg_threshold if self.fg_threshold is not None else 0.5
            if (p > thr).sum() > X.shape[0] / 2:  # foreground = the smaller side
                d = -d
        elif float(d @ self._fg_dir64) < 0:
            d = -d
        self._fg_dir64 = d
        self._fg_dir = torch.from_numpy(d.astype(np.float32)).to(X.device)
        self._fg_mean = mu

    def foreground(self, features: ArrayLike) -> torch.Tensor:
        """Boolean foreground ``[h, w]`` (``[B, h, w]`` for a batch); all True without a threshold."""
        X, lead = _flatten(features)
        shape = lead[1:] if float_tensor(features, name="features").ndim == 3 else lead
        if self.fg_threshold is None:
            return torch.ones(shape, dtype=torch.bool, device=X.device)
        if self._fg_dir is None:
            self._fg_direction(X)
        p = (X - self._fg_mean.to(X.device)) @ self._fg_dir.to(X.device)
        p = (p - p.min()) / (p.max() - p.min()).clamp_min(1e-12)
        return (p > self.fg_threshold).reshape(shape)

    # -- basis -------------------------------------------------------------------------------

    def _select(self, X: torch.Tensor, lead, fg_mask: ArrayLike | None) -> torch.Tensor:
        if fg_mask is not None:
            m = float_tensor(fg_mask, name="fg_mask").to(X.device) > 0
            if m.numel() != X.shape[0]:
                raise ValueError(
                    f"fg_mask: {m.numel()} entries for {X.shape[0]} patches (shape {tuple(lead)})"
                )
            m = m.reshape(-1)
        elif self.fg_threshold is not None:
            m = self.foreground(X.reshape(*lead, -1)).reshape(-1)
        else:
            return X
        if int(m.sum()) < max(self.min_fg, self.n_components + 1):
            return X  # too few foreground patches: fall back to all patches
        return X[m]

    def _eig(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lam, V = _top_eigh(self._cov64, self.n_components)
        return self._mean64, V, np.maximum(lam, 1e-12)

    def _align(self, V: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Permute and sign-flip new components to best match the previous basis."""
        prev = _host64(self.components)
        Cmat = prev.T @ V  # [k, k]
        k = V.shape[1]
        if k <= 6:
            best, best_p = -1.0, tuple(range(k))
            for perm in itertools.permutations(range(k)):
                sc = float(sum(abs(Cmat[i, perm[i]]) for i in range(k)))
                if sc > best + 1e-12:
                    best, best_p = sc, perm
            perm = list(best_p)
        else:
            perm = list(range(k))
        V, lam = V[:, perm], lam[perm]
        s = np.sign((prev * V).sum(0))
        s[s == 0] = 1
        return V * s, lam

    def _set_basis(self, mu: np.ndarray, V: np.ndarray, lam: np.ndarray, device: torch.device) -> None:
        f32 = np.float32
        self.mean = torch.from_numpy(mu.astype(f32)).to(device)
        self.components = torch.from_numpy(np.ascontiguousarray(V, dtype=f32)).to(device)
        self.variances = torch.from_numpy(lam.astype(f32)).to(device)

    def fit(self, features: ArrayLike, fg_mask: ArrayLike | None = None, *, align: bool = True) -> PCAView:
        """Fit a new basis on ``features`` (``[h, w, C]`` or a batch ``[B, h, w, C]`` fitted jointly).

        With ``align`` and an existing basis of the same width, the new components are permuted and
        sign-aligned to it (a refit keeps the colours).
        """
        X, lead = _flatten(features)
        if X.shape[1] < self.n_components:
            raise ValueError(f"features: {X.shape[1]} channels < n_components={self.n_components}")
        if not align:
            self._fg_dir = self._fg_dir64 = None
        if self.fg_threshold is not None:
            self._fg_direction(X)
        Xs = self._select(X, lead, fg_mask)
        self._mean64, self._cov64 = _batch_stats(Xs)
        mu, V, lam = self._eig()
        if align and self.components is not None and tuple(self.components.shape) == V.shape:
            V, lam = self._align(V, lam)
        else:
            V = _sign_fix(V)
        self._set_basis(mu, V, lam, X.device)
        return self

    def update(self, features: ArrayLike, fg_mask: ArrayLike | None = None) -> PCAView:
        """Video step: fit if unfitted; else EMA-update the statistics (``momentum``) and realign."""
        if not self.fitted:
            return self.fit(features, fg_mask)
        if self.momentum == 0.0:
            return self
        X, lead = _flatten(features)
        if X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features: {X.shape[1]} channels, the basis was fitted on {self.mean.shape[0]}")
        if self.fg_threshold is not None:
            self._fg_direction(X)
        Xs = self._select(X, lead, fg_mask)
        mu_b, C_b = _batch_stats(Xs)
        m = self.momentum
        dm = self._mean64 - mu_b  # EMA of first and second moments, kept as mean + centred covariance
        self._cov64 = (1 - m) * self._cov64 + m * C_b + m * (1 - m) * np.outer(dm, dm)
        self._mean64 = (1 - m) * self._mean64 + m * mu_b
        mu, V, lam = self._eig()
        V, lam = self._align(V, lam)
        self._set_basis(mu, V, lam, X.device)
        return self

    # -- mapping -----------------------------------------------------------------------------

    def project(self, features: ArrayLike) -> torch.Tensor:
        """Projections ``[..., h, w, k]`` (whitened if enabled) of the features on the basis."""
        if not self.fitted:
            raise RuntimeError("PCAView: call fit() or update() before transform()")
        X, lead = _flatten(features)
        if X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features: {X.shape[1]} channels, the basis was fitted on {self.mean.shape[0]}")
        P = (X - self.mean.to(X.device)) @ self.components.to(X.device)
        if self.whiten:
            P = P / self.variances.to(X.device).sqrt()
        return P.reshape(*lead, -1)

    def transform(
        self,
        features: ArrayLike,
        size: tuple[int, int] | None = None,
        fg_mask: ArrayLike | None = None,
        mask_background: bool = True,
    ) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]`` (``[B, H, W, 3]`` for a batch) at ``size=(H, W)`` (default: patch grid).

        The projections are upsampled bilinearly before the sigmoid; with a foreground (``fg_mask``
        or ``fg_threshold``) and ``mask_background`` the background is painted ``background``.
        """
        return self.transform_tensor(features, size, fg_mask, mask_background).cpu().numpy()

    def transform_tensor(
        self,
        features: ArrayLike,
        size: tuple[int, int] | None = None,
        fg_mask: ArrayLike | None = None,
        mask_background: bool = True,
    ) -> torch.Tensor:
        """:meth:`transform` as a uint8 tensor on the features' device (no host sync)."""
        single = float_tensor(features, name="features").ndim == 3
        P = self.project(features)  # [B, h, w, k]
        k = P.shape[-1]
        if k < 3:
            P = torch.cat([P, P[..., -1:].expand(*P.shape[:-1], 3 - k)], -1)
        P = P[..., :3].permute(0, 3, 1, 2).float()
        fg = None
        if mask_background and (fg_mask is not None or self.fg_threshold is not None):
            if fg_mask is not None:
                fg = (
                    float_tensor(fg_mask, name="fg_mask").reshape(P.shape[0], 1, *P.shape[-2:]).to(P.device)
                    > 0
                )
            else:
                fg = self.foreground(features).reshape(P.shape[0], 1, *P.shape[-2:])
        if size is not None:
            P = F.interpolate(P, size=tuple(size), mode="bilinear", align_corners=False)
            if fg is not None:
                fg = F.interpolate(fg.float(), size=tuple(size), mode="nearest") > 0.5
        rgb = torch.sigmoid(self.scale * P)
        if fg is not None:
            bg = torch.tensor(self.background, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1) / 255.0
            rgb = torch.where(fg, rgb, bg)
        out = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return out[0] if single else out

    def __call__(
        self, features: ArrayLike, size: tuple[int, int] | None = None, fg_mask: ArrayLike | None = None
    ) -> np.ndarray:
        """``update`` then ``transform`` - the per-frame call for video."""
        self.update(features, fg_mask)
        return self.transform(features, size, fg_mask)
