"""Depth evaluation: a ridge probe on frozen patch features (or a trained depth head) vs GT depth.

The probe regresses, per patch, the mean log-depth of the patch's pixels from its feature (+ bias),
fit in closed form on the training scenes; predictions are bilinearly upsampled (in log space) to
full resolution. Metrics are averaged per image (AbsRel, RMSE, delta1, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from dinov3_ros.eval.metrics import (
    depth_metrics,
    mean_metrics,
    ridge_fit,
    ridge_predict,
    scene_bootstrap_ci,
)
from dinov3_ros.synthetic.frame import SynthFrame

MIN_DEPTH, MAX_DEPTH = 0.05, 100.0


def patch_log_depth(depth: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch mean log-depth ``[h,w]`` over valid pixels and the patch validity mask."""
    H, W = depth.shape
    h, w = H // patch, W // patch
    d = depth[: h * patch, : w * patch].reshape(h, patch, w, patch)
    valid = d > 0
    logd = np.where(valid, np.log(np.maximum(d, 1e-6)), 0.0)
    cnt = valid.sum((1, 3))
    mean = logd.sum((1, 3)) / np.maximum(cnt, 1)
    return mean, cnt > patch * patch // 2


class DepthProbe:
    """Ridge regression from patch features to log depth."""

    def __init__(self, lam: float = 1e-2) -> None:
        self.lam = lam
        self.W: np.ndarray | None = None

    def fit(self, features: Sequence[np.ndarray], frames: Sequence[SynthFrame]) -> DepthProbe:
        xs, ys = [], []
        for f, fr in zip(features, frames):
            h = f.shape[0]
            target, valid = patch_log_depth(fr.depth, fr.height // h)
            xs.append(f[valid])
            ys.append(target[valid])
        self.W = ridge_fit(np.concatenate(xs), np.concatenate(ys), self.lam)
        return self

    def predict(self, features: np.ndarray, height: int, width: int) -> np.ndarray:
        if self.W is None:
            raise RuntimeError("DepthProbe.predict before fit")
        h, w, C = features.shape
        logd = ridge_predict(self.W, features.reshape(-1, C)).reshape(h, w).astype(np.float32)
        up = cv2.resize(logd, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(np.exp(up), MIN_DEPTH, MAX_DEPTH)


def evaluate_depth(frames: Sequence[SynthFrame], predict: Callable[[int, SynthFrame], np.ndarray]) -> dict:
    """Mean per-image depth metrics, with 95% scene-bootstrap intervals of AbsRel and delta1 (``ci95``);
    ``predict(i, frame)`` returns an ``[H,W]`` depth in metres."""
    per = []
    for i, fr in enumerate(frames):
        pred = np.asarray(predict(i, fr), np.float64)
        if pred.shape != fr.depth.shape:
            raise ValueError(f"depth prediction {pred.shape} != frame {fr.depth.shape}")
        pred = np.clip(pred, MIN_DEPTH, MAX_DEPTH)
        per.append(depth_metrics(pred, fr.depth))
    out = mean_metrics(per)
    out["images"] = len(per)
    scenes = [fr.scene_index for fr in frames]
    out["ci95"] = {k: scene_bootstrap_ci([d[k] for d in per], scenes) for k in ("abs_rel", "delta1")}
    return out
