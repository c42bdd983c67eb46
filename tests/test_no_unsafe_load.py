"""No code path deserialises executable data: a static scan of the package, the training code and the
benchmarks for ``pickle``-family loads, ``torch.load`` without ``weights_only=True`` and ``numpy.load``
with ``allow_pickle=True``. Loading from disk goes through weights_only / safetensors / JSON + arrays."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("dinov3_ros", "training", "benchmarks")
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for each unsafe deserialisation call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attr, base = node.func.attr, node.func.value
        owner = base.id if isinstance(base, ast.Name) else ""
        if owner in PICKLERS and attr in ("load", "loads", "Unpickler", "open"):
            found.append((node.lineno, f"{owner}.{attr}"))
        elif owner == "torch" and attr == "load" and not _is_true(_kw(node, "weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif owner in ("np", "numpy") and attr == "load" and _is_true(_kw(node, "allow_pickle")):
            found.append((node.lineno, "numpy.load(allow_pickle=True)"))
    return found


def test_no_unsafe_deserialisation_in_the_code():
    bad = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, what in unsafe_loads(path.read_text(encoding="utf-8")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not bad, (
        "unsafe deserialisation (load with weights_only=True / safetensors / JSON):\n" + "\n".join(bad)
    )


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(b)",
        "import pickle\nwith open(p, 'rb') as f:\n    pickle.load(f)",
        "import torch\ntorch.load(p)",
        "import torch\ntorch.load(p, weights_only=False)",
        "import numpy as np\nnp.load(p, allow_pickle=True)",
    ],
)
def test_the_scan_flags_each_unsafe_form(snippet):
    assert unsafe_loads(snippet), snippet


def test_the_scan_passes_safe_forms():
    safe = "import torch, numpy as np, json\ntorch.load(p, weights_only=True)\nnp.load(p)\njson.loads(s)\n"
    assert unsafe_loads(safe) == []
