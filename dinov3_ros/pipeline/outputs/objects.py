"""``objects``: TokenCut object masks at input resolution, with identities tracked across frames.

Each frame's foreground objects are cut from the patch-affinity graph of the image content (letterbox
padding excluded), on the model's objects head projection of the tokens when it has one; later
objects need ``min_object_patches`` patches and a cut eigenvalue of at most ``1 - min_object_score``.
With ``mask_refine: guided`` the masks' edges then move to the image's edges (``heads.mask_refine``).
A per-source tracker keeps identities by mask overlap (``track_iou``).
Layouts: ``objects/mask`` (instance ids, 0 = background) and ``objects/boxes`` (docs/MESSAGES.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dinov3_ros.core.frames import ObjectsResult
from dinov3_ros.heads.tokencut import TokenCutResult, TokenCutTracker, TrackedObject
from dinov3_ros.msgs.cdr import image_parts, point_cloud_parts
from dinov3_ros.msgs.layouts import BOX_FIELDS, boxes_array, mask_image
from dinov3_ros.pipeline.grid import grid_maps, grid_to_input, grid_to_input_linear
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic


@dataclass
class ObjectsState:
    """A source's tracker and the valid patch crop it runs on."""

    tracker: TokenCutTracker | None = None
    grid: tuple[int, int, int, int] | None = None


def _mask(stamp: int, frame_id: str, value: ObjectsResult, cfg: Any) -> list:
    return image_parts(stamp, frame_id, mask_image(value.mask, cfg.mask_encoding), cfg.mask_encoding)


def _boxes(stamp: int, frame_id: str, value: ObjectsResult, cfg: Any) -> list:
    return point_cloud_parts(stamp, frame_id, BOX_FIELDS, boxes_array(value))


def solver_for(device_type: str, n_patches: int) -> str:
    """TokenCut eigen-solver: on a CPU dense solves beat iterative ones up to a few thousand patches (a
    full ``eigh`` up to 400, above that only the needed eigenpair); on a GPU ``auto``."""
    if device_type == "cpu" and n_patches <= 2048:
        return "dense" if n_patches <= 400 else "cpu_dense"
    return "auto"


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Instance ids -> RGB (0 = black; each id a fixed colour)."""
    m = np.asarray(mask).astype(np.int64)
    out = np.zeros((*m.shape, 3), np.uint8)
    for i in np.unique(m):
        if i != 0:
            out[m == i] = np.random.default_rng(int(i)).integers(64, 256, 3).astype(np.uint8)
    return out


def _boxes_from_grid(grid: np.ndarray, ids: list[int], geom: Any) -> tuple[list, list, list]:
    """Input-pixel boxes and areas of each id's patches. Each patch maps to a product of input rows x
    columns, so this is exact and costs O(objects x patches), not passes over the input-size mask."""
    ri, ci = grid_maps(geom, grid.shape[0], grid.shape[1])
    ny = np.bincount(ri, minlength=grid.shape[0])
    nx = np.bincount(ci, minlength=grid.shape[1])
    boxes, areas, keep = [], [], []
    for k, oid in enumerate(ids):
        cells = grid == oid
        ys = np.flatnonzero(cells.any(1)[ri])  # input rows whose grid row holds the object
        xs = np.flatnonzero(cells.any(0)[ci])
        area = int((ny[:, None] * nx[None, :])[cells].sum())
        if area == 0 or ys.size == 0 or xs.size == 0:
            continue  # the object lies in letterbox padding only
        boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
        areas.append(area)
        keep.append(k)
    return boxes, areas, keep


def _boxes_from_mask(mask: np.ndarray, ids: list[int]) -> tuple[list, list, list]:
    """Input-pixel boxes and areas of each id in an input-size id map (ids without pixels dropped)."""
    boxes, areas, keep = [], [], []
    for k, oid in enumerate(ids):
        m = mask == oid
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size == 0:
            continue
        boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
        areas.append(int(m.sum()))
        keep.append(k)
    return boxes, areas, keep


def refined_mask(
    grid: np.ndarray, ids: list[int], geom: Any, image: np.ndarray, device: Any = "cpu"
) -> np.ndarray:
    """Input-size id map from the patch-grid id map: each object's mask and the background taken
    bilinearly to input pixels, then edge-aligned with the image (``heads.mask_refine``) on ``device``;
    an object the refinement would empty keeps its patch block."""
    from dinov3_ros.heads.mask_refine import refine_labels

    labels = np.asarray([0, *ids], grid.dtype)
    onehot = grid[..., None] == labels
    soft = grid_to_input_linear(onehot.astype(np.float32), geom)
    patch_px = geom.patch_size / min(geom.scale_x, geom.scale_y)  # one patch in input pixels

    def blocks() -> np.ndarray:  # the patch blocks, only for an object the refinement would empty
        return grid_to_input(onehot.argmax(-1).astype(np.uint16), geom)

    return refine_labels(soft, image, patch_px, blocks, device=device, values=labels)


class Objects(Output):
    """:class:`~dinov3_ros.core.frames.ObjectsResult` (uint16 mask, ids, boxes, scores, areas)."""

    name = "objects"
    order = 60
    worker = "own"
    state_types = (ObjectsState, TokenCutTracker, TrackedObject, TokenCutResult)
    topics = (
        Topic("objects/mask", "sensor_msgs/msg/Image", _mask),
        Topic("objects/boxes", "sensor_msgs/msg/PointCloud2", _boxes),
    )
    tile_label = "mask"

    def new_state(self) -> ObjectsState:
        return ObjectsState()

    def _tracker(self, st: ObjectsState, crop: tuple[int, int, int, int], device_type: str, cfg: Any) -> Any:
        r0, r1, c0, c1 = crop
        if st.tracker is None or st.grid != crop:
            st.tracker = TokenCutTracker(
                k=cfg.max_objects, method=solver_for(device_type, (r1 - r0) * (c1 - c0))
            )
            st.grid = crop
        tr = st.tracker
        tr.k, tr.tau, tr.eps, tr.iou_threshold = (
            cfg.max_objects,
            cfg.tokencut_tau,
            cfg.tokencut_eps,
            cfg.track_iou,
        )
        tr.multi_kwargs = {
            "min_patches": cfg.min_object_patches,
            "max_eigenvalue": 1.0 - cfg.min_object_score,
        }
        return tr

    def compute(self, job: FrameJob) -> ObjectsResult:
        tok, cfg, geom = job.tokens, job.cfg, job.geom
        rows, cols = np.nonzero(job.valid())
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        feats = tok[r0:r1, c0:c1]
        if job.batch.objects_head is not None:
            feats = job.batch.objects_head(feats)
        objs = self._tracker(job.state, (r0, r1, c0, c1), tok.device.type, cfg).update(feats.contiguous())
        max_id = 255 if cfg.mask_encoding == "mono8" else 65535
        grid = np.zeros(tok.shape[:2], np.uint16)
        ids, scores = [], []
        for o in objs:
            oid = o.track_id % max_id + 1
            grid[r0:r1, c0:c1][o.result.mask] = oid
            ids.append(oid)
            lam = o.result.eigenvalue
            scores.append(float(np.clip(1.0 - lam, 0.0, 1.0)) if np.isfinite(lam) else 0.0)
        if cfg.mask_refine == "guided" and ids:
            mask = refined_mask(grid, ids, geom, job.frame.image, tok.device)
            boxes, areas, keep = _boxes_from_mask(mask, ids)
        else:
            mask = np.ascontiguousarray(grid_to_input(grid, geom))
            boxes, areas, keep = _boxes_from_grid(grid, ids, geom)
        return ObjectsResult(
            mask,
            np.asarray([ids[k] for k in keep], np.uint32),
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray([scores[k] for k in keep], np.float32),
            np.asarray(areas, np.uint32),
        )

    def tile(self, value: ObjectsResult, rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        img = cv2.resize(colorize_mask(value.mask), size, interpolation=cv2.INTER_NEAREST)
        return img, f"mask ({len(value.ids)} obj)"
