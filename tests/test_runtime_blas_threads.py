"""OpenBLAS thread count at run time: found for numpy and scipy, set and read back, auto resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dinov3_ros.runtime.blas_threads import blas_threads_for


def test_auto_is_one_thread_on_cuda_only() -> None:
    assert blas_threads_for(-1, "cuda") == 1 and blas_threads_for(-1, "cuda:1") == 1
    assert blas_threads_for(-1, "cpu") == 0
    assert blas_threads_for(0, "cuda") == 0 and blas_threads_for(3, "cpu") == 3
    with pytest.raises(ValueError, match="blas_threads"):
        blas_threads_for(-2, "cpu")


def test_set_blas_threads_acts_on_numpy_and_scipy() -> None:
    """In a child process (the setting is process-wide): both libraries go to 1 thread and back, and a
    BLAS call still gives the same result."""
    code = """
import numpy as np, scipy.linalg
from dinov3_ros.runtime.blas_threads import get_blas_threads, set_blas_threads
before = get_blas_threads()
assert len(before) >= 2, before
a = np.random.default_rng(0).standard_normal((300, 300))
ref = a @ a.T
done = set_blas_threads(1)
assert set(done) == set(before) and all(after == 1 for _, after in done.values()), done
assert set(get_blas_threads().values()) == {1}
assert np.allclose(a @ a.T, ref) and np.allclose(scipy.linalg.qr(a)[1], scipy.linalg.qr(a)[1])
set_blas_threads(2)
assert set(get_blas_threads().values()) == {2}
try:
    set_blas_threads(0)
except ValueError as e:
    assert ">= 1" in str(e)
else:
    raise AssertionError("0 threads accepted")
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
