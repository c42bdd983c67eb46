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

import numpy as np
import torch

from dinov3_ros.synthetic.packing import KIND_MESH, KIND_QUAD, KIND_SPHERE, MAP_SPHERICAL
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

#: default bounds on rays per chunk and on box/triangle tests per slice, per device type: peak memory
#: is about 0.5 KB per ray of a chunk (CUDA default: ~4 GB; elsewhere ~0.5 GB)
CHUNK_RAYS = {"cuda": 1 << 23, "default": 1 << 20}
MAX_ELEMS = {"cuda": 1 << 24, "default": 1 << 22}
_SLOT_SHIFT = 16  # hit code = slot << 16 | triangle
_TILE = 8  # pixel tiles of the bounding-sphere cull


@dataclass
class RenderOut:
    """Rendered frames: ``rgb [F,H,W,3] uint8``, ``depth [F,H,W] float32`` (z, 0 = miss),
    ``instances [F,H,W] int32``, ``normals [F,H,W,3] float32`` (camera frame, facing it, 0 on a miss)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    instances: torch.Tensor
    normals: torch.Tensor


def camera_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-frame ray directions ``[3, F, H*W]`` float32 through pixel centres (z component 1)."""
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
    return torch.stack([x, y, torch.ones_like(x)])


# rows of the per-(frame, slot) float table
_R, _INV_S, _REP, _MPR, _TINT, _OC, _OC_TEX, _RAD, _QN = 0, 9, 10, 11, 12, 15, 18, 21, 22
# rows of the per-(frame, slot) int table
_KIND, _CLS, _TEX, _INST, _MAP = range(5)
# rows of the per-frame table
_O, _FX, _LIGHT, _AMB, _SUN, _HEAD, _RCAM = 0, 3, 4, 7, 8, 9, 10


class _Chunk:
    """Rays of F frames (component-first ``d [3, F, HW]``), their closest hits so far (``best``) and
    the tables the hits gather from: per (frame, slot) ``tab``/``itab`` (row ``f * G + g``), per frame
    ``ftab``."""

    def __init__(self, packed: PackedScenes, sid, sid_host, T: torch.Tensor, K: torch.Tensor, H, W):
        self.p, self.sid, self.sid_host, self.G = packed, sid, sid_host, packed.n_slots
        self.F, self.HW = int(sid.shape[0]), int(H) * int(W)
        dev = sid.device
        T = T.to(torch.float64)
        R = T[:, :3, :3].to(torch.float32)
        self.o64 = T[:, :3, 3]
        self.o32 = self.o64.to(torch.float32).T.contiguous()  # [3, F]
        self.d = rotate(R.permute(1, 2, 0)[..., None], camera_rays(K, H, W)).contiguous()  # world
        self.best = torch.full((self.F, self.HW), MISS_KEY, dtype=torch.int64, device=dev)
        L = packed.scenes
        light = [L["light"][sid].T, L["ambient"][sid][None], L["sun"][sid][None], L["head"][sid][None]]
        f32 = [self.o32, K[:, 0, 0].to(torch.float32)[None], *light, R.reshape(-1, 9).T]
        self.ftab = torch.cat(f32).contiguous()
        self._slot_tables()
        self._tiles(K.to(torch.float32), R, int(H), int(W))

    def _slot_tables(self) -> None:
        S, G = self.p.slots, self.G
        rows = (self.sid[:, None] * G + torch.arange(G, device=self.sid.device)).reshape(-1)
        t64 = S["t"][rows]
        o64 = self.o64.repeat_interleave(G, 0)
        # origin - translation, float64 then float32: with the float64 translation (intersections)
        # and with the float32 one (texture coordinates, as Scene._shade computes them)
        oc = (o64 - t64).to(torch.float32)
        oc_tex = (o64 - t64.to(torch.float32).to(torch.float64)).to(torch.float32)
        kind = S["kind"][rows]
        qn = torch.zeros_like(oc)
        quad = kind == KIND_QUAD
        if bool(quad.any()):  # quad normals: one per (frame, quad), as the mesh ray caster computes them
            qv = S["quad_v"][rows[quad]].permute(2, 1, 0)  # [3, 4, Q]
            o = self.o32.repeat_interleave(G, 1)[:, quad]
            qn[quad] = robust_triangle_normal(qv[:, 0], qv[:, 1], qv[:, 2], o).T
        cols = [S["R"][rows].reshape(-1, 9), S["inv_s"][rows, None], S["rep"][rows, None]]
        cols += [S["m_per_rep"][rows, None], S["tint"][rows], oc, oc_tex, S["radius"][rows, None].float(), qn]
        self.tab = torch.cat(cols, 1).T.contiguous()
        ints = [kind, S["cls"][rows], S["tex"][rows], S["inst"][rows], S["map"][rows]]
        self.itab = torch.stack([x.to(torch.int32) for x in ints])
        # which kinds occur (host side: skips work and device syncs later)
        lists, sid = self.p.host_lists, self.sid_host
        self.has_spheres = bool((lists["spheres"][sid] >= 0).any())
        self.mesh_classes = [c for c in MESH_CLASSES if (lists[f"mesh{c}"][sid] >= 0).any()]

    def _tiles(self, K: torch.Tensor, R: torch.Tensor, H: int, W: int) -> None:
        """Bounding cones of ``_TILE`` x ``_TILE`` pixel tiles (world axes ``[3, F, n]``, half-angles
        ``[F, n]``) and each tile's flat pixel indices ``[n, _TILE**2]`` (``-1`` outside the image)."""
        dev = K.device
        u0 = torch.arange(0, W, _TILE, device=dev, dtype=torch.float32)
        v0 = torch.arange(0, H, _TILE, device=dev, dtype=torch.float32)
        u1, v1 = torch.clamp(u0 + _TILE - 1, max=W - 1), torch.clamp(v0 + _TILE - 1, max=H - 1)
        fx, fy, cx, cy = (K[:, i, j, None] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
        x0, x1 = ((u - cx) / fx for u in (u0, u1))  # [F, ntx]
        y0, y1 = ((v - cy) / fy for v in (v0, v1))  # [F, nty]
        nty, ntx = v0.numel(), u0.numel()
        X = [x[:, None, :].expand(-1, nty, -1).reshape(self.F, -1) for x in (x0, x1)]
        Y = [y[:, :, None].expand(-1, -1, ntx).reshape(self.F, -1) for y in (y0, y1)]

        def unit(x, y):
            n = torch.sqrt(x * x + y * y + 1.0)
            return torch.stack([x / n, y / n, 1.0 / n])

        axis = unit((X[0] + X[1]) / 2, (Y[0] + Y[1]) / 2)
        cos_half = torch.stack([dot(axis, unit(x, y)) for x in X for y in Y]).amin(0)
        self.tile_half = torch.acos(torch.clamp(cos_half, -1.0, 1.0))
        self.tile_axis = rotate(R.permute(1, 2, 0)[..., None], axis)
        du = torch.arange(_TILE, device=dev)
        u = (u0.long()[:, None] + du)[None, :, None, :].expand(nty, -1, _TILE, -1)  # [nty, ntx, dy, dx]
        v = (v0.long()[:, None] + du)[:, None, :, None].expand(-1, ntx, -1, _TILE)
        self.tile_pix = torch.where((u < W) & (v < H), v * W + u, -1).reshape(nty * ntx, _TILE * _TILE)

    def near_pixels(self, frames: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor):
        """``(k, pixel)``: candidate pixels of frames ``frames`` whose tile's cone meets the sphere
        (``centre - origin`` ``[3, n]``, ``radius [n]``) of entry ``k``; conservative."""
        dist = torch.sqrt(dot(centre, centre))
        cos_t = dot(self.tile_axis[:, frames], centre[:, :, None]) / dist[:, None]
        theta = torch.acos(torch.clamp(cos_t, -1.0, 1.0))
        beta = torch.asin(torch.clamp(radius / dist, max=1.0))
        near = (theta <= self.tile_half[frames] + beta[:, None] + 1e-3) | (dist <= radius)[:, None]
        k, tile = torch.nonzero(near, as_tuple=True)
        pix = self.tile_pix[tile]
        ok = pix >= 0
        return k[:, None].expand_as(pix)[ok], pix[ok]

    def rays(self, frames: torch.Tensor) -> torch.Tensor:
        """``d [3, len(frames), HW]`` (a view when ``frames`` are all the chunk's frames in order)."""
        return self.d if frames.numel() == self.F else self.d[:, frames]

    def fold(self, ray_idx: torch.Tensor, keys: torch.Tensor) -> None:
        """Keep the closer of the current and the new hits of rays ``ray_idx`` (flat indices)."""
        self.best.view(-1).scatter_reduce_(0, ray_idx, keys, "amin")

    def fold_frames(self, frames: torch.Tensor, keys: torch.Tensor) -> None:
        """Keep the closer hits for all rays of ``frames`` (``keys [len(frames), HW]``)."""
        if frames.numel() == self.F:
            torch.minimum(self.best, keys, out=self.best)
        else:
            self.best[frames] = torch.minimum(self.best[frames], keys)

    def slot_lists(self, name: str):
        """``(frames, slots, packed rows)`` of the used entries of a per-scene slot list, column by column
        (indexing is done on the host copy of the lists: no device syncs)."""
        lst = self.p.host_lists[name][self.sid_host]  # [F, M]
        dev = self.sid.device
        for m in range(lst.shape[1]):
            fr = np.nonzero(lst[:, m] >= 0)[0]
            if len(fr):
                slot = torch.from_numpy(lst[fr, m]).to(dev)
                fr = torch.from_numpy(fr).to(dev)
                yield fr, slot, self.sid[fr] * self.G + slot


def _quads(c: _Chunk) -> None:
    S = c.p.slots
    for fr, slot, rows in c.slot_lists("quads"):
        axis = S["quad_axis"][rows]
        aligned = axis >= 0
        if bool(aligned.all()):
            lo, hi = S["quad_lo"][rows].T[..., None], S["quad_hi"][rows].T[..., None]
            t = ray_axis_rectangle(c.o32[:, fr, None], c.rays(fr), axis, lo, hi)
        else:
            v0 = S["quad_v"][rows, 0].T[..., None]
            e1, e2 = S["quad_e1"][rows].T[..., None], S["quad_e2"][rows].T[..., None]
            t = ray_parallelogram(c.o32[:, fr, None], c.rays(fr), v0, e1, e2)
        c.fold_frames(fr, make_keys(t, (slot << _SLOT_SHIFT)[:, None]))


def _spheres(c: _Chunk) -> None:
    for fr, slot, _ in c.slot_lists("spheres"):
        fg = fr * c.G + slot
        r = c.tab[_RAD, fg]
        t = ray_sphere(c.tab[_OC : _OC + 3, fg, None], c.rays(fr), (r * r)[:, None])
        c.fold_frames(fr, make_keys(t, (slot << _SLOT_SHIFT)[:, None]))


def _mesh_class(c: _Chunk, cls: int, max_elems: int) -> None:
    """All objects of one mesh class in the chunk: bounding-sphere cull, local frame, BVH."""
    ray_l, slot_l, o_l, d_l = [], [], [], []
    S = c.p.slots
    for fr, slot, rows in c.slot_lists(f"mesh{cls}"):
        fg = fr * c.G + slot
        oc64 = (c.o64[fr] - S["t"][rows]).T
        # ray origins in the local frames, x_l = R^T (x - t) / s, per (frame, object) in float64
        ol = (rotate_t(S["R64"][rows].permute(1, 2, 0), oc64) / S["scale"][rows]).float()
        oc = oc64.float()
        rad = (S["radius"][rows] * (1.0 + 1e-4) + 1e-6).float()
        for sl in _frame_slices(fr.numel(), c.HW, max_elems):
            k, pix = c.near_pixels(fr[sl], -oc[:, sl], rad[sl])
            frames = fr[sl][k]
            d = c.d[:, frames, pix]
            hit = torch.nonzero(hits_sphere_bound(oc[:, sl][:, k], d, (rad[sl] ** 2)[k])).squeeze(1)
            if hit.numel() == 0:
                continue
            k, pix, frames, d = k[hit], pix[hit], frames[hit], d[:, hit]
            fgp = fg[sl][k]
            Rp = c.tab[_R : _R + 9].index_select(1, fgp).view(3, 3, -1)
            d_l.append(rotate_t(Rp, d) * c.tab[_INV_S, fgp])
            o_l.append(ol[:, sl][:, k])
            ray_l.append(frames * c.HW + pix)
            slot_l.append(slot[sl][k])
    if not ray_l:
        return
    ray, slot = torch.cat(ray_l), torch.cat(slot_l)
    keys = intersect_tree(mesh_trees(c.d.device)[cls], torch.cat(o_l, 1), torch.cat(d_l, 1), max_elems)
    hit = keys != MISS_KEY
    c.fold(ray[hit], keys[hit] | (slot[hit] << _SLOT_SHIFT))


def _frame_slices(n_frames: int, hw: int, max_elems: int):
    step = max(1, max_elems // max(1, hw))
    for s in range(0, n_frames, step):
        yield slice(s, min(n_frames, s + step))


def _mesh_normals(
    c: _Chunk, cls: int, rows: torch.Tensor, tri: torch.Tensor, o: torch.Tensor
) -> torch.Tensor:
    """Normals ``[3, N]`` of mesh hits from the triangles' float32 world vertices, as Scene builds them."""
    S, tree = c.p.slots, mesh_trees(c.d.device)[cls]
    uniq, inv = torch.unique(rows, return_inverse=True)
    v = tree.vertices  # [V, 3] canonical, float64
    sv = S["scale"][uniq, None, None] * v  # (scale * v) @ R^T + t
    R, t = S["R64"][uniq], S["t"][uniq]
    w = torch.stack(
        [sv[..., 0] * R[:, j, None, 0] + sv[..., 1] * R[:, j, None, 1] + sv[..., 2] * R[:, j, None, 2] + t[:, j, None]
         for j in range(3)], -1,
    ).to(torch.float32).reshape(-1, 3)  # fmt: skip
    idx = inv[:, None] * v.shape[0] + tree.faces[tri]  # [N, 3]
    return robust_triangle_normal(w[idx[:, 0]].T, w[idx[:, 1]].T, w[idx[:, 2]].T, o)


def _normals(c: _Chunk, tab, itab, o, frame, slot, tri, t, d) -> torch.Tensor:
    """World normals ``[3, ...]`` of hits, facing the camera (open3d's for meshes and quads)."""
    kind = itab[_KIND]
    n = tab[_QN : _QN + 3]
    if c.has_spheres:
        sph = (tab[_OC : _OC + 3] + t * d) / tab[_RAD]
        n = torch.where(kind == KIND_SPHERE, sph, n)
    else:
        n = n.clone()
    for k in c.mesh_classes:
        sel = torch.nonzero(((kind == KIND_MESH) & (itab[_CLS] == k)).reshape(-1)).squeeze(1)
        if sel.numel():
            rows = c.sid[frame.reshape(-1)[sel]] * c.G + slot.reshape(-1)[sel]
            o_sel = o.expand(3, *t.shape).reshape(3, -1)[:, sel]
            n.view(3, -1)[:, sel] = _mesh_normals(c, k, rows, tri.reshape(-1)[sel], o_sel)
    return torch.where(dot(n, d) > 0, -n, n)


def _shade_chunk(c: _Chunk) -> dict[str, torch.Tensor]:
    """Normals, texturing and shading of the chunk's closest hits: outputs ``[F*HW, ...]``."""
    t, code = split_keys(c.best)
    hit = torch.isfinite(t)
    all_hit = bool(hit.all())
    if all_hit:  # a closed room: every ray hits; per-frame values broadcast over [F, HW]
        th, d, ftab = t, c.d, c.ftab[:, :, None]
        frame = torch.arange(c.F, device=t.device)[:, None].expand(c.F, c.HW)
    else:
        ray = torch.nonzero(hit.view(-1)).squeeze(1)
        th, code, frame = t.view(-1)[ray], code.view(-1)[ray], ray // c.HW
        d = c.d.view(3, -1).index_select(1, ray)
        ftab = c.ftab.index_select(1, frame)
    slot, tri = code >> _SLOT_SHIFT, code & ((1 << _SLOT_SHIFT) - 1)
    fg = (frame * c.G + slot).reshape(-1)
    tab = c.tab.index_select(1, fg).view(-1, *th.shape)
    itab = c.itab.index_select(1, fg).view(-1, *th.shape)
    n = _normals(c, tab, itab, ftab[_O : _O + 3], frame, slot, tri, th, d)
    geo = {
        "R": tab[_R : _R + 9].view(3, 3, *th.shape),
        "inv_s": tab[_INV_S],
        "tex": itab[_TEX].long(),
        "rep": tab[_REP],
        "m_per_rep": tab[_MPR],
        "tint": tab[_TINT : _TINT + 3],
        "spherical": itab[_MAP] == MAP_SPHERICAL,
    }
    lit = {"dir": ftab[_LIGHT : _LIGHT + 3], "ambient": ftab[_AMB], "sun": ftab[_SUN], "head": ftab[_HEAD]}
    lit["fx"] = ftab[_FX]
    color = shade(geo, tab[_OC_TEX : _OC_TEX + 3] + th * d, th, d, n, lit)
    n_cam = rotate_t(ftab[_RCAM : _RCAM + 9].view(3, 3, *ftab.shape[1:]), n)
    res = {
        "rgb": to_uint8(color).reshape(3, -1).T,
        "depth": th.reshape(-1),
        "instances": itab[_INST].reshape(-1),
        "normals": n_cam.reshape(3, -1).T,
    }
    if all_hit:
        return res
    N, dev = c.F * c.HW, t.device
    full = {
        "rgb": to_uint8(c.p.scenes["background"][c.sid]).repeat_interleave(c.HW, 0),
        "depth": torch.zeros(N, dtype=torch.float32, device=dev),
        "instances": torch.zeros(N, dtype=torch.int32, device=dev),
        "normals": torch.zeros((N, 3), dtype=torch.float32, device=dev),
    }
    for k, x in res.items():
        full[k][ray] = x
    return full


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
    chunk_rays: int | None = None,
    max_elems: int | None = None,
) -> RenderOut:
    """Render frame ``f`` of scene ``scene_ids[f]`` from ``T_world_cam[f]`` with intrinsics ``K[f]``.

    ``chunk_rays`` / ``max_elems`` bound peak memory (defaults: :data:`CHUNK_RAYS`, :data:`MAX_ELEMS`).
    """
    sid, T, K = _check(packed, scene_ids, T_world_cam, K)
    sid_host = sid.cpu().numpy()
    kind = packed.device.type if packed.device.type in CHUNK_RAYS else "default"
    chunk_rays = CHUNK_RAYS[kind] if chunk_rays is None else int(chunk_rays)
    max_elems = MAX_ELEMS[kind] if max_elems is None else int(max_elems)
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
        c = _Chunk(packed, sid[s:e], sid_host[s:e], T[s:e], K[s:e], H, W)
        _quads(c)
        _spheres(c)
        for cls in c.mesh_classes:
            _mesh_class(c, cls, max_elems)
        res = _shade_chunk(c)
        for k, x in res.items():
            getattr(out, k)[s:e] = x.reshape(e - s, H, W, *x.shape[1:])
    return out
