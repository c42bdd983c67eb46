"""Evaluation data: frames with ground truth, split by scene into probe-training and test sets.

``--data`` accepts ``synthetic`` / ``synthetic:SEED`` (rendered on the fly by
:class:`~dinov3_ros.synthetic.SceneGenerator`) or a folder written by ``dinov3-ros synth --format
folder`` (scenes are split by their scene index: the last third are test scenes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dinov3_ros.synthetic.frame import SynthFrame
from dinov3_ros.synthetic.shapes import CLASS_NAMES

#: seed of the default evaluation scenes (disjoint from training's usual small seeds)
EVAL_SEED = 100_003


@dataclass
class EvalData:
    """Train frames (for fitting probes) and test frames (grouped by scene, for pairs); optional
    ``probe_train`` / ``probe_test`` frames for the class probe (many scenes, one view each, so crops
    are not dominated by a few instances seen many times; default: ``train`` / ``test``)."""

    train: list[SynthFrame]
    test: list[SynthFrame]
    probe_train: list[SynthFrame] = field(default_factory=list)
    probe_test: list[SynthFrame] = field(default_factory=list)
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = "synthetic"
    pair_gap: int = 3
    meta: dict = field(default_factory=dict)
    #: model-independent results computed once per data set (e.g. TokenCut's ceiling)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def pairs(self) -> list[tuple[SynthFrame, SynthFrame]]:
        """Pairs of test frames of the same scene ``pair_gap`` frames apart."""
        by_scene: dict[int, list[SynthFrame]] = {}
        for f in self.test:
            by_scene.setdefault(f.scene_index, []).append(f)
        out = []
        for frames in by_scene.values():
            frames = sorted(frames, key=lambda f: f.frame_index)
            for i in range(len(frames) - self.pair_gap):
                out.append((frames[i], frames[i + self.pair_gap]))
        return out


def synthetic_data(
    seed: int = EVAL_SEED,
    size: tuple[int, int] = (224, 224),
    train_scenes: int = 12,
    test_scenes: int = 16,
    frames_per_scene: int = 8,
    pair_gap: int = 3,
    probe_scenes: tuple[int, int] = (400, 200),
) -> EvalData:
    """Render ``train_scenes + test_scenes`` scenes of ``frames_per_scene`` frames each, plus
    ``probe_scenes`` (train, test) single-view scenes (generator seed ``seed + 1``) for the class probe."""
    from dinov3_ros.synthetic.generator import SceneGenerator

    w, h = size
    gen = SceneGenerator(seed=seed, width=w, height=h, frames_per_scene=frames_per_scene)
    train = [f for s in range(train_scenes) for f in gen.sequence(s)]
    test = [f for s in range(train_scenes, train_scenes + test_scenes) for f in gen.sequence(s)]
    n_tr, n_te = (int(n) for n in probe_scenes)
    probe = SceneGenerator(seed=seed + 1, width=w, height=h, frames_per_scene=1)
    probe_train = [probe.frame(s, 0) for s in range(n_tr)]
    probe_test = [probe.frame(s, 0) for s in range(n_tr, n_tr + n_te)]
    meta = {
        "seed": seed,
        "size": [w, h],
        "train_scenes": train_scenes,
        "test_scenes": test_scenes,
        "frames_per_scene": frames_per_scene,
        "probe_scenes": [n_tr, n_te],
    }
    return EvalData(
        train=train,
        test=test,
        probe_train=probe_train,
        probe_test=probe_test,
        source=f"synthetic:{seed}",
        pair_gap=pair_gap,
        meta=meta,
    )


def folder_data(path: str | Path, pair_gap: int = 3) -> EvalData:
    """Frames of a synthetic image folder; the last third of its scenes are the test set."""
    from dinov3_ros.synthetic.writers import read_folder

    frames = list(read_folder(path))
    scenes = sorted({f.scene_index for f in frames})
    if len(scenes) < 2:
        raise ValueError(f"{path}: need frames from at least 2 scenes (train + test), found {len(scenes)}")
    n_test = max(1, len(scenes) // 3)
    test_scenes = set(scenes[-n_test:])
    return EvalData(
        train=[f for f in frames if f.scene_index not in test_scenes],
        test=[f for f in frames if f.scene_index in test_scenes],
        source=str(path),
        pair_gap=pair_gap,
        meta={"scenes": len(scenes), "test_scenes": n_test},
    )


def load_data(spec: str, size: tuple[int, int] = (224, 224), **kw) -> EvalData:
    """Resolve a ``--data`` value."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed = EVAL_SEED
        if ":" in spec:
            try:
                seed = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"--data {spec!r}: expected synthetic:<integer seed>") from None
        return synthetic_data(seed=seed, size=size, **kw)
    p = Path(spec)
    if p.is_dir() and (p / "meta.json").is_file():
        return folder_data(p, pair_gap=kw.get("pair_gap", 3))
    raise ValueError(
        f"--data {spec!r}: expected 'synthetic', 'synthetic:SEED' or a folder written by "
        "'dinov3-ros synth --format folder'"
    )


def dominant_instance(frame: SynthFrame, min_fraction: float = 0.015) -> int | None:
    """Object instance with the largest visible area, if it covers at least ``min_fraction`` of the image."""
    areas = frame.instance_areas()
    if not areas:
        return None
    inst, area = max(areas.items(), key=lambda kv: (kv[1], -kv[0]))
    return inst if area >= min_fraction * frame.width * frame.height else None


@dataclass
class Crop:
    """An instance crop for the class probe."""

    image: np.ndarray  # [S,S,3] uint8
    label: int
    scene_index: int


def instance_crops(
    frames: list[SynthFrame],
    size: int = 112,
    min_fraction: float = 0.006,
    min_area: int = 48,
    pad: float = 0.15,
) -> list[Crop]:
    """Square crops (``size``², resized) around every visible instance covering at least
    ``max(min_area, min_fraction * H * W)`` pixels."""
    import cv2

    out: list[Crop] = []
    for f in frames:
        thr = max(min_area, min_fraction * f.height * f.width)
        for inst, area in f.instance_areas().items():
            if area < thr:
                continue
            x0, y0, x1, y1 = f.instance_box(inst)
            cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
            half = max(x1 - x0, y1 - y0) * (0.5 + pad)
            a0, b0 = int(np.floor(cx - half)), int(np.floor(cy - half))
            a1, b1 = int(np.ceil(cx + half)), int(np.ceil(cy + half))
            padded = np.pad(
                f.rgb,
                ((max(0, -b0), max(0, b1 - f.height)), (max(0, -a0), max(0, a1 - f.width)), (0, 0)),
                mode="edge",
            )
            oy, ox = max(0, -b0), max(0, -a0)
            crop = padded[b0 + oy : b1 + oy, a0 + ox : a1 + ox]
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
            out.append(Crop(crop, int(f.instance_classes[inst]), f.scene_index))
    return out
