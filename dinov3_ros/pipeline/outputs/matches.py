"""``matches``: correspondences from the source's keyframe to the current frame, in input pixels.

Mutual nearest neighbours of the patch features with Lowe's ratio and a similarity threshold,
refined within the patch by the similarities, then to sub-pixel precision by NCC template matching in
the keyframe's and the current grey image (``heads.subpixel``, on the features' device), verified with
a RANSAC fundamental matrix. The keyframe is renewed per ``keyframe_policy``.
Layout: docs/MESSAGES.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from dinov3_ros.core.frames import MatchResult
from dinov3_ros.heads.correspondence import match
from dinov3_ros.heads.subpixel import GreyPyramid
from dinov3_ros.msgs.cdr import point_cloud_parts
from dinov3_ros.msgs.layouts import MATCH_FIELDS, matches_array
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic


@dataclass
class Keyframe:
    """The matching reference of a source."""

    tokens: torch.Tensor  # [h, w, C] patch grid of the keyframe (engine device)
    geom: Any
    stamp_ns: int
    frame_id: str
    age: int = 0
    grey: np.ndarray | None = None  # [H, W] uint8 grey input image (own copy); None: no image refinement
    #: ``grey`` as the refinement reads it, on the features' device (a cache: made from ``grey`` when
    #: missing, not saved with the state)
    pyramid: GreyPyramid | None = field(default=None, repr=False, compare=False, metadata={"transient": True})


@dataclass
class MatchState:
    keyframe: Keyframe | None = None


def _serialize(stamp: int, frame_id: str, value: MatchResult, cfg: Any) -> list:
    return point_cloud_parts(stamp, frame_id, MATCH_FIELDS, matches_array(value))


def _renew(kf: Keyframe, res: MatchResult, cfg: Any) -> bool:
    return (
        cfg.keyframe_policy == "previous"
        or (cfg.keyframe_policy == "interval" and kf.age >= cfg.keyframe_interval)
        or (cfg.keyframe_policy == "min_matches" and int(res.inlier.sum()) < cfg.keyframe_min_matches)
    )


def _images(kf: Keyframe, grey: np.ndarray, device: torch.device) -> dict[str, GreyPyramid]:
    """``match``'s image arguments: the keyframe's and the current grey image prepared on the features'
    device, the keyframe's once for every frame matched against it (none for a keyframe without its
    image: restored from an older state, or taken while ``match_refine`` was ``features``)."""
    if kf.grey is None or kf.grey.shape != grey.shape:
        return {}
    if kf.pyramid is None or kf.pyramid.device != device:
        kf.pyramid = GreyPyramid(kf.grey, device)
    return {"image0": kf.pyramid, "image1": GreyPyramid(grey, device)}


class Matches(Output):
    """:class:`~dinov3_ros.core.frames.MatchResult` (empty, without a reference, on a source's first
    frame)."""

    name = "matches"
    order = 50
    worker = "own"
    state_types = (MatchState, Keyframe)
    topics = (Topic("matches", "sensor_msgs/msg/PointCloud2", _serialize),)
    tile_label = "matches"

    def new_state(self) -> MatchState:
        return MatchState()

    def compute(self, job: FrameJob) -> MatchResult:
        frame, geom, tok, cfg, st = job.frame, job.geom, job.tokens, job.cfg, job.state
        kf = st.keyframe
        refine = cfg.match_refine == "image"
        # a new array (the frame is left as it is), only when the images refine the matches
        grey = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY) if refine else None
        if kf is None or kf.tokens.shape != tok.shape or kf.geom != geom:
            st.keyframe = Keyframe(tok, geom, frame.stamp_ns, frame.frame_id, grey=grey)
            e = np.zeros((0, 2), np.float32)
            return MatchResult(e, e.copy(), np.zeros(0, np.float32), np.zeros(0, bool), None, "")

        def to_input(pts: np.ndarray) -> np.ndarray:
            # patch-area coordinates ((col + 0.5) * p) -> pixel centres -> input pixels
            u, v = geom.network_to_input(pts[:, 0] - 0.5, pts[:, 1] - 0.5)
            return np.stack([u, v], 1)

        images = _images(kf, grey, tok.device) if refine else {}
        m = match(
            kf.tokens,
            tok,
            patch_size=float(geom.patch_size),
            **cfg.match_args(),
            to_input=to_input,
            verify_with="fundamental",
            ransac_threshold=geom.patch_size / max(geom.scale_x, 1e-9),
            **images,
        )
        H, W = frame.image.shape[:2]
        lim = np.array([W - 0.5, H - 0.5])
        inside = np.all((m.pts0 >= -0.5) & (m.pts0 <= lim), 1) & np.all((m.pts1 >= -0.5) & (m.pts1 <= lim), 1)
        res = MatchResult(
            m.pts0[inside].astype(np.float32),
            m.pts1[inside].astype(np.float32),
            m.scores[inside].astype(np.float32),
            m.inliers[inside].astype(bool),
            kf.stamp_ns,
            kf.frame_id,
        )
        kf.age += 1
        if _renew(kf, res, cfg):  # this frame's prepared image goes with it
            pyr = images.get("image1")
            st.keyframe = Keyframe(tok, geom, frame.stamp_ns, frame.frame_id, grey=grey, pyramid=pyr)
        return res

    def tile(self, value: MatchResult, rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        canvas = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
        sx, sy = size[0] / rgb.shape[1], size[1] / rgb.shape[0]
        for (u0, v0), (u1, v1), ok in zip(value.uv0, value.uv1, value.inlier):
            col = (0, 255, 0) if ok else (255, 0, 0)
            cv2.line(canvas, (int(u0 * sx), int(v0 * sy)), (int(u1 * sx), int(v1 * sy)), col, 1)
        inl = int(np.asarray(value.inlier).sum()) if len(value) else 0
        return canvas, f"matches {inl}/{len(value)}"
