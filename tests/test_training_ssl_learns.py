"""Small-scale DINOv3 SSL learns: a tiny ViT on procedural images leaves the uniform solution within a
few dozen iterations (Sinkhorn-Knopp target entropy and the DINO loss fall well below log K) with the
short-run settings (LayerScale 0.1, unit-norm prototypes, small K, low teacher temperature, a frozen
last layer for 10% of the run); with the official LayerScale 1e-5 the CLS token is the same for every
image and the targets are exactly uniform at the start (the control)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from training.config import load_config
from training.pretrain import build_training, train_step

REPO = Path(__file__).resolve().parents[1]
K = 64
SHORT_RUN = [
    "dino.norm_last_layer=true",
    "ibot.norm_last_layer=true",
    f"dino.n_prototypes={K}",
    f"ibot.n_prototypes={K}",
    "train.batch_size_per_gpu=32",
    "optim.freeze_last_layer_iters=0.1",
    "optim.warmup_iters=0.1",
    "teacher.temp=0.04",
    "teacher.warmup_iters=0",
    "optim.momentum_teacher=0.95",
    "optim.final_momentum_teacher=0.95",
    "crops.photometric=false",
    "train.tensorboard=false",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(tmp_path: Path, iterations: int, layerscale: float | None) -> list[dict]:
    from training.pretrain import _batches

    ls = "" if layerscale is None else f", layerscale_init: {layerscale}"
    cfg = load_config(
        REPO / "training/configs/tiny_cpu.yaml",
        [
            f"train.output_dir={tmp_path}",
            f"train.iterations={iterations}",
            f"model.backbone={{depth: 2, drop_path_rate: 0.0, rope_rescale: 2.0{ls}}}",
            *SHORT_RUN,
        ],
    )
    st = build_training(cfg)
    data_cfg = {**cfg["data"], "crops": cfg["crops"], "mask_probability": 0.5, "mask_ratio": [0.1, 0.5]}
    data = iter(_batches(cfg, st, 0, iterations, data_cfg, None, None))
    return [train_step(st, next(data), it) for it in range(iterations)]


def _mean(h: list[dict], key: str, sl: slice) -> float:
    vals = [x[key] for x in h[sl]]
    return sum(vals) / len(vals)


@pytest.mark.slow
def test_dino_leaves_the_uniform_solution(tmp_path):
    log_k = math.log(K)
    h = _train(tmp_path / "ls01", 60, 0.1)
    start = _mean(h, "stat/target_entropy", slice(0, 5))
    end = _mean(h, "stat/target_entropy", slice(-10, None))
    assert end < log_k - 1.0 and start - end > 0.8, (start, end)
    assert _mean(h, "loss/dino_global", slice(-10, None)) < log_k - 0.8
    assert _mean(h, "stat/teacher_max_prob", slice(-10, None)) > 5.0 / K
    # control: the official LayerScale 1e-5 gives one CLS token for every image -> uniform targets
    c = _train(tmp_path / "official", 20, None)
    assert c[0]["stat/cls_cos_mean"] > 0.999
    assert abs(c[0]["stat/target_entropy"] - log_k) < 0.01
    assert _mean(c, "stat/target_entropy", slice(None)) > log_k - 0.05
