"""TokenCut's eigen-solver for accelerators: float32 on the device, exact float64 on the host.

The problem: the Fiedler pair of the *active* patches' graph, i.e. the second largest eigenpair of the
pencil ``W x = μ D x`` with ``W = eps + (1 − eps) E`` (``E`` the 0/1 edge matrix of ``S > tau``),
``D = diag(W 1)`` and ``λ = 1 − μ`` (TokenCut's ``(D − W) x = λ D x``). Removed patches are masked, not
dropped, so every cut of a frame - and every frame of a grid - has the same shapes.

The device only ever computes in float32 (GPUs for robots - Jetson Orin - run float64 at 1/64 of the
float32 rate) and, on CUDA, replays captured graphs:

1. *filter*: block power iteration with the deflated, shifted operator
   ``A = (D^-1/2 W D^-1/2 + diag(m))/2 − u0 u0ᵀ`` (spectrum in [0, 1], masked patches at 0, the trivial
   eigenvector ``u0 ∝ sqrt(d)`` removed), then a CGS2 orthonormalisation of the block;
2. *correct*: Krylov vectors of ``A`` started at the host's residual, orthonormalised against the block.

Both steps send their vectors to the host together with their *exact* products with ``E``: each vector
is rounded to 24-bit fixed point (the vector the host then uses) and split into three integer slices of
at most 8 bits, whose products with the 0/1 matrix ``E`` are sums of integers below ``2^24`` - exact in
float32 arithmetic (and with TF32 or BF16 GEMM inputs). The host recombines them in float64, so it knows
``W V`` and ``D V`` exactly and does Rayleigh-Ritz of the pencil and the residual check in float64 (the
check is the same as a float64 solve's). Failed checks feed their residual to the next correction; after
``max_rounds`` the caller solves densely on the host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._common import to_host

__all__ = ["CutStats", "MaskedCut"]

#: largest patch count whose slice products stay below 2^24 (256 * n)
MAX_PATCHES = 65535
#: replay the device steps as CUDA graphs (read when a solver is built; off = eager kernels, e.g. for an
#: op-level count of the work, which a graph replay hides)
CUDA_GRAPHS = True


@dataclass
class CutStats:
    """Counters of the masked cut solver (per process; for benchmarks and diagnostics)."""

    solves: int = 0  #: cuts solved by the device iteration and the host check
    steps: int = 0  #: correction rounds after the first check, over all solves
    fallbacks: int = 0  #: cuts whose residual check still failed after every round (solved densely)

    def reset(self) -> None:
        self.solves = self.steps = self.fallbacks = 0


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """``2^k`` as float32, exactly (built from the exponent bits; ``k`` int32 in [-126, 127])."""
    return ((k + 127) << 23).view(torch.float32)


def _cgs2(Y: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """Columns of ``Y`` orthonormalised (classical Gram-Schmidt, twice) against ``base`` and each other.

    Exact zeros stay zero (masked rows); a column with nothing left is zero.
    """
    Q = torch.zeros_like(Y)
    for j in range(Y.shape[1]):
        v = Y[:, j]
        for _ in range(2):
            if base is not None:
                v = v - base @ (base.T @ v)
            if j:
                v = v - Q[:, :j] @ (Q[:, :j].T @ v)
        Q[:, j] = v / v.norm().clamp_min(1e-30)
    return Q


class _Pencil:
    """Host side: Rayleigh-Ritz of ``W x = μ D x`` on the active patches, in float64, with exact ``W V``.

    Basis vectors are D-orthogonalised against the trivial eigenvector (all ones: ``W 1 = D 1 = d``).
    """

    def __init__(self, d: np.ndarray, eps: float) -> None:
        self.d, self.eps = d, eps
        self.sqd = np.sqrt(d)
        self.V = np.zeros((d.size, 0))
        self.WV = np.zeros((d.size, 0))

    def add(self, V: np.ndarray, EV: np.ndarray) -> None:
        WV = self.eps * V.sum(0)[None, :] + (1.0 - self.eps) * EV
        coef = (self.d @ V) / self.d.sum()
        self.V = np.hstack([self.V, V - coef[None, :]])
        self.WV = np.hstack([self.WV, WV - self.d[:, None] * coef[None, :]])

    def ritz(self) -> tuple[np.ndarray, float, np.ndarray, float, float]:
        """``(x with xᵀDx = 1, μ, residual W x − μ D x, ½‖D^-1/2 residual‖, gap)`` of the largest Ritz
        pair; ``gap`` estimates the distance from μ to the rest of the spectrum (the next Ritz value
        plus its residual; 0 when unknown)."""
        V, WV = self.V, self.WV
        G = V.T @ (self.d[:, None] * V)
        H = V.T @ WV
        s, U = np.linalg.eigh(0.5 * (G + G.T))
        keep = s > max(float(s[-1]), 0.0) * 1e-12
        if not keep.any():
            return np.zeros(self.d.size), float("nan"), np.zeros(self.d.size), float("inf"), 0.0
        T = U[:, keep] / np.sqrt(s[keep])
        theta, C = np.linalg.eigh(T.T @ (0.5 * (H + H.T)) @ T)
        c = T @ C[:, -1]
        mu = float(theta[-1])
        x = V @ c
        r = WV @ c - mu * self.d * x
        gap = 0.0
        if theta.size > 1:
            c2 = T @ C[:, -2]
            r2 = WV @ c2 - theta[-2] * self.d * (V @ c2)
            gap = max(mu - float(theta[-2]) - float(np.linalg.norm(r2 / self.sqd)), 0.0)
        return x, mu, r, 0.5 * float(np.linalg.norm(r / self.sqd)), gap

    def error_bound(self, res: float, gap: float) -> np.ndarray:
        """Per-entry bound on ``|x − x*|`` (``x*`` the exact eigenvector, same sign and normalisation):
        ``‖y − y*‖ <= √2 ‖M y − μ y‖ / gap`` (Davis-Kahan) in ``y = D^1/2 x``."""
        if gap <= 0.0:
            return np.full(self.d.size, np.inf)
        return np.sqrt(2.0) * (2.0 * res) / gap / self.sqd


class MaskedCut:
    """The Fiedler vector of the active sub-graph of one fixed-size graph (see the module docstring).

    ``load(E, eps)`` sets the graph (``E`` the symmetric boolean edge matrix on the solver's device),
    then ``solve(active, tol)`` per cut. ``block`` vectors are filtered ``power`` times before the first
    check; each correction adds ``krylov`` vectors; ``max_rounds`` corrections at most.
    """

    def __init__(
        self,
        n: int,
        device: torch.device,
        *,
        block: int = 8,
        power: int = 64,
        krylov: int = 8,
        max_rounds: int = 7,
        stats: CutStats | None = None,
    ) -> None:
        if not 3 <= n <= MAX_PATCHES:
            raise ValueError(f"the masked cut handles 3 to {MAX_PATCHES} patches, got {n}")
        f32 = torch.float32
        self.n = n
        self.k = min(block, n - 1)
        self.power = int(power)
        self.krylov = min(krylov, n - 1)
        self.max_rounds = int(max_rounds)
        self.stats = stats if stats is not None else CutStats()
        self.eps = 1e-5
        self.E = torch.zeros(n, n, dtype=f32, device=device)
        self.m = torch.ones(n, dtype=f32, device=device)
        self.eps_t = torch.full((), self.eps, dtype=f32, device=device)
        gen = torch.Generator().manual_seed(0)
        self.G = torch.randn(n, self.k, generator=gen).to(device)
        self.r = torch.zeros(n, dtype=f32, device=device)  # the correction's start (host residual)
        self.A = torch.zeros(n, n, dtype=f32, device=device)
        self.Q = torch.zeros(n, self.k, dtype=f32, device=device)
        self.dis = torch.zeros(n, dtype=f32, device=device)
        self.use_graph = device.type == "cuda" and CUDA_GRAPHS
        self._graphs: dict[str, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._host: dict[str, torch.Tensor] = {}  # pinned copy-back buffers, one per step

    # -- device (float32) ---------------------------------------------------------------------------

    def load(self, E: torch.Tensor, eps: float) -> None:
        """The graph of a new frame: symmetric boolean edges ``E [n, n]`` and the weight of non-edges."""
        self.E.copy_(E)
        self.eps = float(eps)
        self.eps_t.fill_(self.eps)

    def _exact(self, X: torch.Tensor) -> torch.Tensor:
        """``[n + 1, 4q]``: rows ``[Xq | E·s0 | E·s1 | E·s2]`` and a last row with each column's exponent.

        ``Xq = X`` rounded to 24-bit fixed point per column (``q · 2^(e-24)``, exact in float32) and
        ``q = s0 + 256 s1 + 65536 s2`` with integer slices ``|s| <= 256``: ``E·s`` is exact in float32.
        """
        _, e = torch.frexp(X.abs().amax(0))  # max |x| < 2^e (e = 0 for a zero column)
        e = e.clamp(-100, 100)
        q = torch.round(X * _pow2(24 - e))  # |q| <= 2^24: exact integers
        Xq = q * _pow2(e - 24)
        hi = torch.round(q / 256.0)
        s2 = torch.round(hi / 256.0)
        slices = torch.cat([q - 256.0 * hi, hi - 256.0 * s2, s2], 1)
        top = torch.cat([Xq, self.E @ slices], 1)
        tail = torch.cat([e.to(torch.float32), torch.zeros(3 * X.shape[1], device=X.device)])
        return torch.cat([top, tail[None]], 0)

    def _filter(self) -> torch.Tensor:
        m, eps = self.m, self.eps_t
        c = self.E @ m  # edge counts to active patches: exact integers
        d = m * (c + eps * (m.sum() - c))
        dis = torch.where(m > 0, d.clamp_min(1e-30).rsqrt(), torch.zeros_like(d))
        W = torch.where(self.E > 0.5, torch.ones_like(eps), eps)
        u0 = d.sqrt()
        u0 = u0 / u0.norm().clamp_min(1e-30)
        A = 0.5 * (W * dis[:, None] * dis[None, :]) - u0[:, None] * u0[None, :]
        A.diagonal().add_(0.5 * m)
        self.A.copy_(A)
        self.dis.copy_(dis)
        Y = self.G * m[:, None]
        for i in range(self.power):
            Y = A @ Y
            if i % 16 == 15:  # spectrum in [0, 1]: rescale before float32 can underflow
                Y = Y / Y.abs().amax(0, keepdim=True).clamp_min(1e-30)
        Q = _cgs2(Y)
        self.Q.copy_(Q)
        counts = torch.cat([c, torch.zeros(1, device=c.device)])[:, None]
        return torch.cat([self._exact(dis[:, None] * Q), counts], 1)

    def _correct(self) -> torch.Tensor:
        Z = torch.zeros(self.n, self.krylov, device=self.r.device)
        z = self.r
        for j in range(self.krylov):
            for _ in range(2):
                z = z - self.Q @ (self.Q.T @ z)
                if j:
                    z = z - Z[:, :j] @ (Z[:, :j].T @ z)
            z = z / z.norm().clamp_min(1e-30)
            Z[:, j] = z
            if j + 1 < self.krylov:
                z = self.A @ z
        return self._exact(self.dis[:, None] * Z)

    def _capture(self) -> None:
        """Capture both steps as CUDA graphs before the first solve. ``thread_local`` capture: the other
        heads' threads keep using CUDA meanwhile (the default global mode fails their calls)."""
        dev = self.E.device
        bodies = {"filter": self._filter, "correct": self._correct}
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for body in bodies.values():
                body()  # warm-up (cuBLAS handles, workspaces) outside the capture
        torch.cuda.current_stream(dev).wait_stream(side)
        for name, body in bodies.items():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = body()
            self._graphs[name] = (graph, out)

    def _replay(self, name: str, body: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.use_graph:
            return body()
        if not self._graphs:
            self._capture()
        graph, out = self._graphs[name]
        graph.replay()
        return out

    def _fetch(self, name: str) -> np.ndarray:
        """Step ``name`` run on the device, its output in float64 on the host (one copy, one sync)."""
        t = self._replay(name, self._filter if name == "filter" else self._correct)
        buf = self._host.get(name)
        if buf is None and t.device.type == "cuda":
            buf = self._host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return to_host(t, buf=buf).astype(np.float64)

    # -- host (float64) -----------------------------------------------------------------------------

    @staticmethod
    def _unpack(out: np.ndarray, idx: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
        """Basis vectors and their exact products with ``E`` (active rows) from an ``_exact`` block."""
        scale = np.ldexp(1.0, out[-1, :q].astype(np.int64) - 24)
        P = out[idx, q : 2 * q] + 256.0 * out[idx, 2 * q : 3 * q] + 65536.0 * out[idx, 3 * q : 4 * q]
        return out[idx, :q], P * scale[None, :]

    def solve(
        self,
        active: np.ndarray,
        tol: float,
        certify: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    ) -> tuple[np.ndarray, float] | None:
        """``(x [n_active], λ)`` of the active sub-graph (order of ``flatnonzero(active)``, ``xᵀDx = 1``),
        or None when the residual check still fails after every correction round.

        ``certify(x, err)`` (optional) may accept ``x`` before its residual is below ``tol``: ``err`` bounds
        each entry's distance to the exact eigenvector, and the caller accepts when no decision it takes
        from ``x`` can differ within those bounds."""
        act = active.reshape(-1)
        idx = np.flatnonzero(act)
        self.m.copy_(torch.from_numpy(act.astype(np.float32)))
        out = self._fetch("filter")
        c = out[idx, -1]
        pencil = _Pencil(c + self.eps * (idx.size - c), self.eps)
        pencil.add(*self._unpack(out[:, :-1], idx, self.k))
        r_full = np.zeros(self.n, dtype=np.float32)
        for step in range(self.max_rounds + 1):
            x, mu, r, res, gap = pencil.ritz()
            ok = np.isfinite(mu) and res < tol
            if not ok and certify is not None and np.isfinite(mu):
                ok = bool(certify(x, pencil.error_bound(res, gap)))
            if ok:
                self.stats.solves += 1
                self.stats.steps += step
                return x, 1.0 - mu
            if step == self.max_rounds or not np.isfinite(res):
                break
            ry = r / pencil.sqd
            r_full[idx] = ry / max(float(np.linalg.norm(ry)), 1e-300)
            self.r.copy_(torch.from_numpy(r_full))
            pencil.add(*self._unpack(self._fetch("correct"), idx, self.krylov))
        self.stats.fallbacks += 1
        return None


_CACHE: dict[tuple, tuple[MaskedCut, threading.Lock]] = {}
_CACHE_LOCK = threading.Lock()


def cached_cut(n: int, device: torch.device, **kwargs: int | CutStats) -> tuple[MaskedCut, threading.Lock]:
    """The (graph-captured on CUDA) solver for ``n`` patches on ``device``, built once and reused, with
    the lock its user must hold while its buffers hold a frame."""
    key = (n, str(device), tuple(sorted((k, v) for k, v in kwargs.items() if k != "stats")))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            if len(_CACHE) >= 8:  # a few grids in use at a time; drop the oldest
                _CACHE.pop(next(iter(_CACHE)))
            hit = _CACHE[key] = (MaskedCut(n, device, **kwargs), threading.Lock())
        return hit


def clear_cache() -> None:
    """Drop every cached solver (their CUDA graphs and buffers)."""
    with _CACHE_LOCK:
        _CACHE.clear()
