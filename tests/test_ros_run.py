"""`dinov3-ros run` (in-process node, two cameras batched), the lifecycle node, and clean failures.

Real rclpy + DDS in separate processes (helper roles from test_ros_node.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import test_ros_node as trn

ROOT = Path(__file__).resolve().parent.parent


def test_run_two_cameras_one_model_batched(tmp_path):
    log = tmp_path / "run.log"
    cmd = [
        sys.executable,
        "-m",
        "dinov3_ros.cli",
        "run",
        "--params",
        str(ROOT / "config/dinov3.yaml"),
        "--set",
        "weights:=random:vitt16",
        "--set",
        "resolution:=[64,96]",
        "--set",
        "cameras:=front,rear",
        "--set",
        "diagnostics_period:=0.5",
        "--set",
        "batch_window_ms:=50.0",
        "--name",
        trn.NODE_NAME,  # unique per test process
    ]
    f = open(log, "w")
    node = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t_end = time.time() + 90
        while "loaded in" not in log.read_text() and time.time() < t_end:
            assert node.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "cameras ['front', 'rear']" in log.read_text(), log.read_text()
        items = []
        for i in range(5):
            st = 7_000_000_000 + 1000 * i
            items.append(
                {
                    "kind": "raw",
                    "encoding": "rgb8",
                    "stamp": st,
                    "ns": "front",
                    "frame_id": "front_optical",
                    "pause": 0.0,
                }
            )
            items.append(
                {
                    "kind": "raw",
                    "encoding": "bgr8",
                    "stamp": st + 1,
                    "ns": "rear",
                    "frame_id": "rear_optical",
                    "pause": 0.7,
                }
            )
        topics = ["front/depth", "rear/depth", "front/depth/camera_info", "rear/features"]
        with trn._Session(
            tmp_path, "multi", {"topics": topics}, items, {"namespaces": ["front", "rear"]}
        ) as s:
            s.wait_pub()
            recs = s.stop_sub(settle=1.5)
    finally:
        trn._kill(node)
    got = {(r["topic"], r["stamp"], r["frame_id"]) for r in recs if not r["topic"].startswith("diag")}
    for i in range(5):
        st = 7_000_000_000 + 1000 * i
        assert ("front/depth", st, "front_optical") in got, (st, sorted(got))
        assert ("rear/depth", st + 1, "rear_optical") in got, (st, sorted(got))
        assert ("rear/features", st + 1, "rear_optical") in got
        assert ("front/depth/camera_info", st, "front_optical") in got
    diag = trn._last_diag(s.out)
    processed, inferences = int(diag["frames_processed"]), int(diag["inferences"])
    assert processed >= 10 and inferences < processed, diag  # frames of both cameras shared engine calls


LIFECYCLE = textwrap.dedent(
    """
    import rclpy
    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter
    from dinov3_ros.ros.lifecycle import PerceptionLifecycleNode

    rclpy.init()
    n = PerceptionLifecycleNode(parameter_overrides=[
        Parameter("weights", value="/nonexistent/model.pth"), Parameter("resolution", value=[64, 96])])
    assert n.trigger_configure() == R.FAILURE
    assert n.core.settings is None and n.core.model is None
    assert n.count_subscribers("~/depth") == 0 and n.count_publishers("/diagnostics") == 0
    n.set_parameters([Parameter("weights", value="random:vitt16")])
    assert n.trigger_configure() == R.SUCCESS and n.core.model is not None
    assert n.count_subscribers("image") == 0  # not active: no input subscription yet
    assert n.trigger_activate() == R.SUCCESS
    assert n.count_subscribers("image") == 1 and n.core._worker.is_alive()
    r = n.set_parameters([Parameter("pipeline.match_max", value=7), Parameter("outputs.debug", value=False)])
    assert all(x.successful for x in r), r
    assert n.core.pipeline.config.match_max == 7 and n.core.settings.outputs["debug"] is False
    r = n.set_parameters([Parameter("pipeline.match_ratio", value=5.0)])
    assert not r[0].successful and "match_ratio" in r[0].reason, r
    assert n.core.pipeline.config.match_ratio == 0.9
    r = n.set_parameters([Parameter("weights", value="random:vits16")])
    assert not r[0].successful and "cannot change while configured" in r[0].reason, r
    assert n.trigger_deactivate() == R.SUCCESS
    assert n.count_subscribers("image") == 0 and n.core._worker is None
    assert n.trigger_cleanup() == R.SUCCESS and n.core.model is None
    n.destroy_node()
    rclpy.shutdown()
    print("LIFECYCLE_OK")
    """
)


def test_lifecycle_configure_fails_cleanly_then_runs():
    out = subprocess.run(
        [sys.executable, "-c", LIFECYCLE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "LIFECYCLE_OK" in out.stdout, out.stdout + out.stderr
    assert "configure failed" in out.stderr and "weights file not found: /nonexistent/model.pth" in out.stderr


def test_node_with_bad_model_exits_with_clear_error():
    cmd = [sys.executable, "-m", "dinov3_ros.ros.node", "--ros-args", "-p", "weights:=random:vit_nope"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cannot start" in out.stderr and "vit_nope" in out.stderr
    cmd = [sys.executable, "-m", "dinov3_ros.ros.node", "--ros-args", "-p", "pipeline.match_ratio:=7.0"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "match_ratio" in out.stderr, out.stderr
