"""Pretraining data: multi-crop augmentation, Gram-teacher crops, iBOT masking, sources, loaders, config."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.data import (
    ImageFolderSource,
    IterationBatchSampler,
    MaskingGenerator,
    MultiCropAugmentation,
    MultiCropCollate,
    MultiCropDataset,
    ProceduralSource,
    RosbagSource,
    VideoSource,
    build_pretrain_loader,
    build_source,
    sample_masks,
)


def write_image_bag(
    path: Path, n_raw: int = 6, n_compressed: int = 4, broken: bool = True
) -> list[np.ndarray]:
    """A rosbag2 with a raw bgr8 topic, a JPEG topic, one undecodable CompressedImage and a String topic.
    Returns the RGB images written to the raw topic."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Compressed = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    String = ts.types["std_msgs/msg/String"]
    src = ProceduralSource(48, 64, seed=3)
    raw_rgb = []
    with Writer(path, version=9) as w:
        c_raw = w.add_connection("/cam/image_raw", Image.__msgtype__, typestore=ts)
        c_jpg = w.add_connection("/cam/image/compressed", Compressed.__msgtype__, typestore=ts)
        c_str = w.add_connection("/chatter", String.__msgtype__, typestore=ts)
        t = 1_000_000_000
        for i in range(max(n_raw, n_compressed + int(broken))):
            hdr = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam")
            rgb = src.get(i)
            if i < n_raw:
                raw_rgb.append(rgb)
                bgr = np.ascontiguousarray(rgb[:, :, ::-1])
                msg = Image(
                    header=hdr,
                    height=48,
                    width=64,
                    encoding="bgr8",
                    is_bigendian=0,
                    step=64 * 3,
                    data=bgr.reshape(-1),
                )
                w.write(c_raw, t, ts.serialize_cdr(msg, Image.__msgtype__))
            if i < n_compressed:
                ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1])
                assert ok
                msg = Compressed(header=hdr, format="jpeg", data=buf.reshape(-1))
                w.write(c_jpg, t + 1, ts.serialize_cdr(msg, Compressed.__msgtype__))
            elif broken and i == n_compressed:
                msg = Compressed(header=hdr, format="jpeg", data=np.arange(50, dtype=np.uint8))
                w.write(c_jpg, t + 1, ts.serialize_cdr(msg, Compressed.__msgtype__))
            w.write(c_str, t + 2, ts.serialize_cdr(String(data=f"hello {i}"), String.__msgtype__))
            t += 100_000_000
    return raw_rgb


def _aug(**kw) -> MultiCropAugmentation:
    base = dict(global_crops_size=32, local_crops_size=16, local_crops_number=2)
    return MultiCropAugmentation(**{**base, **kw})


def test_multicrop_shapes_and_determinism():
    img = ProceduralSource(80, 96).get(0)
    aug = _aug(gram_teacher_crops_size=64, local_crops_number=3)
    a = aug(img, torch.Generator().manual_seed(7))
    b = aug(img, torch.Generator().manual_seed(7))
    c = aug(img, torch.Generator().manual_seed(8))
    assert [t.shape for t in a["global_crops"]] == [(3, 32, 32)] * 2
    assert [t.shape for t in a["local_crops"]] == [(3, 16, 16)] * 3
    assert [t.shape for t in a["gram_teacher_crops"]] == [(3, 64, 64)] * 2
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert torch.equal(x, y)
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])


def test_gram_teacher_crops_are_undistorted_views_of_the_global_boxes():
    img = ProceduralSource(96, 96).get(1)
    # sigma ~0.1 makes the always-on blur of global crop 1 a no-op; no jitter/grayscale
    aug = _aug(gram_teacher_crops_size=64, jitter_p=0.0, grayscale_p=0.0, blur_sigma=(0.1, 0.1))
    out = aug(img, torch.Generator().manual_seed(3))
    down = F.interpolate(out["gram_teacher_crops"][0][None], size=(32, 32), mode="area")[0]
    same = (down - out["global_crops"][0]).abs().mean().item()
    other = (down - out["global_crops"][1]).abs().mean().item()
    assert same < 0.08 < other
    # photometric ops do change student crops but never the Gram-teacher crops
    aug2 = _aug(gram_teacher_crops_size=64, jitter_p=1.0, grayscale_p=1.0)
    out2 = aug2(img, torch.Generator().manual_seed(3))
    assert (out2["global_crops"][0][0] - out2["global_crops"][0][1]).abs().max() < 1  # gray-ish
    assert (out2["gram_teacher_crops"][0][0] - out2["gram_teacher_crops"][0][1]).abs().max() > 1


def test_block_masking_counts_ratio_spread_and_blocks():
    g = torch.Generator().manual_seed(0)
    gen = MaskingGenerator((14, 14))
    for n in (0, 5, 39, 98):
        assert int(gen(n, g).sum()) == n
    masks = sample_masks(8, (14, 14), g)
    counts = sorted(int(m.sum()) for m in masks)
    assert counts == [0, 0, 0, 0] + [int(196 * r) for r in (0.2, 0.3, 0.4, 0.5)]
    m = gen(58, g)
    pad = F.pad(m[None, None].float(), (1, 1, 1, 1))[0, 0]
    neigh = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
    assert (neigh[m] > 0).float().mean() > 0.9  # blocks, not scattered patches


def test_collate_is_crop_major_with_mask_bookkeeping():
    aug = _aug()
    samples = [
        dict(aug(ProceduralSource(64, 64).get(i), torch.Generator().manual_seed(i)), seed=i) for i in range(3)
    ]
    batch = MultiCropCollate(patch_size=16)(samples)
    assert batch["global_crops"].shape == (6, 3, 32, 32) and batch["local_crops"].shape == (6, 3, 16, 16)
    assert torch.equal(batch["global_crops"][1], samples[1]["global_crops"][0])
    assert torch.equal(batch["global_crops"][3 + 2], samples[2]["global_crops"][1])
    assert torch.equal(batch["local_crops"][3 + 0], samples[0]["local_crops"][1])
    masks = batch["masks"]
    assert masks.shape == (6, 4) and batch["n_masked_patches"] == int(masks.sum())
    assert torch.equal(batch["mask_indices"], masks.flatten().nonzero().flatten())
    expect_w = torch.cat([torch.full((int(m.sum()),), 1.0 / int(m.sum())) for m in masks if m.any()])
    torch.testing.assert_close(batch["masks_weight"], expect_w)


def test_folder_source_skips_and_counts_unreadable(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), ProceduralSource(40, 50).get(i))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "gray.png"), np.full((40, 40), 128, np.uint8))
    src = build_source({"type": "folder", "root": str(tmp_path)})
    assert isinstance(src, ImageFolderSource) and len(src) == 6
    assert src.get(src.files.index(tmp_path / "broken.jpg")) is None
    gray = src.get(src.files.index(tmp_path / "sub" / "gray.png"))
    assert gray.shape == (40, 40, 3) and (gray == 128).all()
    ds = MultiCropDataset([src], _aug(local_crops_number=0))
    samples = [ds[k] for k in range(20)]
    assert sum(s["n_skipped"] for s in samples) > 0
    assert all(s["global_crops"][0].shape == (3, 32, 32) for s in samples)
    with pytest.raises(FileNotFoundError):
        ImageFolderSource(tmp_path / "missing")


def test_video_source_frame_stride(tmp_path):
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(10):
        w.write(np.full((48, 64, 3), (0, 0, 20 * i), np.uint8))  # BGR: red ramps up
    w.release()
    src = VideoSource(path, frame_stride=3)
    assert len(src) == 4
    reds = [int(src.get(k)[..., 0].mean()) for k in range(4)]
    assert reds == pytest.approx([0, 60, 120, 180], abs=6)


def test_rosbag_source_topics_stride_decoding(tmp_path):
    bag = tmp_path / "bag"
    raw = write_image_bag(bag)
    src = RosbagSource(bag, topics=["/cam/image_raw"], frame_stride=2)
    assert len(src) == 3
    for k in range(3):
        np.testing.assert_array_equal(src.get(k), raw[2 * k])
    both = build_source({"type": "rosbag", "paths": [str(bag)], "frame_stride": 1})
    assert len(both) == 6 + 5  # the String topic is ignored
    got = [both.get(k) for k in range(len(both))]
    assert sum(x is None for x in got) == 1  # the undecodable JPEG
    jpgs = [x for x, (_, topic, _) in zip(got, both.index) if topic.endswith("compressed") and x is not None]
    assert len(jpgs) == 4
    err0, err1 = (np.abs(jpgs[0].astype(int) - raw[i]).mean() for i in (0, 1))
    assert err0 < 20 and err0 < err1  # lossy, but the same picture
    with pytest.raises(ValueError, match="no image topic"):
        RosbagSource(bag, topics=["/nope"])


def test_mixed_sources_follow_weights(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), ProceduralSource(40, 40).get(i))
    ds = MultiCropDataset(
        [ImageFolderSource(tmp_path), ProceduralSource(32, 32)],
        _aug(global_crops_size=16, local_crops_number=0, jitter_p=0.0),
        weights=[3, 1],
    )
    names = [ds[k]["source"] for k in range(80)]
    frac = sum(n.startswith("folder") for n in names) / len(names)
    assert 0.6 < frac < 0.9
    with pytest.raises(ValueError, match="weights"):
        MultiCropDataset([ProceduralSource()], _aug(), weights=[1, 2])


def test_loader_position_is_the_iteration_and_ranks_are_disjoint():
    cfg = {
        "crops": {"global_crops_size": 32, "local_crops_size": 16, "local_crops_number": 1},
        "sources": [{"type": "procedural", "height": 48, "width": 48}],
    }
    full = list(build_pretrain_loader(cfg, batch_size=2, max_iter=3))
    resumed = list(build_pretrain_loader(cfg, batch_size=2, start_iter=2, max_iter=3))
    assert len(full) == 3 and len(resumed) == 1
    assert torch.equal(full[2]["global_crops"], resumed[0]["global_crops"])
    assert torch.equal(full[2]["masks"], resumed[0]["masks"])
    r0 = list(IterationBatchSampler(4, rank=0, world_size=2, max_iter=3))
    r1 = list(IterationBatchSampler(4, rank=1, world_size=2, max_iter=3))
    ids0 = {i for b in r0 for _, i in b}
    ids1 = {i for b in r1 for _, i in b}
    assert not ids0 & ids1 and len(ids0 | ids1) == 24
    mixed = IterationBatchSampler(1, ratios=[0.3, 0.7], max_iter=400)
    choice = [b[0][0] for b in mixed]
    assert 0.2 < choice.count(0) / 400 < 0.4


def test_mixed_resolution_loader_batches():
    cfg = {
        "crops": {
            "global_crops_size": 32,
            "local_crops_size": 16,
            "local_crops_number": 1,
            "mixed": [
                {"global_crops_size": 32, "gram_teacher_crops_size": 48, "ratio": 0.5},
                {"global_crops_size": 48, "gram_teacher_crops_size": 64, "ratio": 0.5},
            ],
        },
        "sources": [{"type": "procedural", "height": 64, "width": 64}],
    }
    sizes = {
        tuple(b["global_crops"].shape[-2:]) + tuple(b["gram_teacher_crops"].shape[-2:])
        for b in build_pretrain_loader(cfg, batch_size=1, max_iter=8)
    }
    assert sizes == {(32, 32, 48, 48), (48, 48, 64, 64)}


def test_config_overrides_and_errors(tmp_path):
    from training.config import load_config

    cfg = load_config(
        Path("training/configs/tiny_cpu.yaml"),
        ["optim.lr=0.5", "model.backbone.depth=3", "crops.global_crops_scale=[0.4, 1.0]", "gram.use=true"],
    )
    assert cfg["optim"]["lr"] == 0.5 and cfg["model"]["backbone"]["depth"] == 3
    assert cfg["model"]["backbone"]["rope_rescale"] == 2.0  # merged, not replaced
    assert cfg["crops"]["global_crops_scale"] == [0.4, 1.0] and cfg["gram"]["use"] is True
    with pytest.raises(KeyError, match=r"optim\.lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"section\.key=value"):
        load_config(None, ["optim.lr"])
    for name in ("tiny_cpu", "vits16_1gpu", "vits16_gram_anchor", "vits16_highres_adapt"):
        load_config(Path("training/configs") / f"{name}.yaml")  # every shipped pretraining config is valid


def test_synthetic_source():
    src = build_source({"type": "synthetic", "height": 48, "width": 64, "seed": 1})
    a, b = src.get(3), src.get(3)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_photometric_ops():
    from training.data.augment import adjust_hue, adjust_saturation, gaussian_blur, solarize, to_grayscale

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 20, 24, generator=g)
    torch.testing.assert_close(adjust_hue(img, 0.0), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(adjust_hue(adjust_hue(img, 0.25), -0.25), img, atol=1e-4, rtol=0)
    red = torch.zeros(3, 1, 1)
    red[0] = 1.0
    torch.testing.assert_close(
        adjust_hue(red, 1 / 3).flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(adjust_saturation(img, 0.0), to_grayscale(img))
    torch.testing.assert_close(solarize(torch.tensor([0.2, 0.6])), torch.tensor([0.2, 0.4]))
    impulse = torch.zeros(3, 21, 21)
    impulse[:, 10, 10] = 1.0
    out = gaussian_blur(impulse, 1.5, 9)[0]
    x = torch.arange(-4, 5, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * 1.5**2))
    k2 = torch.outer(k, k) / k.sum() ** 2
    torch.testing.assert_close(out[6:15, 6:15], k2, atol=1e-5, rtol=1e-4)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)


def test_image_loaders_take_the_default_crops_and_refuse_object_zoom():
    from training.config import DEFAULTS
    from training.data.loader import build_augmentations

    crops = dict(DEFAULTS["crops"])  # every key the configs carry, object_zoom 0 included
    augs, ratios = build_augmentations(crops)
    assert len(augs) == 1 and ratios == [1.0]
    with pytest.raises(ValueError, match=r"object_zoom needs sim\.enabled"):
        build_augmentations({**crops, "object_zoom": 0.3})
