"""The package is Python 3.10 compatible (JetPack 6 / ROS 2 Humble), checked by a real 3.10 interpreter.

``.ci/py310_check.py`` runs under a bare Python 3.10 (from pyenv on this machine image;
``DINOV3_PYTHON310`` names another): every file compiles with 3.10's parser and uses only 3.10's standard
library. ``.ci/py310_import.py`` runs in a 3.10 environment with the dependencies (``make venv310``, or
``DINOV3_PY310_VENV``) and imports every module of ``dinov3_ros`` and ``training``. A missing interpreter
or environment fails the test (it is never skipped). The negative controls feed both 3.11-only code.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / ".ci" / "py310_check.py"


def _python310() -> str | None:
    cands = [
        os.environ.get("DINOV3_PYTHON310"),
        shutil.which("python3.10"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10"))),
        *sorted(glob.glob("/root/.pyenv/versions/3.10*/bin/python3.10")),
        "/usr/bin/python3.10",
    ]
    for c in cands:
        if not c or not Path(c).exists():
            continue
        r = subprocess.run(
            [c, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if r.returncode == 0 and r.stdout.strip() == "(3, 10)":
            return c
    return None


@pytest.fixture(scope="module")
def py310() -> str:
    py = _python310()
    if py is None:  # this project's machines have pyenv's 3.10; elsewhere set DINOV3_PYTHON310
        pytest.fail(
            "no Python 3.10 interpreter found (pyenv's 3.10, python3.10 on PATH or $DINOV3_PYTHON310)"
        )
    return py


def test_package_compiles_and_uses_only_python310_stdlib(py310):
    paths = ["dinov3_ros", "training", "benchmarks", "tests", "launch", "setup.py"]
    r = subprocess.run([py310, str(CHECK), *paths], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    n = int(r.stdout.split("checked ")[1].split()[0])
    assert n > 150 and "0 problem(s)" in r.stdout


def test_checker_flags_python311_only_code(py310, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import enum\nimport tomllib\nfrom typing import Self\nfrom datetime import UTC\n"
        "class C(enum.StrEnum):\n    A = 'a'\n"
        "def f():\n    raise ExceptionGroup('x', [ValueError()])\n"
    )
    syntax = tmp_path / "syntax.py"
    syntax.write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    good = tmp_path / "good.py"
    good.write_text(
        "from typing import Optional\nimport enum\nclass C(enum.Enum):\n    A = 1\nx: int | None = None\n"
    )
    r = subprocess.run([py310, str(CHECK), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    for what in ("tomllib", "import Self", "import UTC", "enum.StrEnum", "ExceptionGroup", "syntax.py"):
        assert what in r.stdout, (what, r.stdout)
    assert "good.py" not in r.stdout and "3 files" in r.stdout


def _venv310() -> str | None:
    """The Python of the 3.10 environment with the dependencies (``make venv310``)."""
    given = os.environ.get("DINOV3_PY310_VENV")
    for c in ([Path(given), Path(given) / "bin" / "python"] if given else []) + [
        ROOT / ".venv310/bin/python"
    ]:
        if c.is_file():
            return str(c)
    return None


@pytest.fixture(scope="module")
def venv310() -> str:
    py = _venv310()
    if py is None:
        pytest.fail(
            "no Python 3.10 environment with the dependencies: run `make venv310` (or set DINOV3_PY310_VENV)"
        )
    r = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert r.stdout.strip() == "(3, 10)", (py, r.stdout, r.stderr)
    return py


def test_every_module_imports_under_python310(venv310):
    pkgs = ["dinov3_ros", "training"]
    r = subprocess.run([venv310, str(ROOT / ".ci/py310_import.py"), *pkgs], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(
        r"Python 3\.10\.\d+: imported (\d+) modules, (\d+) need optional packages, 0 problem", r.stdout
    )
    assert m, r.stdout
    n_files = sum(1 for p in pkgs for _ in (ROOT / p).rglob("*.py"))
    assert int(m.group(1)) + int(m.group(2)) == n_files, (r.stdout, n_files)
    assert int(m.group(1)) >= n_files - 5, r.stdout  # nearly every module imports


def test_import_check_flags_python311_only_code(venv310, tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "new.py").write_text("from typing import Self\n")
    (pkg / "fields.py").write_text(
        "import dataclasses\n@dataclasses.dataclass(slots=True, kw_only=True)\nclass A:\n    x: int = 0\n"
    )
    (pkg / "fine.py").write_text("import dataclasses\nx: int | None = None\n")
    (pkg / "opt.py").write_text("import tensorrt\n")
    r = subprocess.run([venv310, str(ROOT / ".ci/py310_import.py"), "pkg"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "PROBLEM: pkg.new: ImportError" in r.stdout and "optional: pkg.opt: needs tensorrt" in r.stdout
    assert "pkg.fine" not in r.stdout and "pkg.fields" not in r.stdout, r.stdout
    assert "imported 3 modules, 1 need optional packages, 1 problem(s)" in r.stdout
