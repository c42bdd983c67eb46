"""Object classes and their canonical meshes (open3d built-in creators), normalised to unit size.

A canonical mesh is centred on its bounding-box centre with its largest extent equal to 1. The
``sphere`` class has no mesh: spheres are intersected analytically (exact depth).
"""

from __future__ import annotations

import functools

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


@functools.cache
def canonical_mesh(class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices [V,3] float64, triangles [F,3] int32)`` of a class, unit largest extent, centred."""
    if not 0 <= class_id < len(CLASS_NAMES) or class_id == SPHERE_CLASS:
        raise ValueError(f"class id {class_id} has no mesh (classes: {CLASS_NAMES}; spheres are analytic)")
    mesh = _create(CLASS_NAMES[class_id])
    v = np.asarray(mesh.vertices, np.float64)
    f = np.asarray(mesh.triangles, np.int32)
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2.0) / float((hi - lo).max())
    v.setflags(write=False)
    f.setflags(write=False)
    return v, f
