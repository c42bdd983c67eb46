"""Exact ray-cast rendering of a textured scene with open3d's `RaycastingScene`.

Meshes (room quads and object meshes) are intersected by open3d; spheres are intersected
analytically, so their depth is exact. Rays are cast through pixel centres with camera-frame
direction ``K^-1 [u, v, 1]`` (z component 1), so the ray parameter of a hit *is* its z-depth.

Texturing: each surface has a texture from :func:`textures.texture_bank` mapped triplanarly in the
surface's local frame (room quads, meshes) or by longitude/latitude (spheres), with a mip level chosen
from the pixel footprint. Shading: Lambert from a directional light + a head light + ambient.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from dinov3_ros.synthetic.frame import BACKGROUND_ID, SynthFrame
from dinov3_ros.synthetic.shapes import CLASS_NAMES, SPHERE_CLASS, canonical_mesh
from dinov3_ros.synthetic.textures import TEXTURE_SIZE, texture_bank

MIP_LEVELS = 5
_MAP_TRIPLANAR, _MAP_SPHERICAL = 0, 1


@dataclass
class SceneObject:
    """A textured surface: an object instance (``instance >= 1``) or a background surface (``0``).

    World geometry = ``scale * R @ v + translation`` for the local vertices ``v`` (the class's canonical
    mesh, or ``mesh`` when given). For spheres (``class_id == SPHERE_CLASS``, no mesh) the centre is
    ``translation`` and the radius ``scale / 2``. ``tex_repeat`` is texture repeats per local unit.
    """

    class_id: int
    translation: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    scale: float = 1.0
    instance: int = BACKGROUND_ID
    texture: int = 0
    tex_repeat: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    mesh: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def is_sphere(self) -> bool:
        return self.mesh is None and self.class_id == SPHERE_CLASS

    def world_vertices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices [V,3], triangles [F,3])`` in the world frame (meshes only)."""
        v, f = self.mesh if self.mesh is not None else canonical_mesh(self.class_id)
        R = np.asarray(self.rotation, np.float64)
        return self.scale * np.asarray(v, np.float64) @ R.T + np.asarray(self.translation, np.float64), f


def quad(corner: np.ndarray, edge_u: np.ndarray, edge_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-triangle mesh of the parallelogram ``corner + a*edge_u + b*edge_v``, a, b in [0, 1]."""
    c, eu, ev = (np.asarray(x, np.float64) for x in (corner, edge_u, edge_v))
    v = np.stack([c, c + eu, c + eu + ev, c + ev])
    return v, np.array([[0, 1, 2], [0, 2, 3]], np.int32)


@functools.lru_cache(maxsize=1)
def _mip_pyramid() -> tuple[np.ndarray, np.ndarray]:
    """Flattened uint8 texel table ``[N,3]`` of every texture at every mip level, and offsets ``[T,L]``."""
    import cv2

    bank, _ = texture_bank()
    T = bank.shape[0]
    chunks: list[np.ndarray] = []
    offsets = np.zeros((T, MIP_LEVELS), np.int64)
    base = 0
    level = (bank * 255.0 + 0.5).astype(np.uint8)
    for lvl in range(MIP_LEVELS):
        if lvl:
            s = level.shape[1] // 2
            level = np.stack([cv2.resize(t, (s, s), interpolation=cv2.INTER_AREA) for t in level])
        s = level.shape[1]
        offsets[:, lvl] = base + np.arange(T) * s * s
        chunks.append(level.reshape(-1, 3))
        base += T * s * s
    return np.ascontiguousarray(np.concatenate(chunks)), offsets


@functools.lru_cache(maxsize=4)
def _camera_rays(K_key: tuple[float, ...], width: int, height: int) -> np.ndarray:
    K = np.array(K_key).reshape(3, 3)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    out = np.ascontiguousarray(d.reshape(-1, 3), dtype=np.float32)
    out.setflags(write=False)
    return out


class Scene:
    """A static scene; renders exact RGB / depth / instances / normals from any camera pose.

    Picklable: the open3d acceleration structure is rebuilt lazily after unpickling.
    """

    def __init__(
        self,
        objects: list[SceneObject],
        *,
        light_dir: tuple[float, float, float] = (0.3, 0.2, 1.0),
        ambient: float = 0.3,
        sun: float = 0.5,
        head_light: float = 0.3,
        background: tuple[float, float, float] = (0.55, 0.65, 0.8),
    ) -> None:
        self.objects = list(objects)
        ld = np.asarray(light_dir, np.float64)
        self.light_dir = ld / np.linalg.norm(ld)
        self.ambient, self.sun, self.head_light = float(ambient), float(sun), float(head_light)
        self.background = np.asarray(background, np.float32)
        instances = [o.instance for o in self.objects if o.instance != BACKGROUND_ID]
        if len(set(instances)) != len(instances):
            raise ValueError("object instance ids must be unique")
        n = max(instances, default=0)
        self.instance_classes = np.full(n + 1, -1, np.int32)
        for o in self.objects:
            if o.instance != BACKGROUND_ID:
                if not 0 <= o.class_id < len(CLASS_NAMES):
                    raise ValueError(f"class id {o.class_id} out of range (0..{len(CLASS_NAMES) - 1})")
                self.instance_classes[o.instance] = o.class_id
        self._rc = None

    # --- pickling: drop the open3d structure -------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_rc"] = None
        return state

    def _build(self) -> None:
        import open3d as o3d

        rc = o3d.t.geometry.RaycastingScene()
        meshes = [o for o in self.objects if not o.is_sphere]
        spheres = [o for o in self.objects if o.is_sphere]
        for o in meshes:
            v, f = o.world_vertices()
            rc.add_triangles(
                o3d.core.Tensor(np.ascontiguousarray(v, np.float32)),
                o3d.core.Tensor(np.ascontiguousarray(f, np.uint32)),
            )
        # geometry table: meshes in open3d order, then spheres, then a "miss" row
        order = meshes + spheres
        G = len(order)
        self._order = order
        self._n_mesh = len(meshes)
        self._sph_c = np.array([o.translation for o in spheres], np.float64).reshape(-1, 3)
        self._sph_r = np.array([o.scale / 2.0 for o in spheres], np.float64)
        self._g_R = np.zeros((G + 1, 3, 3), np.float32)
        self._g_t = np.zeros((G + 1, 3), np.float32)
        self._g_inv_s = np.zeros(G + 1, np.float32)
        self._g_tex = np.zeros(G + 1, np.int64)
        self._g_rep = np.zeros(G + 1, np.float32)
        self._g_m_per_rep = np.ones(G + 1, np.float32)
        self._g_tint = np.zeros((G + 1, 3), np.float32)
        self._g_inst = np.zeros(G + 1, np.int32)
        self._g_map = np.zeros(G + 1, np.int8)
        for g, o in enumerate(order):
            self._g_R[g] = o.rotation
            self._g_t[g] = o.translation
            self._g_inv_s[g] = 1.0 / o.scale
            self._g_tex[g] = o.texture
            self._g_rep[g] = o.tex_repeat
            sph = o.is_sphere
            self._g_m_per_rep[g] = (np.pi if sph else 1.0) * o.scale / o.tex_repeat
            self._g_tint[g] = o.tint
            self._g_inst[g] = o.instance
            self._g_map[g] = _MAP_SPHERICAL if sph else _MAP_TRIPLANAR
        bank, _ = texture_bank()
        if len(order) and int(self._g_tex[:G].max()) >= bank.shape[0]:
            raise ValueError(f"texture id out of range (bank has {bank.shape[0]} textures)")
        self._rc = rc

    # --- ray casting -------------------------------------------------------------------------
    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Intersect rays (world frame). Returns ``(t [N] float32, geometry row [N], normals [N,3])``.

        ``t`` is in units of ``dirs`` (``inf`` on a miss), the row indexes the internal geometry table
        (``len(objects)`` on a miss), normals are world-frame unit vectors facing the ray origin.
        """
        import open3d as o3d

        if self._rc is None:
            self._build()
        dirs = np.asarray(dirs, np.float32)
        rays = np.empty((dirs.shape[0], 6), np.float32)
        rays[:, :3] = np.asarray(origins, np.float32)
        rays[:, 3:] = dirs
        ans = self._rc.cast_rays(o3d.core.Tensor.from_numpy(rays))
        t = ans["t_hit"].numpy()
        g = ans["geometry_ids"].numpy().astype(np.int64)
        n = ans["primitive_normals"].numpy()
        miss = ~np.isfinite(t)
        g[miss] = len(self._order)
        if len(self._sph_r):
            o64 = np.broadcast_to(np.asarray(origins, np.float64), dirs.shape)
            for k in range(len(self._sph_r)):
                ts = _ray_sphere(o64, dirs, self._sph_c[k], self._sph_r[k])
                closer = ts < t
                if closer.any():
                    t[closer] = ts[closer]
                    g[closer] = self._n_mesh + k
                    p = o64[closer] + ts[closer, None] * dirs[closer]
                    n[closer] = (p - self._sph_c[k]) / self._sph_r[k]
        # face the camera
        flip = np.einsum("ij,ij->i", n, dirs) > 0
        n[flip] *= -1.0
        return t, g, n

    def render(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int, **meta) -> SynthFrame:
        """Render one view. ``meta`` is passed to :class:`SynthFrame` (stamp_ns, scene_index, ...)."""
        T = np.asarray(T_world_cam, np.float64)
        K = np.asarray(K, np.float64)
        if T.shape != (4, 4) or K.shape != (3, 3):
            raise ValueError(f"T_world_cam must be 4x4 and K 3x3, got {T.shape} and {K.shape}")
        R, o = T[:3, :3], T[:3, 3]
        d_cam = _camera_rays(tuple(K.ravel().tolist()), int(width), int(height))
        R32 = R.astype(np.float32)
        d = np.einsum("ni,ji->nj", d_cam, R32)  # (numpy matmul of [N,3] x [3,3] is slow)
        t, g, n = self.cast(o, d)
        hit = np.isfinite(t)
        depth = np.where(hit, t, np.float32(0.0))  # ray z-component is 1 => t is z-depth
        rgb = self._shade(o, d, t, g, n, hit, K)
        normals_cam = np.einsum("ni,ij->nj", n, R32)
        normals_cam[~hit] = 0.0
        H, W = int(height), int(width)
        return SynthFrame(
            rgb=rgb.reshape(H, W, 3),
            depth=depth.reshape(H, W),
            instances=self._g_inst[g].reshape(H, W),
            normals=normals_cam.reshape(H, W, 3),
            K=K.copy(),
            T_world_cam=T.copy(),
            instance_classes=self.instance_classes.copy(),
            **meta,
        )

    def _shade(self, o, d, t, g, n, hit, K) -> np.ndarray:
        N = t.shape[0]
        color = np.empty((N, 3), np.float32)
        color[:] = self.background
        idx = np.nonzero(hit)[0]
        if idx.size == 0:
            return (color * 255.0 + 0.5).astype(np.uint8)
        gi = g[idx]
        th = t[idx]
        dh = d[idx]
        nh = n[idx]
        # hit points relative to each surface's origin (one gather of [N,3] instead of [N,3,3])
        q = (o - self._g_t[gi]).astype(np.float32) + th[:, None] * dh
        # local coordinates / normals: x_local_j = sum_i x_i R[i, j] (column gathers of the 3x3)
        Rg = self._g_R.reshape(-1, 9)
        inv_s = self._g_inv_s[gi]
        pl = np.empty_like(q)
        nl = np.empty_like(q)
        for j in range(3):
            c0, c1, c2 = Rg[gi, j], Rg[gi, 3 + j], Rg[gi, 6 + j]
            pl[:, j] = (q[:, 0] * c0 + q[:, 1] * c1 + q[:, 2] * c2) * inv_s
            nl[:, j] = nh[:, 0] * c0 + nh[:, 1] * c1 + nh[:, 2] * c2
        a = np.abs(nl).argmax(1)
        uu = np.where(a == 0, pl[:, 1], pl[:, 0])
        vv = np.where(a == 2, pl[:, 1], -pl[:, 2])  # texture rows run downwards
        sph = self._g_map[gi] == _MAP_SPHERICAL
        if sph.any():
            q = pl[sph]
            r = np.linalg.norm(q, axis=1) + 1e-12
            uu[sph] = np.arctan2(q[:, 1], q[:, 0]) / (2.0 * np.pi) + 0.5
            vv[sph] = np.arccos(np.clip(q[:, 2] / r, -1.0, 1.0)) / np.pi
        rep = self._g_rep[gi]
        uu = uu * rep
        vv = vv * rep
        # mip level from the pixel footprint (metres per pixel / metres per texture repeat)
        dn = np.linalg.norm(dh, axis=1)
        cos = np.abs(np.einsum("ij,ij->i", nh, dh)) / dn
        m_per_px = th * dn / float(K[0, 0]) / np.maximum(cos, 0.3)
        texels_per_px = m_per_px / self._g_m_per_rep[gi] * TEXTURE_SIZE
        lvl = np.clip(np.rint(np.log2(np.maximum(texels_per_px, 1e-6))), 0, MIP_LEVELS - 1).astype(np.int64)
        size = TEXTURE_SIZE >> lvl
        x = ((uu - np.floor(uu)) * size).astype(np.int64)
        y = ((vv - np.floor(vv)) * size).astype(np.int64)
        np.minimum(x, size - 1, out=x)
        np.minimum(y, size - 1, out=y)
        table, offsets = _mip_pyramid()
        albedo = table[offsets[self._g_tex[gi], lvl] + y * size + x].astype(np.float32) * (1.0 / 255.0)
        lam = np.clip(np.einsum("ni,i->n", nh, self.light_dir.astype(np.float32)), 0.0, 1.0)
        shade = self.ambient + self.sun * lam + self.head_light * cos
        color[idx] = albedo * self._g_tint[gi] * shade[:, None]
        return np.clip(color * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _ray_sphere(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: float) -> np.ndarray:
    """Nearest positive ray parameter of the hit with sphere (c, r), ``inf`` where missed."""
    oc = o - c
    a = np.einsum("ij,ij->i", d, d)
    b = np.einsum("ij,ij->i", d, oc)
    cc = np.einsum("ij,ij->i", oc, oc) - r * r
    disc = b * b - a * cc
    t = np.full(d.shape[0], np.inf)
    ok = disc >= 0
    sq = np.sqrt(disc[ok])
    t0 = (-b[ok] - sq) / a[ok]
    t1 = (-b[ok] + sq) / a[ok]
    tt = np.where(t0 > 1e-6, t0, np.where(t1 > 1e-6, t1, np.inf))
    t[ok] = tt
    return t
