"""Canonical-mesh bounding volume hierarchies and their batched traversal for the torch renderer.

Each class mesh (local frame, float32) gets a balanced binary tree by recursive median splits of the
triangle centroids; the tree is stored level by level (axis-aligned boxes per node) with padded leaves
of at most ``leaf_cap`` triangles. Traversal is breadth-wise over many (ray, node) candidates at once:
each round tests all ``2**step`` descendants ``step`` levels down and keeps the boxes hit, so there is
no per-ray loop and the work per ray is logarithmic in the triangle count. Candidates are processed in
slices of at most ``max_elems`` box/triangle tests, which bounds peak memory.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from dinov3_ros.synthetic.shapes import MESH_CLASSES, canonical_mesh
from dinov3_ros.synthetic.torch_intersect import MISS_KEY, make_keys, ray_boxes, ray_triangle

#: target triangles per leaf and binary levels descended per traversal round
LEAF_SIZE, STEP = 8, 3
_BOX_EPS = 1e-5  # box padding in local units (canonical meshes have unit extent)


@dataclass
class MeshTree:
    """A class mesh's BVH on one device (see module doc)."""

    depth: int
    lo: list[torch.Tensor]  # per level d: [3, 2**d] float32
    hi: list[torch.Tensor]
    v0: torch.Tensor  # [3, 2**depth, leaf_cap] float32 (padding: degenerate triangles)
    e1: torch.Tensor
    e2: torch.Tensor
    tri: torch.Tensor  # [2**depth, leaf_cap] int64 triangle index (-1 = padding)
    vertices: torch.Tensor  # [V, 3] float64 canonical vertices
    faces: torch.Tensor  # [n_tri, 3] int64

    @property
    def leaf_cap(self) -> int:
        return int(self.tri.shape[1])


def _leaves(centroids: np.ndarray, depth: int) -> list[np.ndarray]:
    """Triangle index sets of the ``2**depth`` leaves, left to right (median split on the longest axis)."""
    parts = [np.arange(len(centroids))]
    for _ in range(depth):
        nxt = []
        for idx in parts:
            c = centroids[idx]
            axis = int(np.argmax(c.max(0) - c.min(0)))
            order = idx[np.argsort(c[:, axis], kind="stable")]
            half = (len(order) + 1) // 2
            nxt += [order[:half], order[half:]]
        parts = nxt
    return parts


def build_tree_arrays(vertices: np.ndarray, triangles: np.ndarray, leaf_size: int = LEAF_SIZE) -> dict:
    """Numpy arrays of a :class:`MeshTree` for one mesh (local frame)."""
    v32 = np.asarray(vertices, np.float32)
    f = np.asarray(triangles, np.int64)
    n = len(f)
    depth = max(0, math.ceil(math.log2(max(1.0, n / leaf_size))))
    while depth and n < 2**depth:  # every leaf keeps at least one triangle
        depth -= 1
    leaves = _leaves(v32[f].astype(np.float64).mean(1), depth)
    cap = max(len(x) for x in leaves)
    L = len(leaves)
    v0 = np.zeros((L, cap, 3), np.float32)
    e1, e2 = v0.copy(), v0.copy()
    tri = np.full((L, cap), -1, np.int64)
    lo = np.empty((L, 3), np.float64)
    hi = np.empty((L, 3), np.float64)
    for i, idx in enumerate(leaves):
        p = v32[f[idx]]  # [k, 3, 3]
        v0[i, : len(idx)] = p[:, 0]
        e1[i, : len(idx)] = p[:, 1] - p[:, 0]
        e2[i, : len(idx)] = p[:, 2] - p[:, 0]
        tri[i, : len(idx)] = idx
        lo[i], hi[i] = p.reshape(-1, 3).min(0), p.reshape(-1, 3).max(0)
    los, his = [lo], [hi]
    while len(los[0]) > 1:
        los.insert(0, np.minimum(los[0][0::2], los[0][1::2]))
        his.insert(0, np.maximum(his[0][0::2], his[0][1::2]))
    return {
        "depth": depth,
        "lo": [np.ascontiguousarray((x - _BOX_EPS).astype(np.float32).T) for x in los],
        "hi": [np.ascontiguousarray((x + _BOX_EPS).astype(np.float32).T) for x in his],
        "v0": np.ascontiguousarray(v0.transpose(2, 0, 1)),
        "e1": np.ascontiguousarray(e1.transpose(2, 0, 1)),
        "e2": np.ascontiguousarray(e2.transpose(2, 0, 1)),
        "tri": tri,
        "vertices": np.asarray(vertices, np.float64),
        "faces": f,
    }


@functools.cache
def _tree_arrays(class_id: int) -> dict:
    return build_tree_arrays(*canonical_mesh(class_id))


_DEVICE_TREES: dict[str, dict[int, MeshTree]] = {}


def mesh_trees(device: torch.device | str) -> dict[int, MeshTree]:
    """The BVH of every mesh class on ``device`` (built and uploaded once per device)."""
    key = str(torch.device(device))
    trees = _DEVICE_TREES.get(key)
    if trees is None:
        trees = {}
        for c in MESH_CLASSES:
            a = _tree_arrays(c)

            def dev(x):
                return torch.from_numpy(np.array(x)).to(device)

            trees[c] = MeshTree(
                depth=a["depth"],
                lo=[dev(x) for x in a["lo"]],
                hi=[dev(x) for x in a["hi"]],
                **{k: dev(a[k]) for k in ("v0", "e1", "e2", "tri", "vertices", "faces")},
            )
        _DEVICE_TREES[key] = trees
    return trees


def _slices(n: int, size: int):
    size = max(1, int(size))
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def intersect_tree(tree: MeshTree, o: torch.Tensor, d: torch.Tensor, max_elems: int) -> torch.Tensor:
    """Closest hit of each ray ``o + t d`` (local frame, ``[3,P]`` float32) with the tree's mesh.

    Returns hit keys ``[P]`` whose code is the triangle index (:data:`MISS_KEY` on a miss).
    """
    P = o.shape[1]
    dev = o.device
    keys = torch.full((P,), MISS_KEY, dtype=torch.int64, device=dev)
    if P == 0:
        return keys
    inv_d = 1.0 / d
    stack = [(0, torch.arange(P, device=dev), torch.zeros(P, dtype=torch.int64, device=dev))]
    while stack:
        depth, pi, ni = stack.pop()
        if pi.numel() == 0:
            continue
        if depth == tree.depth:
            for sl in _slices(pi.numel(), max_elems // tree.leaf_cap):
                p, n = pi[sl], ni[sl]
                t = ray_triangle(o[:, p, None], d[:, p, None], tree.v0[:, n], tree.e1[:, n], tree.e2[:, n])
                t_min, j = t.min(1)
                hit = torch.isfinite(t_min)
                k = make_keys(t_min[hit], tree.tri[n[hit], j[hit]])
                keys.scatter_reduce_(0, p[hit], k, "amin")
            continue
        nd = min(depth + STEP, tree.depth)
        k = 1 << (nd - depth)
        sub = torch.arange(k, device=dev)
        for sl in _slices(pi.numel(), max_elems // k):
            p, n = pi[sl], ni[sl]
            child = n[:, None] * k + sub
            hit = ray_boxes(o[:, p, None], inv_d[:, p, None], tree.lo[nd][:, child], tree.hi[nd][:, child])
            qi, ci = hit.nonzero(as_tuple=True)
            stack.append((nd, p[qi], child[qi, ci]))
    return keys
