"""Object classes and their canonical meshes, normalised to unit size.

A canonical mesh is centred on its bounding-box centre with its largest extent equal to 1. The
``sphere`` class has no mesh: spheres are intersected analytically (exact depth).

The meshes come from open3d's built-in creators but are shipped in ``data/meshes.npz`` (rebuilt by
:func:`write_mesh_file` where open3d is installed), so every machine uses the same
geometry and none needs open3d for it.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np

#: object class names; the class id of an instance is the index into this tuple
CLASS_NAMES: tuple[str, ...] = (
    "box",
    "sphere",
    "cylinder",
    "torus",
    "cone",
    "tetrahedron",
    "octahedron",
    "arrow",
)
SPHERE_CLASS = CLASS_NAMES.index("sphere")
#: classes with a canonical mesh (every class but the sphere)
MESH_CLASSES: tuple[int, ...] = tuple(c for c in range(len(CLASS_NAMES)) if c != SPHERE_CLASS)
#: the shipped canonical meshes
MESH_FILE = Path(__file__).resolve().parent / "data" / "meshes.npz"


def _create(name: str):
    import open3d as o3d

    TM = o3d.geometry.TriangleMesh
    if name == "box":
        return TM.create_box(1.0, 0.7, 0.5)
    if name == "cylinder":
        return TM.create_cylinder(radius=0.35, height=1.0, resolution=48, split=1)
    if name == "torus":
        return TM.create_torus(
            torus_radius=0.5, tube_radius=0.18, radial_resolution=48, tubular_resolution=24
        )
    if name == "cone":
        return TM.create_cone(radius=0.45, height=1.0, resolution=48)
    if name == "tetrahedron":
        return TM.create_tetrahedron(radius=1.0)
    if name == "octahedron":
        return TM.create_octahedron(radius=1.0)
    if name == "arrow":
        return TM.create_arrow(
            cylinder_radius=0.1, cone_radius=0.2, cylinder_height=0.6, cone_height=0.4, resolution=32
        )
    raise ValueError(f"no canonical mesh for class {name!r}; known: {', '.join(CLASS_NAMES)}")


def open3d_mesh(class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The canonical mesh of a class built by open3d today (needs open3d): what the shipped file holds."""
    _check_mesh_class(class_id)
    mesh = _create(CLASS_NAMES[class_id])
    v = np.asarray(mesh.vertices, np.float64)
    f = np.asarray(mesh.triangles, np.int32)
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2.0) / float((hi - lo).max())
    return v, f


def write_mesh_file(path: str | os.PathLike = MESH_FILE) -> Path:
    """Write every class's open3d canonical mesh to ``path`` (npz, written atomically)."""
    arrays: dict[str, np.ndarray] = {}
    for c in MESH_CLASSES:
        v, f = open3d_mesh(c)
        arrays[f"{CLASS_NAMES[c]}_vertices"] = v
        arrays[f"{CLASS_NAMES[c]}_triangles"] = f
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _check_mesh_class(class_id: int) -> None:
    if not 0 <= class_id < len(CLASS_NAMES) or class_id == SPHERE_CLASS:
        raise ValueError(f"class id {class_id} has no mesh (classes: {CLASS_NAMES}; spheres are analytic)")


@functools.cache
def _mesh_file() -> dict[str, np.ndarray]:
    if not MESH_FILE.is_file():
        raise FileNotFoundError(
            f"canonical mesh file {MESH_FILE} is missing; rebuild it with shapes.write_mesh_file() (needs open3d)"
        )
    with np.load(MESH_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@functools.cache
def canonical_mesh(class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices [V,3] float64, triangles [F,3] int32)`` of a class, unit largest extent, centred."""
    _check_mesh_class(class_id)
    data = _mesh_file()
    name = CLASS_NAMES[class_id]
    v = np.ascontiguousarray(data[f"{name}_vertices"], np.float64)
    f = np.ascontiguousarray(data[f"{name}_triangles"], np.int32)
    v.setflags(write=False)
    f.setflags(write=False)
    return v, f
