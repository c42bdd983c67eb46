"""Fault injection for ``dinov3-ros process``: kills at random points, a full disk, a read-only target.

1. **Kill and resume**: ``--trials`` times, start ``dinov3-ros process`` on a small synthetic bag,
   SIGKILL it after a uniformly random delay (from 0 to 1.1x the uninterrupted run's wall time, so
   kills land in start-up, model loading, processing, checkpointing, finalizing and after the end),
   then run the same command with ``--resume`` until it exits 0. The output (MCAP bytes and
   ``metadata.yaml``) must equal the uninterrupted run's every time, and nothing but the final output
   may remain.
2. **Full disk**: the output on a tmpfs smaller than the output (mounted here when running as root
   with mount rights; else the write boundary is made to raise ENOSPC in-process, and the report says
   so). Expected: exit 1, one clean error line naming the problem, no traceback, nothing under the
   final name.
3. **Read-only target**: the output directory on a read-only tmpfs (same fallback: EROFS raised at
   the write boundary). Expected as above.

Run (CPU, a few minutes on 2 cores)::

    PYTHONPATH=$PWD python benchmarks/offline_faults.py --trials 20 --json benchmarks/results/offline_faults.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness import cpu_name  # benchmarks/ is on the path of a script run from it

ROOT = Path(__file__).resolve().parent.parent
ARGS = [
    "--weights",
    "random:vitt16",
    "--device",
    "cpu",
    "--outputs",
    "features_pca,depth,matches,objects",
    "--batch-size",
    "2",
    "--checkpoint-every",
    "4",
    "--no-progress",
]


def make_bag(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """A small synthetic recording (camera, camera_info, ground-truth depth and masks)."""
    from itertools import islice

    from dinov3_ros.synthetic.generator import SceneGenerator
    from dinov3_ros.synthetic.writers import write_bag

    gen = SceneGenerator(seed=7, width=size[0], height=size[1], frames_per_scene=frames)
    return write_bag(islice(iter(gen), frames), path)


def _cmd(bag: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dinov3_ros.cli", "process", str(bag), "--out", str(out), *ARGS, *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _same(a: Path, b: Path) -> bool:
    files = sorted(p.name for p in a.iterdir())
    if files != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def _phase(out: Path) -> str:
    """Where the kill landed, from what it left."""
    partial = out.with_name(out.name + ".partial")
    if out.exists():
        return "after completion"
    if not partial.exists():
        return "before the output was opened"
    return "during the run (partial output)"


def _opened_at(p: subprocess.Popen, partial: Path, limit_s: float) -> float | None:
    """Seconds until ``partial`` appears (the run has opened its output), ``None`` if the run ends first."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if partial.exists():
            return time.perf_counter() - t0
        if p.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def kill_and_resume(bag: Path, work: Path, trials: int, seed: int) -> dict:
    """SIGKILL at random points then ``--resume``; every result against the uninterrupted run.

    Every fifth kill lands uniformly in start-up (before the output is opened); the others uniformly
    in [0, 1.05 x the processing time] after the output was opened (finalizing included). A run that
    ends before its kill time is redone with a new one, so every trial is a real SIGKILL.
    """
    ref = work / "ref" / "out"
    ref.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(
        _cmd(bag, ref), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t_open = _opened_at(p, ref.with_name("out.partial"), 600.0)
    _, err = p.communicate(timeout=600)
    wall = time.perf_counter() - t0
    if p.returncode != 0 or t_open is None:
        raise SystemExit(f"reference run failed:\n{err}")
    t_proc = wall - t_open
    rng = random.Random(seed)
    rows = []
    finished_first = 0
    for k in range(trials):
        out = work / f"trial{k:02d}" / "out"
        early = k % 5 == 0
        killed = False
        while not killed:  # a run that ends before its kill time is redone with a new time
            shutil.rmtree(out.parent, ignore_errors=True)
            out.parent.mkdir(parents=True)
            p = subprocess.Popen(
                _cmd(bag, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if early:
                wait = delay = rng.uniform(0.0, t_open)
            else:
                opened = _opened_at(p, out.with_name("out.partial"), 600.0) or 0.0
                wait = rng.uniform(0.0, 1.05 * t_proc)
                delay = opened + wait
            try:
                p.wait(timeout=wait)
                finished_first += 1
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                killed = True
        phase = _phase(out)
        resumes = 0
        while True:
            r = _run(_cmd(bag, out, "--resume"))
            resumes += 1
            if r.returncode == 0 or resumes >= 3:
                break
        left = sorted(x.name for x in out.parent.iterdir())
        ok = r.returncode == 0 and out.is_dir() and _same(ref, out) and left == ["out"]
        rows.append(
            {
                "trial": k,
                "kill_after_s": round(delay, 2),
                "killed": killed,
                "phase": phase,
                "resume_exit": r.returncode,
                "identical": ok,
                "left": left,
                "stderr_tail": "" if ok else r.stderr[-800:],
            }
        )
        print(
            f"trial {k:2d}: kill at {delay:5.2f} s, {phase}: {'identical' if ok else 'DIFFERENT'}", flush=True
        )
    phases: dict[str, int] = {}
    for row in rows:
        phases[row["phase"]] = phases.get(row["phase"], 0) + 1
    return {
        "reference_wall_s": round(wall, 2),
        "reference_open_s": round(t_open, 2),
        "phases": phases,
        "runs_that_finished_before_their_kill_time": finished_first,
        "trials": rows,
        "identical": sum(r["identical"] for r in rows),
    }


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[bool]:
    """A tmpfs at ``path`` (``True``), or ``False`` when this process may not mount one."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def _clean_error(r: subprocess.CompletedProcess, out: Path) -> dict:
    """Exit 1, exactly one stderr line and it says error, no traceback, nothing at the final name."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    return {
        "exit": r.returncode,
        "traceback": "Traceback" in r.stderr,
        "stderr_lines": lines[:5],
        "final_name_exists": out.exists(),
        "ok": r.returncode == 1
        and len(lines) == 1
        and "error" in lines[0]
        and "Traceback" not in r.stderr
        and not out.exists(),
    }


_SIMULATE = """
import errno, sys
from dinov3_ros.offline import storage
code = getattr(errno, sys.argv[1])
limit = int(sys.argv[2])
written = [0]
orig = storage.McapStorage.write
def write(self, *a, **k):
    written[0] += 1
    if written[0] > limit:
        raise OSError(code, __import__("os").strerror(code))
    return orig(self, *a, **k)
storage.McapStorage.write = write
from dinov3_ros.cli import main
raise SystemExit(main(sys.argv[3:]))
"""


def disk_faults(bag: Path, work: Path, ref: Path) -> dict:
    """The output on a full disk (then resumed once there is room) and on a read-only file system."""
    ref_bytes = sum(f.stat().st_size for f in ref.iterdir())
    res: dict = {}
    full = work / "full"
    with _tmpfs(full, f"size={max(64 * 1024, ref_bytes // 2)}") as mounted:
        out = full / "out"
        if mounted:
            r = _run(_cmd(bag, out))
        else:
            r = _run([sys.executable, "-c", _SIMULATE, "ENOSPC", "40", *_cmd(bag, out)[3:]])
        res["full_disk"] = {"method": "tmpfs" if mounted else "simulated ENOSPC", **_clean_error(r, out)}
        if mounted:  # room made: --resume finishes with the uninterrupted run's output
            grow = subprocess.run(
                ["mount", "-o", f"remount,size={4 * ref_bytes}", str(full)], capture_output=True
            )
            if grow.returncode == 0:
                r2 = _run(_cmd(bag, out, "--resume"))
                res["full_disk"]["resumed_identical"] = r2.returncode == 0 and _same(ref, out)
        print(f"full disk ({res['full_disk']['method']}): {res['full_disk']}", flush=True)
    ro = work / "ro"
    with _tmpfs(ro, "ro,size=1m") as mounted:
        out = ro / "out"
        if mounted:
            r = _run(_cmd(bag, out))
        else:
            r = _run([sys.executable, "-c", _SIMULATE, "EROFS", "0", *_cmd(bag, out)[3:]])
        res["read_only"] = {
            "method": "read-only tmpfs" if mounted else "simulated EROFS",
            **_clean_error(r, out),
        }
        print(f"read-only target ({res['read_only']['method']}): {res['read_only']}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="kill-and-resume trials")
    ap.add_argument("--frames", type=int, default=64, help="frames of the synthetic bag")
    ap.add_argument("--size", default="160x120", help="WIDTHxHEIGHT of the synthetic bag")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    import torch

    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="offline_faults_") as d:
        work = Path(d)
        bag = make_bag(work / "in", args.frames, (w, h))
        kills = kill_and_resume(bag, work / "kills", args.trials, args.seed)
        ref = work / "kills" / "ref" / "out"
        ref_bytes = sum(f.stat().st_size for f in ref.iterdir())
        disk = disk_faults(bag, work / "disk", ref)
        shutil.rmtree(work / "kills", ignore_errors=True)
    result = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": " ".join(["python", "benchmarks/offline_faults.py", *sys.argv[1:]]),
        "bag": f"{args.frames} frames {args.size}",
        "process_args": ARGS,
        "output_bytes": ref_bytes,
        "kill_and_resume": kills,
        **disk,
    }
    ok = kills["identical"] == args.trials and disk["full_disk"]["ok"] and disk["read_only"]["ok"]
    ok = ok and disk["full_disk"].get("resumed_identical", True)
    print(
        f"{kills['identical']}/{args.trials} kill+resume identical; full disk "
        f"{'ok' if disk['full_disk']['ok'] else 'FAILED'}; read-only {'ok' if disk['read_only']['ok'] else 'FAILED'}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
