"""The pretraining step without host-device synchronisation: the deferred scalars equal the
synchronous ones, a non-finite loss is still caught (at the next flush, before anything is written),
and on CUDA the step itself never synchronises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _sync_patterns import SyncPatterns

from training.config import load_config
from training.data import build_pretrain_loader
from training.pretrain import NonFiniteLossError, build_training, flush_scalars, train_step

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training/configs/tiny_cpu.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(tmp_path, *extra: str):
    cfg = load_config(TINY, [f"train.output_dir={tmp_path}", "train.batch_size_per_gpu=2", *extra])
    st = build_training(cfg)
    bb = st.model.student.backbone
    loader = build_pretrain_loader(
        {**cfg["data"], "crops": cfg["crops"]},
        batch_size=2,
        patch_size=st.model.patch_size,
        max_iter=3,
        mean=bb.norm_mean,
        std=bb.norm_std,
    )
    return cfg, st, list(loader)


def test_deferred_scalars_equal_the_synchronous_ones(tmp_path):
    cfg, a, batches = _setup(tmp_path)
    b = build_training(cfg)
    b.model.load_state_dict(a.model.state_dict())
    torch.manual_seed(3)
    sync_rows = [train_step(a, x, it) for it, x in enumerate(batches)]
    torch.manual_seed(3)
    assert all(train_step(b, x, it, sync=False) is None for it, x in enumerate(batches))
    assert len(b.pending) == 3
    rows = flush_scalars(b)
    assert b.pending == [] and flush_scalars(b) == []
    assert [r.pop("iteration") for r in rows] == [0, 1, 2]
    assert rows == sync_rows  # every value, bit for bit (grad norms, losses, stats, schedules)
    assert any(k.startswith("grad_norm/") for k in rows[0]) and "loss/total" in rows[0]


def test_a_non_finite_loss_is_reported_at_the_flush_with_its_iteration(tmp_path):
    _, st, batches = _setup(tmp_path, "debug.nan_at_iteration=1")
    for it, x in enumerate(batches):
        train_step(st, x, it, sync=False)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at iteration 1"):
        flush_scalars(st)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs CUDA: runs on the GPU machine (python benchmarks/run.py cuda-tests)",
)
def test_the_cuda_step_does_not_synchronise(tmp_path):
    _, st, batches = _setup(tmp_path)
    gpu = [{k: (v.cuda() if torch.is_tensor(v) else v) for k, v in x.items()} for x in batches]
    train_step(st, gpu[0], 0, sync=False)  # first step: allocations, lazy initialisation
    flush_scalars(st)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it, x in enumerate(gpu[1:], 1):
            train_step(st, x, it, sync=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(flush_scalars(st)) == 2


def test_the_step_has_no_device_wait_patterns(tmp_path):
    """CI's stand-in for the CUDA test above: the step's ops (on CPU) hold none of the patterns that
    synchronise on CUDA. Control: the two patterns the CUDA test caught are recognised."""
    _, st, batches = _setup(tmp_path)
    train_step(st, batches[0], 0, sync=False)
    with SyncPatterns() as rec:
        train_step(st, batches[1], 1, sync=False)
    assert rec.found == []
    with SyncPatterns() as ctl:
        x, idx = torch.zeros(3, 3), torch.arange(3)
        x[idx, idx] = 0  # the former diagonal mask of the DINO loss
        x[idx, torch.tensor([1, 2, 0])] = -float("inf")  # the former KoLeo self-exclusion
        x[x > 0]
    assert ctl.found == ["index_put_ of a scalar", "index_put_ of a scalar", "boolean indexing"]
