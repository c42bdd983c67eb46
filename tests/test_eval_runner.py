"""End-to-end evaluation: the GT oracle scores perfectly, label-free noise scores at chance, a (tiny)
real backbone and a depth-head file run through every task, and `dinov3-ros eval` writes JSON + PNG."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dinov3_ros.eval.data import load_data, synthetic_data
from dinov3_ros.eval.features import BackboneFeatures, NoiseFeatures
from dinov3_ros.eval.metrics import random_match_chance
from dinov3_ros.eval.runner import ORACLE, EvalOptions, evaluate


@pytest.fixture(scope="module")
def data():
    return synthetic_data(
        seed=77, size=(96, 96), train_scenes=4, test_scenes=2, frames_per_scene=5, pair_gap=2
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
    json.dumps(res)  # JSON-able


def test_noise_features_score_at_chance(data):
    res, _ = evaluate(NoiseFeatures(dim=32, seed=1), data, EvalOptions(matcher="dense"))
    c, t, p = res["correspondence"], res["tokencut"], res["probe"]
    assert c["recall@4px"] <= 5 * random_match_chance(96, 96, 4.0) + 0.01
    assert c["pose_acc@5deg"] == 0.0
    assert t["iou"] < 0.35
    # 1-NN on label-free features predicts labels distributed like the training labels: accuracy is
    # binomial around sum_c p_train(c) p_test(c)
    c0, n = p["chance_prior"], p["test_crops"]
    assert n >= 15
    assert abs(p["knn1_acc"] - c0) <= 3 * np.sqrt(c0 * (1 - c0) / n) + 0.02, p
    assert res["depth"]["delta1"] < 0.6


def test_tiny_backbone_all_tasks_and_depth_head(data, tmp_path):
    torch = pytest.importorskip("torch")
    from dinov3_ros.heads.depth import LinearDepthHead, save_head
    from dinov3_ros.models import build_backbone
    from dinov3_ros.models.testing import randomize_backbone_

    torch.set_num_threads(1)
    bb = randomize_backbone_(build_backbone("vitt16", depth=2), seed=0)
    model = BackboneFeatures(bb, name="vitt16-2blk")
    res, _ = evaluate(model, data)
    assert res["feature_dim"] == 192 and res["patch_grid"] == [6, 6]
    assert 0 <= res["depth"]["delta1"] <= 1 and res["depth"]["abs_rel"] > 0
    assert res["tokencut"]["implementation"] == ["heads.tokencut"]
    assert res["matcher"] == "heads"
    for k in ("recall@1px", "recall@2px", "recall@4px"):
        assert 0.0 <= res["correspondence"][k] <= 1.0
    assert 0.0 <= res["probe"]["linear_acc"] <= 1.0
    head = LinearDepthHead(192, n_bins=16, min_depth=0.1, max_depth=10.0)
    path = tmp_path / "head.pt"
    norm = {"mean": list(bb.norm_mean), "std": list(bb.norm_std)}
    save_head(
        path, head.eval(), {"arch": "vitt16", "normalization": norm, "input_size": [96, 96], "layers": [1]}
    )
    res2, ex2 = evaluate(model, data, EvalOptions(tasks=("depth",), depth_head=str(path)))
    assert res2["depth_method"].startswith("head:")
    assert ex2["depth_pred"].shape == (96, 96) and np.all(ex2["depth_pred"] >= 0.1 - 1e-6)


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
