"""`make demo`: the full offline pipeline on the shipped default model over the sample bag.

Steps: make (or reuse) the deterministic synthetic sample bag, run ``dinov3-ros process`` on it with the
default model on CPU, write the output bag, an mp4 preview and a contact sheet, print where they are.
``--live`` instead feeds the sample bag through real DDS into the live node and records its outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path("out/demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dinov3-ros demo``."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--weights", default="default", help="'default', a checkpoint path or random:<arch>")
    parser.add_argument("--live", action="store_true", help="run the live node over DDS instead")
    parser.add_argument("--device", default="cpu")


def _resolve_weights(weights: str) -> str:
    """Fall back to a random-initialised ViT-S/16 (with a loud note) if the default model is missing."""
    if weights != "default":
        return weights
    from dinov3_ros.models.registry import get_entry

    try:
        path = get_entry("default").weights_path()
    except FileNotFoundError as exc:
        print(
            f"demo: NOTE the shipped default model is missing ({exc}); using random:vits16 instead — "
            "outputs show the pipeline working, not a trained model.",
            file=sys.stderr,
        )
        return "random:vits16"
    return "default" if path.exists() else "random:vits16"


def main(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code."""
    from dinov3_ros.synthetic.sample import ensure_sample_bag

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bag = ensure_sample_bag()
    print(f"demo: sample bag {bag}")
    weights = _resolve_weights(args.weights)
    if args.live:
        from dinov3_ros.ros.demo_live import run_live_demo

        result = run_live_demo(bag, out / "live_outputs", weights=weights, device=args.device)
        print(f"demo: live node outputs recorded to {result}")
        return 0
    from dinov3_ros.offline import process

    out_bag = out / "outputs"
    preview = out / "preview.mp4"
    sheet = out / "contact_sheet.png"
    # the sample bag also holds ground-truth depth and instance images: process the camera stream only
    argv = [
        str(bag),
        "--topics",
        "/camera/image_raw/compressed",
        "--out",
        str(out_bag),
        "--weights",
        weights,
        "--device",
        args.device,
        "--outputs",
        "features_pca,depth,points,matches,objects,debug",
        "--resolution",
        "240x320",
        "--overwrite",
        "--preview",
        str(preview),
        "--contact-sheet",
        str(sheet),
    ]
    parser = argparse.ArgumentParser()
    process.add_arguments(parser)
    rc = int(process.main(parser.parse_args(argv)) or 0)
    if rc != 0:
        return rc
    print(f"demo: done in {time.perf_counter() - t0:.1f} s")
    print(f"demo: output bag     {out_bag}")
    print(f"demo: preview video  {preview}")
    print(f"demo: contact sheet  {sheet}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m dinov3_ros.demo", description=__doc__)
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
