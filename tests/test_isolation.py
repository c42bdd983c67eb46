"""The test harness itself: per-process DDS domain, private cache, restored thread settings, the skip
check, and a sample bag that concurrent processes generate once and never see half-written."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from dinov3_ros.synthetic.sample import cache_dir, sample_ok

HERE = Path(__file__).parent
ROOT = HERE.parent


def test_domain_is_claimed_and_locked():
    domain = int(os.environ["ROS_DOMAIN_ID"])
    assert 1 <= domain <= 101
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    lock = Path(tempfile.gettempdir()) / "dinov3_ros_test_domains" / f"{domain}.lock"
    with open(lock, "a") as fh, pytest.raises(BlockingIOError):  # held by this session (another fd)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_cache_is_private_to_the_session():
    d = cache_dir().resolve()
    assert d == Path(os.environ["DINOV3_ROS_CACHE"]).resolve()
    assert Path.home() / ".cache" not in [d, *d.parents]


def test_unique_names_are_legal_and_distinct(unique_name):
    names = [unique_name("talker"), unique_name("talker"), unique_name()]
    assert len(set(names)) == 3
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names), names
    assert str(os.getpid()) in names[0]


def _inner_session(tmp_path: Path, body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``body`` as a test file under a copy of our conftest in a fresh pytest process."""
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(body))
    base = {k: v for k, v in os.environ.items() if k != "DINOV3_ROS_ALLOW_SKIPS"}
    full_env = {**base, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        cwd=tmp_path,
    )


def test_thread_settings_restored_and_skips_checked(tmp_path):
    body = """
        import os
        import cv2, pytest, torch

        START = (torch.get_num_threads(), cv2.getNumThreads())

        def test_a_changes_threads():
            torch.set_num_threads(1)
            cv2.setNumThreads(1)
            torch.set_default_dtype(torch.float64)

        def test_b_sees_them_restored():
            assert (torch.get_num_threads(), cv2.getNumThreads()) == START
            assert torch.get_default_dtype() == torch.float32

        def test_c_domain_differs_from_outer():
            assert os.environ["ROS_DOMAIN_ID"] != os.environ["OUTER_DOMAIN"]

        @pytest.mark.gpu
        def test_d_allowed_skip():
            pytest.skip("needs CUDA: runs on the GPU machine")

        def test_e_silent_skip():
            pytest.skip("some import failed")

        @pytest.mark.tensorrt
        def test_f_vague_allowed_skip():
            pytest.skip("needs TensorRT")
    """
    env = {"OUTER_DOMAIN": os.environ["ROS_DOMAIN_ID"]}
    res = _inner_session(tmp_path, body, env)
    out = res.stdout + res.stderr
    assert "3 passed, 3 skipped" in out, out
    assert res.returncode == 1, out  # the silent skip fails the session
    unexpected = out.split("unexpected skips")[1]
    assert "test_e_silent_skip: Skipped: some import failed" in unexpected
    assert (
        "test_f_vague_allowed_skip: Skipped: needs TensorRT (an allowed skip must say where it runs"
        in unexpected
    )
    assert "test_d_allowed_skip" not in unexpected
    assert "skip check: FAILED, 2 skip(s)" in out
    ok = _inner_session(tmp_path, body, {**env, "DINOV3_ROS_ALLOW_SKIPS": "1"})
    assert ok.returncode == 0, ok.stdout + ok.stderr


_GEN = """
import sys
from pathlib import Path
import dinov3_ros.synthetic.sample as s

made = []
real = s.make_sample_bag
s.make_sample_bag = lambda p: made.append(1) or real(p)
bag = s.ensure_sample_bag(Path(sys.argv[1]))
print("generated" if made else "reused", s.sample_ok(bag))
"""


@pytest.mark.slow
def test_sample_bag_generated_once_by_concurrent_processes(tmp_path):
    bag = tmp_path / "cache" / "sample_bag"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GEN, str(bag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        outs.append(out.decode().split())
    assert sorted(o[0] for o in outs) == ["generated", "reused"], outs
    assert all(o[1] == "True" for o in outs) and sample_ok(bag)
    leftovers = [p.name for p in bag.parent.iterdir() if p.name not in ("sample_bag", ".sample_bag.lock")]
    assert leftovers == ["sample_bag.manifest.json"]
