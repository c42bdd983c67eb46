"""Training fixes: losses in float32 under autocast, the Gram refresh schedule, the last-layer freeze as
LR 0 with gradients kept, ``max_updates`` semantics, and no code execution from any checkpoint file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.checkpoint import capture_rng_state, restore_rng_state, safe_load
from training.config import load_config
from training.losses import dino_cross_entropy, gram_loss
from training.pretrain import build_training, train_step, validate_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training/configs/tiny_cpu.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_losses_are_float32_under_autocast():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 64) * 3
    t = torch.softmax(torch.randn(2, 4, 64) * 3, -1)
    ref = dino_cross_entropy(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dino_cross_entropy(s, t)
        # negative control: the same einsum without the fp32 guard is computed in bf16
        logp = torch.log_softmax(s.float() / 0.1, -1)
        raw = -torch.einsum("sbk,tbk->st", logp, t.float())
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    assert raw.dtype == torch.bfloat16
    a, b = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    ref = gram_loss(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(gram_loss(a, b), ref)


def _cfg(tmp_path, *ov):
    return load_config(TINY, [f"train.output_dir={tmp_path}", "train.tensorboard=false", *ov])


def test_gram_refresh_lands_where_configured(tmp_path):
    with pytest.raises(ValueError, match="first refresh would come at 500, not 476"):
        validate_config(
            _cfg(tmp_path, "gram.use=true", "gram.it_first_update=476", "gram.update_frequency=100")
        )
    validate_config(_cfg(tmp_path, "gram.use=true", "gram.it_first_update=500", "gram.update_frequency=100"))
    assert load_config(TINY)["gram"]["max_updates"] is None  # unlimited by default, as the reference
    from training.data import build_pretrain_loader

    cfg = _cfg(
        tmp_path,
        "gram.use=true",
        "gram.loss_weight=1.0",
        "gram.it_first_update=2",
        "gram.update_frequency=2",
        "train.iterations=6",
    )
    st = build_training(cfg)
    loader = build_pretrain_loader({**cfg["data"], "crops": cfg["crops"]}, batch_size=4, max_iter=6)
    refreshed = []
    for it, b in enumerate(loader):
        before = st.gram_updates
        train_step(st, b, it)
        if st.gram_updates > before:
            refreshed.append(it)
    assert refreshed == [1, 3, 5]  # after iterations whose (it + 1) is a multiple of 2; no limit
    cfg["gram"]["max_updates"] = 0
    st = build_training(cfg)
    for it, b in enumerate(
        build_pretrain_loader({**cfg["data"], "crops": cfg["crops"]}, batch_size=4, max_iter=4)
    ):
        train_step(st, b, it)
    assert st.gram_updates == 0


def test_frozen_last_layer_keeps_gradients_and_adam_state(tmp_path):
    from training.data import build_pretrain_loader

    cfg = _cfg(tmp_path, "optim.freeze_last_layer_iters=2", "train.iterations=3")
    st = build_training(cfg)
    w0 = st.model.student.dino_head.last_layer.weight.detach().clone()
    loader = build_pretrain_loader({**cfg["data"], "crops": cfg["crops"]}, batch_size=4, max_iter=1)
    train_step(st, next(iter(loader)), 0)
    p = st.model.student.dino_head.last_layer.weight
    assert p.grad is not None and float(p.grad.abs().sum()) > 0  # gradients kept while frozen
    assert torch.equal(p.detach(), w0)  # LR 0: the weights do not move
    assert float(st.optimizer.state[p]["exp_avg"].abs().sum()) > 0  # Adam moments follow the gradients


class _Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _plant(path: Path, marker: Path, wrap=None) -> None:
    obj = {"payload": _Payload(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(obj) if wrap else obj, path)


def test_no_checkpoint_entry_point_runs_pickled_code(tmp_path):
    marker = tmp_path / "MARKER"
    bad = tmp_path / "evil.pth"
    _plant(bad, marker)
    with pytest.raises(ValueError, match="refused to load the teacher checkpoint"):
        safe_load(bad, "teacher checkpoint")
    # teacher checkpoint of `dinov3-train distill`
    from training.distill import load_teacher

    with pytest.raises(ValueError, match="nothing was executed"):
        load_teacher(bad, "vitt16")
    # depth-head resume
    from training.depth_head import DepthTrainer, build_config

    out = tmp_path / "depth"
    _plant(out / "checkpoint.pt", marker)
    cfg = build_config({"output_dir": str(out), "backbone": {"arch": "vitt16", "overrides": {"depth": 1}}})
    with pytest.raises(ValueError, match="depth-head checkpoint"):
        DepthTrainer(cfg).load_checkpoint()
    # pretraining resume (the per-rank extra state next to the DCP shards)
    from training.checkpoint import load_checkpoint, save_checkpoint

    st = build_training(_cfg(tmp_path / "pre"))
    ck = save_checkpoint(tmp_path / "pre" / "ckpt", 1, st.model, st.optimizer, {"next_iteration": 1})
    _plant(ck / "extra_rank0.pt", marker)
    with pytest.raises(ValueError, match="pretraining checkpoint state"):
        load_checkpoint(ck, st.model, st.optimizer)
    assert not marker.exists()
    # negative control: the planted file is live - unrestricted unpickling runs it
    torch.load(bad, weights_only=False)
    assert marker.read_text() == "pwned"


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    st = capture_rng_state()
    torch.save(st, tmp_path / "rng.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(safe_load(tmp_path / "rng.pt", "rng"))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_rng_state_restores_from_a_state_not_loaded_as_cpu_bytes(tmp_path):
    """A checkpoint read with ``map_location`` = the training device hands back RNG states that are not
    CPU ByteTensors (on a GPU: CUDA tensors); restoring must still work. Here the state's tensors are
    re-typed, which ``torch.set_rng_state`` refuses the same way."""
    st = capture_rng_state()
    with pytest.raises((TypeError, RuntimeError), match="ByteTensor"):
        torch.set_rng_state(st["torch"].long())  # the failure the conversion prevents
    odd = {**st, "torch": st["torch"].long(), "numpy": {**st["numpy"], "keys": st["numpy"]["keys"].int()}}
    a = torch.rand(3)
    restore_rng_state(odd)
    assert torch.equal(a, torch.rand(3))


PRETRAIN_CONFIGS = sorted(
    p
    for p in [*(REPO / "training/configs").glob("*.yaml"), *(REPO / "training/recipes").glob("*.yaml")]
    if not any(stage in p.name for stage in ("distill", "depth", "student", "objects"))
)


@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_pretraining_config_validates(path):
    validate_config(load_config(path))
