"""benchmarks/stack_sampler.py: per-thread stack samples find a thread's hot function."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ss():
    spec = importlib.util.spec_from_file_location("stack_sampler", ROOT / "benchmarks" / "stack_sampler.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_thread_groups_drop_pool_indices(ss):
    assert ss.thread_group("tool-build_3") == "tool-build"
    assert ss.thread_group("ThreadPoolExecutor-0_12") == "ThreadPoolExecutor-0"
    assert ss.thread_group("offline-writer") == "offline-writer"


def busy_for(seconds: float) -> None:
    """Spin in Python for ``seconds`` (a workload whose stack is known)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_busy_thread_is_found_in_its_function(ss):
    stop = threading.Event()
    busy = threading.Thread(target=busy_for, args=(0.4,), name="spinner_0")
    idle = threading.Thread(target=stop.wait, args=(5.0,), name="idler_1")
    with ss.StackSampler(interval=0.002, depth=2) as s:
        idle.start()
        busy.start()
        busy.join()
    stop.set()
    idle.join()
    rows = s.rows(top=100)
    spin = sum(r["share"] for r in rows if r["thread"] == "spinner" and "busy_for" in r["stack"][0])
    wait = sum(r["share"] for r in rows if r["thread"] == "idler" and "busy_for" in " ".join(r["stack"]))
    assert s.samples > 20 and spin > 0.5  # the spinner ran most of the sampled time
    assert wait == 0  # control: the waiting thread is never seen in the spinner's function
    assert "spinner" in s.table(top=100)  # other tests may leave idle pool threads behind


def test_bad_settings_are_refused(ss):
    with pytest.raises(ValueError, match="interval"):
        ss.StackSampler(interval=0)
