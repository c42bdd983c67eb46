"""docs/JETSON.md and docker/jetson/Dockerfile stay in step with the package.

Neither can run here (no Jetson, no arm64 builder, no TensorRT): these tests check what can be checked
without one - the ``dinov3-ros`` commands in the guide parse with the real CLI, the trtexec flags are
TensorRT 10 flags, and the Jetson install lines (guide and Dockerfile) install every requirement of the
package except the ones they document as coming from elsewhere or optional.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "JETSON.md"
DOCKERFILE = ROOT / "docker" / "jetson" / "Dockerfile"
#: requirements the Jetson setup takes from elsewhere (torch: NVIDIA's wheel; numpy: pinned separately)
#: or leaves optional (onnxruntime, open3d) - the guide says so
NOT_FROM_PIP_LINE = {"torch", "numpy", "onnxruntime", "open3d", "setuptools"}
TRTEXEC_FLAGS = {"--onnx", "--saveEngine", "--fp16", "--memPoolSize", "--timingCacheFile", "--stronglyTyped"}


def _install_requires() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return {ast.literal_eval(e) for e in node.value.elts}
    raise AssertionError("setup.py has no install_requires")


def _commands(text: str) -> list[list[str]]:
    """Shell commands of the fenced bash blocks (continuation lines joined, comments dropped)."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(shlex.split(line.replace("<this repository>", "REPO")))
    return cmds


def _pip_packages(cmds: list[list[str]]) -> set[str]:
    pkgs = set()
    for c in cmds:
        if c[:2] == ["pip", "install"] and not any(a.startswith("-") for a in c[2:]):
            pkgs |= set(c[2:])
    return pkgs


def test_guide_installs_every_requirement():
    want = _install_requires() - NOT_FROM_PIP_LINE
    assert _pip_packages(_commands(GUIDE.read_text())) >= want


def test_dockerfile_installs_every_requirement_on_the_l4t_base():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG L4T_IMAGE=nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+$", text, re.M)
    assert "NOT BUILT BY THIS PROJECT" in text
    lines = re.sub(r"\\\n\s*", " ", text)
    pkgs = set()
    for m in re.finditer(r"pip install --no-cache-dir ([^&\n]+)", lines):
        args = [a for a in shlex.split(m.group(1)) if not a.startswith("-") and "$" not in a]
        pkgs |= set(args)
    assert pkgs >= _install_requires() - NOT_FROM_PIP_LINE
    assert "--system-site-packages" in text and "python3-libnvinfer" in text
    assert "ros-humble-ros-base" in text


def test_guide_cli_commands_parse():
    """Every ``dinov3-ros`` command of the guide is accepted by the real argument parser."""
    from dinov3_ros.cli import SUBCOMMANDS

    seen = set()
    for c in _commands(GUIDE.read_text()):
        if c[0] != "dinov3-ros":
            continue
        module = importlib.import_module(SUBCOMMANDS[c[1]][0])
        parser = argparse.ArgumentParser(prog=f"dinov3-ros {c[1]}", exit_on_error=False)
        module.add_arguments(parser)
        parser.parse_args(c[2:])
        seen.add(c[1])
    assert {"export", "process"} <= seen


def test_guide_trtexec_flags_are_tensorrt10_flags():
    cmds = [c for c in _commands(GUIDE.read_text()) if c[0].endswith("trtexec")]
    assert cmds and cmds[0][0] == "/usr/src/tensorrt/bin/trtexec"
    for c in cmds:
        flags = {a.split("=")[0] for a in c[1:]}
        assert flags <= TRTEXEC_FLAGS, flags - TRTEXEC_FLAGS
    plan = next(a.split("=", 1)[1] for a in cmds[0] if a.startswith("--saveEngine="))
    onnx = next(a.split("=", 1)[1] for a in cmds[0] if a.startswith("--onnx="))
    assert Path(plan).stem == Path(onnx).stem  # the ONNX next to the plan carries its metadata


def test_jetson_blocks_are_marked_with_the_tests_that_cover_them():
    """Every fenced block of the guide, and each TensorRT block of the README, carries a
    ``<!-- doc-test: needs WHAT tests/x.py::name -->`` marker (or ``run``) naming a test that exists, so a
    renamed test cannot leave a block uncovered."""
    blocks = 0
    for doc in (GUIDE, ROOT / "README.md"):
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("```") or line.strip() == "```":
                continue
            body = "\n".join(
                lines[i + 1 : i + 1 + next(k for k, x in enumerate(lines[i + 1 :]) if x == "```")]
            )
            if doc.name == "README.md" and not re.search(r"tensorrt|\.plan\b", body, re.I):
                continue
            blocks += 1
            m = re.fullmatch(r"<!-- doc-test: (.*) -->", lines[i - 1])
            assert m, f"{doc.name}:{i + 1}: no doc-test marker above the block"
            words = m.group(1).split()
            if words == ["run"]:
                continue
            assert words[0] == "needs" and words[1] in {"tensorrt", "jetson", "docker"}, (doc.name, words)
            path, _, name = words[2].partition("::")
            src = (ROOT / path).read_text()
            assert re.search(rf"^def {name}\(", src, re.M), f"{doc.name}:{i + 1}: no test {words[2]}"
    assert blocks >= 8, blocks
