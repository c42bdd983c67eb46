"""Preprocessing and geometry: exact mappings, intrinsics scaling, resampling agrees with the geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.runtime.preprocess import Geometry, Preprocessor, parse_target, to_rgb_uint8

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("target", "size", "fit"),
    [
        (448, (480, 640), "pad"),
        ((480, 640), (375, 500), "pad"),
        (224, (333, 517), "crop"),
        ((224, 224), (720, 1280), "pad"),
    ],
)
def test_geometry_roundtrip_and_grid(target, size, fit):
    pre = Preprocessor(target, 16, MEAN, STD, fit=fit)
    (g,) = pre.plan([size])
    assert g.network_size[0] % 16 == 0 and g.network_size[1] % 16 == 0
    assert g.grid_size == (g.network_size[0] // 16, g.network_size[1] // 16)
    if isinstance(target, tuple):
        assert g.network_size == target
    rng = np.random.default_rng(0)
    u = rng.uniform(0, size[1] - 1, 100)
    v = rng.uniform(0, size[0] - 1, 100)
    un, vn = g.input_to_network(u, v)
    ub, vb = g.network_to_input(un, vn)
    np.testing.assert_allclose(ub, u, atol=1e-9)
    np.testing.assert_allclose(vb, v, atol=1e-9)
    # aspect ratio kept to within one pixel of rounding
    assert abs(g.scale_x - g.scale_y) <= 1.0 / min(size)


def _ramp_image(H: int = 150, W: int = 230) -> np.ndarray:
    """Integer ramps (exact in uint8): R = u, G = v, B = 250 - v (u, v: input pixel centres)."""
    vv, uu = np.mgrid[0:H, 0:W]
    return np.stack([uu, vv, 250 - vv], 2).astype(np.uint8)


# upscaling (bilinear) reproduces a linear ramp exactly; the antialiased downscale to within 0.1 level
RAMP_TOL = {224: 1e-3, (96, 128): 0.15}


def _ramp_error(batch: torch.Tensor, g, to_input, mean=MEAN, std=STD, channels=(0, 1, 2)) -> float:
    """Max |network value - ramp at the input point ``to_input`` maps each network pixel to| (levels)."""
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    net = (batch * s + m).numpy()[0][list(channels)]
    x0, y0, x1, y1 = g.valid_box
    vn, un = np.mgrid[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4].astype(np.float64)
    ui, vi = to_input(un, vn)
    expect = np.stack([ui, vi, 250 - vi])
    return float(np.abs(net[:, y0 + 4 : y1 - 4, x0 + 4 : x1 - 4] - expect).max())


@pytest.mark.parametrize("target", [224, (96, 128)])
def test_resampling_matches_geometry(target):
    """The resized, normalised ramp equals the ramp evaluated at the input point the geometry maps each
    network pixel to: upscaling without antialias, letterboxed downscaling with it."""
    pre = Preprocessor(target, 16, MEAN, STD)
    batch, (g,) = pre(_ramp_image())
    assert _ramp_error(batch, g, g.network_to_input) < RAMP_TOL[target]
    if g.valid_box[1] > 0:  # padding is the normalised zero (= mean colour)
        assert np.allclose(batch[0, :, : g.valid_box[1]].numpy(), 0.0)


@pytest.mark.parametrize("target", [224, (96, 128)])
def test_resampling_check_catches_planted_bugs(target):
    """Negative controls: the same bound fails for a half-pixel (align-corners) mapping, BGR channel
    order, or the std of the wrong channels."""
    pre = Preprocessor(target, 16, MEAN, STD)
    batch, (g,) = pre(_ramp_image())

    def align_corners(un, vn):  # forgets the +0.5 / -0.5 of pixel centres
        return (un - g.offset_x) / g.scale_x, (vn - g.offset_y) / g.scale_y

    assert _ramp_error(batch, g, align_corners) > RAMP_TOL[target]
    assert _ramp_error(batch, g, g.network_to_input, channels=(2, 1, 0)) > RAMP_TOL[target]
    assert _ramp_error(batch, g, g.network_to_input, std=STD[::-1]) > RAMP_TOL[target]
    bgr, _ = Preprocessor(target, 16, MEAN[::-1], STD[::-1])(_ramp_image())  # mean/std in BGR order
    assert _ramp_error(bgr, g, g.network_to_input) > RAMP_TOL[target]


def test_intrinsics_scaling_projects_consistently():
    K = np.array([[500.0, 0.0, 319.5], [0.0, 505.0, 239.5], [0.0, 0.0, 1.0]])
    pts = np.random.default_rng(1).uniform([-1, -1, 2], [1, 1, 6], (50, 3))
    uv = (K @ pts.T).T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    pre = Preprocessor((224, 224), 16, MEAN, STD)
    (g,) = pre.plan([(480, 640)])
    for out_size in (None, g.grid_size, (112, 112)):
        Kn, (w, h) = g.scale_intrinsics(K, out_size)
        oh, ow = out_size or g.network_size
        assert (w, h) == (ow, oh)
        p = (Kn @ pts.T).T
        un, vn = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
        # the projection with K' equals the mapped input projection, in output-map pixels
        ue, ve = g.input_to_network(u, v)
        sx, sy = ow / g.network_size[1], oh / g.network_size[0]
        np.testing.assert_allclose(un, (ue + 0.5) * sx - 0.5, atol=1e-9)
        np.testing.assert_allclose(vn, (ve + 0.5) * sy - 0.5, atol=1e-9)
        # and mapping output pixels back lands on the input projection
        ub, vb = g.output_to_input(un, vn, (oh, ow))
        np.testing.assert_allclose(ub, u, atol=1e-9)
        np.testing.assert_allclose(vb, v, atol=1e-9)


def test_fixed_patch_grid():
    pre = Preprocessor.for_grid((30, 40), 16, mean=MEAN, std=STD)
    batch, (g,) = pre(np.zeros((720, 1280, 3), np.uint8))
    assert batch.shape == (1, 3, 480, 640) and g.grid_size == (30, 40)
    assert g.resized_size == (360, 640) and g.offset_y == 60.0  # letterboxed, centred


def test_patch_centre_maps_to_input():
    g = Geometry((480, 640), (480, 640), (480, 640), 1.0, 1.0, 0.0, 0.0, 16)
    u, v = g.patch_to_input(np.array([0, 29]), np.array([0, 39]))
    np.testing.assert_allclose(u, [7.5, 39 * 16 + 7.5])
    np.testing.assert_allclose(v, [7.5, 29 * 16 + 7.5])


def test_batch_of_different_sizes_shares_network_size():
    pre = Preprocessor(224, 16, MEAN, STD)
    imgs = [
        np.zeros((480, 640, 3), np.uint8),
        np.zeros((300, 300), np.uint8),
        np.zeros((200, 500, 4), np.uint8),
    ]
    batch, geoms = pre(imgs)
    assert batch.shape[0] == 3
    sizes = {g.network_size for g in geoms}
    assert len(sizes) == 1 and batch.shape[2:] == next(iter(sizes))
    for g, im in zip(geoms, imgs):
        assert g.input_size == im.shape[:2]
        assert abs(min(g.resized_size) - 224) <= 1
        x0, y0, x1, y1 = g.valid_box
        assert x1 - x0 == g.resized_size[1] and y1 - y0 == g.resized_size[0]


def test_encodings_and_errors():
    gray = np.full((4, 5), 7, np.uint8)
    assert to_rgb_uint8(gray).shape == (4, 5, 3)
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 9
    assert to_rgb_uint8(rgba)[0, 0].tolist() == [9, 0, 0]
    assert to_rgb_uint8(rgba, "bgra8")[0, 0].tolist() == [0, 0, 9]
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16))[0, 0, 0] == 255
    with pytest.raises(ValueError, match="shape"):
        to_rgb_uint8(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="multiples of patch size"):
        Preprocessor((100, 100), 16)
    assert parse_target("480x640") == (480, 640) and parse_target("448") == 448
    with pytest.raises(ValueError, match="HxW"):
        parse_target("big")


def test_to_input_resamples_back():
    pre = Preprocessor((96, 128), 16, MEAN, STD)
    (g,) = pre.plan([(60, 100)])
    # an output map whose value is the input x-coordinate of each output pixel centre
    oh, ow = g.grid_size
    vv, uu = np.mgrid[0:oh, 0:ow].astype(np.float64)
    ui, _ = g.output_to_input(uu, vv, (oh, ow))
    m = torch.from_numpy(ui[None]).float()
    back = g.to_input(m)[0].numpy()
    # bilinear interpolation of a linear function is exact away from the borders
    np.testing.assert_allclose(back[10:50, 12:88], np.arange(100)[None, 12:88].repeat(40, 0), atol=1e-3)


@pytest.mark.parametrize("target", [(224, 224), (112, 160), 96])
def test_batched_upload_identical_to_one_by_one(target):
    """Same-size numpy frames are uploaded and resized together: bit-identical to one frame at a time,
    whatever the batch composition (order, a tensor among the arrays, another size for fixed targets)."""
    rng = np.random.default_rng(3)
    a = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    pre = Preprocessor(target, 16, MEAN, STD)
    singles = [pre([im])[0][0] for im in a]
    batch, _ = pre([a[0], a[1], torch.from_numpy(a[2]), a[2]])
    for got, want in zip(batch, [*singles, singles[2]]):
        assert torch.equal(got, want)
    rev, _ = pre(a[::-1])
    assert all(torch.equal(rev[i], singles[2 - i]) for i in range(3))
    if isinstance(target, tuple):  # fixed canvas: a frame of another size does not change the others
        mixed, _ = pre([a[0], rng.integers(0, 256, (90, 150, 3), dtype=np.uint8), a[1]])
        assert torch.equal(mixed[0], singles[0]) and torch.equal(mixed[2], singles[1])


def test_batched_upload_serial_copy_path_identical():
    """With one torch thread the batch is copied in one ``torch.stack`` call (the offline tool on CUDA),
    otherwise frame by frame: the same batch either way, read-only frames (message buffers) included."""
    rng = np.random.default_rng(5)
    a = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
    ro = np.frombuffer(a[3].tobytes(), np.uint8).reshape(a[3].shape)  # a message buffer view
    assert not ro.flags.writeable
    pre = Preprocessor((112, 160), 16, MEAN, STD)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        many, _ = pre([*a[:3], ro])
        torch.set_num_threads(1)
        one, _ = pre([*a[:3], ro])
    finally:
        torch.set_num_threads(n)
    assert torch.equal(many, one)
