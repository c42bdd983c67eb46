"""``depth``: metric depth along the optical axis (REP 118: ``32FC1`` metres, or ``16UC1`` millimetres
with ``depth_encoding``, half the bytes) and its camera_info, in the image_pipeline layout
(``depth/image`` + ``depth/camera_info``; ``depth`` is the deprecated old name).

``depth_resolution: input`` resamples the network-canvas depth to the input image (intrinsics
unchanged); ``network`` keeps the canvas (letterbox padding = NaN) with the intrinsics moved onto it.
Without a usable camera_info the fallback pinhole (``default_hfov_deg``) is used; ``depth/camera_info``
states the calibration, so the node skips it for such frames unless told to fall back.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics
from dinov3_ros.core.frames import DepthImage
from dinov3_ros.heads._common import to_host
from dinov3_ros.msgs.cdr import camera_info_parts, image_parts
from dinov3_ros.msgs.layouts import depth_image
from dinov3_ros.pipeline.grid import canvas_to_input
from dinov3_ros.pipeline.outputs.base import BatchContext, FrameJob, Output, Topic


def network_intrinsics(K: CameraIntrinsics, geom: Any) -> CameraIntrinsics:
    """``K`` (of the input image) moved onto the network canvas the way the image was letterboxed."""
    hn, wn = geom.network_size
    return K.transformed(geom.scale_x, geom.scale_y, geom.offset_x, geom.offset_y, wn, hn)


def _image(stamp: int, frame_id: str, value: DepthImage, cfg: Any) -> list:
    enc = cfg.depth_encoding
    return image_parts(stamp, frame_id, depth_image(value.image, enc), enc)


def _info(stamp: int, frame_id: str, value: DepthImage, cfg: Any) -> list:
    return camera_info_parts(stamp, frame_id, value.info)


def depth_range(depth: np.ndarray) -> tuple[float, float] | None:
    """The colour range of :func:`colorize_depth`: 2nd and 98th percentiles of the valid depths."""
    d = np.asarray(depth, np.float32)
    ok = np.isfinite(d)
    if not ok.any():
        return None
    lo, hi = np.percentile(d[ok], [2, 98])
    return float(lo), float(hi)


def depth_legend(width: int, lo: float, hi: float, height: int = 18) -> np.ndarray:
    """A colour bar of :func:`colorize_depth` from ``lo`` (near, left) to ``hi`` metres (far, right)."""
    ramp = np.linspace(255, 0, max(width, 2)).astype(np.uint8)[None, :].repeat(height, 0)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    for text, right in ((f"{lo:.2f} m", False), (f"{hi:.2f} m", True)):
        (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
        x = width - tw - 3 if right else 3
        y = (height + th) // 2
        cv2.putText(bar, text, (x, y), font, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(bar, text, (x, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return bar[:, :width]


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """Depth (metres, NaN = invalid) -> RGB with the turbo map, near = warm; range from 2-98 percentiles."""
    d = np.asarray(depth, np.float32)
    ok = np.isfinite(d)
    if not ok.any():
        return np.zeros((*d.shape, 3), np.uint8)
    lo, hi = np.percentile(d[ok], [2, 98])
    n = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
    u8 = (255 - n * 255).astype(np.uint8)
    u8[~ok] = 0
    rgb = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    rgb[~ok] = 0
    return rgb


class Depth(Output):
    """:class:`~dinov3_ros.core.frames.DepthImage` (image + intrinsics of that image)."""

    name = "depth"
    order = 30
    needs_depth = True
    worker = "pool"
    topics = (
        Topic("depth/image", "sensor_msgs/msg/Image", _image),
        Topic("depth/camera_info", "sensor_msgs/msg/CameraInfo", _info, needs_intrinsics=True),
        Topic("depth", "sensor_msgs/msg/Image", _image, deprecated="depth/image"),
    )
    tile_label = "depth"

    def prepare(self, batch: BatchContext) -> None:
        batch.cache["depth.host"] = to_host(batch.depth_net)  # one copy for the batch

    def compute(self, job: FrameJob) -> DepthImage:
        geom, K = job.geom, job.intrinsics()
        d = job.batch.cache["depth.host"][job.i]
        if job.cfg.depth_resolution == "input":
            return DepthImage(canvas_to_input(d, geom), K)
        x0, y0, x1, y1 = geom.valid_box
        canvas = np.full_like(d, np.nan)
        canvas[y0:y1, x0:x1] = d[y0:y1, x0:x1]
        return DepthImage(canvas, network_intrinsics(K, geom))

    def tile(self, value: DepthImage, rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        """The turbo colour map with its legend (near .. far metres of the colour range) at the bottom."""
        d = value.image
        label = "depth (m)"
        img = cv2.resize(colorize_depth(d), size, interpolation=cv2.INTER_AREA)
        rng = depth_range(d)
        if rng is not None and size[1] >= 60:
            bar = depth_legend(size[0], *rng, height=max(14, size[1] // 12))
            img[-bar.shape[0] :] = bar
        return img, label
