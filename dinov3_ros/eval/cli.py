"""`dinov3-ros eval`: depth, correspondence, TokenCut and class-probe metrics on synthetic ground truth.

Example::

    dinov3-ros eval --weights default --weights random:vits16 --data synthetic --out runs/eval

writes ``runs/eval/eval.json`` (all metrics per model) and ``runs/eval/eval.png`` (the report).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dinov3_ros.synthetic.cli import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        action="append",
        required=True,
        help="default | random:ARCH (official init) | random-ls1:ARCH (LayerScale 1.0) | pixels | colorhist "
        "(no-network floors) | PATH to weights | oracle | noise:DIM; repeat to compare",
    )
    parser.add_argument(
        "--data", default="synthetic", help="synthetic | synthetic:SEED | synthetic image folder"
    )
    parser.add_argument("--out", default="eval_out", help="output directory (eval.json, eval.png)")
    parser.add_argument("--size", type=parse_size, default=(224, 224), help="WIDTHxHEIGHT, multiples of 16")
    parser.add_argument("--train-scenes", type=int, default=12, help="scenes the probes are fitted on")
    parser.add_argument(
        "--test-scenes", type=int, default=16, help="held-out scenes the metrics are computed on"
    )
    parser.add_argument("--frames-per-scene", type=int, default=8, help="views rendered per scene")
    parser.add_argument("--pair-gap", type=int, default=3, help="frames between the two views of a pair")
    parser.add_argument(
        "--probe-scenes",
        type=int,
        nargs=2,
        default=(400, 200),
        metavar=("TRAIN", "TEST"),
        help="single-view scenes for the class probe",
    )
    parser.add_argument(
        "--crop-size", type=int, default=224, help="side of the class probe's object crops, in pixels"
    )
    parser.add_argument(
        "--tasks",
        default="depth,correspondence,tokencut,probe",
        help="comma list of depth, correspondence, tokencut, probe",
    )
    parser.add_argument("--depth-head", default=None, help="trained depth head file (else a ridge probe)")
    parser.add_argument(
        "--objects-head", default=None, help="objects head file: TokenCut on its projection of the tokens"
    )
    parser.add_argument(
        "--mask-refine",
        default="none",
        choices=("none", "guided"),
        help="TokenCut masks as patch blocks (published protocol) or with edges moved to the image's "
        "(the pipeline's default)",
    )
    parser.add_argument(
        "--matcher",
        choices=("heads", "heads-features", "heads-inliers", "dense"),
        default="heads",
        help="correspondences: the pipeline's matcher (heads: features, then refined with the images), "
        "the same without the images (heads-features), only the matches it flags as inliers "
        "(heads-inliers) or dense nearest neighbours",
    )
    parser.add_argument(
        "--match-unrefined",
        choices=("keep", "drop"),
        default=None,
        help="heads matchers: the node's pipeline.match_unrefined (default: the node's default, drop)",
    )
    parser.add_argument("--tau", type=float, default=0.2, help="TokenCut graph threshold")
    parser.add_argument("--arch", default=None, help="arch of a weights file when it cannot be inferred")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered scenes")


@contextlib.contextmanager
def _ticker(label: str, every_s: float = 10.0) -> Iterator[None]:
    """Print the elapsed time every ``every_s`` seconds while the block runs (evaluations take minutes)."""
    done = threading.Event()
    t0 = time.perf_counter()

    def tick() -> None:
        while not done.wait(every_s):
            print(f"{label}: {time.perf_counter() - t0:.0f} s ...", flush=True)

    th = threading.Thread(target=tick, name="eval-progress", daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()


def main(args: argparse.Namespace) -> int:
    from dinov3_ros.eval.baselines import resolve_model
    from dinov3_ros.eval.data import load_data
    from dinov3_ros.eval.report import write_report
    from dinov3_ros.eval.runner import ORACLE, EvalOptions, evaluate
    from dinov3_ros.synthetic.writers import atomic_path

    w, h = args.size
    if w % 16 or h % 16:
        print(f"dinov3-ros eval: --size {w}x{h} must be multiples of 16", file=sys.stderr)
        return 2
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    opts = EvalOptions(
        tasks=tasks,
        tau=args.tau,
        depth_head=args.depth_head,
        objects_head=args.objects_head,
        mask_refine=args.mask_refine,
        seed=args.seed,
        device=args.device,
        matcher=args.matcher,
        match_unrefined=args.match_unrefined,
        crop_size=args.crop_size,
    )
    try:
        t0 = time.perf_counter()
        data = (
            load_data(
                args.data,
                size=(w, h),
                train_scenes=args.train_scenes,
                test_scenes=args.test_scenes,
                frames_per_scene=args.frames_per_scene,
                pair_gap=args.pair_gap,
                probe_scenes=tuple(args.probe_scenes) if "probe" in tasks else (0, 0),
            )
            if args.data.startswith("synthetic")
            else load_data(args.data, pair_gap=args.pair_gap)
        )
        print(
            f"data: {data.source}: {len(data.train)} train / {len(data.test)} test frames "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        results, examples = [], []
        for spec in args.weights:
            print(f"\n[{len(results) + 1}/{len(args.weights)}] evaluating {spec} ...", flush=True)
            model = ORACLE if spec == ORACLE else resolve_model(spec, args.device, args.seed, args.arch)
            t0 = time.perf_counter()
            with _ticker(f"  {spec}"):
                res, ex = evaluate(model, data, opts)
            res["weights"] = spec
            res["total_s"] = time.perf_counter() - t0
            results.append(res)
            examples.append(ex)
            print(f"\n{res['model']}  ({res['total_s']:.1f} s)")
            for k, v in res["summary"].items():
                ci = res["summary_ci95"].get(k)
                print(f"  {k:32s} {v:.4f}" + (f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"dinov3-ros eval: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "eval.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"results": results}, indent=1, default=float))
    write_report(out / "eval.png", results, examples)
    print(f"\nwrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0
