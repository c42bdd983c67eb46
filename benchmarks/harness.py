"""Where benchmark results go: ``benchmarks/results/<bench>-<device>-<torch>.json``, with the machine,
the versions and the command line inside, so every figure in BENCHMARKS.md names its source."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """``NVIDIA H100 80GB HBM3`` for a CUDA device, ``cpu <model> x<cores>`` otherwise."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu {cpu_name()} x{os.cpu_count()}"


def environment(device: Any) -> dict[str, Any]:
    """Versions and hardware of this run."""
    import torch

    env = {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if torch.device(device).type == "cuda":
        env["driver"] = torch.version.cuda
    return env


def result_path(bench: str, device: Any) -> Path:
    """``benchmarks/results/<bench>-<device>-<torch>.json``."""
    import torch

    return RESULTS / f"{bench}-{_slug(device_name(device))}-{_slug(torch.__version__)}.json"


def save(bench: str, device: Any, payload: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``payload`` (plus the environment) to ``out`` or :func:`result_path`; returns the path."""
    path = Path(out) if out else result_path(bench, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"bench": bench, "env": environment(device), **payload}, indent=2, default=str))
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)
    return path


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` (missing values as '-')."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
