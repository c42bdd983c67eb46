"""`dinov3-ros synth`: render synthetic scenes to a rosbag2 (mcap), a video file or an image folder."""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)`` (width, height)."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like WIDTHxHEIGHT (e.g. 640x480), got {text!r}"
        ) from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size too small: {text!r}")
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output bag directory, video file (.mp4/.avi) or folder")
    parser.add_argument(
        "--format",
        choices=("bag", "video", "folder"),
        default="bag",
        help="bag: rosbag2 (MCAP) with images, camera_info, depth, masks, poses; video; image folder",
    )
    parser.add_argument("--frames", type=int, default=48, help="number of frames to write (default 48)")
    parser.add_argument(
        "--frames-per-scene",
        type=int,
        default=None,
        help="frames before a new scene starts (default: all in one scene)",
    )
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (same seed, same frames)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of stamps / video")
    parser.add_argument(
        "--compressed", action="store_true", help="bag: JPEG CompressedImage instead of raw rgb8"
    )
    parser.add_argument(
        "--depth-encoding", choices=("32FC1", "16UC1"), default="32FC1", help="bag depth encoding"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--jpeg-quality", type=int, default=None, help="folder format: store RGB as JPEG of this quality"
    )


def main(args: argparse.Namespace) -> int:
    from dinov3_ros.synthetic.generator import SceneGenerator
    from dinov3_ros.synthetic.writers import write_bag, write_folder, write_video

    if args.frames < 1:
        print("dinov3-ros synth: --frames must be >= 1", file=sys.stderr)
        return 2
    w, h = args.size
    per_scene = args.frames_per_scene or args.frames
    gen = SceneGenerator(seed=args.seed, width=w, height=h, frames_per_scene=per_scene, frame_rate=args.fps)
    frames = islice(iter(gen), args.frames)
    t0 = time.perf_counter()
    try:
        if args.format == "bag":
            out = write_bag(
                frames,
                args.out,
                compressed=args.compressed,
                depth_encoding=args.depth_encoding,
                frame_rate=args.fps,
                overwrite=args.overwrite,
            )
        elif args.format == "video":
            out = write_video(frames, args.out, fps=args.fps, overwrite=args.overwrite)
        else:
            out = write_folder(
                frames,
                args.out,
                frame_rate=args.fps,
                overwrite=args.overwrite,
                jpeg_quality=args.jpeg_quality,
            )
    except (FileExistsError, ValueError, RuntimeError) as e:
        print(f"dinov3-ros synth: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    print(f"wrote {args.frames} frames {w}x{h} ({args.format}) to {out} in {dt:.1f} s")
    return 0
