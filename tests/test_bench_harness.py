"""The benchmark harness: a failing step fails the run; the CUDA-test configuration finds the marked tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import run as harness


@pytest.mark.parametrize(("codes", "expected"), [((0, 0), 0), ((0, 3), 1), ((124, 0), 1)])
def test_any_failing_step_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, codes, expected
) -> None:
    steps = [
        harness.Step(f"s{i}", (sys.executable, "-c", f"raise SystemExit({c})"), 60)
        for i, c in enumerate(codes)
    ]
    monkeypatch.setattr(harness, "configs", lambda: {"demo": steps})
    assert harness.main(["demo"]) == expected
    out = capsys.readouterr().out
    assert ("all steps passed" in out) == (expected == 0)
    assert harness.main(["nope"]) == 2


def test_cuda_tests_configuration_lists_the_marked_files() -> None:
    files = harness.cuda_test_files()
    assert "tests/test_heads_gpu.py" in files and "tests/test_pipeline_core.py" in files
    assert "tests/test_golden_outputs.py" not in files  # no CUDA test there
    (step,) = harness.configs()["cuda-tests"]
    assert step.cmd[step.cmd.index("-m", 2) + 1] == "gpu or tensorrt or multigpu or timm"
