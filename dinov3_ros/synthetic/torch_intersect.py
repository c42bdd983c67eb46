"""Vectorised float32 ray intersection primitives and closest-hit keys for the torch renderer.

Vectors are stored component-first (``[3, ...]``: ``x[0]``, ``x[1]``, ``x[2]`` are contiguous), which
keeps every elementwise kernel contiguous on CPU and GPU; rotations are ``[3, 3, ...]`` (``R[j, i]``).

A *hit key* packs a hit into one int64 whose order is the order of the hit distances: the upper 32
bits are the IEEE bits of ``t >= 0`` (monotonic for non-negative floats, ``+inf`` = miss), the lower
32 bits a non-negative code (what was hit). The closest hit of many candidates per ray is then a
min-reduction of their keys, on any device, independent of the candidates' order.
"""

from __future__ import annotations

import torch

_INF_BITS = 0x7F800000
CODE_MASK = 0xFFFFFFFF
#: the key of "no hit" (t = +inf, code = 2**31 - 1)
MISS_KEY = (_INF_BITS << 32) | 0x7FFFFFFF


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the leading axis (size 3), summed left to right."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the leading axis (broadcasting)."""
    return torch.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def rotate(R: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``R @ x``: ``y_j = R[j,0] x_0 + R[j,1] x_1 + R[j,2] x_2`` (left to right; batch independent)."""
    return torch.stack([R[j, 0] * x[0] + R[j, 1] * x[1] + R[j, 2] * x[2] for j in range(3)])


def rotate_t(R: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``R^T @ x``: ``y_j = x_0 R[0,j] + x_1 R[1,j] + x_2 R[2,j]`` (left to right; batch independent)."""
    return torch.stack([x[0] * R[0, j] + x[1] * R[1, j] + x[2] * R[2, j] for j in range(3)])


def make_keys(t: torch.Tensor, code: torch.Tensor | int) -> torch.Tensor:
    """Hit keys of distances ``t`` (float32, ``> 0`` or ``+inf``) and codes (``0 <= code < 2**31``)."""
    bits = t.contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | code


def split_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t float32, code int64)`` of hit keys."""
    t = (keys >> 32).to(torch.int32).view(torch.float32)
    return t, keys & CODE_MASK


def _inf_where_not(ok: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, t, torch.full_like(t, float("inf")))


def ray_parallelogram(
    o: torch.Tensor, d: torch.Tensor, v0: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor
) -> torch.Tensor:
    """Distance along ``d`` to the parallelogram ``v0 + a e1 + b e2`` (a, b in [0, 1]); ``inf`` on a miss.

    Two-sided Moller-Trumbore with the triangle's ``u + v <= 1`` bound replaced by ``u, v <= 1``.
    """
    pvec = cross(d, e2)
    det = dot(e1, pvec)
    tvec = o - v0
    u = dot(tvec, pvec) / det
    qvec = cross(tvec, e1)
    v = dot(d, qvec) / det
    t = dot(e2, qvec) / det
    return _inf_where_not((det != 0) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1) & (t > 0), t)


def ray_triangle(
    o: torch.Tensor, d: torch.Tensor, v0: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor
) -> torch.Tensor:
    """Distance along ``d`` to the triangle ``(v0, v0 + e1, v0 + e2)`` (two-sided); ``inf`` on a miss."""
    pvec = cross(d, e2)
    det = dot(e1, pvec)
    tvec = o - v0
    u = dot(tvec, pvec) / det
    qvec = cross(tvec, e1)
    v = dot(d, qvec) / det
    t = dot(e2, qvec) / det
    return _inf_where_not((det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0), t)


def ray_axis_rectangle(
    o: torch.Tensor, d: torch.Tensor, axis: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """Distance along rays ``d [3,F,N]`` from origins ``o [3,F,1]`` to the axis-aligned rectangles
    ``[lo, hi]`` (``[3,F,1]``, flat along ``axis [F]``: ``lo[axis] == hi[axis]``); ``inf`` on a miss.

    Points within a tiny tolerance outside a rectangle count as hits, so rays through a shared edge
    of two rectangles never slip through (the closest hit is kept either way).
    """
    f = torch.arange(axis.shape[0], device=axis.device)
    t = (lo[axis, f] - o[axis, f]) / d[axis, f]
    eps = 2e-6 * (1.0 + torch.maximum(lo.abs(), hi.abs()).amax(0))
    inside = t > 0
    for k in range(3):
        p = o[k] + t * d[k]
        inside &= (p >= lo[k] - eps) & (p <= hi[k] + eps)
    return _inf_where_not(inside, t)


def ray_sphere(oc: torch.Tensor, d: torch.Tensor, r2: torch.Tensor, t_min: float = 1e-6) -> torch.Tensor:
    """Nearest distance ``> t_min`` along ``d`` to the sphere of squared radius ``r2`` centred at
    ``origin - oc``; ``inf`` on a miss. Cancellation-free form (discriminant from a cross product)."""
    a = dot(d, d)
    b = dot(d, oc)
    cc = dot(oc, oc) - r2
    x = cross(d, oc)
    disc = a * r2 - dot(x, x)
    sq = torch.sqrt(torch.clamp(disc, min=0.0))
    q = -(b + torch.where(b >= 0, sq, -sq))  # |q| = |b| + sq, no cancellation
    q = torch.where(q == 0, torch.full_like(q, 1e-30), q)
    r_a, r_b = q / a, cc / q
    near, far = torch.minimum(r_a, r_b), torch.maximum(r_a, r_b)
    inf = torch.full_like(near, float("inf"))
    t = torch.where(near > t_min, near, torch.where(far > t_min, far, inf))
    return torch.where(disc >= 0, t, inf)


def hits_sphere_bound(oc: torch.Tensor, d: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Whether rays may hit a bounding sphere (conservative: the line meets it and it is not behind)."""
    x = cross(d, oc)
    meets = dot(x, x) <= r2 * dot(d, d)
    return meets & ((dot(d, oc) < 0) | (dot(oc, oc) <= r2))


def ray_boxes(o: torch.Tensor, inv_d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Slab test: whether rays ``o + t d`` (``t >= 0``) meet the boxes ``[lo, hi]`` (broadcasting)."""
    t_near = t_far = None
    for k in range(3):
        t1 = (lo[k] - o[k]) * inv_d[k]
        t2 = (hi[k] - o[k]) * inv_d[k]
        near, far = torch.fmin(t1, t2), torch.fmax(t1, t2)
        t_near = near if t_near is None else torch.fmax(t_near, near)
        t_far = far if t_far is None else torch.fmin(t_far, far)
    return (t_far >= t_near) & (t_far >= 0)


def _fms(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b - c`` rounded once to float32 (a fused multiply-subtract, emulated in float64)."""
    return (a.double() * b.double() - c.double()).float()


def robust_triangle_normal(
    v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, o: torch.Tensor
) -> torch.Tensor:
    """Unit geometric normal ``[3, ...]`` of triangles as a robust (Pluecker) float32 ray caster computes
    it: edges of the vertices relative to the ray origin ``o``, per component the cross product of the
    edge pair with the smaller rounding error (fused multiply-subtract), then ``n * (1 / |n|)``.

    This is open3d's ``primitive_normals`` bit for bit on an FMA-capable CPU; the triplanar texture
    axis of faces whose normal has tied components (octahedra) depends on those bits.
    """
    a0, a1, a2 = v0 - o, v1 - o, v2 - o
    e0, e1, e2 = a2 - a0, a0 - a1, a1 - a2
    ab = (e0[2] * e1[1], e0[0] * e1[2], e0[1] * e1[0])
    bc = (e1[2] * e2[1], e1[0] * e2[2], e1[1] * e2[0])
    x_ab = (_fms(e0[1], e1[2], ab[0]), _fms(e0[2], e1[0], ab[1]), _fms(e0[0], e1[1], ab[2]))
    x_bc = (_fms(e1[1], e2[2], bc[0]), _fms(e1[2], e2[0], bc[1]), _fms(e1[0], e2[1], bc[2]))
    n = torch.stack([torch.where(ab[k].abs() < bc[k].abs(), x_ab[k], x_bc[k]) for k in range(3)])
    inv = 1.0 / torch.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    return n * inv
