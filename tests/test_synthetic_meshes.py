"""Shipped canonical meshes: equal to open3d's creators, and usable (with the torch backend) without open3d."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dinov3_ros.synthetic import shapes
from dinov3_ros.synthetic.shapes import CLASS_NAMES, MESH_CLASSES, SPHERE_CLASS, canonical_mesh

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_meshes_equal_open3d_creators(tmp_path):
    pytest.importorskip("open3d")
    for c in MESH_CLASSES:
        v, f = canonical_mesh(c)
        v_o3d, f_o3d = shapes.open3d_mesh(c)
        assert v.dtype == np.float64 and f.dtype == np.int32, CLASS_NAMES[c]
        assert np.array_equal(v, v_o3d) and np.array_equal(f, f_o3d), CLASS_NAMES[c]
        assert np.allclose((v.max(0) - v.min(0)).max(), 1.0) and np.allclose(v.max(0) + v.min(0), 0.0)
    # the writer rebuilds the same arrays
    path = shapes.write_mesh_file(tmp_path / "meshes.npz")
    with np.load(path, allow_pickle=False) as z, np.load(shapes.MESH_FILE, allow_pickle=False) as ref:
        assert sorted(z.files) == sorted(ref.files)
        for k in z.files:
            assert np.array_equal(z[k], ref[k]) and z[k].dtype == ref[k].dtype, k


def test_negative_control_detects_a_changed_mesh(tmp_path, monkeypatch):
    """A file whose torus differs by one vertex would be caught by the equality test above."""
    pytest.importorskip("open3d")
    with np.load(shapes.MESH_FILE, allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["torus_vertices"][5, 0] += 1e-12
    np.savez(tmp_path / "m.npz", **arrays)
    monkeypatch.setattr(shapes, "MESH_FILE", tmp_path / "m.npz")
    shapes._mesh_file.cache_clear()
    shapes.canonical_mesh.cache_clear()
    try:
        torus = CLASS_NAMES.index("torus")
        assert not np.array_equal(canonical_mesh(torus)[0], shapes.open3d_mesh(torus)[0])
    finally:
        shapes._mesh_file.cache_clear()
        shapes.canonical_mesh.cache_clear()


def test_sphere_has_no_mesh():
    with pytest.raises(ValueError, match="no mesh"):
        canonical_mesh(SPHERE_CLASS)


def test_frames_render_without_open3d():
    """With open3d unimportable: meshes load from the file and the generator falls back to torch."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["open3d"] = None  # import open3d -> ImportError; find_spec -> ValueError/None
        import importlib.util
        _find = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "open3d" else _find(name, *a)
        import torch
        torch.set_num_threads(1)
        from dinov3_ros.synthetic import SceneGenerator
        from dinov3_ros.synthetic.shapes import canonical_mesh
        assert canonical_mesh(3)[0].shape == (1152, 3)
        g = SceneGenerator(seed=1, width=40, height=32, frames_per_scene=2)
        assert g.backend == "torch", g.backend
        f = g.frame(0, 1)
        assert f.rgb.shape == (32, 40, 3) and (f.depth > 0).all() and f.rgb.std() > 5
        print("ok", "open3d" in sys.modules and sys.modules["open3d"] is not None)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok", "False"]
