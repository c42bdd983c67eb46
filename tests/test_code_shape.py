"""Shape of the source tree: functions stay short, and only ``dinov3_ros.ros`` talks to ROS.

Both checks read the source with :mod:`ast` (nothing is executed) except the last one, which imports every
module outside ``dinov3_ros.ros`` in a fresh interpreter and looks for rclpy in ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dinov3_ros"
MAX_LINES = 80

#: functions allowed to be longer than MAX_LINES: "path under dinov3_ros/::qualified name" -> reason
ALLOWED_LONG: dict[str, str] = {}

#: top-level packages that need a ROS 2 installation with rclpy (the ROS client library and generated
#: message classes); only ``dinov3_ros/ros`` may import them
ROS_PACKAGES = {
    "rclpy",
    "rosidl_runtime_py",
    "rosidl_parser",
    "builtin_interfaces",
    "diagnostic_msgs",
    "geometry_msgs",
    "lifecycle_msgs",
    "nav_msgs",
    "rcl_interfaces",
    "sensor_msgs",
    "std_msgs",
    "std_srvs",
    "tf2_msgs",
    "tf2_ros",
    "message_filters",
    "launch",
    "launch_ros",
}

#: modules outside dinov3_ros/ros that may import dinov3_ros.ros inside a function (never at module level)
LAZY_ROS_IMPORTERS: dict[str, str] = {
    "demo.py": "`dinov3-ros demo --live` starts the live node",
}


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _function_lengths(tree: ast.Module) -> dict[str, int]:
    """``qualified name -> lines`` (``def`` line to last line, decorators not counted) of every function."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out[name] = max(out.get(name, 0), child.end_lineno - child.lineno + 1)
                visit(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _all_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for path in _modules(PACKAGE):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, n in _function_lengths(tree).items():
            lengths[f"{_rel(path)}::{name}"] = n
    return lengths


def test_length_measure_counts_def_to_last_line():
    src = "class A:\n    @staticmethod\n    def f():\n        x = 1\n\n        return x\n\ndef g():\n    def h():\n        pass\n"
    assert _function_lengths(ast.parse(src)) == {"A.f": 4, "g": 3, "g.<locals>.h": 2}


def test_no_function_exceeds_the_limit():
    lengths = _all_lengths()
    assert len(lengths) > 500, "the scan found too few functions: wrong root?"
    long = {k: n for k, n in lengths.items() if n > MAX_LINES and k not in ALLOWED_LONG}
    assert not long, (
        f"functions longer than {MAX_LINES} lines (split them, or add them to ALLOWED_LONG with a reason): "
        + ", ".join(f"{k} ({n})" for k, n in sorted(long.items()))
    )


def test_allow_list_is_current_and_explained():
    lengths = _all_lengths()
    for key, reason in ALLOWED_LONG.items():
        assert reason.strip(), f"{key}: an allow-list entry needs a reason"
        assert key in lengths, f"{key}: no such function any more; remove it from ALLOWED_LONG"
        assert lengths[key] > MAX_LINES, (
            f"{key} is {lengths[key]} lines now, within the limit; remove it from ALLOWED_LONG"
        )


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """``(absolute module name, at module level)`` of every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    top = {id(n) for n in tree.body}
    for n in tree.body:  # imports under a module-level `if`/`try` run at import time too
        if isinstance(n, (ast.If, ast.Try)):
            top.update(id(c) for c in ast.walk(n))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            out.append((name, id(node) in top))
            out += [(f"{name}.{a.name}", id(node) in top) for a in node.names]
    return out


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_relative_imports_resolve():
    path = PACKAGE / "models" / "vit.py"
    names = [n for n, _ in _imports(path, _module_name(path))]
    assert "dinov3_ros.models.layers" in names


def test_only_the_ros_package_imports_ros():
    offenders = []
    ros_dir = PACKAGE / "ros"
    for path in _modules(PACKAGE) + _modules(ROOT / "training"):
        if ros_dir in path.parents:
            continue
        for name, top_level in _imports(path, _module_name(path)):
            where = path.relative_to(ROOT).as_posix()
            if name.split(".")[0] in ROS_PACKAGES:
                offenders.append(f"{where} imports {name}")
            elif name == "dinov3_ros.ros" or name.startswith("dinov3_ros.ros."):
                lazy_ok = path.is_relative_to(PACKAGE) and _rel(path) in LAZY_ROS_IMPORTERS
                if top_level or not lazy_ok:
                    offenders.append(f"{where} imports {name}")
    assert not offenders, "only dinov3_ros/ros may import ROS: " + "; ".join(offenders)


def test_importing_everything_outside_ros_loads_no_rclpy():
    code = (
        "import importlib, pkgutil, sys\n"
        "import dinov3_ros, training\n"
        "names = [m.name for p in (dinov3_ros, training)\n"
        "         for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')\n"
        "         if not m.name.startswith('dinov3_ros.ros')]\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {sorted(ROS_PACKAGES)!r})\n"
        "assert not bad, bad\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) > 100  # every module was imported, not an empty walk
