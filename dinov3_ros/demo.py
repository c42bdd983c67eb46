"""`make demo`: the full offline pipeline on the shipped default model over the sample bag.

Steps: make (or reuse) the deterministic synthetic sample bag, run ``dinov3-ros process`` on it with the
default model on CPU, write the output bag, an mp4 preview and a contact sheet, print where they are.
``--live`` instead feeds the sample bag through real DDS into the live node (its own process) and
records its outputs to ``<out>/live_outputs`` (MCAP). ``--photos`` runs the same pipeline on real
photographs that ship with scikit-image (no ground truth; the stereo pair shows matches) instead.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

DEFAULT_OUT = Path("out/demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dinov3-ros demo``."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--weights", default="default", help="'default', a checkpoint path or random:<arch>")
    parser.add_argument("--live", action="store_true", help="run the live node over DDS instead")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--bag", type=Path, default=None, help="input bag (default: the synthetic sample bag)"
    )
    parser.add_argument("--frames", type=int, default=None, help="--live: play only the first N images")
    parser.add_argument(
        "--photos", action="store_true", help="run on scikit-image's photographs instead of the sample bag"
    )


#: scikit-image photographs of the ``--photos`` run (the motorcycle stereo pair first: matches)
PHOTOS = ("stereo_motorcycle:0", "stereo_motorcycle:1", "coffee", "chelsea", "astronaut", "rocket")


def photos_folder(out: Path, size: tuple[int, int] = (480, 640)) -> Path:
    """Write :data:`PHOTOS`, centre-cropped to 4:3 and resized to ``size`` (h, w), as numbered PNGs."""
    import cv2
    import numpy as np
    import skimage.data

    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for i, spec in enumerate(PHOTOS):
        name, _, k = spec.partition(":")
        img = getattr(skimage.data, name)()
        img = np.asarray(img[int(k)] if k else img)[..., :3]
        H, W = img.shape[:2]
        ch, cw = (H, H * w // h) if W * h >= H * w else (W * h // w, W)
        y0, x0 = (H - ch) // 2, (W - cw) // 2
        img = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{i:03d}_{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder


def _resolve_weights(weights: str) -> str:
    """Fall back to a random-initialised ViT-S/16 (with a loud note) if the default model is missing."""
    from dinov3_ros.core.spec import WeightsSpec

    if weights != "default":
        return weights
    try:
        WeightsSpec.parse(weights).path()
    except FileNotFoundError as exc:
        print(
            f"demo: NOTE the shipped default model is missing ({exc}); using random:vits16 instead — "
            "outputs show the pipeline working, not a trained model.",
            file=sys.stderr,
        )
        return "random:vits16"
    return weights


def _live(args: argparse.Namespace, bag: Path, out: Path, weights: str, t0: float) -> int:
    """``--live``: the sample bag over DDS into the node; exit 1 with the reason on failure."""
    from dinov3_ros.ros.demo_live import run_live_demo

    def _term(signum: int, _frame: object) -> None:  # run the cleanup (stop the node) on SIGTERM
        raise SystemExit(128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _term) if main_thread else None
    try:
        res = run_live_demo(
            bag,
            out / "live_outputs",
            weights=weights,
            device=args.device,
            max_frames=getattr(args, "frames", None),
        )
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"demo: live run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    print(f"demo: done in {time.perf_counter() - t0:.1f} s ({res.frames} frames through the live node)")
    print(f"demo: live outputs   {res.path.resolve()}  (MCAP; ros2 bag play / Foxglove)")
    for topic, n in sorted(res.counts.items()):
        print(f"demo:   {topic:36s} {n} messages")
    if res.incomplete:
        print(
            f"demo: {len(res.incomplete)} frames without all their outputs: {res.incomplete}", file=sys.stderr
        )
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code."""
    from dinov3_ros.synthetic.sample import ensure_sample_bag

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    photos, given = bool(getattr(args, "photos", False)), getattr(args, "bag", None)
    if photos and (args.live or given is not None):
        print("demo: --photos runs offline on its own images: drop --live / --bag", file=sys.stderr)
        return 2
    if photos:
        bag = photos_folder(out)
    else:
        bag = given if given is not None else ensure_sample_bag()
    print(f"demo: input {bag}")
    weights = _resolve_weights(args.weights)
    if args.live:
        return _live(args, bag, out, weights, t0)
    from dinov3_ros.offline import process

    out_bag = out / "outputs"
    preview = out / "preview.mp4"
    sheet = out / "contact_sheet.png"
    # the sample bag also holds ground-truth depth and instance images: process the camera stream only
    argv = [str(bag)]
    if given is None and not photos:
        argv += ["--topics", "/camera/image_raw/compressed"]
    argv += [
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
