"""Batched ray-cast rendering of packed scenes in torch (CPU or CUDA): the images of ``Scene.render``.

``render(packed, scene_ids, T_world_cam, K, height, width)`` renders F frames, each of any packed
scene with its own pose and intrinsics, in one vectorised pass (no loop over frames or rays):

* room quads: parallelogram tests against every ray of the frames (a few per scene);
* spheres: analytic, as in ``Scene.cast``;
* class meshes: for every (frame, object) the rays inside the object's bounding sphere are moved into
  the object's local frame and traced through the class's canonical-mesh BVH (:mod:`torch_mesh`),
  all objects of a class at once;
* the closest hit per ray is a min-reduction of int64 hit keys (:mod:`torch_intersect`);
* texturing and shading repeat ``Scene._shade``'s float32 arithmetic (:mod:`torch_shade`).

Frames are processed in chunks of at most ``chunk_rays`` rays and mesh candidates in slices of at most
``max_elems`` tests, so peak memory is bounded whatever F is. Conventions are those of
:class:`frame.SynthFrame` (z-depth, 0 = miss; camera-frame normals facing the camera).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dinov3_ros.synthetic.packing import KIND_MESH, KIND_QUAD, KIND_SPHERE
from dinov3_ros.synthetic.shapes import MESH_CLASSES
from dinov3_ros.synthetic.torch_intersect import (
    MISS_KEY,
    dot,
    hits_sphere_bound,
    make_keys,
    ray_axis_rectangle,
    ray_parallelogram,
    ray_sphere,
    robust_triangle_normal,
    rotate,
    rotate_t,
    split_keys,
)
from dinov3_ros.synthetic.torch_mesh import intersect_tree, mesh_trees
from dinov3_ros.synthetic.torch_pack import PackedScenes
from dinov3_ros.synthetic.torch_shade import shade, to_uint8

#: default bounds on rays per chunk and on box/triangle tests per slice (peak memory ~ a few 100 MB)
CHUNK_RAYS = 1 << 20
MAX_ELEMS = 1 << 22
_SLOT_SHIFT = 16  # hit code = slot << 16 | triangle


@dataclass
class RenderOut:
    """Rendered frames: ``rgb [F,H,W,3] uint8``, ``depth [F,H,W] float32`` (z, 0 = miss),
    ``instances [F,H,W] int32``, ``normals [F,H,W,3] float32`` (camera frame, facing it, 0 on a miss)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    instances: torch.Tensor
    normals: torch.Tensor


def camera_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-frame ray directions ``[F, H*W, 3]`` float32 through pixel centres (z component 1)."""
    dev = K.device
    K = K.to(torch.float32)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=dev),
        torch.arange(width, dtype=torch.float32, device=dev),
        indexing="ij",
    )
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    x = (u - K[:, 0, 2, None]) / K[:, 0, 0, None]
    y = (v - K[:, 1, 2, None]) / K[:, 1, 1, None]
    return torch.stack([x, y, torch.ones_like(x)], -1)


class _Chunk:
    """Rays of F frames, their closest hits so far, and per-(frame, slot) tables."""

    def __init__(self, packed: PackedScenes, sid: torch.Tensor, T: torch.Tensor, K: torch.Tensor, H, W):
        self.p, self.sid, self.G = packed, sid, packed.n_slots
        self.F, self.HW = int(sid.shape[0]), int(H) * int(W)
        T = T.to(torch.float64)
        self.R = T[:, :3, :3].to(torch.float32)
        self.o64 = T[:, :3, 3]
        self.o32 = self.o64.to(torch.float32)
        self.fx = K[:, 0, 0].to(torch.float32)
        self.d = rotate(self.R[:, None], camera_rays(K, H, W)).contiguous()  # [F, HW, 3] world
        self.best = torch.full((self.F, self.HW), MISS_KEY, dtype=torch.int64, device=sid.device)
        # origin - translation per (frame, slot), float64 then float32: with the float64 translation
        # (intersections) and with the float32 one (texture coordinates, as Scene._shade)
        rows = sid[:, None] * self.G + torch.arange(self.G, device=sid.device)
        t64 = packed.slots["t"][rows]
        self.oc = (self.o64[:, None] - t64).to(torch.float32).reshape(-1, 3)
        self.oc_tex = (
            (self.o64[:, None] - t64.to(torch.float32).to(torch.float64)).to(torch.float32).reshape(-1, 3)
        )

    def rows(self, frames: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Global slot-table rows of slot numbers ``slot`` of frames ``frames``."""
        return self.sid[frames] * self.G + slot

    def fold(self, ray_idx: torch.Tensor, keys: torch.Tensor) -> None:
        """Keep the closer of the current and the new hits of rays ``ray_idx`` (flat indices)."""
        self.best.view(-1).scatter_reduce_(0, ray_idx, keys, "amin")

    def fold_frames(self, frames: torch.Tensor, keys: torch.Tensor) -> None:
        """Keep the closer hits for all rays of ``frames`` (``keys [len(frames), HW]``)."""
        self.best[frames] = torch.minimum(self.best[frames], keys)

    def slot_lists(self, name: str):
        """``(frames, slots, rows)`` of every used entry of a per-scene slot list, column by column."""
        lst = self.p.lists[name][self.sid]  # [F, M]
        for m in range(lst.shape[1]):
            fr = torch.nonzero(lst[:, m] >= 0).squeeze(1)
            if fr.numel():
                slot = lst[fr, m]
                yield fr, slot, self.rows(fr, slot)


def _quads(c: _Chunk) -> None:
    q = c.p.slots
    for fr, slot, rows in c.slot_lists("quads"):
        axis = q["quad_axis"][rows]
        aa = axis >= 0
        t = torch.empty((fr.numel(), c.HW), dtype=torch.float32, device=fr.device)
        if aa.any():
            f, r, a = fr[aa], rows[aa], axis[aa]
            t[aa] = ray_axis_rectangle(c.o32[f], c.d[f], a, q["quad_lo"][r], q["quad_hi"][r])
        if not aa.all():
            f, r = fr[~aa], rows[~aa]
            t[~aa] = ray_parallelogram(
                c.o32[f, None], c.d[f], q["quad_v"][r, None, 0], q["quad_e1"][r, None], q["quad_e2"][r, None]
            )
        c.fold_frames(fr, make_keys(t, (slot << _SLOT_SHIFT)[:, None]))


def _spheres(c: _Chunk) -> None:
    for fr, slot, rows in c.slot_lists("spheres"):
        r2 = (c.p.slots["radius"][rows] ** 2).to(torch.float32)[:, None]
        t = ray_sphere(c.oc[fr * c.G + slot][:, None], c.d[fr], r2)
        c.fold_frames(fr, make_keys(t, (slot << _SLOT_SHIFT)[:, None]))


def _mesh_class(c: _Chunk, cls: int, max_elems: int) -> None:
    """All objects of one mesh class in the chunk: bounding-sphere cull, local frame, BVH."""
    ray_l, slot_l, o_l, d_l = [], [], [], []
    S = c.p.slots
    for fr, slot, rows in c.slot_lists(f"mesh{cls}"):
        oc64 = c.o64[fr] - S["t"][rows]
        # ray origins in the local frames, x_l = R^T (x - t) / s, per (frame, object) in float64
        ol = (rotate_t(S["R64"][rows], oc64) * (1.0 / S["scale"][rows])[:, None]).float()
        oc = oc64.float()
        r2 = ((S["radius"][rows] * (1.0 + 1e-4) + 1e-6) ** 2).float()
        for sl in _frame_slices(fr.numel(), c.HW, max_elems):
            hit = hits_sphere_bound(oc[sl, None], c.d[fr[sl]], r2[sl, None])
            fi, pix = torch.nonzero(hit, as_tuple=True)
            if fi.numel() == 0:
                continue
            frames, rws = fr[sl][fi], rows[sl][fi]
            dl = rotate_t(S["R"][rws], c.d[frames, pix]) * S["inv_s"][rws][:, None]
            ray_l.append(frames * c.HW + pix)
            slot_l.append(slot[sl][fi])
            o_l.append(ol[sl][fi])
            d_l.append(dl)
    if not ray_l:
        return
    ray, slot = torch.cat(ray_l), torch.cat(slot_l)
    keys = intersect_tree(mesh_trees(c.d.device)[cls], torch.cat(o_l), torch.cat(d_l), max_elems)
    hit = keys != MISS_KEY
    c.fold(ray[hit], keys[hit] | (slot[hit] << _SLOT_SHIFT))


def _frame_slices(n_frames: int, hw: int, max_elems: int):
    step = max(1, max_elems // max(1, hw))
    for s in range(0, n_frames, step):
        yield slice(s, min(n_frames, s + step))


def _normals(c: _Chunk, rows, fg, fr, t, slot_tri) -> tuple[torch.Tensor, torch.Tensor]:
    """World normals of hits, facing the camera, and the hits' ray directions.

    Mesh and quad normals are computed from the triangles' float32 world vertices as the open3d
    renderer sees them (:func:`robust_triangle_normal`); sphere normals analytically.
    """
    S = c.p.slots
    kind = S["kind"][rows]
    d = c.d.reshape(-1, 3)[fr[1]]
    o32 = c.o64[fr[0]].to(torch.float32)
    n = torch.zeros_like(d)
    quad = kind == KIND_QUAD
    if quad.any():  # one normal per (frame, quad)
        fs = fg[quad]
        uniq, inv = torch.unique(fs, return_inverse=True)
        qv = S["quad_v"][c.rows(uniq // c.G, uniq % c.G)]
        n[quad] = robust_triangle_normal(qv[:, 0], qv[:, 1], qv[:, 2], c.o32[uniq // c.G])[inv]
    sph = kind == KIND_SPHERE
    if sph.any():
        r = S["radius"][rows[sph]].to(torch.float32)
        n[sph] = (c.oc[fg[sph]] + t[sph, None] * d[sph]) / r[:, None]
    trees = mesh_trees(c.d.device)
    for k in MESH_CLASSES:
        sel = (kind == KIND_MESH) & (S["cls"][rows] == k)
        if not sel.any():
            continue
        rs = rows[sel]
        v = trees[k].vertices[trees[k].faces[slot_tri[sel]]]  # [N, 3, 3] canonical, float64
        # world vertices as Scene builds them: (scale * v) @ R^T + t, then float32
        w = rotate(S["R64"][rs, None], S["scale"][rs, None, None] * v) + S["t"][rs, None]
        w = w.to(torch.float32)
        n[sel] = robust_triangle_normal(w[:, 0], w[:, 1], w[:, 2], o32[sel])
    flip = dot(n, d) > 0
    n = torch.where(flip[:, None], -n, n)
    return n, d


def _shade_chunk(c: _Chunk) -> dict[str, torch.Tensor]:
    t, code = split_keys(c.best.view(-1))
    hit = torch.isfinite(t)
    ray = torch.nonzero(hit).squeeze(1)
    frame = ray // c.HW
    slot = code[ray] >> _SLOT_SHIFT
    tri = code[ray] & ((1 << _SLOT_SHIFT) - 1)
    rows = c.sid[frame] * c.G + slot
    th = t[ray]
    fg = frame * c.G + slot
    n, d = _normals(c, rows, fg, (frame, ray), th, tri)
    S, L = c.p.slots, c.p.scenes
    q = c.oc_tex[fg] + th[:, None] * d
    geo = {k: S[k][rows] for k in ("R", "inv_s", "tex", "rep", "m_per_rep", "tint", "map")}
    sc = c.sid[frame]
    light = {"dir": L["light"][sc], "ambient": L["ambient"][sc], "sun": L["sun"][sc], "head": L["head"][sc]}
    N = c.F * c.HW
    color = L["background"][c.sid].repeat_interleave(c.HW, 0)
    color[ray] = shade(geo, q, th, d, n, c.fx[frame], light)
    depth = torch.zeros(N, dtype=torch.float32, device=t.device)
    depth[ray] = th
    inst = torch.zeros(N, dtype=torch.int32, device=t.device)
    inst[ray] = S["inst"][rows]
    normals = torch.zeros((N, 3), dtype=torch.float32, device=t.device)
    # camera frame: n_cam_j = sum_i n_i R[i, j]
    normals[ray] = rotate_t(c.R[frame], n)
    return {"rgb": to_uint8(color), "depth": depth, "instances": inst, "normals": normals}


def _check(packed: PackedScenes, scene_ids, T, K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dev = packed.device
    sid = torch.as_tensor(scene_ids, device=dev).long().reshape(-1)
    T = torch.as_tensor(T, device=dev)
    K = torch.as_tensor(K, device=dev)
    F = sid.shape[0]
    if T.shape != (F, 4, 4) or K.shape != (F, 3, 3):
        raise ValueError(
            f"need T_world_cam [F,4,4] and K [F,3,3] for F={F} frames, got {tuple(T.shape)}, {tuple(K.shape)}"
        )
    if F and (int(sid.min()) < 0 or int(sid.max()) >= packed.n_scenes):
        raise ValueError(f"scene ids must be in 0..{packed.n_scenes - 1}")
    return sid, T, K


@torch.no_grad()
def render(
    packed: PackedScenes,
    scene_ids,
    T_world_cam,
    K,
    height: int,
    width: int,
    *,
    chunk_rays: int = CHUNK_RAYS,
    max_elems: int = MAX_ELEMS,
) -> RenderOut:
    """Render frame ``f`` of scene ``scene_ids[f]`` from ``T_world_cam[f]`` with intrinsics ``K[f]``."""
    sid, T, K = _check(packed, scene_ids, T_world_cam, K)
    H, W = int(height), int(width)
    F, dev = sid.shape[0], packed.device
    out = RenderOut(
        rgb=torch.empty((F, H, W, 3), dtype=torch.uint8, device=dev),
        depth=torch.empty((F, H, W), dtype=torch.float32, device=dev),
        instances=torch.empty((F, H, W), dtype=torch.int32, device=dev),
        normals=torch.empty((F, H, W, 3), dtype=torch.float32, device=dev),
    )
    step = max(1, chunk_rays // (H * W))
    for s in range(0, F, step):
        e = min(F, s + step)
        c = _Chunk(packed, sid[s:e], T[s:e], K[s:e], H, W)
        _quads(c)
        _spheres(c)
        for cls in MESH_CLASSES:
            _mesh_class(c, cls, max_elems)
        res = _shade_chunk(c)
        for k, x in res.items():
            getattr(out, k)[s:e] = x.reshape(e - s, H, W, *x.shape[1:])
    return out
