"""Compressed copies of the image outputs for remote viewing, named as image_transport names them:
``debug/compressed`` (JPEG, ``jpeg_quality``), ``features/pca/compressed`` and ``objects/mask/compressed``
(PNG: lossless, so instance ids survive). ``format`` follows image_transport (``rgb8; jpeg compressed
bgr8``), so ``image_transport`` republishers and ``rqt_image_view`` decode them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dinov3_ros.msgs.cdr import compressed_image_parts
from dinov3_ros.msgs.layouts import mask_image
from dinov3_ros.pipeline.outputs.base import FrameJob, Output, Topic


@dataclass
class Compressed:
    """An encoded image: ``format`` string and payload bytes."""

    format: str
    data: np.ndarray  # uint8


def _serialize(stamp: int, frame_id: str, value: Compressed, cfg: Any) -> list:
    return compressed_image_parts(stamp, frame_id, value.format, value.data)


def encode(img: np.ndarray, encoding: str, codec: str, quality: int = 85) -> Compressed:
    """``rgb8`` / ``mono8`` / ``mono16`` array -> JPEG or PNG as image_transport's compressed plugin does
    (colour stored as bgr8)."""
    arr = np.ascontiguousarray(img)
    target = encoding
    if encoding == "rgb8":
        arr, target = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), "bgr8"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(".jpg" if codec == "jpeg" else ".png", arr, params)
    if not ok:
        raise ValueError(f"{codec} encoding of a {arr.shape} {encoding} image failed")
    return Compressed(f"{encoding}; {codec} compressed {target}", buf.reshape(-1))


class DebugCompressed(Output):
    """``debug`` as JPEG."""

    name = "debug_compressed"
    order = 91
    requires = ("debug",)
    worker = "pool"
    topics = (Topic("debug/compressed", "sensor_msgs/msg/CompressedImage", _serialize),)

    def compute(self, job: FrameJob) -> Compressed:
        return encode(job.value("debug"), "rgb8", "jpeg", job.cfg.jpeg_quality)


class PcaCompressed(Output):
    """``features_pca`` as PNG."""

    name = "pca_compressed"
    order = 21
    requires = ("features_pca",)
    worker = "pool"
    topics = (Topic("features/pca/compressed", "sensor_msgs/msg/CompressedImage", _serialize),)

    def compute(self, job: FrameJob) -> Compressed:
        return encode(np.asarray(job.value("features_pca")), "rgb8", "png")


class MaskCompressed(Output):
    """``objects/mask`` as PNG (``mask_encoding``)."""

    name = "mask_compressed"
    order = 61
    requires = ("objects",)
    worker = "pool"
    topics = (Topic("objects/mask/compressed", "sensor_msgs/msg/CompressedImage", _serialize),)

    def compute(self, job: FrameJob) -> Compressed:
        enc = job.cfg.mask_encoding
        return encode(mask_image(job.value("objects").mask, enc), enc, "png")
