"""``features_pca``: the patch features as RGB through a per-source, sign-stable PCA basis (``rgb8``)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dinov3_ros.heads.pca import PCAView
from dinov3_ros.msgs.cdr import image_parts
from dinov3_ros.pipeline.outputs.base import BatchContext, FrameJob, Output, Topic
from dinov3_ros.pipeline.outputs.features import PcaState, pca_momentum, valid_weights


def pca_input(tokens: torch.Tensor, batch: BatchContext) -> torch.Tensor:
    """What the PCA view colours (``pca_space``): the tokens, or their objects-head embedding, unit
    length (the cosine space the head is trained in: instances apart from each other and from the
    background)."""
    head = batch.objects_head
    if batch.cfg.pca_space == "features" or head is None:  # Pipeline refuses 'objects' without a head
        return tokens
    return F.normalize(head(tokens), dim=-1)


def _serialize(stamp: int, frame_id: str, value: np.ndarray, cfg: Any) -> list:
    return image_parts(stamp, frame_id, value, "rgb8")


class FeaturesPca(Output):
    """``[h, w, 3]`` uint8 on the patch grid. A source's basis is fitted on its first frame
    (``pca_mode: fit_once``) or EMA-updated (``update``); frames of a source with a fixed basis are
    coloured together, once per batch."""

    name = "features_pca"
    order = 20
    batch_copy = True
    state_resets = ("features_k", "pca_mode", "pca_space")
    state_types = (PcaState, PCAView)
    topics = (Topic("features/pca", "sensor_msgs/msg/Image", _serialize),)
    tile_label = "PCA"

    def new_state(self) -> PcaState:
        return PcaState()

    def prepare(self, batch: BatchContext) -> None:
        if batch.cfg.pca_mode != "fit_once":
            return
        groups: dict[str, list[int]] = {}
        for i, frame in enumerate(batch.frames):
            st = batch.states[i].get(self.name)
            pv = st.view if st is not None else None
            if pv is not None and pv.fitted and pv.momentum == 0.0:
                groups.setdefault(frame.source, []).append(i)
        pre: dict[int, torch.Tensor] = {}
        for idx in groups.values():
            sel = pca_input(batch.tokens if len(idx) == len(batch.frames) else batch.tokens[idx], batch)
            rgb = batch.states[idx[0]][self.name].view.transform_tensor(sel, mask_background=False)
            pre.update({i: rgb[j] for j, i in enumerate(idx)})
        batch.cache["features_pca.fixed"] = pre

    def compute(self, job: FrameJob) -> torch.Tensor:
        st = job.state
        if st.view is None:
            st.view = PCAView(3, momentum=pca_momentum(job.cfg))
        fixed = job.batch.cache.get("features_pca.fixed", {}).get(job.i)
        if fixed is not None:
            return fixed
        x = pca_input(job.tokens, job.batch)
        st.view.update(x, fg_mask=valid_weights(job))
        return st.view.transform_tensor(x, mask_background=False)

    def tile(self, value: np.ndarray, rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        return cv2.resize(np.ascontiguousarray(value), size, interpolation=cv2.INTER_NEAREST), "PCA"
