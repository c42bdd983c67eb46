"""End-to-end evaluation: the GT oracle scores perfectly, label-free noise scores at chance, a (tiny)
real backbone and a depth-head file run through every task, and `dinov3-ros eval` writes JSON + PNG."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dinov3_ros.eval.data import load_data, synthetic_data
from dinov3_ros.eval.features import BackboneFeatures, NoiseFeatures
from dinov3_ros.eval.metrics import random_match_chance
from dinov3_ros.eval.objects import instance_features
from dinov3_ros.eval.runner import ORACLE, EvalOptions, evaluate
from dinov3_ros.models.testing import random_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_data(
        seed=77,
        size=(96, 96),
        train_scenes=4,
        test_scenes=2,
        frames_per_scene=5,
        pair_gap=2,
        probe_scenes=(12, 8),
    )


def test_oracle_scores_perfectly(data):
    res, ex = evaluate(ORACLE, data)
    d, c, t, p = res["depth"], res["correspondence"], res["tokencut"], res["probe"]
    assert d["abs_rel"] == 0.0 and d["rmse"] == 0.0 and d["delta1"] == 1.0
    assert c["recall@1px"] == c["recall@2px"] == c["recall@4px"] == 1.0
    assert c["rot_err_deg_median"] < 0.1 and c["trans_err_deg_median"] < 1.0 and c["pairs"] == 6
    assert t["iou"] == 1.0 and t["corloc"] == 1.0 and t["corloc_any"] == 1.0 and t["images"] > 0
    assert p["knn_acc"] == 1.0 and p["linear_acc"] == 1.0 and p["test_crops"] > 5
    assert ex["depth_pred"].shape == (96, 96)
    back = json.loads(json.dumps(res, allow_nan=False))  # JSON-able, no NaN
    assert back["summary"] == res["summary"] and back["depth"] == res["depth"]
    # perfect on every scene: every interval is the point itself; two test scenes are counted
    assert res["summary_ci95"]["tokencut.corloc"] == [1.0, 1.0] and res["summary_ci95"]["depth.abs_rel"] == [
        0,
        0,
    ]
    assert set(res["summary_ci95"]) == {k for k in res["summary"] if "err_deg" not in k} - {"depth.rmse"}
    assert t["scenes"] == c["scenes"] == 2


def test_instance_features_are_the_majority_instance_per_patch(data):
    fr = data.test[0]
    f = instance_features(fr, 16)
    assert f.shape[:2] == (6, 6) and np.array_equal(f.sum(-1), np.ones((6, 6)))
    block = fr.instances[16:32, 32:48]
    assert int(f[1, 2].argmax()) == int(np.bincount(block.ravel().astype(np.int64)).argmax())


def test_noise_features_score_at_chance(data):
    res, _ = evaluate(NoiseFeatures(dim=32, seed=1), data, EvalOptions(matcher="dense"))
    c, t, p = res["correspondence"], res["tokencut"], res["probe"]
    assert c["recall@4px"] <= 5 * random_match_chance(96, 96, 4.0) + 0.01
    assert c["pose_acc@5deg"] == 0.0
    assert t["iou"] < 0.35
    for task, key in (("tokencut", "iou"), ("correspondence", "recall@4px"), ("probe", "linear_acc")):
        lo, hi = res[task]["ci95"][key]
        assert lo <= res[task][key] <= hi and hi - lo > 0, (task, lo, hi)  # noisy scores: a real spread
    ceiling = t["instance_features"]  # TokenCut on perfect instance features: the same for every model
    assert (
        ceiling
        == evaluate(ORACLE, data, EvalOptions(tasks=("tokencut",)))[0]["tokencut"]["instance_features"]
    )
    assert ceiling["corloc_any"] > t["corloc_any"] + 0.2 and ceiling["iou"] > t["iou"], (ceiling, t)
    # 1-NN on label-free features predicts labels distributed like the training labels: accuracy is
    # binomial around sum_c p_train(c) p_test(c)
    c0, n = p["chance_prior"], p["test_crops"]
    assert n >= 15
    assert abs(p["knn1_acc"] - c0) <= 3 * np.sqrt(c0 * (1 - c0) / n) + 0.02, p
    assert res["depth"]["delta1"] < 0.6


def _hand_features(bb, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patch tokens and CLS of ``bb`` on images normalised by hand: (x / 255 - mean) / std, NCHW."""
    mean = np.array(bb.norm_mean, np.float32)[None, :, None, None]
    std = np.array(bb.norm_std, np.float32)[None, :, None, None]
    x = (images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
    with torch.no_grad():
        out = bb.forward_features(torch.from_numpy(x))
    h, w = images.shape[1] // 16, images.shape[2] // 16
    return out["x_norm_patchtokens"].reshape(len(images), h, w, -1).numpy(), out["x_norm_clstoken"].numpy()


@pytest.fixture(scope="module")
def tiny():
    bb = random_backbone("vitt16", seed=0, depth=2)
    return bb, BackboneFeatures(bb, name="vitt16-2blk")


def test_backbone_features_equal_hand_normalised_forward(data, tiny):
    bb, model = tiny
    images = np.stack([f.rgb for f in data.test[:3]])
    pt, cls = model(images)
    ref_pt, ref_cls = _hand_features(bb, images)
    assert pt.shape == (3, 6, 6, 192) and cls.shape == (3, 192)
    np.testing.assert_allclose(pt, ref_pt, atol=1e-5)
    np.testing.assert_allclose(cls, ref_cls, atol=1e-5)
    # negative controls: BGR channel order, or normalising with the std of another channel, fails
    bgr, _ = model(images[..., ::-1].copy())
    assert np.abs(bgr - ref_pt).max() > 1e-2
    wrong = BackboneFeatures(bb, name="wrong-std")
    wrong._std = wrong._std.flip(1)
    assert np.abs(wrong(images)[0] - ref_pt).max() > 1e-2


def test_tiny_backbone_all_tasks(data, tiny):
    _, model = tiny
    # keep: on these 96x96 frames the image refinement confirms none of a random network's matches
    opts = EvalOptions(match_unrefined="keep")
    res, _ = evaluate(model, data, opts)
    assert res["feature_dim"] == 192 and res["patch_grid"] == [6, 6]
    assert res["tokencut"]["implementation"] == ["heads.tokencut"]
    assert res["matcher"] == "heads" and res["match_unrefined"] == "keep"
    again, _ = evaluate(model, data, opts)  # deterministic
    for task in ("depth", "correspondence", "tokencut", "probe", "summary"):
        assert again[task] == res[task], task
    s = res["summary"]
    assert s["depth.abs_rel"] == res["depth"]["abs_rel"] and s["probe.knn_acc"] == res["probe"]["knn_acc"]
    # features of a network whose every block matters still match textures better than chance
    c = res["correspondence"]
    assert c["recall@4px"] > c["chance"]["recall@4px"], c


def test_heads_matcher_refines_with_the_images(data, tiny, monkeypatch):
    """``heads`` (the pipeline's matcher) refines the feature matches with the pair's frames;
    ``heads-features`` keeps the features' own precision measurable; the CLI offers the runner's
    matchers."""
    import argparse

    from dinov3_ros.eval import runner
    from dinov3_ros.eval.cli import add_arguments
    from dinov3_ros.eval.matching import heads_match

    calls = []

    def spy(fa, fb, p, image_a=None, image_b=None, inliers_only=False, unrefined=None):
        calls.append((image_a, image_b))
        return heads_match(fa, fb, p, image_a, image_b, inliers_only, unrefined)

    monkeypatch.setattr(runner, "heads_match", spy)
    _, model = tiny
    res = {}
    for m, unrefined in (("heads", None), ("heads", "keep"), ("heads-features", None)):
        calls.clear()
        opts = EvalOptions(tasks=("correspondence",), matcher=m, match_unrefined=unrefined)
        res[m, unrefined], _ = evaluate(model, data, opts)
        assert res[m, unrefined]["matcher"] == m and calls
        rgb = {id(f.rgb) for f in data.test}
        if m != "heads-features":
            assert all(id(a) in rgb and id(b) in rgb and a is not b for a, b in calls)
            assert res[m, unrefined]["match_unrefined"] == (unrefined or "drop")  # the node's default
        else:
            assert all(a is None and b is None for a, b in calls)
    keep, feat = res["heads", "keep"]["correspondence"], res["heads-features", None]["correspondence"]
    assert keep["matches_per_pair"] == feat["matches_per_pair"]  # the same matches, some moved
    # the default (match_unrefined drop): only the refined ones, so fewer
    assert 0 < res["heads", None]["correspondence"]["matches_per_pair"] < keep["matches_per_pair"]
    with pytest.raises(ValueError, match="heads, heads-features, heads-inliers, dense"):
        evaluate(model, data, EvalOptions(tasks=("correspondence",), matcher="nearest"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "matcher"]
    assert tuple(action.choices) == runner.MATCHERS and action.default == EvalOptions().matcher == "heads"


def test_depth_head_file_metrics_equal_hand_computed(data, tiny, tmp_path):
    """``--depth-head``: the reported metrics equal the per-frame metrics of the head run by hand on the
    backbone's intermediate layers (hand-normalised input), clipped to the evaluation range, averaged."""
    from dinov3_ros.eval.depth import MAX_DEPTH, MIN_DEPTH
    from dinov3_ros.eval.metrics import depth_metrics, mean_metrics
    from dinov3_ros.heads.depth import LinearDepthHead, save_head

    bb, model = tiny
    torch.manual_seed(0)
    head = LinearDepthHead(192, n_bins=16, min_depth=0.1, max_depth=10.0).eval()
    path = tmp_path / "head.pt"
    norm = {"mean": list(bb.norm_mean), "std": list(bb.norm_std)}
    save_head(path, head, {"arch": "vitt16", "normalization": norm, "input_size": [96, 96], "layers": [1]})
    res, ex = evaluate(model, data, EvalOptions(tasks=("depth",), depth_head=str(path)))
    assert res["depth_method"].startswith("head:")
    images = np.stack([f.rgb for f in data.test])
    mean = torch.tensor(bb.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.norm_std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        layers = bb.get_intermediate_layers(x, n=[1], reshape=True, return_class_token=True)
        pred = head(list(layers), output_size=(96, 96))[:, 0].numpy().astype(np.float64)
    np.testing.assert_allclose(ex["depth_pred"], pred[0], rtol=1e-5)
    per = [depth_metrics(np.clip(p, MIN_DEPTH, MAX_DEPTH), f.depth) for p, f in zip(pred, data.test)]
    want = mean_metrics(per)
    for k in ("abs_rel", "sq_rel", "rmse", "delta1", "silog", "log10"):
        assert res["depth"][k] == pytest.approx(want[k], rel=1e-5), k
    assert res["depth"]["images"] == len(data.test)


def test_objects_head_file_is_what_tokencut_cuts(data, tiny, tmp_path):
    """``--objects-head``: the TokenCut scores equal TokenCut run by hand on the head's projection of the
    backbone's patch tokens; raw tokens (no head) score differently."""
    from dinov3_ros.eval.objects import evaluate_tokencut, tokencut_mask
    from dinov3_ros.heads.objects_head import ObjectsHead, save_objects_head

    _, model = tiny
    rng = np.random.default_rng(0)
    head = ObjectsHead(rng.standard_normal((192, 4)).astype(np.float32), np.zeros(4, np.float32))
    path = tmp_path / "objects_head.npz"
    save_objects_head(path, head, {"arch": "vitt16"})
    res, ex = evaluate(model, data, EvalOptions(tasks=("tokencut",), objects_head=str(path)))
    raw, raw_ex = evaluate(model, data, EvalOptions(tasks=("tokencut",)))
    tokens = model(np.stack([f.rgb for f in data.test]))[0]
    proj = head.apply_numpy(tokens)
    want = evaluate_tokencut(data.test, lambda i, fr: tokencut_mask(proj[i])[0])
    for k in ("iou", "corloc", "corloc_any"):
        assert res["tokencut"][k] == want[k], k
    assert res["tokencut"]["objects_head"] == str(path) and raw["tokencut"]["objects_head"] == "none"
    np.testing.assert_array_equal(ex["mask"], tokencut_mask(proj[0])[0])
    np.testing.assert_array_equal(raw_ex["mask"], tokencut_mask(tokens[0])[0])
    # the control: the projection changes the cut (so the equalities above tell head from no head)
    assert any(
        not np.array_equal(tokencut_mask(proj[i])[0], tokencut_mask(tokens[i])[0]) for i in range(len(proj))
    )
    save_objects_head(
        path, ObjectsHead(np.zeros((64, 4), np.float32), np.zeros(4, np.float32)), {"arch": "x"}
    )
    with pytest.raises(ValueError, match="64-d tokens, backbone gives 192"):
        evaluate(model, data, EvalOptions(tasks=("tokencut",), objects_head=str(path)))


def test_folder_data_split(tmp_path):
    from dinov3_ros.synthetic import SceneGenerator
    from dinov3_ros.synthetic.writers import write_folder

    gen = SceneGenerator(seed=4, width=48, height=48, frames_per_scene=4)
    write_folder((gen[k] for k in range(12)), tmp_path / "f")
    d = load_data(str(tmp_path / "f"), pair_gap=2)
    assert len(d.train) == 8 and len(d.test) == 4
    assert {f.scene_index for f in d.test} == {2}
    assert len(d.pairs()) == 2
    with pytest.raises(ValueError, match="--data"):
        load_data(str(tmp_path / "nothing"))


def test_eval_cli_writes_json_and_png(tmp_path):
    from dinov3_ros.cli import main

    out = tmp_path / "ev"
    argv = [
        "eval",
        "--weights",
        "oracle",
        "--weights",
        "noise:16",
        "--size",
        "64x64",
        "--train-scenes",
        "3",
        "--test-scenes",
        "2",
        "--frames-per-scene",
        "4",
        "--pair-gap",
        "2",
        "--probe-scenes",
        "12",
        "8",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    rep = json.loads((out / "eval.json").read_text())
    s = rep["results"][0]["summary"]
    assert rep["results"][0]["model"] == "oracle" and rep["results"][1]["model"] == "noise:16"
    assert (
        s["depth.abs_rel"] == 0
        and s["depth.delta1"] == 1
        and s["corr.recall@1px"] == 1
        and s["tokencut.iou"] == 1
    )
    img = cv2.imread(str(out / "eval.png"))
    assert img is not None and img.shape[1] == 1280 and img.shape[0] > 600
    assert main(["eval", "--weights", "oracle", "--size", "60x64", "--out", str(out)]) == 2


def test_dense_matcher_takes_backbone_width_features():
    """The dense matcher's refinement upsamples B's features: OpenCV's resize refuses a 384-channel array,
    so it must not be what runs; the upsampling equals OpenCV's bilinear resize where that works."""
    import cv2

    from dinov3_ros.eval.matching import _upsample, match_features

    rng = np.random.default_rng(0)
    small = rng.normal(size=(6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(_upsample(small, (48, 48)), cv2.resize(small, (48, 48)), atol=1e-5)
    fa = rng.normal(size=(6, 6, 384)).astype(np.float32)
    src = np.array([[24.0, 24.0], [40.0, 56.0], [71.5, 8.0]])
    pa, pb = match_features(fa, fa, src, (96, 96), keep=3)
    assert pa.shape == pb.shape == (3, 2)
    assert np.abs(pb - pa).max() <= 8.0  # the same features: each source lands within its own patch


def test_heads_matcher_uses_the_pipeline_settings():
    """The eval scores the matches the node publishes: ratio, minimum similarity and match cap come
    from ``PipelineConfig`` (control: the head's own defaults keep more, weaker matches)."""
    from dinov3_ros.core.config import PipelineConfig
    from dinov3_ros.eval.matching import heads_match
    from dinov3_ros.heads.correspondence import match

    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 12, 32, generator=g)
    fa = base.numpy()
    fb = (base + 1.2 * torch.randn(12, 12, 32, generator=g)).numpy()
    cfg = PipelineConfig()
    p0, p1 = heads_match(fa, fb, 16)
    ref = match(
        fa, fb, patch_size=16.0, mutual=True, ratio=cfg.match_ratio, min_score=cfg.match_threshold,
        max_matches=cfg.match_max, refine=True, offset=(-0.5, -0.5),
    )  # fmt: skip
    np.testing.assert_array_equal(p0, ref.pts0)
    np.testing.assert_array_equal(p1, ref.pts1)
    loose = match(fa, fb, patch_size=16.0, refine=True, offset=(-0.5, -0.5))
    assert 0 < len(p0) < len(loose.pts0)
    assert cfg.with_updates(match_ratio=1.0).match_args()["ratio"] is None  # 1 = no ratio test


def test_heads_inliers_are_the_matches_the_node_flags():
    """``heads-inliers`` scores the matches the node's fundamental-matrix check flags as inliers (a
    one-patch threshold): patches moved one column right are kept, patches swapped across rows
    (off every epipolar line of that motion) are dropped."""
    from dinov3_ros.core.config import PipelineConfig
    from dinov3_ros.eval.matching import heads_match
    from dinov3_ros.heads.correspondence import match

    g = torch.Generator().manual_seed(0)
    fa = torch.randn(12, 12, 32, generator=g).numpy()
    fb = np.roll(fa, 1, axis=1)[:, 1:]  # a camera moving left: every patch one column to the right
    fb = np.concatenate([fa[:, :1], fb], 1).copy()
    for r, c in ((1, 3), (2, 6), (3, 9), (4, 4)):
        fb[[r, r + 7], c] = fb[[r + 7, r], c]  # swapped across rows: gross outliers
    p0, p1 = heads_match(fa, fb, 16)
    q0, q1 = heads_match(fa, fb, 16, inliers_only=True)
    ref = match(
        fa, fb, patch_size=16.0, mutual=True, **PipelineConfig().match_args(), refine=True,
        offset=(-0.5, -0.5), verify_with="fundamental", ransac_threshold=16.0,
    )  # fmt: skip
    np.testing.assert_array_equal(q0, ref.pts0[ref.inliers])
    np.testing.assert_array_equal(q1, ref.pts1[ref.inliers])
    vertical = np.abs(p1[:, 1] - p0[:, 1]) > 32
    kept = int((np.abs(q1[:, 1] - q0[:, 1]) > 32).sum())
    # a planar grid leaves RANSAC's F loosely determined: most, not all, outliers are dropped
    assert vertical.sum() >= 6 and kept <= vertical.sum() // 2
    assert len(q0) >= len(p0) - vertical.sum() - 2  # and (nearly) nothing else


def test_guided_mask_refinement_scores_image_sized_masks(data, tiny):
    """``--mask-refine guided``: each TokenCut mask is the pipeline's edge-aligned one at image size."""
    from dinov3_ros.eval.objects import guided_mask, tokencut_mask

    _, model = tiny
    res, ex = evaluate(model, data, EvalOptions(tasks=("tokencut",), mask_refine="guided"))
    assert res["tokencut"]["mask_refine"] == "guided"
    tokens = model(np.stack([f.rgb for f in data.test[:1]]))[0]
    np.testing.assert_array_equal(ex["mask"], guided_mask(tokencut_mask(tokens[0])[0], data.test[0].rgb))
    assert ex["mask"].shape == (96, 96)
