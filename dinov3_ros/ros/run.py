"""``dinov3-ros run --params config/dinov3.yaml``: the perception node(s) in-process, no ROS CLI needed.

The YAML uses the ROS parameter-file layout. A ``/**`` (or ``dinov3_node``) entry starts one node
named ``--name``; other top-level entries (``front_node:``, ``/robot/rear_node:``) start one node
each, with that name and namespace, all spinning on one executor in this process. ``--set
NAME:=VALUE`` overrides parameters of every node (``ros2 run ... -p`` syntax), ``--remap FROM:=TO``
renames topics of every node (``ros2 run ... -r`` syntax, e.g. ``image:=/camera/color/image_raw``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dinov3-ros run``."""
    parser.add_argument(
        "--params", type=Path, default=None, help="parameter YAML (default: the package's config/dinov3.yaml)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="override a parameter of every node (repeatable), e.g. --set weights:=random:vitt16",
    )
    parser.add_argument(
        "--remap",
        action="append",
        default=[],
        metavar="FROM:=TO",
        help="rename a topic of every node (repeatable), e.g. --remap image:=/camera/color/image_raw "
        "--remap camera_info:=/camera/color/camera_info",
    )
    parser.add_argument("--name", default="dinov3_node", help="node name for a '/**' entry")
    parser.add_argument("--namespace", default="", help="namespace for a '/**' entry")
    parser.add_argument(
        "--lifecycle", action="store_true", help="start lifecycle nodes (configured and activated here)"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = run until Ctrl-C)"
    )


def node_entries(doc: dict, default_name: str, default_ns: str) -> list[tuple[str, str]]:
    """(name, namespace) of the nodes a parameter file describes."""
    out = []
    for key in doc or {}:
        if key in ("/**", default_name, f"/{default_name}"):
            out.append((default_name, default_ns))
            continue
        path = key.strip("/").split("/")
        out.append((path[-1], "/" + "/".join(path[:-1]) if len(path) > 1 else default_ns))
    return list(dict.fromkeys(out)) or [(default_name, default_ns)]


def ros_arguments(params: Path, sets: list[str], remaps: list[str]) -> list[str]:
    """The ``--ros-args`` of the nodes: the parameter file, ``-p`` overrides and ``-r`` remappings."""
    out = ["--ros-args", "--params-file", str(params)]
    for s in sets:
        out += ["-p", s]
    for r in remaps:
        out += ["-r", r]
    return out


def main(args: argparse.Namespace) -> int:
    """Start the node(s); returns the exit code (1 when a node cannot start)."""
    import yaml

    from dinov3_ros.paths import config_dir

    params = args.params or (config_dir() / "dinov3.yaml")
    if not Path(params).is_file():
        print(f"dinov3-ros run: parameter file not found: {params}", file=sys.stderr)
        return 2
    try:
        doc = yaml.safe_load(Path(params).read_text()) or {}
    except yaml.YAMLError as exc:
        print(f"dinov3-ros run: cannot parse {params}: {exc}", file=sys.stderr)
        return 2
    for opt, values in (("--set", args.set), ("--remap", getattr(args, "remap", []))):
        for s in values:
            if ":=" not in s:
                print(f"dinov3-ros run: {opt} expects NAME:=VALUE, got {s!r}", file=sys.stderr)
                return 2
    import rclpy

    from dinov3_ros.ros import dds
    from dinov3_ros.ros.node import PerceptionNode, spin_nodes

    applied = dds.apply_profile()
    if applied:
        print(applied, file=sys.stderr)

    ros_args = ros_arguments(params, args.set, getattr(args, "remap", []))
    rclpy.init(args=["dinov3-ros", *ros_args])
    nodes = []
    try:
        for name, ns in node_entries(doc, args.name, args.namespace):
            try:
                if args.lifecycle:
                    from dinov3_ros.ros.lifecycle import PerceptionLifecycleNode

                    node = PerceptionLifecycleNode(name, namespace=ns)
                    nodes.append(node)
                    node.trigger_configure()
                    if node.core.settings is None:
                        return 1
                    node.trigger_activate()
                else:
                    nodes.append(PerceptionNode(name, namespace=ns))
            except (ValueError, RuntimeError) as exc:
                print(f"dinov3-ros run: node {ns}/{name} cannot start: {exc}", file=sys.stderr)
                return 1
        if args.duration > 0:
            import threading

            threading.Timer(args.duration, rclpy.shutdown).start()
        spin_nodes(nodes)
    finally:
        for n in nodes:
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
