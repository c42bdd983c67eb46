"""Scenes packed into flat numpy arrays for the torch renderer (numpy only: runs in worker processes).

Every scene gets ``G`` geometry *slots* (its objects, in order; unused slots have kind ``KIND_NONE``).
Mesh objects keep their class, pose and scale (all instances of a class share its canonical mesh);
room quads keep their float32 world vertices; spheres their centre and radius. Per scene: light,
background, instance classes, and padded lists of the slots of each kind (quads, spheres, each mesh
class). :class:`torch_pack.PackedScenes` holds the same arrays as device tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dinov3_ros.synthetic.generator import SceneConfig, sample_scene
from dinov3_ros.synthetic.scene import Scene, SceneObject
from dinov3_ros.synthetic.shapes import MESH_CLASSES, canonical_mesh
from dinov3_ros.synthetic.textures import n_textures

KIND_NONE, KIND_QUAD, KIND_MESH, KIND_SPHERE = 0, 1, 2, 3
MAP_TRIPLANAR, MAP_SPHERICAL = 0, 1
#: slot-table arrays (first two dims [S, G]) and per-scene arrays (first dim [S]) of a packed batch
SLOT_KEYS = ("kind", "cls", "R", "R64", "t", "scale", "inv_s", "radius", "tex", "rep", "m_per_rep", "tint")
SLOT_KEYS += ("inst", "map", "quad_v", "quad_e1", "quad_e2", "quad_axis", "quad_lo", "quad_hi")
SCENE_KEYS = ("light", "ambient", "sun", "head", "background")
#: padded index lists per scene: ``[S, M]`` slot numbers (``-1`` = none)
LIST_KEYS = ("quads", "spheres", *(f"mesh{c}" for c in MESH_CLASSES))


def _is_quad(v: np.ndarray, f: np.ndarray) -> bool:
    """A mesh as built by :func:`scene.quad`: 4 vertices, triangles (0,1,2), (0,2,3), a parallelogram."""
    if v.shape != (4, 3) or not np.array_equal(np.asarray(f), [[0, 1, 2], [0, 2, 3]]):
        return False
    return bool(np.allclose(v[2], v[1] + v[3] - v[0], atol=1e-9 * (1.0 + np.abs(v).max())))


def _object_kind(o: SceneObject) -> int:
    if o.mesh is not None:
        v, f = o.mesh
        if not _is_quad(np.asarray(v, np.float64), f):
            raise ValueError(
                "torch renderer: custom meshes must be parallelogram quads (scene.quad); "
                f"got {np.asarray(v).shape[0]} vertices for instance {o.instance}"
            )
        return KIND_QUAD
    if o.is_sphere:
        return KIND_SPHERE
    if o.class_id not in MESH_CLASSES:
        raise ValueError(f"object of class {o.class_id} has neither a mesh nor a canonical mesh")
    return KIND_MESH


def mesh_radius(class_id: int) -> float:
    """Radius of the canonical mesh's bounding sphere about the local origin."""
    v, _ = canonical_mesh(class_id)
    return float(np.linalg.norm(v, axis=1).max())


def _pack_scene(scene: Scene, G: int) -> dict[str, np.ndarray]:
    a = _empty_slots(G)
    n_tex = n_textures()
    for g, o in enumerate(scene.objects):
        kind = _object_kind(o)
        if not 0 <= int(o.texture) < n_tex:
            raise ValueError(f"texture id {o.texture} out of range (bank has {n_tex} textures)")
        sph = kind == KIND_SPHERE
        a["kind"][g] = kind
        a["cls"][g] = o.class_id if kind == KIND_MESH else -1
        a["R"][g] = a["R64"][g] = np.asarray(o.rotation, np.float64)
        a["t"][g] = np.asarray(o.translation, np.float64)
        a["scale"][g] = o.scale
        a["inv_s"][g] = 1.0 / o.scale
        a["tex"][g] = o.texture
        a["rep"][g] = o.tex_repeat
        a["m_per_rep"][g] = (np.pi if sph else 1.0) * o.scale / o.tex_repeat
        a["tint"][g] = o.tint
        a["inst"][g] = o.instance
        a["map"][g] = MAP_SPHERICAL if sph else MAP_TRIPLANAR
        if kind == KIND_SPHERE:
            a["radius"][g] = o.scale / 2.0
        elif kind == KIND_MESH:
            a["radius"][g] = o.scale * mesh_radius(o.class_id)
        else:  # the float32 world vertices a mesh ray caster would see
            v = o.world_vertices()[0].astype(np.float32)
            a["quad_v"][g], a["quad_e1"][g], a["quad_e2"][g] = v, v[1] - v[0], v[3] - v[0]
            a["quad_lo"][g], a["quad_hi"][g] = v.min(0), v.max(0)
            flat = np.nonzero((v == v[0]).all(0))[0]  # axis-aligned: one coordinate equal at all corners
            a["quad_axis"][g] = flat[0] if len(flat) == 1 else -1
    a["light"] = np.asarray(scene.light_dir, np.float32)
    a["ambient"], a["sun"], a["head"] = (np.float32(x) for x in (scene.ambient, scene.sun, scene.head_light))
    a["background"] = np.asarray(scene.background, np.float32)
    return a


def _empty_slots(G: int) -> dict[str, np.ndarray]:
    f32, z3 = np.float32, np.zeros((G, 3), np.float32)
    return {
        "kind": np.zeros(G, np.int8),
        "cls": np.full(G, -1, np.int16),
        "R": np.tile(np.eye(3, dtype=f32), (G, 1, 1)),
        "R64": np.tile(np.eye(3), (G, 1, 1)),
        "t": np.zeros((G, 3), np.float64),
        "scale": np.ones(G, np.float64),
        "inv_s": np.ones(G, f32),
        "radius": np.zeros(G, np.float64),
        "tex": np.zeros(G, np.int32),
        "rep": np.ones(G, f32),
        "m_per_rep": np.ones(G, f32),
        "tint": z3.copy(),
        "inst": np.zeros(G, np.int32),
        "map": np.zeros(G, np.int8),
        "quad_v": np.zeros((G, 4, 3), f32),
        "quad_e1": z3.copy(),
        "quad_e2": z3.copy(),
        "quad_axis": np.full(G, -1, np.int64),
        "quad_lo": z3.copy(),
        "quad_hi": z3.copy(),
    }


def pack_arrays(scenes: Sequence) -> dict[str, np.ndarray]:
    """Pack scenes (:class:`Scene` or anything with a ``.scene``, e.g. a ``SceneSpec``) into numpy arrays."""
    scenes = [getattr(s, "scene", s) for s in scenes]
    if not scenes:
        raise ValueError("pack_arrays needs at least one scene")
    G = max(1, max(len(s.objects) for s in scenes))
    per = [_pack_scene(s, G) for s in scenes]
    out = {k: np.stack([p[k] for p in per]) for k in SLOT_KEYS + SCENE_KEYS}
    lists: dict[str, list[np.ndarray]] = {k: [] for k in LIST_KEYS}
    for p in per:
        lists["quads"].append(np.nonzero(p["kind"] == KIND_QUAD)[0])
        lists["spheres"].append(np.nonzero(p["kind"] == KIND_SPHERE)[0])
        for c in MESH_CLASSES:
            lists[f"mesh{c}"].append(np.nonzero((p["kind"] == KIND_MESH) & (p["cls"] == c))[0])
    for k, rows in lists.items():
        out[k] = _pad_rows(rows, -1, np.int64)
    out["instance_classes"] = _pad_rows([s.instance_classes for s in scenes], -1, np.int32)
    return out


def _pad_rows(rows: Sequence[np.ndarray], fill, dtype) -> np.ndarray:
    m = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), m), fill, dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def concat_arrays(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate packed batches along the scene axis (padding slots and lists to the largest)."""
    if len(parts) == 1:
        return dict(parts[0])
    G = max(p["kind"].shape[1] for p in parts)
    out: dict[str, np.ndarray] = {}
    for k in SLOT_KEYS:
        pads = []
        for p in parts:
            x = p[k]
            if x.shape[1] < G:
                filler = _empty_slots(G - x.shape[1])[k]
                x = np.concatenate([x, np.broadcast_to(filler, (x.shape[0], *filler.shape))], 1)
            pads.append(x)
        out[k] = np.concatenate(pads)
    for k in SCENE_KEYS:
        out[k] = np.concatenate([p[k] for p in parts])
    for k in (*LIST_KEYS, "instance_classes"):
        m = max(p[k].shape[1] for p in parts)
        out[k] = np.concatenate(
            [np.pad(p[k], ((0, 0), (0, m - p[k].shape[1])), constant_values=-1) for p in parts]
        )
    return out


def sample_packed(config: SceneConfig, seed: int, scenes: Sequence[int], frames: Sequence[int]) -> dict:
    """Sample scenes ``scenes`` of ``(config, seed)`` and pack them with the poses of ``frames``.

    Returns ``arrays`` (:func:`pack_arrays`), ``T_world_cam [S, len(frames), 4, 4]``, ``K [S, 3, 3]`` and
    ``scenes [S]``: everything the renderer needs, cheap to send back from a worker process.
    """
    specs = [sample_scene(config, seed, s) for s in scenes]
    n = config.frames_per_scene
    taus = [i / (n - 1) if n > 1 else 0.0 for i in frames]
    return {
        "arrays": pack_arrays(specs),
        "T_world_cam": np.stack([[sp.trajectory.pose(tau) for tau in taus] for sp in specs]),
        "K": np.stack([sp.K for sp in specs]),
        "scenes": np.asarray(scenes, np.int64),
    }
