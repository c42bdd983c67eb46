"""Device-side multi-crop (``data.augment_on: device``): the batch matches the CPU path's structure,
is a pure function of (seed, iteration, rank), crops respect the configured scales, and pretraining runs
on it; the default CPU path is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import ConfigError, load_config
from training.data import MultiCropAugmentation, build_pretrain_loader
from training.data.device_multicrop import (
    DeviceMultiCrop,
    FrameResize,
    build_device_pretrain_loader,
    frame_size,
)
from training.pretrain import run_pretraining

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training/configs/tiny_cpu.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data_cfg(*overrides: str) -> dict:
    cfg = load_config(TINY, list(overrides))
    return {
        **cfg["data"],
        "crops": cfg["crops"],
        "mask_probability": cfg["ibot"]["mask_probability"],
        "mask_ratio": cfg["ibot"]["mask_ratio"],
    }


def _device_batches(start: int, n: int, *overrides: str, rank: int = 0, world: int = 1) -> list[dict]:
    it = build_device_pretrain_loader(
        _data_cfg(*overrides),
        batch_size=4,
        device="cpu",
        start_iter=start,
        max_iter=start + n,
        seed=3,
        rank=rank,
        world_size=world,
    )
    return list(it)


def test_device_batch_has_the_cpu_batch_keys_shapes_and_dtypes():
    dc = _data_cfg()
    cpu = next(iter(build_pretrain_loader(dc, batch_size=4, max_iter=1, seed=3)))
    dev = _device_batches(0, 1)[0]
    assert set(dev) == set(cpu)
    for k, v in cpu.items():
        if torch.is_tensor(v):
            assert dev[k].shape == v.shape and dev[k].dtype == v.dtype, k
        else:
            assert type(dev[k]) is type(v), k
    # the masks are drawn on the CPU from the same batch seed: identical to the CPU path's
    assert torch.equal(dev["masks"], cpu["masks"])
    assert torch.equal(dev["masks_weight"], cpu["masks_weight"])
    assert dev["global_crops"].isfinite().all() and dev["local_crops"].isfinite().all()


def test_gram_crops_and_mixed_resolutions_follow_the_crop_config():
    mixed = (
        "crops.mixed=[{global_crops_size: 48, local_crops_size: 16, ratio: 1.0},"
        " {global_crops_size: 80, local_crops_size: 32, gram_teacher_crops_size: 96, ratio: 1.0}]"
    )
    seen = set()
    for b in _device_batches(0, 6, mixed):
        g = b["global_crops"].shape[-1]
        seen.add(g)
        assert b["masks"].shape[1] == (g // 16) ** 2
        if g == 80:
            assert b["gram_teacher_crops"].shape == (8, 3, 96, 96)
            assert b["local_crops"].shape == (8, 3, 32, 32)
        else:
            assert "gram_teacher_crops" not in b and b["local_crops"].shape == (8, 3, 16, 16)
    assert seen == {48, 80}


def test_same_seed_and_iteration_give_the_same_batch_and_a_resume_replays_it():
    run = _device_batches(0, 3)
    again = _device_batches(0, 3)
    resumed = _device_batches(2, 1)
    for a, b in zip(run, again):
        for k in ("global_crops", "local_crops", "masks"):
            assert torch.equal(a[k], b[k])
    assert torch.equal(resumed[0]["global_crops"], run[2]["global_crops"])
    assert torch.equal(resumed[0]["local_crops"], run[2]["local_crops"])
    assert not torch.equal(run[0]["global_crops"], run[1]["global_crops"])
    other_rank = _device_batches(0, 1, rank=1, world=2)[0]
    assert not torch.equal(other_rank["global_crops"], run[0]["global_crops"])


def _ramp_frames(n: int, side: int = 256) -> torch.Tensor:
    """Channel 0 = column index, channel 1 = row index: a crop's values give back its box."""
    x = torch.arange(side, dtype=torch.uint8)
    f = torch.zeros(n, 3, side, side, dtype=torch.uint8)
    f[:, 0] = x.view(1, 1, side)
    f[:, 1] = x.view(1, side, 1)
    return f


def _extents(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box width and height (frame pixels) of bilinear crops of :func:`_ramp_frames`."""
    o = crops.shape[-1]
    v = crops * 255.0
    w = (v[:, 0].amax((1, 2)) - v[:, 0].amin((1, 2))) * o / (o - 1)
    h = (v[:, 1].amax((1, 2)) - v[:, 1].amin((1, 2))) * o / (o - 1)
    return w, h


def test_crop_scales_stay_in_the_configured_ranges():
    aug = MultiCropAugmentation(
        global_crops_size=64,
        local_crops_size=32,
        local_crops_number=4,
        global_crops_scale=(0.32, 1.0),
        local_crops_scale=(0.05, 0.32),
        horizontal_flips=True,
        photometric=False,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    side, n = 256, 64
    g = torch.Generator().manual_seed(0)
    out = DeviceMultiCrop(aug)(_ramp_frames(n, side), g, torch.Generator().manual_seed(0))
    for key, (lo, hi) in (("global_crops", aug.global_crops_scale), ("local_crops", aug.local_crops_scale)):
        w, h = _extents(out[key])
        frac = w * h / side**2
        assert frac.min() >= lo - 0.01 and frac.max() <= hi + 0.01, key
        # spread over the range, not stuck at one end
        assert frac.min() < lo + 0.25 * (hi - lo) and frac.max() > hi - 0.25 * (hi - lo), key
        inside = (w < side - 1) & (h < side - 1)  # boxes not clamped to the frame keep their aspect
        ar = w[inside] / h[inside]
        assert ar.min() >= 3 / 4 - 0.02 and ar.max() <= 4 / 3 + 0.02, key
        flipped = out[key][:, 0, :, -1] < out[key][:, 0, :, 0]
        assert 0 < int(flipped.all(1).sum()) < out[key].shape[0], key


def test_photometric_recipe_changes_pixels_and_frame_resize_is_centred():
    aug = MultiCropAugmentation(global_crops_size=32, local_crops_size=16, local_crops_number=2)
    frames = torch.randint(
        0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    plain = MultiCropAugmentation(
        global_crops_size=32, local_crops_size=16, local_crops_number=2, photometric=False
    )

    def run(a):
        return DeviceMultiCrop(a)(frames, torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))

    assert not torch.allclose(run(aug)["global_crops"], run(plain)["global_crops"])
    assert frame_size(aug) == 64  # 32 / sqrt(0.32) = 56.6, rounded up to a multiple of 8
    img = torch.zeros(60, 120, 3, dtype=torch.uint8).numpy()
    img[:, 30:90] = 200
    f = FrameResize(30)(img, torch.Generator())["frame"]
    assert f.shape == (3, 30, 30) and f.dtype == torch.uint8 and int(f.min()) == 200


def test_augment_on_accepts_cpu_or_device_only():
    cfg = load_config(TINY, [])
    assert cfg["data"]["augment_on"] == "cpu"
    with pytest.raises(ConfigError, match=r"data\.augment_on must be one of \['cpu', 'device'\]"):
        load_config(TINY, ["data.augment_on=gpu"])


def test_pretraining_runs_on_device_built_batches(tmp_path):
    cfg = load_config(
        TINY,
        [
            f"train.output_dir={tmp_path / 'run'}",
            "data.augment_on=device",
            "train.iterations=3",
            "train.checkpoint_period=3",
        ],
    )
    res = run_pretraining(cfg)
    assert res["iteration"] == 3
    assert len(res["history"]) == 3
    assert all(torch.isfinite(torch.tensor(h["loss/total"])) for h in res["history"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: runs on the GPU machine")
def test_cuda_batches_are_built_on_the_gpu_and_reproducible():
    def batches() -> list[dict]:
        return list(
            build_device_pretrain_loader(_data_cfg(), batch_size=4, device="cuda", max_iter=2, seed=3)
        )

    a, b = batches(), batches()
    for x, y in zip(a, b):
        assert x["global_crops"].is_cuda and x["local_crops"].is_cuda
        assert torch.equal(x["global_crops"], y["global_crops"])
    cpu = _device_batches(0, 1)[0]
    assert a[0]["global_crops"].shape == cpu["global_crops"].shape
    # building a batch never makes the host wait for the GPU (constants are cached after the first one)
    loader = build_device_pretrain_loader(_data_cfg(), batch_size=4, device="cuda", max_iter=3, seed=3)
    frames = list(loader.loader)
    loader.build(frames[0], 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = loader.build(frames[1], 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out["global_crops"].is_cuda


@pytest.mark.parametrize("where", ["cpu", "device"])
def test_a_resumed_run_continues_the_loss_sequence_exactly(tmp_path, where):
    def cfg(out: Path, *extra: str) -> dict:
        return load_config(
            TINY,
            [
                f"train.output_dir={out}",
                f"data.augment_on={where}",
                "train.iterations=4",
                "train.checkpoint_period=2",
                *extra,
            ],
        )

    whole = run_pretraining(cfg(tmp_path / "whole"))["history"]
    first = run_pretraining(cfg(tmp_path / "split", "train.stop_at_iteration=2"))["history"]
    rest = run_pretraining(cfg(tmp_path / "split"))["history"]
    assert [h["iteration"] for h in first + rest] == [0, 1, 2, 3]
    assert [h["loss/total"] for h in first + rest] == [h["loss/total"] for h in whole]


def test_a_run_may_move_its_crops_to_the_device_when_it_resumes(tmp_path):
    out = tmp_path / "run"
    base = [f"train.output_dir={out}", "train.iterations=4", "train.checkpoint_period=2"]
    assert run_pretraining(load_config(TINY, [*base, "train.stop_at_iteration=2"]))["iteration"] == 2
    res = run_pretraining(load_config(TINY, [*base, "data.augment_on=device"]))
    assert res["iteration"] == 4 and [h["iteration"] for h in res["history"]] == [2, 3]
