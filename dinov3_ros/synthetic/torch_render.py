"""Batched ray-cast rendering of packed scenes in torch (CPU or CUDA): the images of ``Scene.render``.

``render(packed, scene_ids, T_world_cam, K, height, width)`` renders F frames, each of any packed
scene with its own pose and intrinsics, in one vectorised pass (no loop over frames or rays):

* room quads: axis-aligned rectangle tests (parallelograms otherwise) against every ray of the frames;
* spheres: analytic, as in ``Scene.cast``;
* class meshes: for every (frame, object) the rays that pass a tile-cone and a bounding-sphere cull
  (:mod:`torch_chunk`) are moved into the object's local frame and traced through the class's
  canonical-mesh BVH (:mod:`torch_mesh`), all objects of a class at once;
* the closest hit per ray is a min-reduction of int64 hit keys (:mod:`torch_intersect`);
* texturing and shading repeat ``Scene._shade``'s float32 arithmetic (:mod:`torch_shade`).

Frames are processed in chunks of at most ``chunk_rays`` rays and mesh candidates in slices of at most
``max_elems`` tests, so peak memory is bounded whatever F is. Conventions are those of
:class:`frame.SynthFrame` (z-depth, 0 = miss; camera-frame normals facing the camera).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dinov3_ros.synthetic.packing import KIND_MESH, KIND_SPHERE, MAP_SPHERICAL
from dinov3_ros.synthetic.torch_chunk import FTAB, ITAB, TAB, FrameChunk
from dinov3_ros.synthetic.torch_intersect import (
    MISS_KEY,
    dot,
    hits_sphere_bound,
    make_keys,
    ray_axis_rectangle,
    ray_parallelogram,
    ray_sphere,
    robust_triangle_normal,
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


@dataclass
class RenderOut:
    """Rendered frames: ``rgb [F,H,W,3] uint8``, ``depth [F,H,W] float32`` (z, 0 = miss),
    ``instances [F,H,W] int32``, ``normals [F,H,W,3] float32`` (camera frame, facing it, 0 on a miss)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    instances: torch.Tensor
    normals: torch.Tensor


def _quads(c: FrameChunk) -> None:
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


def _spheres(c: FrameChunk) -> None:
    for fr, slot, _ in c.slot_lists("spheres"):
        fg = fr * c.G + slot
        r = c.tab[TAB.RAD, fg]
        t = ray_sphere(c.tab[TAB.OC : TAB.OC + 3, fg, None], c.rays(fr), (r * r)[:, None])
        c.fold_frames(fr, make_keys(t, (slot << _SLOT_SHIFT)[:, None]))


def _mesh_class(c: FrameChunk, cls: int, max_elems: int) -> None:
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
            Rp = c.tab[TAB.R : TAB.R + 9].index_select(1, fgp).view(3, 3, -1)
            d_l.append(rotate_t(Rp, d) * c.tab[TAB.INV_S, fgp])
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
    c: FrameChunk, cls: int, rows: torch.Tensor, tri: torch.Tensor, o: torch.Tensor
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


def _normals(c: FrameChunk, tab, itab, o, frame, slot, tri, t, d) -> torch.Tensor:
    """World normals ``[3, ...]`` of hits, facing the camera (open3d's for meshes and quads)."""
    kind = itab[ITAB.KIND]
    n = tab[TAB.QN : TAB.QN + 3]
    if c.has_spheres:
        sph = (tab[TAB.OC : TAB.OC + 3] + t * d) / tab[TAB.RAD]
        n = torch.where(kind == KIND_SPHERE, sph, n)
    else:
        n = n.clone()
    for k in c.mesh_classes:
        sel = torch.nonzero(((kind == KIND_MESH) & (itab[ITAB.CLS] == k)).reshape(-1)).squeeze(1)
        if sel.numel():
            rows = c.sid[frame.reshape(-1)[sel]] * c.G + slot.reshape(-1)[sel]
            o_sel = o.expand(3, *t.shape).reshape(3, -1)[:, sel]
            n.view(3, -1)[:, sel] = _mesh_normals(c, k, rows, tri.reshape(-1)[sel], o_sel)
    return torch.where(dot(n, d) > 0, -n, n)


def _shade_chunk(c: FrameChunk) -> dict[str, torch.Tensor]:
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
    n = _normals(c, tab, itab, ftab[FTAB.ORIGIN : FTAB.ORIGIN + 3], frame, slot, tri, th, d)
    geo = {
        "R": tab[TAB.R : TAB.R + 9].view(3, 3, *th.shape),
        "inv_s": tab[TAB.INV_S],
        "tex": itab[ITAB.TEX].long(),
        "rep": tab[TAB.REP],
        "m_per_rep": tab[TAB.MPR],
        "tint": tab[TAB.TINT : TAB.TINT + 3],
        "spherical": itab[ITAB.MAP] == MAP_SPHERICAL,
    }
    lit = {
        "dir": ftab[FTAB.LIGHT : FTAB.LIGHT + 3],
        "ambient": ftab[FTAB.AMB],
        "sun": ftab[FTAB.SUN],
        "head": ftab[FTAB.HEAD],
    }
    lit["fx"] = ftab[FTAB.FX]
    color = shade(geo, tab[TAB.OC_TEX : TAB.OC_TEX + 3] + th * d, th, d, n, lit)
    n_cam = rotate_t(ftab[FTAB.RCAM : FTAB.RCAM + 9].view(3, 3, *ftab.shape[1:]), n)
    res = {
        "rgb": to_uint8(color).reshape(3, -1).T,
        "depth": th.reshape(-1),
        "instances": itab[ITAB.INST].reshape(-1),
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
        c = FrameChunk(packed, sid[s:e], sid_host[s:e], T[s:e], K[s:e], H, W)
        _quads(c)
        _spheres(c)
        for cls in c.mesh_classes:
            _mesh_class(c, cls, max_elems)
        res = _shade_chunk(c)
        for k, x in res.items():
            getattr(out, k)[s:e] = x.reshape(e - s, H, W, *x.shape[1:])
    return out
