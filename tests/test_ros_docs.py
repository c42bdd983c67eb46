"""docs/NODE.md and docs/MESSAGES.md describe every topic and parameter the node has."""

from __future__ import annotations

from pathlib import Path

from dinov3_ros.pipeline.outputs import REGISTRY
from dinov3_ros.ros import params as P

ROOT = Path(__file__).resolve().parent.parent


def test_every_topic_is_documented():
    node, msgs = (ROOT / "docs/NODE.md").read_text(), (ROOT / "docs/MESSAGES.md").read_text()
    for o in REGISTRY.values():
        for t in o.topics:
            assert f"`~/{t.suffix}`" in node, t.suffix
            assert f"`~/<cam>/{t.suffix}`" in msgs, t.suffix
            assert t.msgtype.replace("/msg/", "/") in node, t.msgtype


def test_every_parameter_is_documented_with_its_default():
    node = (ROOT / "docs/NODE.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in node.splitlines() if line.startswith("| `")
    }
    for name in P.all_parameter_names():
        assert name in rows, name
    for name in P.READ_ONLY:
        assert "(read-only)" in rows[name], name
    assert "`0.15`" in rows["pipeline.odom_ransac_threshold"]  # the default as in the code
