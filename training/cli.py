"""`dinov3-train` command line: pretraining, distillation and head training."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("training.pretrain", "DINOv3 self-supervised pretraining (DINO, iBOT, KoLeo, Gram)"),
    "distill": ("training.distill", "distil a frozen teacher into one or more students"),
    "depth": ("training.depth_head", "train a depth head on a frozen backbone"),
    "objects": (
        "training.objects_head",
        "train the objects head (TokenCut's token projection) on a frozen backbone",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dinov3-train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="dinov3-train", description="Train DINOv3 backbones and heads.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_m, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"dinov3-train: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    module_name, help_text = SUBCOMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"dinov3-train {argv[0]}", description=help_text)
    module.add_arguments(sub_parser)
    # overrides may come before, between or after the options
    return int(module.main(sub_parser.parse_intermixed_args(argv[1:])) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
