"""Where installed data lives: the model registry, shipped weights, config and launch files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "dinov3_ros"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _candidates(sub: str) -> list[Path]:
    out: list[Path] = []
    env = os.environ.get("DINOV3_ROS_SHARE")
    if env:
        out.append(Path(env) / sub)
    out.append(_REPO_ROOT / sub)  # source checkout / editable install
    out.append(Path(sys.prefix) / "share" / PACKAGE / sub)  # pip or colcon install
    try:  # a sourced ROS 2 workspace
        from ament_index_python.packages import get_package_share_directory

        out.append(Path(get_package_share_directory(PACKAGE)) / sub)
    except Exception:  # noqa: BLE001 - ament index absent or package not in it
        pass
    return out


def share_path(sub: str) -> Path:
    """Return the first existing ``<share>/<sub>`` (``models``, ``config``, ``launch``).

    Raises FileNotFoundError listing every place that was searched.
    """
    cands = _candidates(sub)
    for c in cands:
        if c.exists():
            return c
    raise FileNotFoundError(f"{sub!r} not found; searched: {', '.join(str(c) for c in cands)}")


def models_dir() -> Path:
    """Directory holding ``registry.yaml`` and the shipped default weights."""
    return share_path("models")


def config_dir() -> Path:
    """Directory holding the node parameter YAML files."""
    return share_path("config")
