"""Edge-aligned object masks: the guided-filter label refinement, in the pipeline and in eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.heads.mask_refine import guided_labels
from dinov3_ros.pipeline import Frame, PipelineConfig
from dinov3_ros.pipeline.pipeline import Pipeline


def _rect_image() -> np.ndarray:
    """A red rectangle whose edges fall inside patches (rows 20-43, columns 30-69)."""
    img = np.full((64, 96, 3), 40, np.uint8)
    img[20:44, 30:70] = (250, 30, 30)
    return img


def _block_soft() -> np.ndarray:
    """Background / object maps of the patch-aligned block that covers the rectangle (rows 16-47,
    columns 32-63), softened as a bilinear upsampling would."""
    import cv2

    fg = np.zeros((64, 96), np.float32)
    fg[16:48, 32:64] = 1.0
    fg = cv2.blur(fg, (9, 9))
    return np.stack([1.0 - fg, fg], -1)


def test_labels_snap_to_the_image_edges_within_a_patch():
    lab = guided_labels(_block_soft(), _rect_image(), radius=16)
    ys, xs = np.nonzero(lab == 1)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 43, 30, 69)
    assert (lab == 1).sum() == 24 * 40
    # control: without edges in the guide the result is only a smoothing of the block, not the rectangle
    flat = guided_labels(_block_soft(), np.full((64, 96, 3), 40, np.uint8), radius=16)
    assert not np.array_equal(flat == 1, lab == 1)
    with pytest.raises(ValueError, match="must be"):
        guided_labels(_block_soft()[:, :50], _rect_image(), radius=16)


class RGBEngine:
    """patch_tokens = mean RGB of the patch, centred: the rectangle's patches stand apart."""

    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        t = torch.nn.functional.avg_pool2d(batch.float(), 16).permute(0, 2, 3, 1).contiguous()
        return {"patch_tokens": t, "cls": t.mean((1, 2))}


@pytest.mark.parametrize("refine", ["none", "guided"])
def test_pipeline_masks_follow_the_image_with_guided_refinement(refine):
    cfg = PipelineConfig(resolution=(64, 96), mask_encoding="mono16", tokencut_tau=0.5, mask_refine=refine)
    p = Pipeline(RGBEngine(), cfg, None)
    try:
        ob = p.process([Frame(_rect_image(), 1, "cam", None)], {"objects"})[0]["objects"]
    finally:
        p.close()
    assert len(ob.ids) == 1
    oid = int(ob.ids[0])
    box = ob.boxes[0].tolist()
    if refine == "guided":
        assert box == [30, 20, 70, 44]  # the rectangle's own edges
    else:
        assert all(v % 16 == 0 for v in box)  # patch blocks
    assert int(ob.areas[0]) == int((ob.mask == oid).sum())
    assert set(np.unique(ob.mask).tolist()) == {0, oid}


def test_eval_guided_masks_are_image_sized_and_follow_edges():
    from dinov3_ros.eval.objects import guided_mask

    patch = np.zeros((4, 6), bool)
    patch[1:3, 2:4] = True  # the block of _block_soft
    m = guided_mask(patch, _rect_image())
    assert m.shape == (64, 96)
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 43, 30, 69)


def test_refinement_never_removes_an_object():
    """A one-patch object on a flat image has no edges to follow and its smoothed map loses to the
    background everywhere: it keeps its patch block instead of vanishing."""
    from dinov3_ros.pipeline.grid import grid_to_input
    from dinov3_ros.pipeline.outputs.objects import refined_mask
    from dinov3_ros.runtime.preprocess import Preprocessor

    img = np.full((64, 96, 3), 90, np.uint8)
    pre = Preprocessor((64, 96), 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "cpu")
    geom = next(x for x in pre([img]) if isinstance(x, list))[0]
    grid = np.zeros((4, 6), np.uint16)
    grid[1, 2] = 7
    mask = refined_mask(grid, [7], geom, img)
    np.testing.assert_array_equal(mask, grid_to_input(grid, geom))
