"""``dinov3-ros inspect-weights FILE``: format, arch, parameters, normalisation and hash status."""

from __future__ import annotations

import argparse
import json
import sys

from .archs import ARCHS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``inspect-weights`` subcommand."""
    parser.add_argument(
        "file", help="checkpoint (.pth/.bin/.safetensors), a Hugging Face model dir, or 'default'"
    )
    parser.add_argument(
        "--arch", default=None, help=f"expected arch (default: infer); one of {', '.join(ARCHS)}"
    )
    parser.add_argument("--no-hash", action="store_true", help="skip the sha256 check of official file names")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--check-load", action="store_true", help="also build the backbone and load strictly")


def main(args: argparse.Namespace) -> int:
    """Print the report; exit 1 on unreadable file, hash mismatch or (with --check-load) arch mismatch."""
    from .loading import CheckpointError, inspect_checkpoint, load_backbone

    try:
        sd, info = inspect_checkpoint(args.file, args.arch, verify_hash=not args.no_hash)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = {
        "file": str(info.path),
        "container": info.container,
        "format": info.format,
        "arch": info.arch,
        "arch_source": info.arch_source,
        "registry_entry": info.registry_entry,
        "params": info.params,
        "params_m": round(info.params / 1e6, 2),
        "tensors": len(sd),
        "dtypes": info.dtypes,
        "normalization": info.normalization,
        "mean": list(info.norm_mean),
        "std": list(info.norm_std),
        "local_cls_norm": info.untie_local_cls_norm,
        "hash": info.hash_status,
        "hash_expected": info.expected_hash,
        "hash_actual": info.actual_hash,
    }
    if info.arch is not None:
        spec = ARCHS[info.arch]
        report["embed_dim"] = spec.embed_dim
        report["patch_size"] = spec.patch_size
    rc = 0
    if info.hash_status == "mismatch":
        rc = 1
    if args.check_load:
        try:
            load_backbone(args.file, args.arch, verify_hash=False)
            report["load"] = "ok"
        except CheckpointError as e:
            report["load"] = str(e)
            rc = 1
    if args.json:
        print(json.dumps(report, indent=2))
        return rc
    hash_line = info.hash_status
    if info.hash_status == "ok":
        hash_line = f"ok ({info.actual_hash})"
    elif info.hash_status == "mismatch":
        hash_line = f"MISMATCH: name says {info.expected_hash}, file sha256 starts {info.actual_hash}"
    lines = [
        f"file:          {report['file']}",
        f"format:        {info.format} ({info.container}), {len(sd)} tensors, dtypes {', '.join(info.dtypes)}",
        f"arch:          {info.arch or 'unknown'}" + (f" (from {info.arch_source})" if info.arch else ""),
        f"parameters:    {info.params:,} ({report['params_m']}M)",
        f"normalisation: {info.normalization} mean {tuple(info.norm_mean)} std {tuple(info.norm_std)}",
        f"hash:          {hash_line}",
    ]
    if info.registry_entry:
        lines.append(f"registry:      {info.registry_entry}")
    if "load" in report:
        lines.append(f"load:          {report['load']}")
    print("\n".join(lines))
    return rc
