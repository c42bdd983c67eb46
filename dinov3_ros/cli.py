"""`dinov3-ros` command line: one subcommand per task, each implemented in its own module.

Each module named below provides ``add_arguments(parser)`` and ``main(args) -> int``; it is imported
only when its subcommand runs, so ``dinov3-ros --help`` stays fast and imports no torch or rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "inspect-weights": (
        "dinov3_ros.models.inspect",
        "print format, arch, parameters and hash status of a checkpoint",
    ),
    "export": ("dinov3_ros.runtime.export", "export backbone + heads to ONNX or a TensorRT engine"),
    "bench": ("dinov3_ros.runtime.bench", "latency/throughput of every available backend"),
    "process": ("dinov3_ros.offline.process", "run the pipeline over rosbags, videos or image folders"),
    "eval": ("dinov3_ros.eval.cli", "evaluate a backbone on synthetic ground truth"),
    "synth": ("dinov3_ros.synthetic.cli", "render synthetic scenes to a bag, video or image folder"),
    "run": ("dinov3_ros.ros.run", "start the perception node(s) in-process without the ROS CLI"),
    "demo": ("dinov3_ros.demo", "the end-to-end demo on the shipped default model"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; subcommand arguments are added lazily."""
    parser = argparse.ArgumentParser(
        prog="dinov3-ros", description="DINOv3 dense perception for robots and video."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dinov3-ros``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"dinov3-ros: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"dinov3-ros {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
