"""benchmarks/bench_bag_write.py: every row writes its output and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_bag_write_rows_and_cleanup(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    where = tmp_path / "w"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_bag_write.py"),
            "--where",
            f"here={where}",
            "--frames",
            "40",
            "--side",
            "64",
            "--repeats",
            "1",
            "--checkpoint-every",
            "16",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this tree's package
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["where"], r["writer"]) for r in rows] == [
        ("here", "raw"),
        ("here", "tool"),
        ("here", "rosbags"),
    ]
    assert all(r["fps"] > 0 and r["mb_s"] > 0 and r["cpu_ms"] >= 0 and r["% of raw"] > 0 for r in rows)
    assert not where.exists()
