"""``dinov3-ros process INPUT... --out OUTPUT``: the node's pipeline over recorded data, deterministically.

Inputs: rosbag2 directories or ``.mcap``/``.db3`` files, ROS 1 ``.bag`` files, videos (mp4/avi/mkv),
image folders; several inputs or a glob (quote it) make ``--out`` a directory with one output bag per
input. Under ``torchrun`` each rank processes its deterministic share (``RANK``/``WORLD_SIZE``) on
GPU ``LOCAL_RANK``; outputs are identical to a serial run.

Output: a rosbag2 directory (MCAP by default, ``--storage sqlite3``) with the node's output topics
(``<prefix>/features/pca``, ``<prefix>/depth``, ...; :mod:`.emit`) built by ``dinov3_ros.msgs``,
stamped with the input header stamps and log times; ``--copy-input`` copies the input topics too.

Safety and exit codes:

- the input is only ever opened read-only;
- an existing output is refused (exit 1) unless ``--overwrite``;
- the output is written inside ``OUTPUT.partial/`` and renamed to ``OUTPUT`` when complete;
- Ctrl-C / SIGTERM / kill leaves ``OUTPUT.partial/`` (exit 130): ``--resume`` continues from the last
  checkpoint (every ``--checkpoint-every`` frames) and produces exactly the uninterrupted output;
- corrupt or truncated input: everything readable before the damage is processed and written, the
  error names file, topic and offset/timestamp, the output is closed as a valid bag
  ``OUTPUT.partial/<name>`` flagged ``dinov3_ros.complete: "false"`` in its metadata, exit code 3;
- undecodable single frames are skipped and counted (listed in the summary); ``--strict`` makes the
  first one fatal (exit 3 as above).
"""

from __future__ import annotations

import argparse
import errno
import glob
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dinov3_ros.cliargs import (
    check_output_path,
    did_you_mean,
    finite_float,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    thread_count,
)
from dinov3_ros.core.spec import (
    WeightsSpec,
    add_model_arguments,
    file_sha256,
    model_spec_from_args,
    parse_resolution,
)

from .bagout import OutputBag, OutputExistsError, ResumeError, partial_dir
from .shard import my_share, rank_world
from .sources import Calibration, InputCorruptError, InputError, calibration_from_yaml

EXIT_OK, EXIT_ERROR, EXIT_CORRUPT, EXIT_INTERRUPTED = 0, 1, 3, 130
DEFAULT_OUTPUTS = "features_pca,depth"
#: errors that end one input's run with a message (the other inputs still run)
_INPUT_ERRORS = (InputError, OutputExistsError, ResumeError, InputCorruptError, ValueError, OSError)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dinov3-ros process``."""
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="bag dir/.mcap/.db3/.bag, video, image folder or glob"
    )
    p.add_argument(
        "--out", required=True, help="output rosbag2 directory (a directory of outputs for many inputs)"
    )
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output storage plugin")
    p.add_argument(
        "--outputs",
        default=DEFAULT_OUTPUTS,
        help="comma list of outputs (names as the node's outputs.<name> parameters: features, "
        "features_pca, depth, depth_points, points, matches, objects, debug, ...) or 'all' "
        f"(default {DEFAULT_OUTPUTS})",
    )
    p.add_argument(
        "--topics",
        nargs="+",
        default=None,
        help="image topics to process, in this order (default: every camera image topic: colour or "
        "mono8 Image and CompressedImage; never depth, masks or float images)",
    )
    p.add_argument("--prefix", default="/dinov3", help="output topic namespace (like the node's ~)")
    p.add_argument("--copy-input", action="store_true", help="also copy the input topics (raw, same QoS)")
    g = add_model_arguments(p, device_default="auto")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any PipelineConfig setting (repeatable), e.g. --set depth_resolution=network",
    )
    _add_execution_arguments(p.add_argument_group("execution"))
    _add_source_arguments(p.add_argument_group("videos and image folders"))
    o = p.add_argument_group("previews")
    o.add_argument(
        "--preview",
        default=None,
        metavar="FILE.mp4",
        help="video of the first processed topic: the input beside each output (H.264 or VP9 where "
        "OpenCV has the encoder, else MPEG-4)",
    )
    o.add_argument(
        "--contact-sheet",
        default=None,
        metavar="FILE.png",
        help="image of evenly spaced frames of the first processed topic, one row per frame",
    )
    o.add_argument("--contact-frames", type=positive_int, default=6, help="rows of the contact sheet")


def _add_execution_arguments(e: Any) -> None:
    e.add_argument("--batch-size", type=positive_int, default=8, help="frames per engine call")
    e.add_argument(
        "--reader",
        default="auto",
        choices=("auto", "thread", "process"),
        help="read and decode in this process's threads or in a child process (frames handed over in "
        "shared memory, so they hold no interpreter lock here); auto = thread (the faster of the two on "
        "a 16-core CUDA host)",
    )
    e.add_argument(
        "--decode-workers",
        type=positive_int,
        default=max(1, min(8, (os.cpu_count() or 2) - 1)),
        help="threads decoding input images",
    )
    e.add_argument(
        "--cv-threads",
        type=thread_count,
        default=-1,
        help="cv2.setNumThreads for the run (-1 = auto: 1 when the model runs on CUDA, where each decode "
        "worker already keeps a core busy, else OpenCV's default)",
    )
    e.add_argument(
        "--torch-threads",
        type=thread_count,
        default=-1,
        help="torch.set_num_threads for the run (-1 = auto: 1 when the model runs on CUDA, where host-side "
        "torch work is only copies, else torch's default; 0 = torch's default)",
    )
    e.add_argument(
        "--build-workers",
        type=positive_int,
        default=max(2, min(6, (os.cpu_count() or 2) // 3)),
        help="threads building + serialising output messages",
    )
    e.add_argument(
        "--checkpoint-every",
        type=nonnegative_int,
        default=256,
        help="frames between resume points (0 = none)",
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.add_argument(
        "--resume", action="store_true", help="continue an interrupted run (skip finished outputs)"
    )
    e.add_argument("--strict", action="store_true", help="stop at the first undecodable frame")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--verbose", action="store_true", help="also print the time per stage of each run")


def _add_source_arguments(v: Any) -> None:
    v.add_argument(
        "--fps",
        type=nonnegative_float,
        default=0.0,
        help="frame rate for stamps (default: the video's; folders 30)",
    )
    v.add_argument(
        "--topic", default="/camera/image_raw", help="input topic name given to video/folder frames"
    )
    v.add_argument("--frame-id", default="camera_optical_frame", help="frame_id of video/folder frames")
    v.add_argument(
        "--camera-info", default=None, help="camera_info / calibration YAML for videos and folders"
    )
    for k, what in (
        ("fx", "focal length x"),
        ("fy", "focal length y"),
        ("cx", "principal point x"),
        ("cy", "principal point y"),
    ):
        v.add_argument(
            f"--{k}", type=finite_float, default=None, help=f"{what} in pixels (videos and folders)"
        )


# ------------------------------------------------------------------------------------------ helpers


def _expand(items: list[str]) -> tuple[list[Path], bool]:
    out: list[Path] = []
    globbed = False
    for s in items:
        if any(c in s for c in "*?["):
            globbed = True
            hits = sorted(glob.glob(s))
            if not hits:
                raise InputError(f"glob {s!r} matches nothing")
            out.extend(Path(h) for h in hits)
        else:
            out.append(Path(s))
    seen: dict[str, Path] = {}
    for p in out:
        seen.setdefault(str(p.resolve()), p)
    return list(seen.values()), globbed


def output_names(inputs: list[Path]) -> list[str]:
    """One distinct output name per input: the file stem / dir name, or its path when stems collide."""

    def stem(p: Path) -> str:
        return p.name if p.is_dir() else p.stem

    names = [stem(p) for p in inputs]
    if len(set(names)) == len(names):
        return names
    res = [str(p.resolve()) for p in inputs]
    common = os.path.commonpath(res) if len(res) > 1 else str(Path(res[0]).parent)
    out = []
    for p, r in zip(inputs, res):
        rel = Path(os.path.relpath(r, common))
        parts = [*rel.parts[:-1], stem(p)]
        out.append("__".join(parts))
    if len(set(out)) != len(out):
        raise InputError("inputs map to the same output name; rename or process them separately")
    return out


def _calibration(args: argparse.Namespace) -> Calibration | None:
    if args.camera_info:
        cal = calibration_from_yaml(args.camera_info)
    else:
        vals = [args.fx, args.fy, args.cx, args.cy]
        if all(v is None for v in vals):
            return None
        if any(v is None for v in vals):
            raise InputError("give all of --fx --fy --cx --cy (or --camera-info FILE.yaml)")
        cal = Calibration.pinhole(*(float(v) for v in vals))
    try:
        cal.for_image(cal.width or 2, cal.height or 2)
    except ValueError as exc:
        raise InputError(f"camera intrinsics: {exc}") from None
    return cal


def _load(load_model: Any, args: argparse.Namespace, device: str, config: Any) -> tuple[Any, Any]:
    """The model and the config it runs at: a resolution given (``--resolution`` or ``--set
    resolution=``) must fit the model; without one, a fixed-size ONNX/plan sets it."""
    given = bool(args.resolution) or any(kv.split("=", 1)[0].strip() == "resolution" for kv in args.set)
    spec = model_spec_from_args(args, device, None)
    if given or spec.backend == "torch":  # torch runs at any size: the config's
        spec = model_spec_from_args(args, device, tuple(config.resolution))
    model = load_model(spec)
    if not given and model.input_size is not None:
        config = config.with_updates(resolution=tuple(model.input_size))
    return model, config


def _config(args: argparse.Namespace) -> Any:
    from dinov3_ros.core.config import PipelineConfig, parse_settings

    changes = parse_settings(args.set)
    if args.resolution:
        changes["resolution"] = parse_resolution(args.resolution)
    return PipelineConfig().with_updates(**changes)


def _outputs(spec: str) -> frozenset[str]:
    from dinov3_ros.pipeline.outputs import OUTPUTS

    if spec.strip() == "all":
        return frozenset(OUTPUTS)
    outs = {s.strip() for s in spec.split(",") if s.strip()}
    bad = sorted(outs - set(OUTPUTS))
    if bad or not outs:
        hints = "".join(did_you_mean(b, OUTPUTS) for b in bad[:1])
        raise ValueError(f"unknown output(s) {bad or spec!r}{hints}; choose from all, {', '.join(OUTPUTS)}")
    return frozenset(outs)


def _device(spec: str, local_rank: int) -> str:
    import torch

    if spec == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{local_rank}"
    return spec


def _file_id(p: Path) -> dict[str, Any]:
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return {
        "path": str(p.resolve()),
        "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }


def _weights_id(args: argparse.Namespace) -> dict[str, Any]:
    """The model by content: a renamed file resumes, a replaced one at the same path does not."""
    ws = WeightsSpec.parse(args.weights)
    head = ws.depth_head(args.depth_head or "none")
    objects = ws.objects_head(args.objects_head or "none")
    return {
        "weights": ws.content_hash(),
        "depth_head": file_sha256(head) if head not in (None, "random") else str(head),
        "objects_head": file_sha256(objects) if objects is not None else "none",
    }


def fingerprint(args: argparse.Namespace, inp: Path, config: Any, outputs: frozenset[str]) -> dict[str, Any]:
    """What must match for ``--resume`` to continue a partial run."""
    from dataclasses import asdict

    return {
        "input": _file_id(inp),
        "outputs": sorted(outputs),
        "topics": args.topics,
        "prefix": args.prefix,
        "copy_input": bool(args.copy_input),
        "model": _weights_id(args),
        "backend": args.backend,
        "precision": args.precision,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "batch_size": args.batch_size,
        "checkpoint_every": args.checkpoint_every,
        "storage": args.storage,
        "fps": args.fps,
        "topic": args.topic,
        "frame_id": args.frame_id,
        "intrinsics": [args.fx, args.fy, args.cx, args.cy, args.camera_info],
        "strict": bool(args.strict),
    }


def _sibling(path: str | None, name: str, multi: bool) -> Path | None:
    if not path:
        return None
    p = Path(path)
    return p.with_name(f"{p.stem}-{name}{p.suffix}") if multi else p


def _total_frames(source: Any) -> int | None:
    try:
        if hasattr(source, "_conns"):
            return sum(c.msgcount for c in source._conns if c.topic in source.image_topics) or None
        if hasattr(source, "declared"):
            return source.declared or None
        if hasattr(source, "files"):
            return len(source.files)
    except (AttributeError, TypeError):
        return None
    return None


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------------------ main


class _Previews:
    """``--preview`` / ``--contact-sheet`` of one input: the first processed topic's frames as tiles.

    A preview that cannot be written (encoder, disk, no frame of that topic) does not stop the run: it
    is reported by :meth:`close` and makes the exit code an error.
    """

    def __init__(
        self, args: argparse.Namespace, out: Path, multi: bool, source: Any, total: int | None
    ) -> None:
        from .preview import ContactSheet, PreviewVideo

        preview_path = _sibling(args.preview, out.name, multi)
        sheet_path = _sibling(args.contact_sheet, out.name, multi)
        fps = getattr(source, "fps", 0.0) or 10.0
        self.topic = source.image_topics[0]
        share = _topic_frames(source, self.topic) or total
        self.parts: list[Any] = [PreviewVideo(preview_path, fps=fps)] if preview_path else []
        self.parts += [ContactSheet(sheet_path, share, args.contact_frames)] if sheet_path else []
        self.errors: dict[int, str] = {}

    def on_frame(self, fo: Any, rgb: Any, m: Any) -> None:
        if m.topic != self.topic:
            return
        for k, pv in enumerate(self.parts):
            if k in self.errors:
                continue
            try:
                pv.add(fo, rgb, f"{m.topic} {m.log_ns / 1e9:.3f}s")
            except (OSError, ValueError, RuntimeError) as err:
                self.errors[k] = f"{type(err).__name__}: {err}"

    def close(self, ok: bool) -> list[str]:
        """Finish the files; returns one error line per requested preview that was not written."""
        errors = []
        for k, pv in enumerate(self.parts):
            try:
                written = pv.close(ok=ok and k not in self.errors)
            except (OSError, ValueError, RuntimeError) as err:
                self.errors.setdefault(k, f"{type(err).__name__}: {err}")
                written = None
            if not ok:
                continue
            if k in self.errors or written is None:
                why = self.errors.get(k, f"no frame of {self.topic} was processed")
                errors.append(f"{pv.path} not written: {why}")
        return errors

    def notes(self) -> list[str]:
        out = []
        for k, pv in enumerate(self.parts):
            if k not in self.errors and pv.path.exists():
                out.append(f"{pv.kind}: {pv.path} ({pv.describe()})")
        return out


def _topic_frames(source: Any, topic: str) -> int | None:
    try:
        return sum(c.msgcount for c in source._conns if c.topic == topic) or None
    except (AttributeError, TypeError):
        return None


def _topic_notes(source: Any) -> list[str]:
    notes = [f"processed: {', '.join(source.image_topics)}"]
    skipped = getattr(source, "skipped_topics", {})
    if skipped:
        left = "; ".join(f"{t} ({why})" for t, why in skipped.items())
        notes.append(f"not processed (--topics selects them): {left}")
    return notes


def _run_options(
    args: argparse.Namespace, outputs: frozenset[str], label: str, device: str, source_args: dict
) -> Any:
    from .execute import RunOptions

    process = args.reader == "process"
    return RunOptions(
        outputs=outputs,
        batch_size=max(1, args.batch_size),
        decode_workers=max(1, args.decode_workers),
        build_workers=max(1, args.build_workers),
        queue_frames=max(16, 4 * args.batch_size),
        checkpoint_every=args.checkpoint_every,
        copy_input=args.copy_input,
        strict=args.strict,
        progress=not args.no_progress,
        label=label,
        reader_process=process,
        source_args=source_args,
    )


def _abandoned(err: BaseException, inp: Path, out: Path) -> tuple[int, str]:
    """Exit code and message of a run stopped by an error or an interrupt (its partial run is kept)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return EXIT_ERROR, (
            f"{inp}: error: cannot write the output ({err.strerror or err}); the unfinished run is kept "
            f"in {partial_dir(out)}: make room (or make it writable), then rerun the same command with "
            "--resume to continue"
        )
    if not isinstance(err, KeyboardInterrupt):
        return EXIT_ERROR, (
            f"{inp}: {type(err).__name__}: {err}; the unfinished run is kept in "
            f"{partial_dir(out)} (--resume continues from its last checkpoint)"
        )
    return EXIT_INTERRUPTED, (
        f"{inp}: interrupted; the unfinished run is kept in {partial_dir(out)}; "
        f"rerun the same command with --resume to continue"
    )


def _finalized(
    args: argparse.Namespace,
    inp: Path,
    bag: OutputBag,
    summary: Any,
    outputs: frozenset[str],
    preview_errors: list[str],
) -> tuple[int, str]:
    """Close the bag: renamed to OUT when complete, kept (flagged incomplete) for damaged input."""
    custom = {
        "dinov3_ros.input": inp.name,
        "dinov3_ros.outputs": ",".join(sorted(outputs)),
        "dinov3_ros.weights": str(args.weights),
        "dinov3_ros.frames": str(summary.frames),
        "dinov3_ros.undecodable": str(summary.undecodable),
    }
    if summary.complete:
        summary.output = str(bag.finalize(custom))
        text = summary.text(args.verbose)
        if preview_errors:
            text += "".join(f"\n  error: {e}" for e in preview_errors)
            return EXIT_ERROR, text
        return EXIT_OK, text
    summary.output = str(bag.finalize_partial(summary.error or "incomplete", custom))
    return EXIT_CORRUPT, summary.text(args.verbose)


def _check_copy_input(args: argparse.Namespace, source: Any, inp: Path) -> None:
    if args.copy_input and getattr(source, "ros1", False):
        raise InputError(
            f"{inp}: --copy-input cannot copy ROS 1 messages into a ROS 2 bag (their layouts differ); "
            "convert the bag with rosbags-convert first, or process it without --copy-input"
        )


def process_one(
    args: argparse.Namespace,
    inp: Path,
    out: Path,
    model: Any,
    config: Any,
    outputs: frozenset[str],
    device: str,
    multi: bool,
    calibration: Calibration | None,
    label: str = "",
    summaries: list[Any] | None = None,
) -> tuple[int, str]:
    """Process one input to one output; returns ``(exit code, summary text)``.

    ``summaries`` (optional) receives the run's :class:`~.execute.Summary` (stage timings included).
    """
    from dinov3_ros.pipeline.pipeline import Pipeline

    from .emit import MsgEmitter
    from .execute import run_source
    from .sources import open_source

    source_args = {"path": inp, "topics": args.topics, "calibration": calibration, "fps": args.fps}
    source_args.update(frame_id=args.frame_id, topic=args.topic)
    source = open_source(**source_args)
    pipeline = None
    try:
        _check_copy_input(args, source, inp)
        pipeline = Pipeline.from_model(model, config, device=device)
        emitter = MsgEmitter(source, config, args.prefix)
        fp = fingerprint(args, inp, config, outputs)
        bag = OutputBag(
            out,
            storage=args.storage,
            overwrite=args.overwrite,
            resume=args.resume,
            fingerprint=fp,
            resolve_conn=emitter.resolve,
        )
        cp = bag.open()
        bag.resume_checkpoint = cp  # type: ignore[attr-defined]
        total = _total_frames(source)
        previews = _Previews(args, out, multi, source, total)
        if cp and previews.parts:
            print(
                f"note: resumed run; previews cover frames after {cp.get('frames_seen', 0)} only",
                file=sys.stderr,
            )
        on_frame = previews.on_frame if previews.parts else None
        try:
            summary = run_source(
                source,
                bag,
                pipeline,
                emitter,
                _run_options(args, outputs, label, device, source_args),
                on_frame=on_frame,
                total=total,
            )
        except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - keep the run resumable
            bag.abandon()
            previews.close(ok=False)
            return _abandoned(err, inp, out)
        if summaries is not None:
            summaries.append(summary)
        preview_errors = previews.close(ok=True)
        summary.notes = _topic_notes(source) + previews.notes()
        return _finalized(args, inp, bag, summary, outputs, preview_errors)
    finally:
        source.close()
        if pipeline is not None:
            pipeline.close()


def _check_previews(args: argparse.Namespace, inputs: list[Path]) -> None:
    """Refuse a preview or contact sheet path that cannot be written or names an input (it would be
    replaced)."""
    ins = {p.resolve() for p in inputs}
    for opt, path in (("--preview", args.preview), ("--contact-sheet", args.contact_sheet)):
        if path:
            check_output_path(path, is_file=True)
        if path and Path(path).resolve() in ins:
            raise InputError(f"{opt} {path} is an input; choose another file name")


def _check_writable(out: Path) -> None:
    """Refuse an output whose existing parent directory cannot be written (before any model loads)."""
    parent = out.resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise InputError(
            f"cannot write the output {out}: {parent} is not writable (read-only or no permission)"
        )


def apply_thread_settings(args: argparse.Namespace, device: str = "cpu") -> None:
    """Process-wide thread settings of the tool (``--cv-threads``, ``--torch-threads``).

    With the model on CUDA both libraries' own thread pools default to one thread: the decode workers
    already run one image per thread on every core, and a parallel copy or resize that waits for pool
    threads competing with them for the cores stalls.
    """
    on_cuda = str(device).startswith("cuda")
    cv_n = args.cv_threads if args.cv_threads >= 0 else (1 if on_cuda else -1)
    if cv_n >= 0:
        import cv2

        cv2.setNumThreads(int(cv_n))
    torch_n = args.torch_threads if args.torch_threads >= 0 else (1 if on_cuda else 0)
    if torch_n > 0:
        import torch

        torch.set_num_threads(int(torch_n))


def main(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3-ros process``."""
    t0 = time.perf_counter()
    try:
        inputs, globbed = _expand(args.inputs)
        multi = len(inputs) > 1 or globbed
        outputs = _outputs(args.outputs)
        config = _config(args)
        calibration = _calibration(args)
        rank, world, local = rank_world()
        outdir = Path(args.out)
        names = output_names(inputs)
        pairs = [(i, outdir / n if multi else outdir) for i, n in zip(inputs, names)]
        if not multi and world > 1 and rank > 0:
            print(f"rank {rank}: single input, nothing to do (rank 0 processes it)", file=sys.stderr)
            return EXIT_OK
        mine_inputs = my_share([p for p, _ in pairs], rank, world) if multi else [inputs[0]]
        mine = [(i, o) for i, o in pairs if i in mine_inputs]
        for inp, _o in mine:
            if not inp.exists():
                raise InputError(f"input {inp} does not exist")
        _check_previews(args, inputs)
        todo = []
        for inp, out in mine:  # refuse before loading any model
            if args.resume and out.exists() and not partial_dir(out).exists() and not args.overwrite:
                print(f"{inp}: output {out} is already complete; skipped (--resume)", file=sys.stderr)
                continue
            check_output_path(out, is_file=False)
            OutputBag(out, overwrite=args.overwrite, resume=args.resume).check_target()
            _check_writable(out)
            todo.append((inp, out))
    except (InputError, OutputExistsError, ValueError, InputCorruptError) as err:
        print(f"dinov3-ros process: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    if not todo:
        return EXIT_OK
    from dinov3_ros.pipeline.model import ModelLoadError, load_model

    device = _device(args.device, local)
    apply_thread_settings(args, device)
    try:
        model, config = _load(load_model, args, device, config)
    except (ModelLoadError, ValueError) as err:
        print(f"dinov3-ros process: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    old = signal.signal(signal.SIGTERM, _on_term) if hasattr(signal, "SIGTERM") else None
    code = EXIT_OK
    try:
        for k, (inp, out) in enumerate(todo):
            label = f"[{k + 1}/{len(todo)}] {inp.name}" + (f" rank {rank}" if world > 1 else "")
            try:
                rc, text = process_one(
                    args, inp, out, model, config, outputs, device, multi, calibration, label
                )
            except _INPUT_ERRORS as err:
                rc, text = (
                    EXIT_ERROR if not isinstance(err, InputCorruptError) else EXIT_CORRUPT,
                    f"{inp}: {err}",
                )
            except OSError as err:  # the output's file system: full, read-only, no permission
                where = f" ({err.filename})" if err.filename else ""
                rc, text = (
                    EXIT_ERROR,
                    f"{inp}: error: cannot write the output {out}: {err.strerror or err}{where}",
                )
            print(text, file=sys.stderr)
            if rc == EXIT_INTERRUPTED:
                return rc
            code = max(code, rc)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if len(todo) > 1:
        print(
            f"{len(todo)} inputs in {time.perf_counter() - t0:.1f} s"
            + (f" (rank {rank}/{world})" if world > 1 else ""),
            file=sys.stderr,
        )
    return code
