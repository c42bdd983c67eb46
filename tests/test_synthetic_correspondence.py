"""Ground-truth correspondences: exact reprojection, round trips, and the occlusion check."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dinov3_ros.synthetic import (
    CLASS_NAMES,
    Scene,
    SceneGenerator,
    SceneObject,
    all_pixels,
    backproject,
    gt_correspondences,
    intrinsics,
    look_at,
    quad,
)


def test_identity_pair_maps_every_pixel_to_itself():
    fr = SceneGenerator(seed=2, width=64, height=48, frames_per_scene=2)[0]
    c = gt_correspondences(fr, fr)
    assert c.valid.all()
    np.testing.assert_allclose(c.pixels_b, c.pixels_a, atol=1e-6)


def test_correspondences_reproject_consistently():
    gen = SceneGenerator(seed=4, width=96, height=72, frames_per_scene=10)
    a, b = gen.pair(0, 0, 4)
    c = gt_correspondences(a, b, all_pixels(a))
    assert 0.3 < c.valid.mean() < 1.0, c.valid.mean()
    # the same world point: from A's depth and from B's camera
    pa = backproject(c.pixels_a[c.valid], c.depth_a[c.valid], a.K)
    pw_a = pa @ a.T_world_cam[:3, :3].T + a.T_world_cam[:3, 3]
    pb = backproject(c.pixels_b[c.valid], c.z_b[c.valid], b.K)
    pw_b = pb @ b.T_world_cam[:3, :3].T + b.T_world_cam[:3, 3]
    np.testing.assert_allclose(pw_a, pw_b, atol=1e-6)
    # the projected z agrees with B's rendered depth: inverse depth is affine in (u, v) on a plane, so
    # bilinear interpolation of 1/depth at the sub-pixel location is exact on planar surfaces
    ub, vb = c.pixels_b[c.valid].T
    u0, v0 = np.floor(ub).astype(int), np.floor(vb).astype(int)
    inb = (u0 >= 0) & (v0 >= 0) & (u0 < b.width - 1) & (v0 < b.height - 1)
    u0, v0, fu, fv = u0[inb], v0[inb], (ub - np.floor(ub))[inb], (vb - np.floor(vb))[inb]
    inv = 1.0 / b.depth.astype(np.float64)
    interp = (
        inv[v0, u0] * (1 - fu) * (1 - fv)
        + inv[v0, u0 + 1] * fu * (1 - fv)
        + inv[v0 + 1, u0] * (1 - fu) * fv
        + inv[v0 + 1, u0 + 1] * fu * fv
    )
    assert np.median(np.abs(1.0 / interp - c.z_b[c.valid][inb])) < 1e-4
    # round trip: B's pixel maps back to (within a pixel of) A's pixel
    back = gt_correspondences(b, a, np.rint(c.pixels_b[c.valid]))
    ok = back.valid
    assert ok.mean() > 0.97
    err = np.linalg.norm(back.pixels_b[ok] - c.pixels_a[c.valid][ok], axis=1)
    assert np.percentile(err, 99) < 1.0, np.percentile(err, 99)


def test_occluded_points_are_excluded():
    """A box between camera B and the wall hides part of what A sees; those points must be invalid."""
    W, H = 80, 60
    K = intrinsics(W, H, 60.0)
    wall = SceneObject(class_id=-1, translation=np.zeros(3), mesh=quad([6, -10, -5], [0, 20, 0], [0, 0, 10]))
    box = SceneObject(
        class_id=CLASS_NAMES.index("box"), translation=np.array([2.0, 0.0, 1.0]), scale=0.8, instance=1
    )
    scene = Scene([wall, box])
    Ta = look_at([4.0, 0.5, 1.0], [6.0, 0.0, 1.0])  # between box and wall: sees the wall only
    Tb = look_at([0.0, -0.3, 1.0], [6.0, 0.0, 1.0])  # behind the box
    a, b = scene.render(Ta, K, W, H), scene.render(Tb, K, W, H)
    assert np.all(a.instances == 0) and (b.instances == 1).sum() > 200
    c = gt_correspondences(a, b)
    # exact visibility: cast a ray from B's centre to each world point
    pa = backproject(c.pixels_a, c.depth_a, K)
    pw = pa @ Ta[:3, :3].T + Ta[:3, 3]
    o = Tb[:3, 3]
    t, _, _ = scene.cast(o, pw - o)  # t in units of (point - origin): visible iff t ~ 1
    visible = t > 1 - 1e-4
    inside = (
        (c.pixels_b[:, 0] > -0.5)
        & (c.pixels_b[:, 0] < W - 0.5)
        & (c.pixels_b[:, 1] > -0.5)
        & (c.pixels_b[:, 1] < H - 0.5)
    )
    occluded = inside & ~visible
    assert occluded.sum() > 100, "test geometry must occlude something"
    assert not np.any(c.valid & occluded)
    # every visible point is kept, except in a one-pixel band around the occluder's silhouette in B
    # (there the nearest pixel's depth may belong to the other surface)
    box_b = b.instances == 1
    band = ndimage.binary_dilation(box_b, iterations=2) & ~ndimage.binary_erosion(box_b, iterations=2)
    lost = inside & visible & ~c.valid
    ub, vb = np.rint(c.pixels_b[lost]).astype(int).T
    assert band[np.clip(vb, 0, H - 1), np.clip(ub, 0, W - 1)].all()
    assert (c.valid == (inside & visible)).mean() > 0.95
