"""Packaging: core imports no rclpy, CLIs answer --help, colcon builds an ament install tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = [
    "dinov3_ros.models",
    "dinov3_ros.heads",
    "dinov3_ros.runtime",
    "dinov3_ros.pipeline",
    "dinov3_ros.msgs",
    "dinov3_ros.offline",
    "dinov3_ros.synthetic",
    "dinov3_ros.eval",
    "training",
]


def test_core_imports_no_rclpy():
    code = (
        "import sys, importlib\n"
        f"for m in {CORE!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k == 'rclpy' or k.startswith('rclpy.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("exe", ["dinov3-ros", "dinov3-train"])
def test_cli_help(exe):
    path = Path(sys.executable).parent / exe
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_cli_unknown_command_fails():
    path = Path(sys.executable).parent / "dinov3-ros"
    out = subprocess.run([str(path), "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "no-such-command" in out.stderr


def test_package_xml_is_format3_ament_python():
    import xml.etree.ElementTree as ET

    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "dinov3_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    for d in [
        "rclpy",
        "sensor_msgs",
        "std_msgs",
        "geometry_msgs",
        "diagnostic_msgs",
        "python3-numpy",
        "python3-opencv",
        "python3-yaml",
    ]:
        assert d in deps, d
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}


@pytest.mark.slow
def test_colcon_build_install_tree(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    assert colcon.exists(), f"colcon (dev extra) is not installed next to {sys.executable}"
    ws = tmp_path / "ws"
    src = ws / "src" / "dinov3_ros"
    src.parent.mkdir(parents=True)
    # Copy the package sources only (no venv, no build outputs).
    ignore = shutil.ignore_patterns(
        ".venv",
        ".git",
        "build",
        "install",
        "log",
        "__pycache__",
        "*.egg-info",
        ".pytest_cache",
        ".ruff_cache",
        "runs",
        "out",
    )
    shutil.copytree(ROOT, src, ignore=ignore)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    out = subprocess.run(
        [str(colcon), "build", "--event-handlers", "console_direct+"],
        cwd=ws,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    inst = ws / "install" / "dinov3_ros"
    assert (inst / "share/ament_index/resource_index/packages/dinov3_ros").is_file()
    assert (inst / "share/dinov3_ros/package.xml").is_file()
    launch = sorted(p.name for p in (inst / "share/dinov3_ros/launch").glob("*.launch.py"))
    assert "perception.launch.py" in launch, launch
    assert (inst / "share/dinov3_ros/config/dinov3.yaml").is_file()
    assert (inst / "share/dinov3_ros/config/fastdds_local.xml").is_file()  # used by demo --live
    assert (inst / "share/dinov3_ros/models/registry.yaml").is_file()
    for exe in ["dinov3_node", "dinov3_lifecycle_node", "dinov3-ros", "dinov3-train"]:
        p = inst / "lib/dinov3_ros" / exe
        assert p.is_file() and os.access(p, os.X_OK), exe
    # the documented Fast DDS profile path, from the install tree alone (as after sourcing it)
    site = next(inst.glob("lib/python*/site-packages"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DINOV3_ROS_SHARE")}
    env.update(PYTHONPATH=str(site), AMENT_PREFIX_PATH=str(inst))
    dds = subprocess.run(
        [sys.executable, "-m", "dinov3_ros.ros.dds"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert dds.returncode == 0, dds.stderr
    profile = Path(dds.stdout.strip())
    assert profile.is_file() and inst in profile.parents, profile
