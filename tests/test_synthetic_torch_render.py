"""Torch renderer vs the open3d renderer: same depth, instances, normals and pixels, with negative controls."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from dinov3_ros.synthetic import (
    CLASS_NAMES,
    Scene,
    SceneConfig,
    SceneGenerator,
    SceneObject,
    gt_correspondences,
    sample_scene,
)
from dinov3_ros.synthetic import torch_render as tr
from dinov3_ros.synthetic.shapes import SPHERE_CLASS
from dinov3_ros.synthetic.torch_pack import pack_scenes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pytest.importorskip("open3d")  # the reference renderer

W, H = 80, 64
CFG = SceneConfig(width=W, height=H, frames_per_scene=6, min_objects=4, tumble_prob=0.6)
SEED, SCENES = 3, (0, 1, 2, 3)


def _metrics(ref, rgb, depth, inst, normals) -> dict[str, float]:
    """Agreement of one torch-rendered frame with an open3d :class:`SynthFrame`."""
    hit_r, hit_t = ref.depth > 0, depth > 0
    both = hit_r & hit_t
    same_inst = inst == ref.instances
    agree = same_inst & both
    return {
        "valid": float((hit_r == hit_t).mean()),
        "rel_depth": float((np.abs(depth - ref.depth)[both] / ref.depth[both]).max()),
        "instances": float(same_inst.mean()),
        "rgb_same": float(np.all(rgb == ref.rgb, -1).mean()),
        "rgb_mad": float(np.abs(rgb.astype(np.int16) - ref.rgb).mean()),
        "cos": float((normals * ref.normals).sum(-1)[agree].min()),
    }


def _matches(m: dict[str, float]) -> bool:
    return (
        m["valid"] >= 0.995
        and m["rel_depth"] < 1e-4
        and m["instances"] >= 0.995
        and m["rgb_same"] >= 0.99
        and m["rgb_mad"] < 0.5
        and m["cos"] > 0.999
    )


def _crop_k(K: np.ndarray, k: int) -> np.ndarray:
    """A different intrinsics per frame: zoomed crops with shifted principal points."""
    K = K.copy()
    zoom = 1.0 + 0.25 * (k % 3)
    K[0, 0] *= zoom
    K[1, 1] *= zoom
    K[0, 2] = K[0, 2] * zoom - 3.0 * (k % 2) + 0.5 * (k % 4)
    K[1, 2] = K[1, 2] * zoom + 2.0 * (k % 3)
    return K


@pytest.fixture(scope="module")
def views():
    """Frames of several scenes (spheres, tori, tumbled objects), each with its own K, rendered by open3d."""
    specs = [sample_scene(CFG, SEED, s) for s in SCENES]
    classes = {o.class_id for sp in specs for o in sp.scene.objects if o.instance}
    tumbled = [o for sp in specs for o in sp.scene.objects if o.instance and abs(o.rotation[2, 2]) < 0.99]
    assert {SPHERE_CLASS, CLASS_NAMES.index("torus")} <= classes and len(tumbled) >= 2
    # objects without their room: rays that miss everything (background colour, depth 0, normals 0)
    for sp in specs[:2]:
        objs = [o for o in sp.scene.objects if o.instance]
        specs.append(replace(sp, scene=Scene(objs, light_dir=sp.scene.light_dir, ambient=0.35, sun=0.45)))
    rows = []
    for j, sp in enumerate(specs):
        for i in (0, 5):
            T = sp.trajectory.pose(i / (CFG.frames_per_scene - 1))
            K = _crop_k(sp.K, 2 * j + i)
            rows.append((j, T, K, sp.scene.render(T, K, W, H)))
    assert 0.2 < np.mean([(r[3].depth == 0).mean() for r in rows[-4:]]) < 0.95
    return specs, rows


def _render(specs, rows, T_fn=lambda T: T, K_fn=lambda K: K):
    packed = pack_scenes(specs)
    sid = torch.tensor([r[0] for r in rows])
    T = torch.from_numpy(np.stack([T_fn(r[1]) for r in rows]))
    K = torch.from_numpy(np.stack([K_fn(r[2]) for r in rows]))
    # small chunks and slices: several chunks and the sliced BVH traversal are exercised
    out = tr.render(packed, sid, T, K, H, W, chunk_rays=3 * H * W, max_elems=4096)
    return [
        _metrics(
            r[3], out.rgb[k].numpy(), out.depth[k].numpy(), out.instances[k].numpy(), out.normals[k].numpy()
        )
        for k, r in enumerate(rows)
    ]


def test_torch_render_matches_open3d_across_scenes_and_intrinsics(views):
    specs, rows = views
    ms = _render(specs, rows)
    for k, m in enumerate(ms):
        assert _matches(m), (k, m)
    assert np.mean([m["rgb_same"] for m in ms]) > 0.999


def _shift(T: np.ndarray, dx: float = 0.01) -> np.ndarray:
    T = T.copy()
    T[:3, 3] += T[:3, :3] @ np.array([dx, 0.0, 0.0])
    return T


def _turn(T: np.ndarray, deg: float = 0.5) -> np.ndarray:
    a = np.deg2rad(deg)
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    T = T.copy()
    T[:3, :3] = T[:3, :3] @ Rz
    return T


def _cx_off(K: np.ndarray) -> np.ndarray:
    K = K.copy()
    K[0, 2] += 1.0
    return K


@pytest.mark.parametrize(
    "bug", ["pose_1cm", "pose_0.5deg", "principal_point_1px", "mip_level"], ids=lambda b: b
)
def test_negative_controls_fail_the_checks(views, bug, monkeypatch):
    specs, rows = views
    if bug == "mip_level":  # footprint from twice the focal length: one mip level too fine
        orig = tr.shade

        def bad_shade(geo, q, t, d, n, lit):
            return orig(geo, q, t, d, n, {**lit, "fx": 2 * lit["fx"]})

        monkeypatch.setattr(tr, "shade", bad_shade)
        ms = _render(specs, rows)
    elif bug == "pose_1cm":
        ms = _render(specs, rows, T_fn=_shift)
    elif bug == "pose_0.5deg":
        ms = _render(specs, rows, T_fn=_turn)
    else:
        ms = _render(specs, rows, K_fn=_cx_off)
    room = ms[: 2 * len(SCENES)]  # the objects-only frames are mostly background
    assert not any(_matches(m) for m in room), room


def test_generator_torch_backend_equals_open3d_and_correspondences_work():
    kw = dict(width=W, height=H, frames_per_scene=4, tumble_prob=0.5)
    g_t = SceneGenerator(seed=21, backend="torch", **kw)
    g_o = SceneGenerator(seed=21, backend="open3d", **kw)
    assert g_t.backend == "torch" and g_o.backend == "open3d"
    for s, i in ((0, 0), (0, 3), (1, 2), (2, 1)):
        a, b = g_t.frame(s, i), g_o.frame(s, i)
        assert _matches(_metrics(b, a.rgb, a.depth, a.instances, a.normals)), (s, i)
        assert a.rgb.dtype == np.uint8 and a.depth.dtype == np.float32 and a.instances.dtype == np.int32
        assert a.normals.dtype == np.float32 and a.rgb.shape == (H, W, 3)
        for name in ("K", "T_world_cam", "instance_classes", "stamp_ns", "scene_index", "frame_index"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # pickled (DataLoader workers): same frames
    g2 = pickle.loads(pickle.dumps(g_t))
    assert g2.backend == "torch" and np.array_equal(g2.frame(1, 2).rgb, g_t.frame(1, 2).rgb)
    # GT correspondences on torch frames agree with those on open3d frames
    ct = gt_correspondences(*g_t.pair(0, 0, 3))
    co = gt_correspondences(*g_o.pair(0, 0, 3))
    assert 0.3 < ct.valid.mean() < 1.0
    assert (ct.valid == co.valid).mean() >= 0.99
    both = ct.valid & co.valid
    np.testing.assert_allclose(ct.pixels_b[both], co.pixels_b[both], atol=1e-3)


def test_noise_is_applied_the_same_way():
    kw = dict(width=48, height=40, frames_per_scene=2, noise_std=3.0)
    a = SceneGenerator(seed=2, backend="torch", **kw).frame(0, 1)
    b = SceneGenerator(seed=2, backend="open3d", **kw).frame(0, 1)
    assert np.abs(a.rgb.astype(int) - b.rgb).mean() < 0.5


def test_pack_rejects_what_it_cannot_render():
    bad_mesh = SceneObject(
        class_id=-1,
        translation=np.zeros(3),
        mesh=(np.random.default_rng(0).normal(size=(5, 3)), np.array([[0, 1, 2], [2, 3, 4]], np.int32)),
    )
    with pytest.raises(ValueError, match="quads"):
        pack_scenes([Scene([bad_mesh])])
    bad_tex = SceneObject(class_id=0, translation=np.zeros(3), instance=1, texture=10_000)
    with pytest.raises(ValueError, match="texture id"):
        pack_scenes([Scene([bad_tex])])
    spec = sample_scene(replace(CFG, width=32, height=32), 0, 0)
    packed = pack_scenes([spec])
    T = torch.eye(4, dtype=torch.float64)[None]
    K = torch.from_numpy(spec.K)[None]
    with pytest.raises(ValueError, match="scene ids"):
        tr.render(packed, torch.tensor([1]), T, K, 32, 32)
    with pytest.raises(ValueError, match="K"):
        tr.render(packed, torch.tensor([0]), T, K[0], 32, 32)
