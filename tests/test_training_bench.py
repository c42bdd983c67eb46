"""The pretraining benchmark's step breakdown times the real step (same update as ``train_step``) and
its loader + step loop runs, on CPU with a tiny model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_pretrain as bench

from training.pretrain import build_training, train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(**kw) -> argparse.Namespace:
    base = {"smoke": True, "batch": 2, "arch": "vitt16", "steps": 1, "warmup": 0, "workers": 0}
    return argparse.Namespace(**{**base, **kw})


def test_breakdown_phases_time_the_same_update_as_train_step():
    args = _args()
    cfg = bench._cfg(args, (32, 16, 2), "optim.lr=1e-2")
    a, b = build_training(cfg), build_training(cfg)
    b.model.load_state_dict(a.model.state_dict())
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    batch = bench._fake_batch(a.cfg, torch.device("cpu"))
    torch.manual_seed(1)  # the same random RoPE rescale in both steps
    train_step(a, batch, 0)
    torch.manual_seed(1)
    ms = bench._breakdown(b, batch, args, torch.device("cpu"))
    assert set(ms) == {
        "teacher",
        "student backbone",
        "student heads",
        "losses and glue",
        "backward",
        "optimizer",
    }
    assert all(v > 0 for v in ms.values()), ms
    after_a, after_b = a.model.state_dict(), b.model.state_dict()
    for k in before:
        torch.testing.assert_close(after_a[k], after_b[k], rtol=1e-5, atol=1e-7, msg=k)
    moved = [k for k in before if not torch.equal(before[k], after_a[k])]
    assert any(k.startswith("student.") for k in moved) and any(k.startswith("teacher.") for k in moved)


def test_loader_and_step_loop_reports_the_rate_and_the_data_wait():
    args = _args(steps=2)
    row = bench._loop_rate(args, bench._cfg(args, (32, 16, 2)), torch.device("cpu"))
    assert row["step_ms"] > 0 and row["images_s"] == pytest.approx(2 / (row["step_ms"] / 1e3))
    assert 0 <= row["data_wait_ms"] <= row["step_ms"]
