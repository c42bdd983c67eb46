"""Collect a finished default-model run into a model directory: the fp16 student, the depth head, the
objects head (when the run has one) and their provenance (configs, metrics, hashes, iterations, torch
version and device).

    python -m training.recipes.export_default --run runs/default_model --out runs/default_model/model
    python -m training.recipes.export_default --add-objects runs/objects --out models/default

The second form attaches an objects head trained later (``dinov3-train objects``) to an exported
model directory and records it in its ``model.json`` (``OUT/model.json`` or ``OUT/provenance/model.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from dinov3_ros.fsutil import atomic_write_bytes

WEIGHTS = "dinov3_vits16_dinov3ros.pth"
HEAD = "depth_head.pt"
OBJECTS = "objects_head.npz"
#: (run-relative source, provenance name)
PROVENANCE = (
    ("teacher/config.yaml", "teacher_config.yaml"),
    ("teacher/metrics.jsonl", "teacher_metrics.jsonl"),
    ("student/config.yaml", "student_config.yaml"),
    ("student/students/vits16/export.json", "student_export.json"),
    ("depth/config.yaml", "depth_config.yaml"),
    ("depth/metrics.json", "depth_metrics.json"),
)
#: objects-stage-relative source -> provenance name
OBJECTS_PROVENANCE = (("config.yaml", "objects_config.yaml"), ("metrics.json", "objects_metrics.json"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export(run: Path, out: Path) -> dict:
    """Copy the run's deliverables into ``out`` and return the manifest written as ``model.json``."""
    student = run / "student/students/vits16/backbone_ema_fp16.pth"
    head = run / "depth/depth_head.pt"
    for p in (student, head):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: run the student and depth stages first")
    prov = out / "provenance"
    prov.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS, student.read_bytes())
    atomic_write_bytes(out / HEAD, head.read_bytes())
    for src, name in PROVENANCE:
        if (run / src).is_file():
            shutil.copyfile(run / src, prov / name)
    import torch

    files = [WEIGHTS, HEAD]
    if (run / "objects" / OBJECTS).is_file():
        _copy_objects(run / "objects", out)
        files.append(OBJECTS)
    manifest = {
        "arch": "vits16",
        "files": {n: _file_entry(out / n) for n in files},
        "student": json.loads((run / "student/students/vits16/export.json").read_text()),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    atomic_write_bytes(out / "model.json", json.dumps(manifest, indent=1).encode())
    return manifest


def _file_entry(path: Path) -> dict:
    return {"sha256": sha256(path), "bytes": path.stat().st_size}


def _copy_objects(objects: Path, out: Path) -> None:
    """The objects head and its config/metrics into the model directory (atomic writes)."""
    atomic_write_bytes(out / OBJECTS, (objects / OBJECTS).read_bytes())
    for src, name in OBJECTS_PROVENANCE:
        if (objects / src).is_file():
            atomic_write_bytes(out / "provenance" / name, (objects / src).read_bytes())


def add_objects(objects: Path, out: Path) -> dict:
    """Attach ``objects/objects_head.npz`` (a ``dinov3-train objects`` output directory) to the
    exported model in ``out`` and record it in ``model.json``; returns the updated manifest."""
    from dinov3_ros.heads.objects_head import load_objects_head

    # an export writes OUT/model.json; models/ keeps it with the rest of the provenance
    manifest_path = next(
        (p for p in (out / "model.json", out / "provenance/model.json") if p.is_file()), None
    )
    if manifest_path is None:
        raise FileNotFoundError(
            f"{out} has no model.json (nor provenance/model.json): export the model first"
        )
    if not (objects / OBJECTS).is_file():
        raise FileNotFoundError(f"{objects / OBJECTS} is missing: run dinov3-train objects first")
    load_objects_head(objects / OBJECTS)  # a broken file is refused before anything is written
    manifest = json.loads(manifest_path.read_text())
    (out / "provenance").mkdir(parents=True, exist_ok=True)
    _copy_objects(objects, out)
    manifest["files"][OBJECTS] = _file_entry(out / OBJECTS)
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="recipe output directory")
    src.add_argument("--add-objects", type=Path, help="a dinov3-train objects output directory")
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    args = ap.parse_args(argv)
    try:
        m = add_objects(args.add_objects, args.out) if args.add_objects else export(args.run, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"export_default: {e}", file=sys.stderr)
        return 2
    print(json.dumps(m["files"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
