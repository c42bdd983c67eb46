"""Import every module of the package under the running interpreter (run it with Python 3.10).

``py310_check.py`` checks syntax and the standard library with a bare 3.10; this imports each module of
``dinov3_ros`` and ``training`` with the dependencies installed (``make venv310``), so annotations
evaluated at import time, dataclass fields, ``typing`` constructs and third-party APIs used at module
level are exercised by 3.10 too. A module whose import fails for lack of a package the project treats
as optional (TensorRT, timm, transformers) is listed apart, not as a problem.

    .venv310/bin/python .ci/py310_import.py dinov3_ros training
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

#: packages a module may need that a deployment can lack (their absence is reported, not a failure)
OPTIONAL = {"tensorrt", "timm", "transformers", "open3d"}


def modules(package: str) -> list[str]:
    """``package`` and every module below it (by walking the source tree, without importing)."""
    root = Path(package)
    names = [package]
    for info in pkgutil.walk_packages([str(root)], prefix=f"{package}."):
        names.append(info.name)
    return sorted(set(names))


def main(packages: list[str]) -> int:
    sys.path.insert(0, str(Path.cwd()))
    ok, optional, problems = [], [], []
    for pkg in packages:
        for name in modules(pkg):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] in OPTIONAL:
                    optional.append(f"{name}: needs {exc.name}")
                else:
                    problems.append(f"{name}: {type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
                problems.append(f"{name}: {tb}")
            else:
                ok.append(name)
    version = ".".join(map(str, sys.version_info[:3]))
    for line in optional:
        print(f"optional: {line}")
    for line in problems:
        print(f"PROBLEM: {line}")
    print(f"Python {version}: imported {len(ok)} modules, {len(optional)} need optional packages, "
          f"{len(problems)} problem(s)")  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["dinov3_ros", "training"]))
