"""Collect a finished default-model run into a model directory: the fp16 student, the depth head and
their provenance (configs, metrics, hashes, iterations, torch version and device).

    python -m training.recipes.export_default --run runs/default_model --out runs/default_model/model
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
#: (run-relative source, provenance name)
PROVENANCE = (
    ("teacher/config.yaml", "teacher_config.yaml"),
    ("teacher/metrics.jsonl", "teacher_metrics.jsonl"),
    ("student/config.yaml", "student_config.yaml"),
    ("student/students/vits16/export.json", "student_export.json"),
    ("depth/config.yaml", "depth_config.yaml"),
    ("depth/metrics.json", "depth_metrics.json"),
)


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

    manifest = {
        "arch": "vits16",
        "files": {n: {"sha256": sha256(out / n), "bytes": (out / n).stat().st_size} for n in (WEIGHTS, HEAD)},
        "student": json.loads((run / "student/students/vits16/export.json").read_text()),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    atomic_write_bytes(out / "model.json", json.dumps(manifest, indent=1).encode())
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="recipe output directory")
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    args = ap.parse_args(argv)
    try:
        m = export(args.run, args.out)
    except FileNotFoundError as e:
        print(f"export_default: {e}", file=sys.stderr)
        return 2
    print(json.dumps(m["files"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
