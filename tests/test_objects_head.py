"""The objects head (TokenCut's learned token projection): its file format, its use by the pipeline's
``objects`` output and by ``load_model``, and its trainer learning to separate instances."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from dinov3_ros.heads.objects_head import ObjectsHead, load_objects_head, save_objects_head
from dinov3_ros.pipeline import Frame, PipelineConfig
from dinov3_ros.pipeline.pipeline import Pipeline


def _head(c: int = 8, d: int = 4, seed: int = 0) -> ObjectsHead:
    rng = np.random.default_rng(seed)
    return ObjectsHead(
        rng.standard_normal((c, d)).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    )


def _write_npz(path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _meta_blob(**meta) -> np.ndarray:
    base = {"format": "dinov3_ros.objects_head", "version": 1, "arch": "vits16", "embed_dim": 8, "out_dim": 4}
    return np.frombuffer(json.dumps(base | meta).encode(), np.uint8)


# -- the file ----------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact_and_holds_no_pickle(tmp_path):
    h = _head()
    p = tmp_path / "o.npz"
    save_objects_head(p, h, {"arch": "vits16", "pos_margin": 0.5})
    back = load_objects_head(p, expect_arch="vits16", expect_embed_dim=8)
    np.testing.assert_array_equal(back.weight, h.weight)
    np.testing.assert_array_equal(back.bias, h.bias)
    assert back.meta["pos_margin"] == 0.5 and back.meta["out_dim"] == 4
    with zipfile.ZipFile(p) as z:  # plain .npy members, none an object (pickled) array
        assert sorted(z.namelist()) == ["bias.npy", "meta.npy", "weight.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz"]  # the atomic write left nothing else


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"weight": np.zeros((8, 4), np.float32), "bias": np.zeros(4, np.float32)}, "missing"),
        (
            {"weight": np.zeros((8, 4), np.float32), "bias": np.zeros(3, np.float32), "meta": _meta_blob()},
            "bias must be",
        ),
        ({"weight": np.zeros((8, 4), np.float64), "bias": np.zeros(4), "meta": _meta_blob()}, "float32"),
        (
            {
                "weight": np.full((8, 4), np.nan, np.float32),
                "bias": np.zeros(4, np.float32),
                "meta": _meta_blob(),
            },
            "NaN",
        ),
        (
            {
                "weight": np.zeros((8, 4), np.float32),
                "bias": np.zeros(4, np.float32),
                "meta": _meta_blob(format="x"),
            },
            "format tag",
        ),
        (
            {
                "weight": np.zeros((8, 4), np.float32),
                "bias": np.zeros(4, np.float32),
                "meta": _meta_blob(version=9),
            },
            "version 9",
        ),
        (
            {
                "weight": np.zeros((8, 4), np.float32),
                "bias": np.zeros(4, np.float32),
                "meta": _meta_blob(out_dim=5),
            },
            "meta says",
        ),
        (
            {"weight": np.zeros((8, 4), np.float32), "bias": np.zeros(4, np.float32), "meta": np.zeros(3)},
            "uint8 JSON",
        ),
        (
            {
                "weight": np.zeros((8, 4), np.float32),
                "bias": np.zeros(4, np.float32),
                "meta": np.array([object()]),
            },
            "not readable",
        ),
    ],
)
def test_bad_files_are_refused_with_a_message_naming_the_problem(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    _write_npz(p, **arrays)
    with pytest.raises(ValueError, match=match) as e:
        load_objects_head(p)
    assert str(p) in str(e.value)


def test_not_an_archive_a_missing_file_and_mismatched_backbones(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"junk\.npz"):
        load_objects_head(junk)
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        load_objects_head(tmp_path / "nope.npz")
    p = tmp_path / "o.npz"
    save_objects_head(p, _head(), {"arch": "vits16"})
    with pytest.raises(ValueError, match="384"):
        load_objects_head(p, expect_embed_dim=384)
    with pytest.raises(ValueError, match="vitb16"):
        load_objects_head(p, expect_arch="vitb16")
    with pytest.raises(ValueError, match="arch"):
        save_objects_head(p, _head(), {})


def test_the_map_is_tokens_times_weight_plus_bias_on_any_leading_shape():
    h = _head()
    x = torch.randn(3, 5, 8, dtype=torch.float16)
    np.testing.assert_allclose(h(x).numpy(), x.float().numpy() @ h.weight + h.bias, rtol=1e-5, atol=1e-5)
    assert h(x).dtype == torch.float32
    np.testing.assert_allclose(h.apply_numpy(x.float().numpy()), h(x).numpy())
    with pytest.raises(ValueError, match="8-d tokens"):
        h(torch.zeros(2, 7))


# -- the pipeline's objects output -------------------------------------------------------------


class OffsetRGBEngine:
    """patch_tokens = [10, mean RGB - 0.5, 0...]: a large shared component makes every raw cosine ~1,
    so TokenCut on the raw tokens cannot separate anything; dropping channel 0 reveals the colours."""

    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb = torch.nn.functional.avg_pool2d(batch.float(), 16).permute(0, 2, 3, 1)
        t = torch.zeros(*rgb.shape[:3], 8)
        t[..., 0] = 10.0
        t[..., 1:4] = rgb / 4.0  # normalised pixels, scaled to stay well below the shared component
        return {"patch_tokens": t, "cls": t.mean((1, 2))}


def _square() -> np.ndarray:
    img = np.full((64, 96, 3), 40, np.uint8)
    img[16:48, 32:64] = (250, 30, 30)
    return img


def _objects(head: ObjectsHead | None, frame_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    cfg = PipelineConfig(resolution=(64, 96), max_objects=2, mask_encoding="mono16", tokencut_tau=0.5)
    p = Pipeline(OffsetRGBEngine(), cfg, None, objects_head=head)
    try:
        o = p.process([Frame(_square(), 5 + frame_index, "cam", None)], {"objects"})[0]["objects"]
    finally:
        p.close()
    return o.mask, o.boxes


def test_objects_head_is_what_tokencut_cuts():
    raw_mask, raw_boxes = _objects(None)
    drop = np.eye(8, dtype=np.float32)
    drop[0, 0] = 0.0  # removes the shared component
    mask, boxes = _objects(ObjectsHead(drop, np.zeros(8, np.float32)))
    assert [32, 16, 64, 48] in boxes.tolist()  # the square, found only through the head
    assert [32, 16, 64, 48] not in raw_boxes.tolist()
    assert not np.array_equal(mask, raw_mask)
    # a rotation keeps every cosine, hence the graph and the masks, exactly (the identity control)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 8)))
    rot_mask, rot_boxes = _objects(ObjectsHead((drop @ q).astype(np.float32), np.zeros(8, np.float32)))
    np.testing.assert_array_equal(rot_mask, mask)
    np.testing.assert_array_equal(rot_boxes, boxes)


def test_load_model_attaches_the_shipped_objects_head_or_a_file_or_none(tmp_path):
    from dinov3_ros.pipeline.model import ModelLoadError, load_model

    m = load_model("default", objects_head="auto", depth_head="none")
    assert m.objects_head is not None and m.objects_head.embed_dim == 384
    assert m.info["objects_head"].endswith("objects_head.npz")
    assert Pipeline.from_model(m).objects_head is m.objects_head
    assert load_model("default", objects_head="none", depth_head="none").objects_head is None
    assert load_model("random:vitt16", depth_head="none").objects_head is None  # random weights: none
    p = tmp_path / "small.npz"
    save_objects_head(p, _head(), {"arch": "vits16"})
    with pytest.raises(ModelLoadError, match="8-d tokens, backbone gives 384"):
        load_model("default", objects_head=str(p), depth_head="none")
    with pytest.raises(ModelLoadError, match="objects head file not found"):
        load_model("default", objects_head=str(tmp_path / "missing.npz"), depth_head="none")


# -- training ----------------------------------------------------------------------------------


def _token_sets(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Scenes of 4 frames x 16 patches, 3 instances each (codes drawn per scene from 8 directions): a
    large component shared by all patches hides the codes, so raw cosines join every pair."""
    world = np.random.default_rng(123)  # the same for every scene set: the backbone's feature space
    shared = world.standard_normal(24) * 4
    basis = np.linalg.qr(world.standard_normal((24, 24)))[0]  # instance codes: orthogonal directions
    rng = np.random.default_rng(seed)
    toks, labels, groups = [], [], []
    for scene in range(12):
        codes = 2.0 * basis[rng.choice(8, 3, replace=False)]
        for _ in range(4):
            lab = rng.integers(0, 3, 16)
            toks.append(shared + codes[lab] + 0.1 * rng.standard_normal((16, 24)))
            labels.append(lab)
            groups.append(scene)
    return [
        {"tokens": np.asarray(toks, np.float32), "labels": np.asarray(labels), "groups": np.asarray(groups)}
    ]


def test_trainer_learns_to_separate_instances_hidden_by_a_shared_component():
    from training.objects_head import DEFAULTS, pair_rates, train_projection

    cfg = json.loads(json.dumps(DEFAULTS)) | {"seed": 0}
    cfg["head"]["out_dim"] = 16
    cfg["optim"].update(iterations=600, scenes_per_step=4)
    sets = _token_sets()
    head, history = train_projection(sets, cfg)
    held = _token_sets(seed=1)[0]  # other scenes: other instances, labels and noise
    before = pair_rates(held["tokens"], held["labels"], 0.2)
    after = pair_rates(head.apply_numpy(held["tokens"]), held["labels"], 0.2)
    assert before["different_above_tau"] > 0.95  # raw: everything is joined
    assert after["different_above_tau"] < 0.2 and after["same_above_tau"] > 0.9
    assert history[-1] < 0.2 * history[0]
