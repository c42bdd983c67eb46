"""Pipeline: output selection, resolutions + intrinsics, per-source state, determinism, geometry.

Uses a tiny deterministic torch engine built here (a fixed random linear patch embedding, so patch
tokens are a known function of the pixels) and a constant-depth head; plus the real random ViT-Ti.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinov3_ros.pipeline import OUTPUTS, CameraIntrinsics, Frame, PipelineConfig
from dinov3_ros.pipeline.outputs import resolve as resolve_outputs
from dinov3_ros.pipeline.pipeline import Pipeline
from dinov3_ros.runtime.preprocess import Preprocessor


class PatchEngine:
    """patch_tokens = a fixed random linear embedding of each 16x16 patch (content-addressed tokens)."""

    def __init__(self, C: int = 48, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(C, 3, 16, 16, generator=g) / 16.0
        self.calls = 0

    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        t = F.conv2d(batch.float(), self.w, stride=16).permute(0, 2, 3, 1).contiguous()
        return {"patch_tokens": t, "cls": t.mean((1, 2))}


class ConstDepth(torch.nn.Module):
    def __init__(self, z: float) -> None:
        super().__init__()
        self.z = torch.nn.Parameter(torch.tensor(z), requires_grad=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.z.expand(tokens.shape[0], 1, *tokens.shape[2:]).clone()


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


K640 = CameraIntrinsics(np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]]), 640, 480)


def make(res=(64, 96), z=2.0, **cfg) -> Pipeline:
    return Pipeline(PatchEngine(), PipelineConfig(resolution=res, **cfg), ConstDepth(z))


def test_only_requested_outputs_are_computed():
    p = make()
    f = Frame(texture(64, 96), 10, "cam", None)
    (o,) = p.process([f], {"features"})
    assert o["features"].shape == (4, 6, 48)
    assert set(o.values) == {"features"}
    assert resolve_outputs({"points", "debug"}) == {"points", "debug", "features_pca"}  # debug needs PCA
    with pytest.raises(ValueError, match="unknown output"):
        p.process([f], {"segmentation"})


def test_config_and_frame_validation():
    with pytest.raises(ValueError, match="multiples of 16"):
        PipelineConfig(resolution=(100, 96)).validate()
    with pytest.raises(ValueError, match="match_ratio"):
        PipelineConfig().with_updates(match_ratio=1.5)
    with pytest.raises(ValueError, match="keyframe_policy"):
        PipelineConfig().with_updates(keyframe_policy="sometimes")
    with pytest.raises(ValueError, match="unknown pipeline setting"):
        PipelineConfig().with_updates(nope=1)
    with pytest.raises(ValueError, match="camera_info size 640x480 does not match image 96x64"):
        Frame(texture(64, 96), 0, "cam", K640)
    with pytest.raises(ValueError, match="uint8 RGB"):
        Frame(np.zeros((4, 4), np.uint8), 0, "cam")


def test_intrinsics_resize_matches_geometry():
    small = K640.resized(320, 240)
    assert small.K[0, 0] == 250 and small.K[0, 2] == pytest.approx((319.5 + 0.5) * 0.5 - 0.5)
    g = Preprocessor((240, 320), 16).plan([(480, 640)])[0]
    Kg, size = g.scale_intrinsics(K640.K)
    assert size == (320, 240) and np.allclose(Kg, small.K)
    assert np.allclose(small.P[:, :3], small.K)


def test_depth_resolution_and_camera_info():
    img = texture(480, 640)
    o_in = make(res=(64, 96)).process([Frame(img, 1, "cam", K640)], {"depth"})[0]
    assert o_in["depth"].image.shape == (480, 640) and o_in["depth"].info is K640
    assert np.allclose(o_in["depth"].image, 2.0)
    o_net = make(res=(64, 96), depth_resolution="network").process([Frame(img, 1, "cam", K640)], {"depth"})[0]
    assert o_net["depth"].image.shape == (64, 96)
    g = Preprocessor((64, 96), 16).plan([(480, 640)])[0]
    Kn, _size = g.scale_intrinsics(K640.K, (64, 96))
    info = o_net["depth"].info
    assert (info.width, info.height) == (96, 64) and np.allclose(info.K, Kn)
    x0, _, x1, _ = g.valid_box  # 640x480 letterboxed into 96x64: 85x64 content, NaN padding
    assert np.isnan(o_net["depth"].image[:, :x0]).all() and np.allclose(o_net["depth"].image[:, x0:x1], 2.0)
    o_nok = make().process([Frame(img, 1, "cam", None)], {"depth"})[0]
    assert np.allclose(o_nok["depth"].info.K, CameraIntrinsics.from_fov(640, 480, 70.0).K)


def test_points_lie_on_the_depth_plane_with_camera_geometry():
    img = texture(128, 192)
    K = CameraIntrinsics(np.array([[150.0, 0, 95.5], [0, 150.0, 63.5], [0, 0, 1]]), 192, 128)
    o = make(res=(64, 96), z=3.0).process([Frame(img, 1, "cam", K)], {"points"})[0]
    assert o["points"].xyz.shape == (64 * 96, 3) and o["points"].rgb.shape == (64 * 96, 3)
    assert np.allclose(o["points"].xyz[:, 2], 3.0)
    # network = input / 2: x spans the image width: (u - cx) * z / fx over network pixel centres
    fx_n, cx_n = 75.0, (95.5 + 0.5) * 0.5 - 0.5
    assert o["points"].xyz[:, 0].min() == pytest.approx((0 - cx_n) * 3 / fx_n, abs=1e-4)
    assert o["points"].xyz[:, 0].max() == pytest.approx((95 - cx_n) * 3 / fx_n, abs=1e-4)
    ov = make(res=(64, 96), z=3.0, points_voxel=0.5).process([Frame(img, 1, "cam", K)], {"points"})[0]
    keys = np.unique(np.floor(o["points"].xyz / 0.5).astype(int), axis=0)
    assert ov["points"].xyz.shape[0] == keys.shape[0] < o["points"].xyz.shape[0]
    ox = make(res=(64, 96), z=3.0, points_color="none").process([Frame(img, 1, "cam", K)], {"points"})[0]
    assert ox["points"].rgb is None


@pytest.mark.parametrize("scale", [1, 2])
def test_matches_recover_a_known_shift_in_input_pixels(scale):
    big = texture(64 * scale, 96 * scale + 32 * scale, seed=3)
    f0 = big[:, 16 * scale : 16 * scale + 96 * scale].copy()
    f1 = big[:, : 96 * scale].copy()  # content moved right by 16*scale input pixels
    p = make(res=(64, 96), match_ratio=0.95, match_threshold=0.5)
    a, b = p.process([Frame(f0, 100, "cam", None, "s")], {"matches"})[0], None
    assert a["matches"].ref_stamp_ns is None and len(a["matches"]) == 0
    b = p.process([Frame(f1, 200, "cam", None, "s")], {"matches"})[0]
    m = b["matches"]
    assert m.ref_stamp_ns == 100 and m.ref_frame_id == "cam"
    assert len(m) >= 10
    d = m.uv1 - m.uv0
    good = np.all(np.abs(d - [16 * scale, 0]) <= 1.0 + 0.5 * scale, axis=1)
    assert good.mean() > 0.9, d


def smooth_texture(h: int, w: int, dx: float = 0.0, seed: int = 0) -> np.ndarray:
    """An analytic, non-repeating RGB texture (random sinusoids) moved right by ``dx`` pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(12):
            f, a = rng.uniform(0.15, 0.6), rng.uniform(0, 2 * np.pi)
            out[..., c] += np.cos(f * ((xx - dx) * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 2 * np.pi))
    return np.clip(128 + 30 * out, 0, 255).round().astype(np.uint8)


def test_matches_are_refined_to_subpixel_with_the_images():
    """A sub-pixel shift is recovered (the features alone give the patch grid); the keyframe keeps its
    own grey copy of the image, so a caller reusing the frame's buffer changes nothing; a keyframe
    restored from a state without the image still matches (features only)."""
    shift = 16.4
    img0, img1 = smooth_texture(64, 96), smooth_texture(64, 96, shift)
    runs = []
    keep = dict(res=(64, 96), match_ratio=0.95, match_threshold=0.5, match_unrefined="keep")
    for reuse in (False, True):
        p = make(**keep)
        f0 = Frame(img0.copy(), 100, "cam", None, "s")
        p.process([f0], {"matches"})
        if reuse:
            f0.image[:] = 0
        runs.append(p.process([Frame(img1, 200, "cam", None, "s")], {"matches"})[0]["matches"])
    m = runs[0]
    assert np.array_equal(m.uv1, runs[1].uv1) and len(m) >= 8
    d = m.uv1 - m.uv0
    err = np.abs(d - [shift, 0.0]).max(1)
    assert np.median(err) < 0.2 and (err < 1.0).mean() > 0.8, d
    p = make(**keep)
    p.process([Frame(img0, 100, "cam", None, "s")], {"matches"})
    tree, arrays = p.state_dict()
    del tree["v"]["s"]["v"]["matches"]["v"]["keyframe"]["v"]["grey"]  # a state saved before the image
    p.load_state_dict((tree, arrays))
    old = p.process([Frame(img1, 200, "cam", None, "s")], {"matches"})[0]["matches"]
    assert len(old) == len(m) and np.array_equal(old.uv0, m.uv0) and not np.array_equal(old.uv1, m.uv1)
    feat = make(res=(64, 96), match_ratio=0.95, match_threshold=0.5, match_refine="features")
    feat.process([Frame(img0, 100, "cam", None, "s")], {"matches"})
    only = feat.process([Frame(img1, 200, "cam", None, "s")], {"matches"})[0]["matches"]
    assert np.array_equal(only.uv1, old.uv1)  # match_refine=features: the feature refinement alone
    # match_unrefined=drop (the default): only the matches the images moved
    feat = make(res=(64, 96), match_ratio=0.95, match_threshold=0.5, match_refine="features")
    d = make(res=(64, 96), match_ratio=0.95, match_threshold=0.5)
    for q in (feat, d):
        q.process([Frame(img0, 100, "cam", None, "s")], {"matches"})
    base = feat.process([Frame(img1, 200, "cam", None, "s")], {"matches"})[0]["matches"]
    dropped = d.process([Frame(img1, 200, "cam", None, "s")], {"matches"})[0]["matches"]
    moved = np.any(m.uv1 != base.uv1, 1)
    assert len(dropped) == moved.sum() > 0 and np.array_equal(dropped.uv1, m.uv1[moved])


def test_per_source_state_and_batching():
    pa, pb = make(), make()
    f = {
        s: [
            Frame(
                texture(64, 96, seed=i + (10 if s == "b" else 0)),
                1000 * i + (1 if s == "b" else 0),
                s,
                None,
                s,
            )
            for i in range(3)
        ]
        for s in ("a", "b")
    }
    batched = [pa.process([f["a"][i], f["b"][i]], set(OUTPUTS)) for i in range(3)]
    single_a = [pb.process([f["a"][i]], set(OUTPUTS))[0] for i in range(3)]
    assert pa.engine.calls == 3  # one engine call per batch of two cameras
    for i in range(3):
        oa, ob = batched[i]
        assert (
            oa.source == "a" and ob.source == "b" and oa.stamp_ns == 1000 * i and ob.stamp_ns == 1000 * i + 1
        )
        assert np.allclose(oa["features"], single_a[i]["features"], atol=1e-5)
        assert np.array_equal(oa["features_pca"], single_a[i]["features_pca"])
        if i:
            assert (
                oa["matches"].ref_stamp_ns == 1000 * (i - 1)
                and ob["matches"].ref_stamp_ns == 1000 * (i - 1) + 1
            )


def test_deterministic_and_state_dict_round_trip():
    frames = [Frame(texture(96, 128, seed=i), i, "cam", None, "s") for i in range(3)]
    outs = [make().process([fr], set(OUTPUTS))[0] for fr in frames[:1]]
    again = [make().process([fr], set(OUTPUTS))[0] for fr in frames[:1]]
    for name in ("features", "features_pca", "debug"):
        assert np.array_equal(outs[0][name], again[0][name]), name
    assert np.array_equal(outs[0]["depth"].image, again[0]["depth"].image)
    assert np.array_equal(outs[0]["points"].xyz, again[0]["points"].xyz)
    assert np.array_equal(outs[0]["points"].rgb, again[0]["points"].rgb)
    assert np.array_equal(outs[0]["objects"].mask, again[0]["objects"].mask)
    p1, p2 = make(), make()
    p1.process(frames[:2], {"matches", "objects", "features_pca"})
    tree, arrays = p1.state_dict()
    assert "pyramid" not in str(tree)  # the keyframe's prepared image is a cache, not state
    p2.load_state_dict((tree, arrays))
    r1 = p1.process([frames[2]], {"matches", "objects", "features_pca"})[0]
    r2 = p2.process([frames[2]], {"matches", "objects", "features_pca"})[0]
    assert np.array_equal(r1["matches"].uv0, r2["matches"].uv0) and np.array_equal(
        r1["features_pca"], r2["features_pca"]
    )
    assert np.array_equal(r1["objects"].mask, r2["objects"].mask)


def test_objects_find_a_square_and_boxes_are_in_input_pixels():
    img = np.full((64, 96, 3), 40, np.uint8)
    img[16:48, 32:64] = (250, 30, 30)  # 2x2 patches
    p = make(res=(64, 96), max_objects=2, mask_encoding="mono16", tokencut_tau=0.5)
    o = p.process([Frame(img, 5, "cam", None)], {"objects"})[0]
    ob = o["objects"]
    assert ob.mask.shape == (64, 96) and ob.mask.dtype == np.uint16
    assert len(ob.ids) == 1, ob
    best = 0
    assert np.allclose(ob.boxes[best], [32, 16, 64, 48])
    assert ob.areas[best] == int((ob.mask == ob.ids[best]).sum()) == 32 * 32
    assert set(np.unique(ob.mask).tolist()) == {0, int(ob.ids[0])}
    # the same object keeps its id on the next frame (tracker per source)
    o2 = p.process([Frame(img, 6, "cam", None)], {"objects"})[0]
    assert ob.ids[best] in set(o2["objects"].ids.tolist())


def test_runtime_config_change_applies():
    p = make(match_max=512, match_ratio=1.0, match_threshold=-1.0)
    frames = [Frame(texture(64, 96, seed=9), i, "cam", None) for i in range(3)]
    p.process([frames[0]], {"matches"})
    n_all = len(p.process([frames[1]], {"matches"})[0]["matches"])
    p.set_config(p.config.with_updates(match_max=5))
    assert n_all > 5 and len(p.process([frames[2]], {"matches"})[0]["matches"]) <= 5


@pytest.mark.slow
def test_random_vit_end_to_end_all_outputs():
    from dinov3_ros.pipeline.model import ModelLoadError, load_model

    torch.set_num_threads(1)
    m = load_model("random:vitt16", resolution=(64, 96))
    p = Pipeline.from_model(m, PipelineConfig(resolution=(64, 96)))
    o = p.process([Frame(texture(120, 160), 7, "cam_optical", None)], set(OUTPUTS))[0]
    d = o["depth"].image
    assert o["features"].shape == (4, 6, 192) and d.shape == (120, 160) and np.isfinite(d).all()
    assert o["debug"].shape == (120, 160, 3) and o["objects"].mask.shape == (120, 160)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("/nonexistent/model.pth")
    with pytest.raises(ModelLoadError, match=r"unknown arch|cannot build"):
        load_model("random:vit_nope")


def test_model_without_depth_head_skips_depth_and_points_only():
    p = Pipeline(PatchEngine(), PipelineConfig(resolution=(64, 96)), depth_head=None)
    (o,) = p.process([Frame(texture(64, 96), 1, "cam", None)], set(OUTPUTS))
    assert set(o.values) == set(OUTPUTS) - {
        "depth",
        "points",
        "depth_points",
        "odometry",
    }  # and what reads depth


def test_parallel_heads_give_identical_results():
    frames = [Frame(texture(96, 128, seed=i), i, "cam", None, "s") for i in range(3)]
    par, ser = make(parallel_heads=True), make(parallel_heads=False)
    for fr in frames:
        a = par.process([fr], set(OUTPUTS))[0]
        b = ser.process([fr], set(OUTPUTS))[0]
        assert np.array_equal(a["objects"].mask, b["objects"].mask) and np.array_equal(
            a["objects"].boxes, b["objects"].boxes
        )
        assert np.array_equal(a["debug"], b["debug"]) and np.array_equal(a["matches"].uv1, b["matches"].uv1)


def _same_outputs(a, b, matches: bool = True) -> None:
    assert set(a.values) == set(b.values)
    for name in ("features", "features_pca", "debug"):
        if name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    if "depth" in a:
        np.testing.assert_array_equal(a["depth"].image, b["depth"].image)
    if "points" in a:
        np.testing.assert_array_equal(a["points"].xyz, b["points"].xyz)
        np.testing.assert_array_equal(a["points"].rgb, b["points"].rgb)
    np.testing.assert_array_equal(a["objects"].mask, b["objects"].mask)
    np.testing.assert_array_equal(a["objects"].ids, b["objects"].ids)
    if matches:
        np.testing.assert_array_equal(a["matches"].uv0, b["matches"].uv0)
        np.testing.assert_array_equal(a["matches"].uv1, b["matches"].uv1)


def test_infer_finish_split_equals_process_batched_and_overlapped():
    """``finish(infer(f))`` == ``process(f)``; several handles in flight (the offline overlap) and
    frames of two sources in one batch change nothing; per-frame and batched runs agree."""
    frames = [Frame(texture(96, 128, seed=i), i, "cam", K640.resized(128, 96), f"s{i % 2}") for i in range(6)]
    outs = set(OUTPUTS)
    ref = make(res=(64, 96))
    want = [ref.process([f], outs)[0] for f in frames]
    p = make(res=(64, 96))
    h1 = p.infer(frames[:3], outs)
    h2 = p.infer(frames[3:], outs)  # inferred before the first batch's heads ran
    got = p.finish(h1) + p.finish(h2)
    assert len(got) == 6
    for a, b in zip(want, got):
        _same_outputs(a, b)
    assert p.finish(p.infer([], outs)) == []


def test_voxel_downsample_matches_reference_accumulation():
    from dinov3_ros.pipeline.voxel import voxel_downsample

    rng = np.random.default_rng(0)
    pts = (rng.standard_normal((5000, 3)) * [2, 1, 3]).astype(np.float32)
    cols = rng.integers(0, 256, (5000, 3), dtype=np.uint8)
    out, oc = voxel_downsample(pts, cols, 0.25)
    keys = np.floor(pts / 0.25).astype(np.int64)
    u, inv, cnt = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    ref = np.zeros((len(u), 3))
    np.add.at(ref, inv, pts)
    refc = np.zeros((len(u), 3))
    np.add.at(refc, inv, cols.astype(np.float64))
    np.testing.assert_array_equal(out, (ref / cnt[:, None]).astype(np.float32))
    np.testing.assert_array_equal(oc, np.clip(refc / cnt[:, None] + 0.5, 0, 255).astype(np.uint8))
    # voxel ordering is lexicographic on the integer keys
    assert np.all(np.diff(np.floor(out[:, 0] / 0.25)) >= 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: runs on the GPU machine")
def test_cuda_pipeline_matches_cpu_and_overlap_is_deterministic():
    """Heads on the GPU (side-stream inference, device TokenCut/PCA/matches/points) agree with the CPU
    run; infer on one thread with finish on another gives the same bytes as process."""
    import threading

    class DevEngine(PatchEngine):
        def run(self, batch):
            self.w = self.w.to(batch.device)
            return super().run(batch)

    frames = [Frame(texture(96, 128, seed=i), i, "cam", K640.resized(128, 96), "s") for i in range(4)]
    outs = set(OUTPUTS)

    def mk(device):
        return Pipeline(
            DevEngine(), PipelineConfig(resolution=(96, 128)), ConstDepth(2.0).to(device), device=device
        )

    ref = mk("cpu")  # one pipeline: per-source state (PCA basis, keyframe, tracker) carries across frames
    cpu = [ref.process([f], outs)[0] for f in frames]
    g = mk("cuda")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full-precision convs for the CPU comparison
    try:
        gpu = g.process(frames[:2], outs) + g.process(frames[2:], outs)
        for a, b in zip(cpu, gpu):
            np.testing.assert_allclose(a["features"], b["features"], rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(a["depth"].image, b["depth"].image)
            np.testing.assert_allclose(a["points"].xyz, b["points"].xyz, rtol=1e-5, atol=1e-5)
            assert np.abs(a["features_pca"].astype(int) - b["features_pca"].astype(int)).max() <= 2
            assert b["objects"].mask.shape == a["objects"].mask.shape and len(b["objects"].ids) >= 1
        g2 = mk("cuda")
        got: list = []
        handles = [g2.infer(frames[:2], outs)]
        th = threading.Thread(target=lambda: got.extend(g2.finish(handles[0])))
        th.start()
        handles.append(g2.infer(frames[2:], outs))  # overlaps the first batch's heads
        th.join()
        got += g2.finish(handles[1])
        for a, b in zip(gpu, got):
            _same_outputs(a, b)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.parametrize("outputs", [set(OUTPUTS), {"features_pca", "depth", "points", "objects"}])
def test_on_ready_reports_each_output_once_when_final(outputs):
    """``finish(h, on_ready)`` reports every requested output of every frame exactly once, at a moment its
    fields are already set, and changes nothing in the results (batched PCA copy path included)."""
    frames = [Frame(texture(96, 128, seed=i), i, "cam", None, f"s{i % 2}") for i in range(4)]
    want = resolve_outputs(outputs)
    seen: dict[int, list[str]] = {}
    threads: dict[str, set[str]] = {}
    lock = threading.Lock()

    def on_ready(i, out, names):
        for n in names:
            assert out.get(n) is not None and not isinstance(out[n], torch.Tensor), n
        with lock:  # depth/points come from the geometry thread
            seen.setdefault(i, []).extend(names)
            for n in names:
                threads.setdefault(n, set()).add(threading.current_thread().name)

    a, b = make(pca_mode="fit_once"), make(pca_mode="fit_once")
    for _ in range(2):  # second round: fixed PCA bases, coloured per batch
        seen.clear()
        got = a.finish(a.infer(frames, want), on_ready=on_ready)
        ref = b.process(frames, want)
        assert sorted(seen) == list(range(len(frames)))
        for i in range(len(frames)):
            assert sorted(seen[i]) == sorted(want), (i, seen[i])
            _same_outputs(got[i], ref[i], matches="matches" in want)
    caller = threading.current_thread().name
    # pool outputs (shared pool) and "own" outputs (own threads): from the threads that compute them;
    # the others on the caller's
    from dinov3_ros.pipeline.outputs import REGISTRY

    own = {
        n: "dinov3_pool" if o.worker == "pool" else f"dinov3_{n}"
        for n, o in REGISTRY.items()
        if o.worker != "finish"
    }
    for n, prefix in own.items():
        assert all(th.startswith(prefix) for th in threads.get(n, ())), threads
    assert all(th == {caller} for n, th in threads.items() if n not in own), threads


def test_organized_cloud_is_the_pinhole_per_pixel():
    # every pixel back-projected (NaN where the depth is not finite and positive), colour bits 0x00RRGGBB
    from dinov3_ros.core.frames import DepthImage
    from dinov3_ros.msgs.layouts import pack_rgb
    from dinov3_ros.pipeline.outputs.depth_points import organized_cloud

    rng = np.random.default_rng(2)
    h, w = 37, 53
    d = rng.uniform(-1.0, 6.0, (h, w)).astype(np.float32)
    d.flat[::7], d.flat[::11], d.flat[::13] = np.nan, np.inf, 0.0
    K = CameraIntrinsics(np.array([[41.0, 0, 25.5], [0, 43.0, 18.0], [0, 0, 1]]), w, h)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok = np.isfinite(d) & (d > 0)
    z = np.where(ok, d, np.float32(np.nan))
    u = (np.arange(w, dtype=np.float32) - np.float32(25.5)) / np.float32(41.0)
    v = (np.arange(h, dtype=np.float32) - np.float32(18.0)) / np.float32(43.0)
    ref = np.stack([u[None, :] * z, v[:, None] * z, z, pack_rgb(rgb.reshape(-1, 3)).reshape(h, w)], -1)
    got = organized_cloud(DepthImage(d, K), rgb)
    assert got.rows.shape == (h, w, 4) and got.rows.dtype == np.float32 and not got.dense
    assert got.rows.tobytes() == ref.tobytes()
    xyz = organized_cloud(DepthImage(d, K))
    assert xyz.rows.shape == (h, w, 3) and xyz.rows.tobytes() == np.ascontiguousarray(ref[..., :3]).tobytes()
    assert organized_cloud(DepthImage(np.ones((h, w), np.float32), K)).dense


def test_points_host_packing_is_the_device_packing():
    # a CPU engine packs the ~/points rows in numpy: the bytes of the torch (device) packing
    from dinov3_ros.pipeline.outputs.points import _host_cloud

    rng = np.random.default_rng(3)
    pts = torch.from_numpy(rng.normal(size=(57, 3)).astype(np.float32))
    pts[4, 1] = float("inf")
    cols = torch.from_numpy(rng.integers(0, 256, (57, 3), dtype=np.uint8))
    c = cols.to(torch.int32)
    rgbf = ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(torch.float32)
    ref = torch.cat([pts, rgbf[:, None]], 1).numpy()
    got = _host_cloud(pts.numpy(), cols.numpy())
    assert got.packed.tobytes() == ref.tobytes() and not got.dense
    assert np.array_equal(got.rgb, cols.numpy()) and got.xyz.tobytes() == pts.numpy().tobytes()
    empty = _host_cloud(pts[:0].numpy(), cols[:0].numpy())
    assert empty.packed.shape == (0, 4) and empty.dense
    plain = _host_cloud(pts[:4].numpy(), None)
    assert plain.packed.tobytes() == pts[:4].numpy().tobytes() and plain.rgb is None and plain.dense


def test_points_grid_cloud_is_backproject_and_packing():
    # a CPU engine with every sample valid computes the rows in numpy: the bytes of backproject + packing
    from dinov3_ros.heads.pointcloud import backproject
    from dinov3_ros.pipeline.outputs.points import _grid_cloud, _host_cloud

    rng = np.random.default_rng(4)
    K = np.array([[83.3, 0, 47.25], [0, 81.7, 31.5], [0, 0, 1]])
    d = rng.uniform(0.05, 50.0, (29, 41)).astype(np.float32)
    rgb = rng.integers(0, 256, (29, 41, 3), dtype=np.uint8)
    for stride, origin in ((1, (0, 0)), (2, (6, 4)), (3, (9, 0))):
        pts, cols = backproject(torch.from_numpy(d), K, torch.from_numpy(rgb), stride=stride, origin=origin)
        ref = _host_cloud(pts.numpy(), cols.numpy())
        got = _grid_cloud(d, K, rgb, stride, origin)
        assert got.packed.tobytes() == ref.packed.tobytes() and got.dense == ref.dense
        assert np.array_equal(got.rgb, ref.rgb) and got.xyz.tobytes() == ref.xyz.tobytes()
        plain = _grid_cloud(d, K, None, stride, origin)
        assert plain.packed.tobytes() == np.ascontiguousarray(pts.numpy()).tobytes() and plain.rgb is None
    holed = d.copy()
    holed[3, 5] = np.nan
    assert _grid_cloud(holed, K, rgb, 1, (0, 0)) is None


def test_a_batch_submits_its_pooled_heads_in_chunks_with_the_serial_results(monkeypatch):
    """A batch of 12 frames: each head off this thread is submitted once per chunk of frames (not once
    per frame), and every output equals the serial run's."""
    from dinov3_ros.pipeline import executor

    frames = [Frame(texture(96, 128, seed=i), i, "cam", K640.resized(128, 96), "s") for i in range(12)]
    outs = set(OUTPUTS)
    ser = make(parallel_heads=False)
    want = ser.finish(ser.infer(frames, outs))
    submitted: list[str] = []
    real = executor.HeadRunner._submit

    def counting(self, head, fn, ready):
        submitted.append(head.name)
        return real(self, head, fn, ready)

    monkeypatch.setattr(executor.HeadRunner, "_submit", counting)
    par = make(parallel_heads=True)
    got = par.finish(par.infer(frames, outs))
    for a, b in zip(got, want):
        _same_outputs(a, b)
    per_head = {name: submitted.count(name) for name in set(submitted)}
    assert per_head and max(per_head.values()) <= executor.POOL_WORKERS < len(frames)
    assert per_head["objects"] == 1  # an own-thread head: one task for the batch, frames in order
