"""TokenCut (Wang et al., CVPR 2022) on patch features: normalised cut of a binary cosine graph.

The published algorithm, step by step:

1. L2-normalise the patch tokens, ``S = F Fᵀ`` (cosine similarity).
2. Binary graph ``W_ij = 1`` if ``S_ij > tau`` else ``eps`` (defaults ``tau = 0.2``, ``eps = 1e-5``).
3. ``D = diag(Σ_j W_ij)``; solve ``(D − W) x = λ D x`` and take the second-smallest eigenvector.
4. Bipartition ``x > mean(x)``; the seed is ``argmax |x|`` (the first of ties within 1e-9); if the seed
   is not in the ``True`` side the mask and the eigenvector are flipped (foreground = side holding the
   largest ``|x|``).
5. Keep the 4-connected component of the mask containing the seed; its bounding box.

``features`` must be the **patch tokens only**: DINOv3 prepends 1 CLS and 4 register ("storage")
tokens, which must be dropped (or use ``get_intermediate_layers(..., reshape=True)``); a token count
that does not match ``h * w`` is refused.

Solvers (``method``): ``"scipy"`` is the reference dense generalised solve
(``scipy.linalg.eigh(D−W, D)``); the others solve the equivalent symmetric problem
``D^-1/2 W D^-1/2 y = μ y`` (``λ = 1 − μ``, ``x = D^-1/2 y``, same normalisation ``xᵀDx = 1``):
``"cpu_dense"`` (float64 LAPACK on the host from the numpy graph), ``"dense"`` (the graph built on the
features' device, the same float64 solve on the host), ``"arpack"`` (Lanczos, CPU), ``"subspace"``
(the masked cut of :mod:`._cut_solver` - float32 on the features' device, the exact float64 check on
the host - the GPU fast path; falls back to the dense host solve if its check fails) and ``"auto"``
(CPU: ``"cpu_dense"`` up to 400 patches, else ``"arpack"``; CUDA: ``"dense"`` up to 256, else
``"subspace"``). No solver computes in float64 on an accelerator: their float64 rate is a small
fraction of float32's (1/64 on Jetson Orin).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from scipy.linalg.blas import get_blas_funcs

from ._common import ArrayLike, check_finite, float_tensor, to_host
from ._cut_solver import CutStats, MaskedCut, cached_cut

METHODS = ("auto", "dense", "cpu_dense", "scipy", "arpack", "subspace")

__all__ = [
    "TokenCutResult",
    "TokenCutTracker",
    "TrackedObject",
    "fiedler_vector",
    "tokencut",
    "tokencut_multi",
]


@dataclass
class TokenCutResult:
    """One TokenCut object on an ``h x w`` patch grid (all arrays numpy)."""

    mask: np.ndarray  #: [h, w] bool, the seed's connected component
    eigenvector: np.ndarray  #: [h, w] float64 second generalised eigenvector (NaN on excluded patches)
    seed: tuple[int, int]  #: (row, col) of max |eigenvector|
    box: tuple[int, int, int, int]  #: (x0, y0, x1, y1) in patch units, exclusive end
    eigenvalue: float = float("nan")  #: λ of (D − W) x = λ D x
    bipartition: np.ndarray | None = None  #: [h, w] bool foreground side before the component step
    contrast: float = float("nan")  #: edge density (S > tau) inside the object / from it to the rest

    def box_pixels(self, patch_size: int = 16, image_size: tuple[int, int] | None = None) -> tuple[int, ...]:
        """Box in pixels (x0, y0, x1, y1), clipped to ``image_size=(H, W)`` when given."""
        x0, y0, x1, y1 = (int(v) * patch_size for v in self.box)
        if image_size is not None:
            H, W = image_size
            x1, y1 = min(x1, W), min(y1, H)
        return (x0, y0, x1, y1)


# ----------------------------------------------------------------------------------------------
# input handling


def _tokens(features: ArrayLike, grid: tuple[int, int] | None) -> tuple[torch.Tensor, int, int]:
    t = float_tensor(features, name="features")
    if t.ndim == 3:
        if grid is not None and tuple(grid) != tuple(t.shape[:2]):
            raise ValueError(f"features: grid {tuple(grid)} does not match feature shape {tuple(t.shape)}")
        h, w, c = t.shape
        t = t.reshape(h * w, c)
    elif t.ndim == 2:
        if grid is None:
            raise ValueError(
                f"features: got {t.shape[0]} tokens [N, C] without grid=(h, w); pass the patch grid "
                "or a [h, w, C] array"
            )
        h, w = (int(g) for g in grid)
        n = t.shape[0]
        if n != h * w:
            extra = n - h * w
            hint = ""
            if extra in (1, 4, 5):
                hint = (
                    f" ({extra} extra token(s): CLS/register tokens must be excluded - DINOv3 has "
                    "1 CLS + 4 register tokens before the patches)"
                )
            raise ValueError(f"features: {n} tokens do not match the patch grid {h}x{w} = {h * w}{hint}")
    else:
        raise ValueError(
            f"features: expected patch tokens [h, w, C] (or [N, C] with grid), got shape {tuple(t.shape)}"
        )
    if t.shape[0] < 3:
        raise ValueError(f"features: TokenCut needs at least 3 patches, got {t.shape[0]}")
    check_finite(t, name="features")
    return t, h, w


def _edges(F: torch.Tensor, tau: float) -> torch.Tensor:
    """TokenCut's graph edges ``S > tau`` for tokens ``F [n, C]`` on F's device: a symmetric bool
    matrix (the lower triangle mirrored, the part a LAPACK ``eigh`` reads), computed in float32."""
    Fn = torch.nn.functional.normalize(F.float(), dim=1)
    E = (Fn @ Fn.T) > tau
    return torch.tril(E) | torch.tril(E, -1).T


def _gram(A: np.ndarray) -> np.ndarray:
    """``A @ A.T``, exactly symmetric, through scipy's BLAS (``syrk``): the CPU path's products and its
    eigen solve share one BLAS thread pool (numpy and scipy each bundle an OpenBLAS whose idle threads
    spin; alternating between the two pools triples the head's time on a multi-core CPU)."""
    (syrk,) = get_blas_funcs(("syrk",), (A,))
    U = syrk(1.0, A.T, trans=1)  # the upper triangle (lower left zero); A.T is Fortran order: no copy
    S = U + U.T
    np.fill_diagonal(S, U.diagonal())
    return S


def _affinity_np(F: np.ndarray, tau: float, eps: float) -> np.ndarray:
    """Numpy twin of :func:`_affinity` (the CPU path stays in one BLAS, no torch/OpenMP handover)."""
    norm = np.sqrt((F * F).sum(1, keepdims=True))
    Fn = np.ascontiguousarray(F / np.maximum(norm, 1e-12))
    return np.where(_gram(Fn) > tau, 1.0, eps)


# ----------------------------------------------------------------------------------------------
# eigen solvers: return (x [n] float64 numpy with xᵀDx = 1, λ)


def _solve_scipy(W: np.ndarray) -> tuple[np.ndarray, float]:
    """Reference: dense generalised solve exactly as the TokenCut code does it."""
    import scipy.linalg

    D = np.diag(W.sum(1))
    vals, vecs = scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])
    return vecs[:, 0], float(vals[0])


def _solve_arpack(W: np.ndarray) -> tuple[np.ndarray, float]:
    """Lanczos (ARPACK) for the two largest eigenpairs of ``D^-1/2 W D^-1/2`` (CPU)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    dis = 1.0 / np.sqrt(W.sum(1))
    n = W.shape[0]
    op = LinearOperator((n, n), matvec=lambda v: dis * (W @ (dis * v.ravel())), dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    mu, Y = eigsh(op, k=2, which="LA", v0=v0, tol=1e-12, ncv=min(n, 24), maxiter=10 * n)
    i = int(np.argmin(mu))
    return dis * Y[:, i], float(1.0 - mu[i])


def _solve_dense_np(W: np.ndarray) -> tuple[np.ndarray, float]:
    """Dense float64 solve of the normalised problem on CPU: only the needed eigenpair (the second
    largest of ``D^-1/2 W D^-1/2``, LAPACK ``syevr``): the same vector (to 1e-16) as a full ``eigh``,
    faster for large graphs because only one eigenpair is computed."""
    import scipy.linalg

    n = W.shape[0]
    M, dis = _normalised(W)
    mu, Y = scipy.linalg.eigh(M, subset_by_index=[n - 2, n - 2], driver="evr")
    if Y.shape[1] != 1 or not np.isfinite(mu).all():
        # syevr can return no pair for an index range inside a cluster of equal eigenvalues
        # (e.g. a graph without edges): the full solve handles every case
        return _solve_dense(W)
    return dis * Y[:, 0], float(1.0 - mu[0])


def _normalised(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(D^-1/2 W D^-1/2`` symmetrised, ``D^-1/2)`` in float64."""
    dis = 1.0 / np.sqrt(W.sum(1))
    M = W * dis[:, None] * dis[None, :]
    return 0.5 * (M + M.T), dis


def _solve_dense(W: ArrayLike) -> tuple[np.ndarray, float]:
    """Full ``eigh`` of the normalised affinity, in float64 on the host."""
    M, dis = _normalised(np.asarray(W, dtype=np.float64))
    mu, Y = np.linalg.eigh(M)
    return dis * Y[:, -2], float(1.0 - mu[-2])


def _weights(E: np.ndarray, eps: float) -> np.ndarray:
    """TokenCut's ``W`` in float64 from boolean edges (on the host)."""
    return np.where(E, 1.0, eps)


def _solve_subspace(E: torch.Tensor, eps: float, tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """Fiedler pair of the whole graph by the masked cut (float32 on E's device, exact float64 check
    on the host); a dense host solve if the check fails."""
    n = E.shape[0]
    solver, lock = _masked_cut(n, E.device)
    with lock:
        solver.load(E, eps)
        sol = solver.solve(np.ones(n, dtype=bool), tol)
    return sol if sol is not None else _solve_dense_np(_weights(to_host(E), eps))


def fiedler_vector(
    features: ArrayLike,
    tau: float = 0.2,
    eps: float = 1e-5,
    *,
    method: str = "auto",
) -> tuple[np.ndarray, float]:
    """Second-smallest generalised eigenvector of ``(D − W) x = λ D x`` for tokens ``[n, C]``.

    Returns ``(x [n] float64 numpy, λ)`` with ``xᵀ D x = 1`` (sign arbitrary).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    F = float_tensor(features, name="features")
    if F.ndim != 2:
        raise ValueError(f"features: expected tokens [n, C], got shape {tuple(F.shape)}")
    n = F.shape[0]
    if method == "auto":
        if F.is_cuda:
            method = "dense" if n <= 256 else "subspace"
        else:
            method = "cpu_dense" if n <= 400 else "arpack"
    if method == "arpack" and n <= 4:
        method = "cpu_dense"
    if method in ("scipy", "arpack", "cpu_dense"):
        W = _affinity_np(F.detach().cpu().numpy(), tau, eps)
        return {"scipy": _solve_scipy, "arpack": _solve_arpack, "cpu_dense": _solve_dense_np}[method](W)
    E = _edges(F, tau)  # the graph on F's device (float32); the solves below never use float64 there
    if method == "dense":
        return _solve_dense_np(_weights(to_host(E), eps))
    return _solve_subspace(E, eps)


# ----------------------------------------------------------------------------------------------
# the algorithm


def _validate_params(tau: float, eps: float) -> None:
    if not (-1.0 <= tau < 1.0):
        raise ValueError(f"tau must be in [-1, 1), got {tau}")
    if not (eps > 0.0):
        raise ValueError(f"eps must be > 0, got {eps}")


def _contrast(F: torch.Tensor, act: np.ndarray, obj: np.ndarray, inside: np.ndarray, tau: float) -> float:
    """Density of graph edges (S > tau) inside the object over the density from it to the other patches."""
    if F.device.type != "cpu":
        # counted on the device: only two scalars come back (one sync), not the k x n edge matrix
        dev = F.device
        Fn = torch.nn.functional.normalize(F, dim=1)
        E = (Fn[torch.from_numpy(obj).to(dev)] @ Fn[torch.from_numpy(act).to(dev)].T) > tau
        cnt = torch.stack([E[:, torch.from_numpy(inside).to(dev)].sum(), E.sum()]).cpu()
        e_in, e_all = float(cnt[0]), float(cnt[1])
    else:  # scipy's BLAS on CPU, as the eigen solve (see _gram)
        Fa = F.detach().numpy()
        Fa = Fa / np.maximum(np.linalg.norm(Fa, axis=1, keepdims=True), 1e-12)
        (gemm,) = get_blas_funcs(("gemm",), (Fa,))
        E = gemm(1.0, Fa[obj].T, Fa[act].T, trans_a=1) > tau  # Fortran-order operands: no copies
        e_in, e_all = float(E[:, inside].sum()), float(E.sum())
    k, n_act = obj.size, act.size
    e_out = e_all - e_in
    pairs_out = k * (n_act - k)
    if pairs_out == 0:
        return float("inf")
    return (e_in / (k * k)) / max(e_out / pairs_out, 1.0 / pairs_out)


def _cut(
    F: torch.Tensor, h: int, w: int, active: np.ndarray, tau: float, eps: float, method: str
) -> TokenCutResult:
    """TokenCut restricted to the ``active`` patches of the grid (all active = the paper)."""
    idx = np.flatnonzero(active.reshape(-1))
    sub = F[torch.from_numpy(idx).to(F.device)] if idx.size < h * w else F
    x, lam = fiedler_vector(sub, tau, eps, method=method)
    res = _partition(x, lam, idx, h, w)
    comp = res.mask
    res.contrast = _contrast(F, idx, np.flatnonzero(comp.reshape(-1)), comp.reshape(-1)[idx], tau)
    return res


#: 4-connectivity (ndimage.label's default, built once instead of per call)
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _partition(x: np.ndarray, lam: float, idx: np.ndarray, h: int, w: int) -> TokenCutResult:
    """Steps 4-5 on the eigenvector ``x`` of the ``idx`` patches (contrast left NaN)."""
    bip = x > x.mean()
    # argmax |x|, with values within 1e-9 (relative) of the maximum counted as ties and the first one
    # taken: repeated patches (identical tokens) give equal |x| up to round-off, and which of them a
    # solver's last bits favour must not move the seed to another component
    ax = np.abs(x)
    seed_i = int(np.flatnonzero(ax >= ax.max() * (1.0 - 1e-9))[0])
    if not bip[seed_i]:
        x = -x
        bip = np.logical_not(bip)
    vec = np.full(h * w, np.nan)
    vec[idx] = x
    bip_grid = np.zeros(h * w, dtype=bool)
    bip_grid[idx] = bip
    bip_grid = bip_grid.reshape(h, w)
    seed_flat = int(idx[seed_i])
    seed = (seed_flat // w, seed_flat % w)
    labels, _ = ndimage.label(bip_grid, structure=_FOUR_CONNECTED)
    comp = labels == labels[seed]
    ys, xs = np.nonzero(comp)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return TokenCutResult(
        mask=comp,
        eigenvector=vec.reshape(h, w),
        seed=seed,
        box=box,
        eigenvalue=lam,
        bipartition=bip_grid,
    )


#: the block filter applies ``A^(2^SQUARINGS)`` (block power steps) before the first exact check; on the
#: node's 30x40 grids ``μ_9 / μ_1`` of ``A`` is 0.57-0.83, so ``A^64`` leaves an error near float32's
#: resolution, which one correction round (Krylov vectors of the exact residual) takes below 1e-9
SQUARINGS = 6
#: correction rounds after the first check, then the dense fallback
MAX_STEPS = 7
#: Krylov vectors per correction round
KRYLOV = 8

#: counters of the masked cut (per process; for benchmarks and diagnostics)
CUT_STATS = CutStats()


def _masked_cut(n: int, device: torch.device) -> tuple[MaskedCut, threading.Lock]:
    """The (graph-captured on CUDA) cut solver for ``n`` patches on ``device``, built once and reused."""
    return cached_cut(n, device, power=2**SQUARINGS, max_rounds=MAX_STEPS, krylov=KRYLOV, stats=CUT_STATS)


def _mask_certified(x: np.ndarray, err: np.ndarray, *, idx: np.ndarray, h: int, w: int) -> bool:
    """True when every eigenvector within ``err`` of ``x`` (entrywise) gives the mask :func:`_partition`
    gives for ``x``: no entry is within reach of the mean (the split is the same), and every patch that
    could be the seed (the tie rule included) lies in the same connected component of the same side."""
    if not np.isfinite(err).all():
        return False
    m = x.mean()
    if np.any(np.abs(x - m) <= err + err.mean()):
        return False
    bip = x > m
    ax = np.abs(x)
    cand = np.flatnonzero(ax + err >= (ax - err).max() * (1.0 - 1e-9))
    if not (bip[cand].all() or not bip[cand].any()):
        return False
    grid = np.zeros(h * w, dtype=bool)
    grid[idx] = bip if bip[cand[0]] else ~bip
    labels = ndimage.label(grid.reshape(h, w), structure=_FOUR_CONNECTED)[0].reshape(-1)
    return np.unique(labels[idx[cand]]).size == 1


class _DeviceGraph:
    """The TokenCut graph of all patches built once, for the multi-object loop.

    Every cut solves the sub-graph of the still active patches (no recomputed similarities) with the
    masked cut (:mod:`._cut_solver`: float32 on the device, exact float64 Rayleigh-Ritz and residual
    check on the host; a failed check falls back to a dense float64 solve on the host). Cut 1 is solved to
    the residual tolerance 1e-9 (the published solve); a later cut - whose eigenvector only feeds the
    mask - stops as soon as its mask is certified: no eigenvector within the error bound of the Ritz
    vector could give another split or seed component (:func:`_mask_certified`). The contrast is counted
    on the host from the edge matrix, copied once.
    """

    def __init__(self, F: torch.Tensor, tau: float, eps: float, method: str, exact_later: bool) -> None:
        E = _edges(F, tau)
        self.n, self.eps, self.exact_later = F.shape[0], eps, exact_later
        self.solver, self.lock = _masked_cut(self.n, F.device)
        self.lock.acquire()  # released in close(): the solver's buffers belong to this frame
        try:
            self.solver.load(E, eps)
            self.E = to_host(E)
        except BaseException:
            self.lock.release()
            raise
        self.method = method

    def close(self) -> None:
        self.lock.release()

    def cut(self, h: int, w: int, active: np.ndarray, first: bool) -> TokenCutResult:
        idx = np.flatnonzero(active.reshape(-1))
        n = idx.size
        dense = self.method == "dense"  # small graphs too: the masked solve beats a small eigh
        sol = None
        if not dense:
            # later cuts stop as soon as their mask is certified (see _mask_certified); the first cut
            # (and every cut with exact_later) is the published solve to the residual tolerance
            loose = not (first or self.exact_later)
            certify = functools.partial(_mask_certified, idx=idx, h=h, w=w) if loose else None
            sol = self.solver.solve(active, 1e-9, certify)
        if sol is None:
            sol = _solve_dense_np(_weights(self.E[np.ix_(idx, idx)], self.eps))
        res = _partition(sol[0], sol[1], idx, h, w)
        comp = res.mask.reshape(-1)  # within the active patches
        rows = self.E[np.flatnonzero(comp)]
        e_all = float(np.count_nonzero(rows if n == self.n else rows[:, idx]))
        e_in = float(np.count_nonzero(rows[:, comp]))
        k = int(np.count_nonzero(comp))
        pairs_out = k * (n - k)
        if pairs_out == 0:
            res.contrast = float("inf")
        else:
            res.contrast = (e_in / (k * k)) / max((e_all - e_in) / pairs_out, 1.0 / pairs_out)
        return res


def tokencut(
    features: ArrayLike,
    tau: float = 0.2,
    eps: float = 1e-5,
    *,
    grid: tuple[int, int] | None = None,
    method: str = "auto",
) -> TokenCutResult:
    """TokenCut on patch tokens ``[h, w, C]`` (or ``[h*w, C]`` with ``grid=(h, w)``).

    Never pass CLS or register tokens: a token count that does not match the grid is refused.
    """
    _validate_params(tau, eps)
    F, h, w = _tokens(features, grid)
    return _cut(F, h, w, np.ones((h, w), dtype=bool), tau, eps, method)


def tokencut_multi(
    features: ArrayLike,
    k: int = 3,
    tau: float = 0.2,
    eps: float = 1e-5,
    *,
    grid: tuple[int, int] | None = None,
    method: str = "auto",
    min_patches: int = 2,
    max_fraction: float = 0.6,
    max_eigenvalue: float | None = None,
    min_contrast: float = 2.5,
    min_remaining: int = 8,
    exact_later: bool = False,
    graph_once: bool | None = None,
) -> list[TokenCutResult]:
    """Up to ``k`` objects: cut, remove the found object's patches from the graph, cut again.

    The first object is exactly :func:`tokencut`. Later cuts stop when fewer than ``min_remaining``
    patches are left, the object has fewer than ``min_patches`` patches or covers more than
    ``max_fraction`` of the remaining patches (the cut split background, not an object), when its
    ``contrast`` (density of similarity edges ``S > tau`` inside it over the density from it to the
    other patches) is below ``min_contrast`` (a piece of a larger region - about 1 - not a distinct
    object), or when the cut's
    eigenvalue exceeds ``max_eigenvalue`` (a weak cut). Eigenvectors are NaN on removed patches.

    ``graph_once`` (default: on accelerators; methods auto/dense/subspace) builds the graph once and
    solves every cut on it with fixed shapes (see :class:`_DeviceGraph`: one CUDA graph replay per cut
    on GPUs; ``exact_later=True`` checks later cuts' residuals as tightly as the first's); otherwise
    every cut is :func:`tokencut` on the remaining patches.
    """
    _validate_params(tau, eps)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    F, h, w = _tokens(features, grid)
    graph = None
    if graph_once is None:
        graph_once = F.device.type != "cpu"
    if graph_once and method in ("auto", "dense", "subspace"):
        graph = _DeviceGraph(F, tau, eps, method, exact_later)
    active = np.ones((h, w), dtype=bool)
    out: list[TokenCutResult] = []
    try:
        for i in range(k):
            n_active = int(active.sum())
            if i > 0 and n_active < max(min_remaining, 3):
                break
            res = (
                graph.cut(h, w, active, i == 0)
                if graph is not None
                else _cut(F, h, w, active, tau, eps, method)
            )
            size = int(res.mask.sum())
            if i > 0:
                if size < min_patches or size > max_fraction * n_active:
                    break
                if max_eigenvalue is not None and res.eigenvalue > max_eigenvalue:
                    break
                if res.contrast < min_contrast:
                    break
            out.append(res)
            active &= ~res.mask
    finally:
        if graph is not None:
            graph.close()
    return out


# ----------------------------------------------------------------------------------------------
# video


@dataclass
class TrackedObject:
    """A TokenCut object with an identity that persists across frames."""

    track_id: int
    result: TokenCutResult
    hits: int = 1  #: frames in which the object was found
    age: int = 0  #: frames since it was last found (0 = this frame)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@dataclass
class TokenCutTracker:
    """Per-frame :func:`tokencut_multi` with identities kept by mask overlap (Hungarian on IoU).

    With ``use_features=True`` the previous masks are first carried into the current frame through
    feature nearest neighbours (each current patch takes the label of its most similar previous
    patch), which keeps identities through fast motion.
    """

    k: int = 1
    tau: float = 0.2
    eps: float = 1e-5
    iou_threshold: float = 0.3
    max_age: int = 5
    use_features: bool = False
    method: str = "auto"
    multi_kwargs: dict = field(default_factory=dict)
    _tracks: list[TrackedObject] = field(default_factory=list, init=False, repr=False)
    _next_id: int = field(default=0, init=False, repr=False)
    _prev_feats: torch.Tensor | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        """Forget all tracks."""
        self._tracks, self._next_id, self._prev_feats = [], 0, None

    @property
    def tracks(self) -> list[TrackedObject]:
        """Tracks alive now (including ones not seen for up to ``max_age`` frames)."""
        return list(self._tracks)

    def _carry(self, mask: np.ndarray, cur: torch.Tensor) -> np.ndarray:
        prev = self._prev_feats
        if not self.use_features or prev is None or prev.shape[-1] != cur.shape[-1]:
            return mask
        a = torch.nn.functional.normalize(cur.reshape(-1, cur.shape[-1]), dim=1)
        b = torch.nn.functional.normalize(prev.reshape(-1, prev.shape[-1]), dim=1)
        nn_idx = (a @ b.T).argmax(1).cpu().numpy()
        return mask.reshape(-1)[nn_idx].reshape(cur.shape[:2])

    def update(self, features: ArrayLike) -> list[TrackedObject]:
        """Process one frame's ``[h, w, C]`` patch features; returns the objects found in it."""
        from scipy.optimize import linear_sum_assignment

        feats = float_tensor(features, name="features")
        dets = tokencut_multi(feats, self.k, self.tau, self.eps, method=self.method, **self.multi_kwargs)
        shape = dets[0].mask.shape
        prev_masks = []
        for tr in self._tracks:
            m = tr.result.mask
            if m.shape != shape and not (self.use_features and self._prev_feats is not None):
                prev_masks.append(np.zeros(shape, dtype=bool))
            else:
                prev_masks.append(self._carry(m, feats) if self.use_features else m)
        iou = np.zeros((len(self._tracks), len(dets)))
        for i, pm in enumerate(prev_masks):
            for j, d in enumerate(dets):
                iou[i, j] = _iou(pm, d.mask) if pm.shape == d.mask.shape else 0.0
        matched_t, matched_d = set(), set()
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= self.iou_threshold:
                    tr = self._tracks[r]
                    tr.result, tr.hits, tr.age = dets[c], tr.hits + 1, 0
                    matched_t.add(r)
                    matched_d.add(c)
        for i, tr in enumerate(self._tracks):
            if i not in matched_t:
                tr.age += 1
        self._tracks = [t for t in self._tracks if t.age <= self.max_age]
        for j, d in enumerate(dets):
            if j not in matched_d:
                self._tracks.append(TrackedObject(track_id=self._next_id, result=d))
                self._next_id += 1
        self._prev_feats = feats.detach()
        return sorted((t for t in self._tracks if t.age == 0), key=lambda t: t.track_id)
