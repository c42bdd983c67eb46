"""Shared test setup: isolated DDS per test process, deterministic torch, small thread counts."""

from __future__ import annotations

import os

# Each pytest process gets its own DDS domain and localhost-only discovery so parallel runs
# (CI, several developers) never see each other's topics.
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest


@pytest.fixture(autouse=True)
def _seed():
    """Seed numpy and torch before every test."""
    import numpy as np

    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass
    yield


@pytest.fixture
def one_torch_thread():
    """Single-threaded torch for tiny models: fastest, and no OpenMP barriers stalling on a loaded 2-core box.

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
