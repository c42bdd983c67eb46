"""``features``: the patch features on the patch grid (``32FC<C>``), or their first k PCA components."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dinov3_ros.heads._common import to_host
from dinov3_ros.heads.pca import PCAView
from dinov3_ros.msgs.cdr import image_parts
from dinov3_ros.msgs.layouts import image_encoding
from dinov3_ros.pipeline.outputs.base import BatchContext, FrameJob, Output, Topic


@dataclass
class PcaState:
    """A source's PCA basis (fitted on its first frame, or EMA-updated)."""

    view: PCAView | None = None


def as_f32(x: torch.Tensor) -> np.ndarray:
    """A tensor as float32 numpy (shares memory with a float32 CPU tensor)."""
    return x.detach().float().cpu().numpy()


def pca_momentum(cfg: Any) -> float:
    """``PCAView`` momentum of the configured ``pca_mode``."""
    return 0.0 if cfg.pca_mode == "fit_once" else 1.0 - cfg.pca_momentum


def valid_weights(job: FrameJob) -> torch.Tensor:
    """The frame's valid-patch mask as the PCA's foreground weights."""
    return torch.from_numpy(job.valid().astype(np.float32))


def _serialize(stamp: int, frame_id: str, value: np.ndarray, cfg: Any) -> list:
    f = np.ascontiguousarray(value, dtype=np.float32)
    return image_parts(stamp, frame_id, f, image_encoding(f))


class Features(Output):
    """``[h, w, C]`` float32 patch features; ``features_k > 0``: ``[h, w, k]`` PCA projections (per
    source basis, unwhitened)."""

    name = "features"
    order = 10
    state_resets = ("features_k", "pca_mode")
    state_types = (PcaState, PCAView)
    topics = (Topic("features", "sensor_msgs/msg/Image", _serialize),)

    def new_state(self) -> PcaState:
        return PcaState()

    def prepare(self, batch: BatchContext) -> None:
        if batch.cfg.features_k == 0 and batch.tokens.device.type != "cpu":
            batch.cache["features.host"] = to_host(batch.tokens)  # one copy for the batch

    def compute(self, job: FrameJob) -> np.ndarray:
        cfg, tok = job.cfg, job.tokens
        if cfg.features_k > 0:
            st = job.state
            if st.view is None or st.view.n_components != cfg.features_k:
                st.view = PCAView(cfg.features_k, whiten=False, momentum=pca_momentum(cfg))
            st.view.update(tok, fg_mask=valid_weights(job))
            h, w, _ = tok.shape
            return as_f32(st.view.project(tok)).reshape(h, w, cfg.features_k)
        host = job.batch.cache.get("features.host")
        return np.ascontiguousarray(host[job.i] if host is not None else as_f32(tok))
