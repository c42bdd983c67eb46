"""One chunk of frames for the torch renderer: world rays, closest hits so far, and gather tables.

The tables let every hit gather what shading needs in one indexed read: per (frame, slot) (row
``f * G + g``) the surface's rotation, scale, texture parameters, ``origin - translation`` and quad
normal (``tab``, float32) and its kind, class, texture, instance and mapping (``itab``, int32); per
frame the origin, focal length, light and camera rotation (``ftab``). Pixel tiles with bounding cones
make the bounding-sphere cull of mesh objects proportional to their screen area.
"""

from __future__ import annotations

import numpy as np
import torch

from dinov3_ros.synthetic.packing import KIND_QUAD
from dinov3_ros.synthetic.shapes import MESH_CLASSES
from dinov3_ros.synthetic.torch_intersect import MISS_KEY, dot, robust_triangle_normal, rotate
from dinov3_ros.synthetic.torch_pack import PackedScenes

TILE = 8  # pixel tiles of the bounding-sphere cull


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


class TAB:
    """Rows of ``FrameChunk.tab`` (per (frame, slot), float32)."""

    R, INV_S, REP, MPR, TINT, OC, OC_TEX, RAD, QN = 0, 9, 10, 11, 12, 15, 18, 21, 22


class ITAB:
    """Rows of ``FrameChunk.itab`` (per (frame, slot), int32)."""

    KIND, CLS, TEX, INST, MAP = range(5)


class FTAB:
    """Rows of ``FrameChunk.ftab`` (per frame, float32)."""

    ORIGIN, FX, LIGHT, AMB, SUN, HEAD, RCAM = 0, 3, 4, 7, 8, 9, 10


class FrameChunk:
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
        assert self.ftab.shape[0] == FTAB.RCAM + 9
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
        # which kinds occur (host side: skips work and device syncs later)
        lists, sid = self.p.host_lists, self.sid_host
        self.has_spheres = bool((lists["spheres"][sid] >= 0).any())
        self.mesh_classes = [c for c in MESH_CLASSES if (lists[f"mesh{c}"][sid] >= 0).any()]
        kind = S["kind"][rows]
        qn = torch.zeros_like(oc)
        quad = kind == KIND_QUAD
        if (lists["quads"][sid] >= 0).any():  # quad normals per (frame, quad), as the mesh ray caster
            qv = S["quad_v"][rows[quad]].permute(2, 1, 0)  # [3, 4, Q]
            o = self.o32.repeat_interleave(G, 1)[:, quad]
            qn[quad] = robust_triangle_normal(qv[:, 0], qv[:, 1], qv[:, 2], o).T
        cols = [S["R"][rows].reshape(-1, 9), S["inv_s"][rows, None], S["rep"][rows, None]]
        cols += [S["m_per_rep"][rows, None], S["tint"][rows], oc, oc_tex, S["radius"][rows, None].float(), qn]
        self.tab = torch.cat(cols, 1).T.contiguous()
        ints = [kind, S["cls"][rows], S["tex"][rows], S["inst"][rows], S["map"][rows]]
        self.itab = torch.stack([x.to(torch.int32) for x in ints])
        assert self.tab.shape[0] == TAB.QN + 3 and self.itab.shape[0] == ITAB.MAP + 1

    def _tiles(self, K: torch.Tensor, R: torch.Tensor, H: int, W: int) -> None:
        """Bounding cones of ``TILE`` x ``TILE`` pixel tiles (world axes ``[3, F, n]``, half-angles
        ``[F, n]``) and each tile's flat pixel indices ``[n, TILE**2]`` (``-1`` outside the image)."""
        dev = K.device
        u0 = torch.arange(0, W, TILE, device=dev, dtype=torch.float32)
        v0 = torch.arange(0, H, TILE, device=dev, dtype=torch.float32)
        u1, v1 = torch.clamp(u0 + TILE - 1, max=W - 1), torch.clamp(v0 + TILE - 1, max=H - 1)
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
        du = torch.arange(TILE, device=dev)
        u = (u0.long()[:, None] + du)[None, :, None, :].expand(nty, -1, TILE, -1)  # [nty, ntx, dy, dx]
        v = (v0.long()[:, None] + du)[:, None, :, None].expand(-1, ntx, -1, TILE)
        self.tile_pix = torch.where((u < W) & (v < H), v * W + u, -1).reshape(nty * ntx, TILE * TILE)

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
