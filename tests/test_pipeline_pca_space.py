"""``pipeline.pca_space``: the PCA view colours the patch features or the objects head's embedding; the
embedding separates the shipped model's objects from the surfaces better than the features do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_pipeline_core import PatchEngine

from dinov3_ros.heads.objects_head import ObjectsHead
from dinov3_ros.heads.pca import PCAView
from dinov3_ros.pipeline import Frame, PipelineConfig
from dinov3_ros.pipeline.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def head(C: int = 48, D: int = 8) -> ObjectsHead:
    rng = np.random.default_rng(1)
    return ObjectsHead(
        rng.standard_normal((C, D)).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    )


def image() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)


def pca(space: str, objects_head: ObjectsHead | None) -> np.ndarray:
    cfg = PipelineConfig(resolution=(64, 96), pca_space=space)
    p = Pipeline(PatchEngine(), cfg, objects_head=objects_head)
    return p.process([Frame(image(), 0, "cam")], {"features_pca"})[0]["features_pca"]


def expected(x: torch.Tensor) -> np.ndarray:
    view = PCAView(3, momentum=0.0)
    view.update(x, fg_mask=torch.ones(x.shape[:2]))
    return view.transform_tensor(x, mask_background=False).numpy()


def test_pca_space_picks_what_the_view_colours():
    h = head()
    pre = Pipeline(PatchEngine(), PipelineConfig(resolution=(64, 96)))._pre
    tokens = PatchEngine().run(pre([image()])[0])["patch_tokens"][0]
    on_objects = expected(F.normalize(h(tokens), dim=-1))
    assert np.array_equal(pca("objects", h), on_objects)
    assert np.array_equal(pca("auto", h), on_objects)  # auto: the objects head when loaded
    assert np.array_equal(pca("features", h), expected(tokens))
    assert np.array_equal(pca("auto", None), expected(tokens))  # auto without a head: the features
    assert not np.array_equal(on_objects, expected(tokens))  # the two spaces do differ


def test_objects_space_without_an_objects_head_is_refused():
    with pytest.raises(ValueError, match="pca_space 'objects' needs an objects head"):
        Pipeline(PatchEngine(), PipelineConfig(resolution=(64, 96), pca_space="objects"))
    p = Pipeline(PatchEngine(), PipelineConfig(resolution=(64, 96)))
    with pytest.raises(ValueError, match="pca_space 'objects' needs an objects head"):
        p.set_config(PipelineConfig(resolution=(64, 96), pca_space="objects"))
    assert p.config.pca_space == "auto"  # the refused config was not applied
    with pytest.raises(ValueError, match="pca_space"):
        PipelineConfig(pca_space="depth").validate()


def _patch_labels(instances: np.ndarray, h: int, w: int) -> np.ndarray:
    """The majority instance of each patch (0 = background)."""
    ph, pw = instances.shape[0] // h, instances.shape[1] // w
    blocks = instances[: h * ph, : w * pw].reshape(h, ph, w, pw).transpose(0, 2, 1, 3).reshape(h * w, -1)
    return np.array([np.bincount(b).argmax() for b in blocks])


def _centroid_accuracy(colours: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy of naming each patch's instance (or the background) by the nearest mean colour."""
    ids = [k for k in np.unique(labels) if (labels == k).sum() >= 3]
    cents = np.stack([colours[labels == k].mean(0) for k in ids])
    pred = np.asarray(ids)[np.argmin(((colours[:, None] - cents[None]) ** 2).sum(-1), 1)]
    return float(np.mean([(pred[labels == k] == k).mean() for k in ids]))


def test_the_shipped_objects_head_sets_objects_apart_in_the_pca_view():
    """Held-out scenes at 224x224: the view's colours name a patch's object (or the background) by
    nearest mean colour more often in the objects head's space than in the features'."""
    from dinov3_ros.pipeline.model import load_model
    from dinov3_ros.synthetic.generator import SceneGenerator

    model = load_model("default", resolution=(224, 224))
    assert model.objects_head is not None
    frames = [
        SceneGenerator(seed=100003, width=224, height=224, frames_per_scene=1).frame(s, 0) for s in range(8)
    ]
    score = {}
    for space in ("features", "objects"):
        pipe = Pipeline.from_model(model, PipelineConfig(pca_space=space))
        acc = []
        for fr in frames:
            pipe.reset()
            rgb = pipe.process([Frame(fr.rgb, 0, "cam")], {"features_pca"})[0]["features_pca"]
            acc.append(
                _centroid_accuracy(rgb.reshape(-1, 3).astype(float), _patch_labels(fr.instances, 14, 14))
            )
        score[space] = float(np.mean(acc))
    assert score["objects"] >= score["features"] + 0.02 and score["objects"] >= 0.85, score
