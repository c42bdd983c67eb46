"""Image sources for self-supervised pretraining: folders, videos, rosbags, procedural generators.

Every source maps an integer index to an ``HxWx3`` uint8 RGB image (or ``None`` when the item cannot
be read; the dataset skips and counts those). ``len(source)`` is the number of addressable items;
procedural sources are unbounded and report a large nominal length.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderSource",
    "ImageSource",
    "ProceduralSource",
    "RosbagSource",
    "SyntheticSceneSource",
    "VideoSource",
    "build_source",
    "decode_ros_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
UNBOUNDED = 2**31 - 1


class ImageSource:
    """Base class: ``len()`` items, ``get(index) -> HxWx3 uint8 RGB | None``."""

    name: str = "source"

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def get(self, index: int) -> np.ndarray | None:  # pragma: no cover - interface
        raise NotImplementedError


def _to_rgb_u8(img: np.ndarray) -> np.ndarray:
    """Any of gray/gray16/BGR/BGRA (OpenCV order) -> RGB uint8."""
    if img.dtype == np.uint16:
        img = (img / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageFolderSource(ImageSource):
    """All image files under ``root`` (recursive, sorted)."""

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        exts = tuple(e.lower() for e in extensions)
        self.files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not self.files:
            raise ValueError(f"no images with extensions {exts} under {self.root}")
        self.name = f"folder:{self.root}"

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int) -> np.ndarray | None:
        img = cv2.imread(str(self.files[index % len(self.files)]), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            return None
        return _to_rgb_u8(img)


class VideoSource(ImageSource):
    """Every ``frame_stride``-th frame of one or more video files (or a folder of them)."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], frame_stride: int = 1) -> None:
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        files: list[Path] = []
        for p in map(Path, items):
            if p.is_dir():
                files += sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_EXTENSIONS)
            elif p.is_file():
                files.append(p)
            else:
                raise FileNotFoundError(f"video not found: {p}")
        self.index: list[tuple[int, int]] = []
        self.files = files
        for fi, f in enumerate(files):
            cap = cv2.VideoCapture(str(f))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            cap.release()
            self.index += [(fi, k) for k in range(0, max(n, 0), frame_stride)]
        if not self.index:
            raise ValueError(f"no readable frames in {[str(f) for f in files]}")
        self.name = f"video:{','.join(f.name for f in files)}"
        self._caps: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    def get(self, index: int) -> np.ndarray | None:
        fi, frame = self.index[index % len(self.index)]
        cap = self._caps.get(fi)
        if cap is None:
            cap = self._caps[fi] = cv2.VideoCapture(str(self.files[fi]))
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, img = cap.read()
        if not ok or img is None:
            return None
        return _to_rgb_u8(img)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_caps"] = {}
        return state


_ENCODING_CHANNELS = {
    "rgb8": ("RGB", np.uint8, 3),
    "bgr8": ("BGR", np.uint8, 3),
    "rgba8": ("RGBA", np.uint8, 4),
    "bgra8": ("BGRA", np.uint8, 4),
    "mono8": ("GRAY", np.uint8, 1),
    "8uc1": ("GRAY", np.uint8, 1),
    "8uc3": ("BGR", np.uint8, 3),
    "mono16": ("GRAY", np.uint16, 1),
    "16uc1": ("GRAY", np.uint16, 1),
    "rgb16": ("RGB", np.uint16, 3),
    "bgr16": ("BGR", np.uint16, 3),
}
_BAYER = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}


def decode_ros_image(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` (rosbags or rclpy object) to RGB uint8."""
    data = (
        np.frombuffer(bytes(msg.data), dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    )
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):  # CompressedImage
        img = cv2.imdecode(np.asarray(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode CompressedImage with format {msg.format!r}")
        return _to_rgb_u8(img)
    enc = str(msg.encoding).lower()
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    raw = np.asarray(data, dtype=np.uint8)
    if raw.size < h * step:
        raise ValueError(f"Image data has {raw.size} bytes, expected {h * step}")
    rows = raw[: h * step].reshape(h, step)
    if enc in _BAYER:
        return cv2.cvtColor(np.ascontiguousarray(rows[:, :w]), _BAYER[enc])
    if enc not in _ENCODING_CHANNELS:
        raise ValueError(f"unsupported Image encoding {msg.encoding!r}")
    order, dtype, ch = _ENCODING_CHANNELS[enc]
    itemsize = np.dtype(dtype).itemsize
    px = rows[:, : w * ch * itemsize].copy().view(dtype)
    if itemsize > 1 and bool(getattr(msg, "is_bigendian", 0)):
        px = px.byteswap()
    px = px.reshape(h, w, ch)
    if dtype == np.uint16:
        px = (px / 257.0).astype(np.uint8)
    if order == "GRAY":
        return cv2.cvtColor(px[:, :, 0], cv2.COLOR_GRAY2RGB)
    if order == "BGR":
        return cv2.cvtColor(px, cv2.COLOR_BGR2RGB)
    if order == "RGBA":
        return np.ascontiguousarray(px[:, :, :3])
    if order == "BGRA":
        return cv2.cvtColor(px, cv2.COLOR_BGRA2RGB)
    return np.ascontiguousarray(px)


_IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class RosbagSource(ImageSource):
    """Every ``frame_stride``-th message of the image topics of one or more rosbag(2) files.

    ``topics=None`` takes every ``sensor_msgs/Image`` / ``CompressedImage`` topic. Messages are indexed
    once (topic + timestamp) and read back on demand through ``rosbags.highlevel.AnyReader``.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        topics: Sequence[str] | None = None,
        frame_stride: int = 1,
    ) -> None:
        from rosbags.highlevel import AnyReader

        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.paths = [Path(p) for p in items]
        for p in self.paths:
            if not p.exists():
                raise FileNotFoundError(f"rosbag not found: {p}")
        self.topics = list(topics) if topics else None
        self.index: list[tuple[int, str, int]] = []  # (bag, topic, timestamp)
        for bi, p in enumerate(self.paths):
            with AnyReader([p]) as reader:
                conns = [
                    c
                    for c in reader.connections
                    if c.msgtype in _IMAGE_TYPES and (self.topics is None or c.topic in self.topics)
                ]
                if self.topics:
                    missing = set(self.topics) - {c.topic for c in conns}
                    if missing:
                        raise ValueError(f"{p}: no image topic(s) {sorted(missing)}")
                counters: dict[str, int] = {}
                for conn, ts, _raw in reader.messages(connections=conns):
                    k = counters.get(conn.topic, 0)
                    counters[conn.topic] = k + 1
                    if k % frame_stride == 0:
                        self.index.append((bi, conn.topic, int(ts)))
        if not self.index:
            raise ValueError(f"no image messages in {[str(p) for p in self.paths]} (topics={self.topics})")
        self.name = f"rosbag:{','.join(p.name for p in self.paths)}"
        self._readers: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _reader(self, bi: int):
        from rosbags.highlevel import AnyReader

        r = self._readers.get(bi)
        if r is None:
            r = AnyReader([self.paths[bi]])
            r.open()
            self._readers[bi] = r
        return r

    def get(self, index: int) -> np.ndarray | None:
        bi, topic, ts = self.index[index % len(self.index)]
        reader = self._reader(bi)
        conns = [c for c in reader.connections if c.topic == topic]
        try:
            for conn, t, raw in reader.messages(connections=conns, start=ts, stop=ts + 1):
                if t == ts:
                    return decode_ros_image(reader.deserialize(raw, conn.msgtype))
        except (ValueError, KeyError, cv2.error):
            return None
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state


class ProceduralSource(ImageSource):
    """Random shapes (rectangles, ellipses, lines, polygons) over a noise/gradient background;
    image ``i`` is a pure function of ``(seed, i)``."""

    def __init__(
        self, height: int = 256, width: int = 256, seed: int = 0, n_shapes: tuple[int, int] = (4, 12)
    ):
        self.height, self.width, self.seed, self.n_shapes = height, width, seed, tuple(n_shapes)
        self.name = "procedural"

    def __len__(self) -> int:
        return UNBOUNDED

    def get(self, index: int) -> np.ndarray:
        return self.render(index)[0]

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` and its per-pixel shape-kind labels (0 background, 1 rectangle, 2 ellipse,
        3 line, 4 polygon; later shapes cover earlier ones) — dense ground truth for probes."""
        rng = np.random.default_rng([self.seed, index])
        H, W = self.height, self.width
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * xx / W + np.sin(angle) * yy / H + 1) / 2
        img = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.float32)
        # low-frequency noise texture
        small = rng.normal(0, rng.uniform(5, 30), (max(2, H // 16), max(2, W // 16), 3)).astype(np.float32)
        img += cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img, 0, 255).astype(np.uint8)
        labels = np.zeros((H, W), np.uint8)
        for _ in range(int(rng.integers(self.n_shapes[0], self.n_shapes[1] + 1))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = int(rng.integers(0, 4))
            cx, cy = int(rng.integers(0, W)), int(rng.integers(0, H))
            s = int(rng.integers(max(4, min(H, W) // 16), max(5, min(H, W) // 3)))
            ang = float(rng.uniform(0, 180))
            p2 = (int(rng.integers(0, W)), int(rng.integers(0, H)))
            width = int(rng.integers(1, 6))
            pts = (rng.integers(-s, s, (int(rng.integers(3, 6)), 2)) + np.array([cx, cy])).astype(np.int32)
            for target, col in ((img, color), (labels, kind + 1)):
                if kind == 0:
                    cv2.rectangle(target, (cx - s, cy - s // 2), (cx + s, cy + s // 2), col, -1)
                elif kind == 1:
                    cv2.ellipse(target, (cx, cy), (s, max(2, s // 2)), ang, 0, 360, col, -1)
                elif kind == 2:
                    cv2.line(target, (cx, cy), p2, col, width)
                else:
                    cv2.fillPoly(target, [pts], col)
        if rng.uniform() < 0.5:
            noise = rng.normal(0, rng.uniform(1, 10), img.shape)
            img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        return img, labels


class SyntheticSceneSource(ImageSource):
    """RGB frames from ``dinov3_ros.synthetic.SceneGenerator`` (ray-cast scenes), deterministic by seed."""

    def __init__(self, height: int = 256, width: int = 256, seed: int = 0, **kwargs: Any) -> None:
        try:
            from dinov3_ros.synthetic import SceneGenerator  # type: ignore[attr-defined]
        except ImportError as e:  # the generator lands with dinov3_ros.synthetic
            raise ImportError(f"synthetic source needs dinov3_ros.synthetic.SceneGenerator: {e}") from e
        self.height, self.width, self.seed, self.kwargs = height, width, seed, kwargs
        self._cls = SceneGenerator
        self._gen: Any = None
        self.name = "synthetic"

    def __len__(self) -> int:
        return UNBOUNDED

    def get(self, index: int) -> np.ndarray | None:
        from ._synthetic_adapter import render_rgb

        return render_rgb(self, index)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_gen"] = None
        return state


def build_source(spec: dict[str, Any]) -> ImageSource:
    """Build a source from a config dict ``{type: folder|video|rosbag|procedural|synthetic, ...}``."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    spec.pop("weight", None)
    if kind == "folder":
        return ImageFolderSource(spec["root"], spec.get("extensions", IMAGE_EXTENSIONS))
    if kind == "video":
        return VideoSource(spec["paths"], frame_stride=int(spec.get("frame_stride", 1)))
    if kind == "rosbag":
        return RosbagSource(
            spec["paths"], topics=spec.get("topics"), frame_stride=int(spec.get("frame_stride", 1))
        )
    if kind == "procedural":
        return ProceduralSource(
            int(spec.get("height", 256)), int(spec.get("width", 256)), int(spec.get("seed", 0))
        )
    if kind == "synthetic":
        h, w, seed = int(spec.pop("height", 256)), int(spec.pop("width", 256)), int(spec.pop("seed", 0))
        return SyntheticSceneSource(h, w, seed, **spec)
    raise ValueError(f"unknown data source type {kind!r} (folder, video, rosbag, procedural, synthetic)")
