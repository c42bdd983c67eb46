"""Shared test setup: isolated DDS per test process, no shared caches, restored global state, no silent skips.

* ``ROS_DOMAIN_ID``: a hash-derived domain per pytest process, claimed with an exclusive lock file so
  two concurrent sessions on one machine never share one; discovery is localhost-only.
* ``DINOV3_ROS_CACHE``: a per-session temporary directory (no test reads or writes ``~/.cache``).
* torch / OpenCV thread counts and torch's default dtype are restored after every test.
* A skip fails the session unless the test carries one of :data:`ALLOWED_SKIP_MARKERS` (hardware or
  packages this machine cannot have) and its reason says where the test "runs on";
  ``DINOV3_ROS_ALLOW_SKIPS=1`` turns the check off for local runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

N_DOMAINS = 101  # ROS 2 domain ids 0..101 are safe on Linux; 0 is the default, left to users


def _claim_domain() -> tuple[int, object]:
    """First free domain id at or after a hash of (pid, time, random), held by a lock for the session."""
    seed = f"{os.getpid()}-{time.time_ns()}-{uuid.uuid4()}".encode()
    start = int.from_bytes(hashlib.sha256(seed).digest()[:8], "little") % N_DOMAINS
    lock_dir = Path(tempfile.gettempdir()) / "dinov3_ros_test_domains"
    lock_dir.mkdir(exist_ok=True)
    for k in range(N_DOMAINS):
        domain = 1 + (start + k) % N_DOMAINS
        fh = open(lock_dir / f"{domain}.lock", "a")  # held open for the session
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return domain, fh
    raise RuntimeError(f"all {N_DOMAINS} ROS domain ids are held by other test sessions ({lock_dir})")


_DOMAIN, _DOMAIN_LOCK = _claim_domain()
os.environ["ROS_DOMAIN_ID"] = str(_DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("OMP_NUM_THREADS", "2")
_CACHE = tempfile.TemporaryDirectory(prefix="dinov3_ros_test_cache_")
os.environ["DINOV3_ROS_CACHE"] = _CACHE.name

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

#: Markers whose tests may skip (each skip reason names where the test does run).
ALLOWED_SKIP_MARKERS = {
    "gpu": "needs CUDA: runs on the GPU machine",
    "tensorrt": "needs TensorRT: runs on the GPU machine / Jetson",
    "multigpu": "needs several CUDA devices: runs on a multi-GPU machine",
    "timm": "timm cannot import beside the CPU-only torch: runs on the GPU machine",
}
_unexpected_skips: list[str] = []


def pytest_configure(config) -> None:
    for name, why in ALLOWED_SKIP_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {why} (an allowed skip)")


def pytest_report_header(config) -> str:
    return f"ROS_DOMAIN_ID={_DOMAIN} (locked), DINOV3_ROS_CACHE={_CACHE.name}"


def _skip_reason(report) -> str:
    lr = report.longrepr
    return str(lr[-1]) if isinstance(lr, tuple) else str(lr)


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not set(report.keywords) & set(ALLOWED_SKIP_MARKERS):
            _unexpected_skips.append(f"{report.nodeid}: {reason}")
        elif "runs on" not in reason:
            _unexpected_skips.append(f"{report.nodeid}: {reason} (an allowed skip must say where it runs on)")


def pytest_collectreport(report) -> None:
    if report.skipped:  # a module-level skip hides every test of the file
        _unexpected_skips.append(f"{report.nodeid} (whole module): {_skip_reason(report)}")


def pytest_sessionfinish(session, exitstatus) -> None:
    if _unexpected_skips and os.environ.get("DINOV3_ROS_ALLOW_SKIPS") != "1" and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    allowed = os.environ.get("DINOV3_ROS_ALLOW_SKIPS") == "1"
    if not _unexpected_skips:
        terminalreporter.write_line("skip check: ok (no skip outside the allow-list)")
        return
    terminalreporter.section(
        "unexpected skips" + (" (allowed by DINOV3_ROS_ALLOW_SKIPS=1)" if allowed else "")
    )
    for line in _unexpected_skips:
        terminalreporter.write_line(line)
    if not allowed:
        terminalreporter.write_line(
            f"skip check: FAILED, {len(_unexpected_skips)} skip(s) outside {sorted(ALLOWED_SKIP_MARKERS)}"
        )


@pytest.fixture(autouse=True)
def _seed():
    """Seed numpy and torch before every test."""
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Undo a test's changes to torch/OpenCV thread counts and torch's default dtype."""
    threads, cv_threads, dtype = torch.get_num_threads(), cv2.getNumThreads(), torch.get_default_dtype()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if cv2.getNumThreads() != cv_threads:
        cv2.setNumThreads(cv_threads)
    if torch.get_default_dtype() != dtype:
        torch.set_default_dtype(dtype)


@pytest.fixture
def restore_root_logging():
    """The CLIs configure the root logger on the stream pytest captured for that test; undo it."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def one_torch_thread():
    """Single-threaded torch for tiny models: fastest, and no OpenMP barriers stalling on a loaded 2-core box.

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    torch.set_num_threads(1)
    yield


_names = itertools.count()


@pytest.fixture
def unique_name(request):
    """``unique_name(prefix)`` -> a ROS-legal node/topic name unique to this process and test."""
    test = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]

    def make(prefix: str = "node") -> str:
        return f"{prefix}_{test}_{os.getpid()}_{next(_names)}"

    return make


@pytest.fixture
def random_vit():
    """A fresh ``random_backbone("vitt16", seed=0, depth=2)`` (eval mode): every block changes the output
    materially (see ``dinov3_ros.models.testing``), so a dropped block or a wrong activation shows."""
    from dinov3_ros.models.testing import random_backbone

    return random_backbone("vitt16", seed=0, depth=2)
