"""Side-by-side previews of offline runs: input | PCA | depth | mask | matches, as annotated tiles.

``PreviewVideo`` writes an MP4 (one row per frame), ``ContactSheet`` a PNG (one row per sampled
frame). Both write under a temporary name and rename on :meth:`close`, like the bag itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

TILES = ("input", "pca", "depth", "mask", "matches")


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


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Instance ids -> RGB (0 = black; each id a fixed colour)."""
    m = np.asarray(mask).astype(np.int64)
    ids = np.unique(m)
    out = np.zeros((*m.shape, 3), np.uint8)
    for i in ids:
        if i == 0:
            continue
        out[m == i] = np.random.default_rng(int(i)).integers(64, 256, 3).astype(np.uint8)
    return out


def tiles(fo: Any, rgb: np.ndarray, tile_h: int = 240, title: str = "") -> np.ndarray:
    """One annotated row ``input | pca | depth | mask | matches`` (RGB uint8)."""
    H, W = rgb.shape[:2]
    size = (max(1, round(W * tile_h / H)), tile_h)
    row = [_label(_fit(rgb, size), title or "input")]
    pca = getattr(fo, "features_pca", None)
    row.append(_label(_fit(pca, size, nearest=True), "PCA") if pca is not None else _blank(size, "PCA: off"))
    depth = getattr(fo, "depth", None)
    if depth is not None:
        ok = np.isfinite(depth)
        rng = f"depth {np.nanmin(depth):.2f}-{np.nanmax(depth):.2f} m" if ok.any() else "depth"
        row.append(_label(_fit(colorize_depth(depth), size), rng))
    else:
        row.append(_blank(size, "depth: off"))
    obj = getattr(fo, "objects", None)
    if obj is not None:
        row.append(_label(_fit(colorize_mask(obj.mask), size, nearest=True), f"mask ({len(obj.ids)} obj)"))
    else:
        row.append(_blank(size, "mask: off"))
    mt = getattr(fo, "matches", None)
    if mt is not None:
        canvas = _fit(rgb, size).copy()
        sx, sy = size[0] / W, size[1] / H
        for (u0, v0), (u1, v1), ok in zip(mt.uv0, mt.uv1, mt.inlier):
            col = (0, 255, 0) if ok else (255, 0, 0)
            cv2.line(canvas, (int(u0 * sx), int(v0 * sy)), (int(u1 * sx), int(v1 * sy)), col, 1)
        inl = int(np.asarray(mt.inlier).sum()) if len(mt) else 0
        row.append(_label(canvas, f"matches {inl}/{len(mt)}"))
    else:
        row.append(_blank(size, "matches: off"))
    return np.concatenate(row, axis=1)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class PreviewVideo:
    """MP4 of tiled rows, written to a temporary name and renamed on :meth:`close`."""

    def __init__(self, path: str | Path, fps: float = 10.0, tile_h: int = 240) -> None:
        self.path = Path(path)
        self.tmp = _tmp(self.path)
        self.fps = fps
        self.tile_h = tile_h
        self.writer: Any = None
        self.frames = 0

    def add(self, fo: Any, rgb: np.ndarray, title: str = "") -> None:
        row = tiles(fo, rgb, self.tile_h, title)
        h, w = row.shape[:2]
        row = row[: h - h % 2, : w - w % 2]
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (row.shape[1], row.shape[0])
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
            self.tmp.replace(self.path)
            return self.path
        return self.tmp


class ContactSheet:
    """PNG with ``n`` rows of tiles from frames evenly spread over the run."""

    def __init__(self, path: str | Path, total: int | None, n: int = 6, tile_h: int = 160) -> None:
        self.path = Path(path)
        self.n = max(1, n)
        self.tile_h = tile_h
        total = max(int(total or 0), 1)
        self.pick = {round(i * (total - 1) / max(self.n - 1, 1)) for i in range(self.n)} if total > 1 else {0}
        self.rows: list[np.ndarray] = []
        self.seen = 0

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp(self.path)
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write contact sheet {self.path}")
        if ok:
            tmp.replace(self.path)
            return self.path
        return tmp
