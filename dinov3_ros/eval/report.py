"""PNG report drawn with OpenCV/numpy (no matplotlib): metric bars per model, a table, and examples."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from dinov3_ros.synthetic.correspondence import gt_correspondences
from dinov3_ros.synthetic.writers import atomic_path

W_PAGE = 1280
BG = (255, 255, 255)
INK = (20, 20, 20)
GRID = (210, 210, 210)
#: BGR bar colours, one per model
COLORS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]
FONT = cv2.FONT_HERSHEY_SIMPLEX

#: (group title, [(label, result path, higher is better)])
GROUPS = [
    ("depth", [("delta1", ("depth", "delta1")), ("1-AbsRel", ("depth", "abs_rel"))]),
    (
        "correspondence recall",
        [
            ("@1px", ("correspondence", "recall@1px")),
            ("@2px", ("correspondence", "recall@2px")),
            ("@4px", ("correspondence", "recall@4px")),
            ("pose@5deg", ("correspondence", "pose_acc@5deg")),
        ],
    ),
    (
        "TokenCut",
        [
            ("IoU", ("tokencut", "iou")),
            ("CorLoc", ("tokencut", "corloc")),
            ("CorLoc-any", ("tokencut", "corloc_any")),
        ],
    ),
    (
        "class probe",
        [("kNN", ("probe", "knn_acc")), ("1-NN", ("probe", "knn1_acc")), ("linear", ("probe", "linear_acc"))],
    ),
]


def _get(res: dict, path: tuple[str, str]) -> float | None:
    v = res.get(path[0], {}).get(path[1])
    if v is None:
        return None
    return float(max(0.0, 1.0 - v)) if path[1] == "abs_rel" else float(v)


def _text(img, s, org, scale=0.45, color=INK, thick=1) -> None:
    cv2.putText(img, s, org, FONT, scale, color, thick, cv2.LINE_AA)


def _bars(results: list[dict]) -> np.ndarray:
    h = 300
    img = np.full((h, W_PAGE, 3), 255, np.uint8)
    n_groups = len(GROUPS)
    gw = W_PAGE // n_groups
    top, bottom = 40, h - 50
    for gi, (title, items) in enumerate(GROUPS):
        x0 = gi * gw + 30
        _text(img, title, (x0, 22), 0.55, thick=1)
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = int(bottom - frac * (bottom - top))
            cv2.line(img, (x0, y), (x0 + gw - 45, y), GRID, 1)
            _text(img, f"{frac:.2f}", (x0 - 28, y + 4), 0.3)
        slot = (gw - 50) / max(len(items), 1)
        bw = max(4, int(slot / (len(results) + 1)))
        for ii, (label, path) in enumerate(items):
            sx = x0 + int(ii * slot) + 4
            for mi, res in enumerate(results):
                v = _get(res, path)
                if v is None:
                    continue
                y = int(bottom - min(v, 1.0) * (bottom - top))
                cv2.rectangle(
                    img, (sx + mi * bw, y), (sx + (mi + 1) * bw - 2, bottom), COLORS[mi % len(COLORS)], -1
                )
            # chance marker for recall / probe
            chance = None
            if path[0] == "correspondence" and path[1].startswith("recall"):
                chance = results[0].get("correspondence", {}).get("chance", {}).get(path[1])
            if path[0] == "probe" and path[1] in ("knn1_acc", "linear_acc", "knn_acc"):
                chance = results[0].get("probe", {}).get("chance_prior")
            if chance is not None:
                y = int(bottom - chance * (bottom - top))
                cv2.line(img, (sx - 2, y), (sx + len(results) * bw, y), (0, 0, 0), 1)
            _text(img, label, (sx, bottom + 16), 0.35)
    # legend
    x = 30
    for mi, res in enumerate(results):
        cv2.rectangle(img, (x, h - 22), (x + 14, h - 8), COLORS[mi % len(COLORS)], -1)
        _text(img, str(res["model"])[:40], (x + 20, h - 10), 0.45)
        x += 20 + 9 * min(len(str(res["model"])), 40) + 20
    _text(img, "black ticks: chance", (W_PAGE - 170, h - 10), 0.4)
    return img


def _table(results: list[dict]) -> np.ndarray:
    keys = list(results[0].get("summary", {}))
    row_h = 20
    h = 30 + row_h * (len(keys) + 1)
    img = np.full((h, W_PAGE, 3), 255, np.uint8)
    col0, colw = 30, (W_PAGE - 330) // max(len(results), 1)
    _text(img, "metric", (col0, 22), 0.5, thick=1)
    for mi, res in enumerate(results):
        _text(img, str(res["model"])[:36], (300 + mi * colw, 22), 0.45, COLORS[mi % len(COLORS)], 1)
    for ki, k in enumerate(keys):
        y = 22 + row_h * (ki + 1)
        _text(img, k, (col0, y), 0.42)
        for mi, res in enumerate(results):
            v = res.get("summary", {}).get(k)
            _text(img, "-" if v is None else f"{v:.4g}", (300 + mi * colw, y), 0.42)
    return img


def _colormap_depth(d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
    return cv2.applyColorMap((x * 255).astype(np.uint8), cv2.COLORMAP_TURBO)


def _examples(ex: dict, label: str, tile: int = 256) -> np.ndarray:
    tiles: list[np.ndarray] = []
    names: list[str] = []
    fr = ex.get("frame")
    if fr is None:
        return np.full((0, W_PAGE, 3), 255, np.uint8)

    def fit(img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (tile, tile * fr.height // fr.width), interpolation=cv2.INTER_NEAREST)

    bgr = cv2.cvtColor(fr.rgb, cv2.COLOR_RGB2BGR)
    tiles.append(fit(bgr))
    names.append("input")
    valid = fr.depth[fr.depth > 0]
    lo, hi = (float(np.percentile(valid, 2)), float(np.percentile(valid, 98))) if valid.size else (0.0, 1.0)
    tiles.append(fit(_colormap_depth(fr.depth, lo, hi)))
    names.append("GT depth")
    if "depth_pred" in ex:
        tiles.append(fit(_colormap_depth(ex["depth_pred"], lo, hi)))
        names.append("predicted depth")
    if "mask" in ex:
        from dinov3_ros.eval.objects import upsample_mask

        m = upsample_mask(np.asarray(ex["mask"], bool), fr.height, fr.width)
        ov = bgr.copy()
        ov[m] = (0.5 * ov[m] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
        areas = fr.instance_areas()
        if areas:
            inst = max(areas, key=areas.get)
            x0, y0, x1, y1 = fr.instance_box(inst)
            cv2.rectangle(ov, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), 1)
        tiles.append(fit(ov))
        names.append("TokenCut (green) / GT box (red)")
    row = np.full((tiles[0].shape[0] + 24, W_PAGE, 3), 255, np.uint8)
    x = 10
    for t, n in zip(tiles, names):
        row[24 : 24 + t.shape[0], x : x + t.shape[1]] = t
        _text(row, n, (x, 17), 0.42)
        x += t.shape[1] + 10
    rows = [row]
    if "pair" in ex:
        a, b, pa, pb = ex["pair"]
        gt = gt_correspondences(a, b, pa, subpixel=True)
        scale = min(1.0, (W_PAGE - 30) / (2 * a.width)) * min(2.0, 300 / a.height)
        A = cv2.resize(cv2.cvtColor(a.rgb, cv2.COLOR_RGB2BGR), None, fx=scale, fy=scale)
        B = cv2.resize(cv2.cvtColor(b.rgb, cv2.COLOR_RGB2BGR), None, fx=scale, fy=scale)
        canvas = np.full((A.shape[0] + 24, W_PAGE, 3), 255, np.uint8)
        canvas[24:, 10 : 10 + A.shape[1]] = A
        ox = 20 + A.shape[1]
        canvas[24:, ox : ox + B.shape[1]] = B
        _text(canvas, "matches (green: within 4 px of GT, red: wrong, grey: no GT)", (10, 17), 0.42)
        for k in range(len(pa)):
            if gt.valid[k]:
                ok = np.linalg.norm(pb[k] - gt.pixels_b[k]) <= 4.0
                col = (0, 170, 0) if ok else (0, 0, 230)
            else:
                col = (150, 150, 150)
            p0 = (int(10 + (pa[k, 0] + 0.5) * scale), int(24 + (pa[k, 1] + 0.5) * scale))
            p1 = (int(ox + (pb[k, 0] + 0.5) * scale), int(24 + (pb[k, 1] + 0.5) * scale))
            cv2.line(canvas, p0, p1, col, 1, cv2.LINE_AA)
        rows.append(canvas)
    head = np.full((26, W_PAGE, 3), 245, np.uint8)
    _text(head, f"examples: {label}", (10, 18), 0.5, thick=1)
    return np.concatenate([head, *rows], 0)


def render_report(results: list[dict], examples: list[dict]) -> np.ndarray:
    """The report image (BGR uint8)."""
    if not results:
        raise ValueError("no results to report")
    title = np.full((46, W_PAGE, 3), 255, np.uint8)
    _text(title, "dinov3-ros eval", (10, 30), 0.9, thick=2)
    matcher = results[0].get("matcher")  # correspondences: with or without image refinement
    _text(
        title,
        f"data: {results[0].get('data', '?')}  test frames: {results[0].get('test_frames', '?')}"
        + (f"  matcher: {matcher}" if matcher else ""),
        (320, 30),
        0.5,
    )
    parts = [title, _bars(results), _table(results)]
    for res, ex in zip(results, examples):
        parts.append(_examples(ex, str(res["model"])))
    return np.concatenate(parts, 0)


def write_report(path: str | os.PathLike, results: list[dict], examples: list[dict]) -> Path:
    """Render and write the PNG atomically."""
    final = Path(path)
    if final.suffix.lower() != ".png":
        raise ValueError(f"report path must end in .png, got {final.name!r}")
    img = render_report(results, examples)
    with atomic_path(final, overwrite=True) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise RuntimeError(f"cannot write PNG {final}")
    return final
