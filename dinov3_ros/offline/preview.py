"""Side-by-side previews of offline runs: the input and each output's preview tile (``Output.tile``).

``PreviewVideo`` writes an MP4 (one row per frame; H.264, else VP9, else MPEG-4 Part 2, the first
that this OpenCV build can encode), ``ContactSheet`` a PNG (one row per sampled frame). Both appear
under their final name only when complete (``dinov3_ros.fsutil``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dinov3_ros.fsutil import atomic_write_bytes, commit_file


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """Draw ``text`` in the top-left corner (white on a dark box)."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    cv2.rectangle(tile, (0, 0), (tw + 8, th + base + 6), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _fit(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    w, h = size
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=interp)


def _blank(size: tuple[int, int], text: str) -> np.ndarray:
    w, h = size
    t = np.full((h, w, 3), 48, np.uint8)
    cv2.putText(t, text, (8, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (160, 160, 160), 1, cv2.LINE_AA)
    return t


def tiles(fo: Any, rgb: np.ndarray, tile_h: int = 240, title: str = "") -> np.ndarray:
    """One annotated row: the input, then every registered output with a preview tile (grey "off"
    tiles for outputs that were not computed)."""
    from dinov3_ros.pipeline.outputs import REGISTRY

    H, W = rgb.shape[:2]
    size = (max(1, round(W * tile_h / H)), tile_h)
    row = [_label(_fit(rgb, size), title or "input")]
    for head in REGISTRY.values():
        if head.tile_label is None:
            continue
        value = fo.get(head.name)
        if value is None:
            row.append(_blank(size, f"{head.tile_label}: off"))
        else:
            img, caption = head.tile(value, rgb, size)
            row.append(_label(np.ascontiguousarray(img), caption))
    return np.concatenate(row, axis=1)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


#: MP4 codecs in order of preference: (fourcc, name); browsers play the first two
CODECS: tuple[tuple[str, str], ...] = (("avc1", "H.264"), ("vp09", "VP9"), ("mp4v", "MPEG-4 Part 2"))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (FFmpeg logs a failed encoder probe there, below Python)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.cache
def video_codec(candidates: tuple[tuple[str, str], ...] = CODECS) -> tuple[str, str]:
    """The first ``(fourcc, name)`` of ``candidates`` this OpenCV build encodes to MP4 (probed once)."""
    with tempfile.TemporaryDirectory() as d, _quiet_stderr():
        for fourcc, name in candidates:
            path = os.path.join(d, f"probe_{fourcc}.mp4")
            w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
            try:
                if w.isOpened():
                    w.write(np.zeros((48, 64, 3), np.uint8))
                    return fourcc, name
            finally:
                w.release()
    raise OSError(f"OpenCV cannot encode MP4 video here (tried {', '.join(n for _, n in candidates)})")


class PreviewVideo:
    """MP4 of tiled rows, written to a temporary name and renamed on :meth:`close`."""

    kind = "preview"

    def __init__(
        self,
        path: str | Path,
        fps: float = 10.0,
        tile_h: int = 240,
        codecs: tuple[tuple[str, str], ...] = CODECS,
    ) -> None:
        self.path = Path(path)
        self.tmp = _tmp(self.path)
        self.fps = fps
        self.tile_h = tile_h
        self.writer: Any = None
        self.frames = 0
        try:
            self.fourcc, self.codec = video_codec(tuple(codecs))
        except OSError as err:  # reported when the first frame is added
            self.fourcc, self.codec, self.error = None, "", str(err)

    def describe(self) -> str:
        return f"{self.frames} frames, {self.codec}"

    def add(self, fo: Any, rgb: np.ndarray, title: str = "") -> None:
        row = tiles(fo, rgb, self.tile_h, title)
        h, w = row.shape[:2]
        row = row[: h - h % 2, : w - w % 2]
        if self.writer is None:
            if self.fourcc is None:
                raise OSError(self.error)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (row.shape[1], row.shape[0])
            )
            if not self.writer.isOpened():
                raise OSError(f"cannot open a video writer for {self.path}")
            self.size = (row.shape[1], row.shape[0])
        if (row.shape[1], row.shape[0]) != self.size:
            row = cv2.resize(row, self.size)
        self.writer.write(cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, ok: bool = True) -> Path | None:
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        if ok:
            commit_file(self.tmp, self.path)
            return self.path
        return self.tmp


class ContactSheet:
    """PNG with ``n`` rows of tiles from frames evenly spread over the run."""

    kind = "contact sheet"

    def __init__(self, path: str | Path, total: int | None, n: int = 6, tile_h: int = 160) -> None:
        self.path = Path(path)
        self.n = max(1, n)
        self.tile_h = tile_h
        total = max(int(total or 0), 1)
        self.pick = {round(i * (total - 1) / max(self.n - 1, 1)) for i in range(self.n)} if total > 1 else {0}
        self.rows: list[np.ndarray] = []
        self.seen = 0

    def describe(self) -> str:
        return f"{len(self.rows)} frames"

    def add(self, fo: Any, rgb: np.ndarray, title: str = "") -> None:
        if self.seen in self.pick and len(self.rows) < self.n:
            self.rows.append(tiles(fo, rgb, self.tile_h, title or f"frame {self.seen}"))
        self.seen += 1

    def close(self, ok: bool = True) -> Path | None:
        if not self.rows:
            return None
        w = max(r.shape[1] for r in self.rows)
        rows = [np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))) for r in self.rows]
        sheet = np.concatenate(rows, axis=0)
        done, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if not done:
            raise OSError(f"cannot encode the contact sheet {self.path}")
        target = self.path if ok else _tmp(self.path)
        atomic_write_bytes(target, png.tobytes())
        return target
