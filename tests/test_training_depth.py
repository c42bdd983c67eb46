"""Depth-head training (training.depth_head) on a frozen tiny backbone with synthetic ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from dinov3_ros.eval.metrics import depth_metrics
from training import cli
from training.depth_head import DepthTrainer, SyntheticDepthDataset, build_config, evaluate, run

BB = {"depth": 4, "rope_rescale": None}


def _cfg(tmp_path, head: dict | None = None, **train) -> dict:
    return build_config(
        {
            "output_dir": str(tmp_path / "depth"),
            "backbone": {"arch": "vitt16", "overrides": BB},
            "head": {"type": "linear", **(head or {})},
            "data": {
                "image_size": [64, 64],
                "num_workers": 0,
                "frames_per_scene": 4,
                "val_scenes": 2,
                "val_frames_per_scene": 2,
            },
            "optim": {"lr": 1e-2, "warmup_iters": 2},
            "loss": {"warm_up_iters": 4},
            "train": {"iterations": 16, "batch_size": 4, "checkpoint_period": 4, "log_period": 4, **train},
        }
    )


def test_dataset_is_deterministic_and_holds_gt_depth():
    ds = SyntheticDepthDataset((64, 64), (0.5,) * 3, (0.25,) * 3, seed=3, frames_per_scene=4)
    img, depth = ds[5]
    img2, depth2 = ds[(0, 5)]  # as IterationBatchSampler addresses it
    assert img.shape == (3, 64, 64) and depth.shape == (1, 64, 64)
    assert torch.equal(img, img2) and torch.equal(depth, depth2)
    assert float(depth.min()) > 0 and float(depth.max()) < 20
    _img, gt = ds.frame(5)
    assert torch.equal(gt, depth) or torch.equal(gt.flip(-1), depth)  # only h-flip touches depth


def test_linear_head_trains_saves_and_reloads(tmp_path):
    from dinov3_ros.heads.depth import LinearDepthHead, load_head

    torch.set_num_threads(1)
    cfg = _cfg(tmp_path)
    cfg_file = tmp_path / "depth.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    # first chunk through the CLI (`dinov3-train depth ... --max-steps 8`), then resume to the end
    assert cli.main(["depth", "--config", str(cfg_file), "--device", "cpu", "--max-steps", "8"]) == 0
    ck = torch.load(tmp_path / "depth/checkpoint.pt", weights_only=False)
    assert ck["iteration"] == 8 and not (tmp_path / "depth/depth_head.pt").exists()
    tr, metrics = run(cfg, device="cpu")  # resumes at 8 and finishes
    assert tr.iteration == 16 and metrics is not None
    assert metrics["frames"] == 4
    # the held-out metrics, computed by hand: the head on each held-out frame (2 scenes x 2 frames, no
    # augmentation), predictions clipped at 1 mm, per-frame metrics averaged
    d = cfg["data"]
    val = SyntheticDepthDataset(
        (64, 64),
        tr.mean,
        tr.std,
        seed=int(d["val_seed"]),
        frames_per_scene=2,
        augment=False,
        scene=d["scene"],
    )
    tr.head.eval()
    per = []
    with torch.no_grad():
        for k in range(4):
            img, gt = val[k]
            pred = tr.head(tr.features(img[None]), (64, 64))[0, 0].numpy()
            per.append(depth_metrics(np.clip(pred, 1e-3, None), gt[0].numpy()))
    tr.head.train()
    for k in ("abs_rel", "rmse", "delta1", "silog"):
        assert metrics[k] == pytest.approx(float(np.mean([m[k] for m in per])), rel=1e-5), k
    # resuming is bit-exact: an uninterrupted run ends with the same head and the same metrics
    straight = _cfg(tmp_path / "straight")
    tr2, metrics2 = run(straight, device="cpu")
    for k, v in tr.head.state_dict().items():
        assert torch.equal(v, tr2.head.state_dict()[k]), k
    assert {k: v for k, v in metrics2.items()} == metrics
    # the full saved state too: head, optimizer, loss state, iteration and every RNG
    from test_training_config import _assert_same

    from training.checkpoint import safe_load

    a = safe_load(tmp_path / "depth/checkpoint.pt", "depth-head checkpoint")
    b = safe_load(tmp_path / "straight/depth/checkpoint.pt", "depth-head checkpoint")
    assert a["iteration"] == 16 and a["optimizer"]["state"]
    _assert_same(a, b, "checkpoint")
    with pytest.raises(AssertionError):  # negative control: the checkpoint after 8 steps differs
        _assert_same({**a, "iteration": 8}, ck, "checkpoint")
    saved = json.loads((tmp_path / "depth/metrics.json").read_text())
    assert saved["held_out"]["abs_rel"] == pytest.approx(metrics["abs_rel"])

    head, meta = load_head(tmp_path / "depth/depth_head.pt")
    assert isinstance(head, LinearDepthHead)
    assert meta["arch"] == "vitt16" and meta["layers"] == [3] and meta["input_size"] == [64, 64]
    assert meta["min_depth"] == 0.001 and meta["max_depth"] == 10.0
    assert meta["normalization"]["mean"] == list(tr.mean)
    x = torch.randn(2, 3, 64, 64)
    tr.head.eval()
    feats = tr.features(x)
    assert torch.allclose(head(feats, (64, 64)), tr.head(feats, (64, 64)), atol=1e-6)
    # the stored held-out metrics are reproducible from the reloaded head
    tr.head.load_state_dict(head.state_dict())
    again = evaluate(tr)
    assert again["rmse"] == pytest.approx(metrics["rmse"], rel=1e-5)


def test_losses_decrease_for_linear_and_dpt(tmp_path):
    torch.set_num_threads(1)
    from training.data import IterationBatchSampler

    for head in ({"type": "linear"}, {"type": "dpt", "features": 16, "n_bins": 32}):
        cfg = _cfg(tmp_path / head["type"], head)
        cfg["loss"]["warm_up_iters"] = 0  # full SigLoss from the start, so values are comparable
        tr = DepthTrainer(cfg, "cpu")
        if head["type"] == "dpt":
            assert tr.layers == [0, 1, 2, 3]
        ds = SyntheticDepthDataset((64, 64), tr.mean, tr.std, seed=0, frames_per_scene=4)
        idx = next(iter(IterationBatchSampler(8, 0, 1, 0, (1.0,), 0, 1)))
        images = torch.stack([ds[i][0] for i in idx])
        depth = torch.stack([ds[i][1] for i in idx])
        losses = [tr.step(images, depth)["sig"] for _ in range(12)]
        assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), (head["type"], losses)


def test_gradient_loss_and_config_errors(tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(tmp_path, **{"iterations": 2})
    cfg["loss"]["gradient"] = 0.5
    tr = DepthTrainer(cfg, "cpu")
    ds = SyntheticDepthDataset((64, 64), tr.mean, tr.std, seed=0, frames_per_scene=4)
    images, depth = (torch.stack(t) for t in zip(ds[0], ds[1]))
    m = tr.step(images, depth)
    assert m["gradient"] > 0
    assert m["loss"] == pytest.approx(cfg["loss"]["sig"] * m["sig"] + 0.5 * m["gradient"], rel=1e-6)
    with pytest.raises(ValueError, match="multiples of 16"):
        build_config({"data": {"image_size": [60, 64]}})
    with pytest.raises(ValueError, match=r"head\.type"):
        build_config({"head": {"type": "conv"}})
    with pytest.raises(ValueError, match="unknown config key"):
        build_config({"optim": {"learning_rate": 1}})
    bad = _cfg(tmp_path, {"layers": [7]})
    with pytest.raises(ValueError, match="outside"):
        DepthTrainer(bad, "cpu")
