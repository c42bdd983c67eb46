"""Compact pre-rendered packs (JPEG RGB + mm depth) and training the depth head from one (no open3d)."""

from __future__ import annotations

import numpy as np
import pytest

from dinov3_ros.synthetic import SceneGenerator
from dinov3_ros.synthetic.writers import FolderFrames, read_folder, write_folder


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    gen = SceneGenerator(seed=7, width=64, height=48, frames_per_scene=4)
    frames = [gen[k] for k in range(6)]
    path = write_folder(frames, tmp_path_factory.mktemp("p") / "pack", jpeg_quality=92)
    return path, frames


def test_pack_random_access_matches_rendered_frames(pack):
    path, frames = pack
    ff = FolderFrames(path)
    assert len(ff) == len(frames)
    assert sorted(p.suffix for p in (path / "rgb").iterdir()) == [".jpg"] * len(frames)
    for k in (0, 3, 5):
        got, ref = ff[k], frames[k]
        valid = ref.depth > 0
        assert np.abs(got.depth[valid] - ref.depth[valid]).max() <= 0.0005 + 1e-6  # mm quantisation
        assert np.array_equal(got.instances, ref.instances)
        assert np.allclose(got.K, ref.K) and np.allclose(got.T_world_cam, ref.T_world_cam)
        assert (
            np.abs(got.rgb.astype(int) - ref.rgb.astype(int)).mean() < 12.0
        )  # JPEG q92 on high-frequency textures at 64x48
    assert [f.frame_index for f in read_folder(path)] == [f.frame_index for f in frames]
    with pytest.raises(IndexError):
        ff[len(frames)]


def test_depth_head_trains_from_pack(pack, tmp_path):
    from training.depth_head import load_config, run

    path, _ = pack
    cfg = load_config(
        "training/configs/depth_default_vits16.yaml",
        [
            f"output_dir={tmp_path / 'dh'}",
            "backbone.weights=null",
            "backbone.arch=vitt16",
            "backbone.overrides={depth: 2}",
            "data.image_size=[48,64]",
            f"data.folder={path}",
            f"data.val_folder={path}",
            "data.num_workers=0",
            "train.iterations=3",
            "train.batch_size=2",
        ],
    )
    _trainer, metrics = run(cfg, device="cpu")
    assert (tmp_path / "dh" / "depth_head.pt").is_file()
    assert metrics is not None and metrics["frames"] == 6 and np.isfinite(metrics["abs_rel"])


def test_pack_of_wrong_size_is_refused(pack, tmp_path):
    from training.depth_head import SyntheticDepthDataset

    path, _ = pack
    with pytest.raises(ValueError, match="64x48"):
        SyntheticDepthDataset((32, 32), (0.5,) * 3, (0.5,) * 3, folder=path)
