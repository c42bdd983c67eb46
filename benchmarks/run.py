"""Benchmark harness: named configurations, each a list of steps; exits non-zero when any step fails.

    python benchmarks/run.py --list
    python benchmarks/run.py cuda-tests                 # every CUDA test (pytest, marked gpu/tensorrt/...)
    python benchmarks/run.py offline node --copy-to $OUT

Each benchmark writes ``benchmarks/results/<bench>-<device>-<torch>.json`` (``harness.result_path``);
step logs go to ``out/bench/<config>/<step>.log``. ``--wheels DIR`` first installs the wheels in DIR
(packages a GPU machine lacks, e.g. rosbags for the offline benchmark) into a private directory put
on the steps' ``PYTHONPATH``. ``--copy-to DIR`` copies the result files the run wrote into DIR.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CUDA_MARKERS = ("gpu", "tensorrt", "multigpu", "timm")


@dataclass(frozen=True)
class Step:
    name: str
    cmd: tuple[str, ...]
    timeout_s: int


def cuda_test_files() -> list[str]:
    """Test files with a test marked for CUDA/TensorRT/multi-GPU/timm (the allowed skips on CPU)."""
    pat = re.compile(r"mark\.(" + "|".join(CUDA_MARKERS) + r")\b")
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if pat.search(p.read_text())
    )


def _bench(script: str, *args: str) -> tuple[str, ...]:
    return (PY, f"benchmarks/{script}", *args)


OFFLINE_GPU = (
    "--device", "cuda", "--precision", "fp16", "--resolution", "448x448", "--batch-size", "32",
    "--weights", "random:vits16,random:vitb16,random:vitl16", "--frames", "6144",
    "--where", "tmpfs=/dev/shm/bench_offline,disk=out/bench_offline",
)  # fmt: skip
NODE_GPU = (
    "--device",
    "cuda",
    "--precision",
    "fp16",
    "--weights",
    "random:vits16",
    "--resolution",
    "480x640",
)
BAG_WRITE = ("--where", "tmpfs=/dev/shm/bench_bag_write,disk=out/bench_bag_write", "--frames", "2048")
BACKBONE_PLAN = (
    "vitb16:timm:eager:bf16,vitb16:ours:compiledef+cudagraphs+gelu:bf16,vitb16:timm:eager:fp16,"
    "vitb16:hf:eager:bf16,vitb16:ours:compiledef+cudagraphs+gelu:fp16,vits16:timm:eager:bf16,"
    "vits16:timm:eager:fp16,vits16:hf:eager:bf16,vits16:ours:cudagraphs:bf16,"
    "vits16:ours:compiledef+cudagraphs+gelu:fp16"
)


def configs() -> dict[str, list[Step]]:
    """Every named configuration (see ``--list``)."""
    return {
        "cuda-tests": [
            Step(
                "cuda_tests",
                (
                    PY,
                    "-m",
                    "pytest",
                    "-q",
                    "-rs",
                    "-p",
                    "no:cacheprovider",
                    "-m",
                    " or ".join(CUDA_MARKERS),
                    *cuda_test_files(),
                ),
                600,
            )
        ],
        "offline": [Step("offline", _bench("bench_offline.py", *OFFLINE_GPU), 560)],
        "node": [Step("node", _bench("bench_node.py", *NODE_GPU, "--seconds", "20"), 240)],
        "backbones": [
            Step(
                "backbones",
                _bench(
                    "bench_gpu_backbones.py", "--device", "cuda", "--budget-s", "270", "--plan", BACKBONE_PLAN
                ),
                330,
            )
        ],
        "heads": [Step("heads", _bench("bench_heads.py", "--device", "cuda"), 240)],
        "pretrain": [
            Step("pretrain", _bench("bench_pretrain.py", "--device", "cuda", "--mode", "throughput"), 300)
        ],
        "distill": [
            Step(
                "distill",
                _bench("bench_distill.py", "--device", "cuda", "--steps", "10", "--repeats", "2"),
                300,
            )
        ],
        "offline-cpu": [
            Step("offline", _bench("bench_offline.py", "--device", "cpu", "--frames", "256"), 600)
        ],
        "node-cpu": [Step("node", _bench("bench_node.py", "--device", "cpu", "--seconds", "10"), 600)],
        "bag-write": [Step("bag_write", _bench("bench_bag_write.py", *BAG_WRITE), 600)],
        "engines-cpu": [
            Step("engines", _bench("bench_engines.py", "--device", "cpu", "--rounds", "6"), 1200)
        ],
    }


def _install_wheels(wheels: Path) -> str:
    target = ROOT / "out" / "bench" / "site"
    shutil.rmtree(target, ignore_errors=True)
    files = [str(w) for w in sorted(wheels.glob("*.whl"))]
    if not files:
        raise SystemExit(f"no wheels in {wheels}")
    cmd = [
        PY,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--target",
        str(target),
        *files,
    ]
    subprocess.run(cmd, check=True)
    return str(target)


def run_step(step: Step, logdir: Path, env: dict[str, str]) -> int:
    """Run one step (output to its log and, at the end, its last lines here); returns its exit code."""
    log = logdir / f"{step.name}.log"
    print(f"[bench] {step.name}: {' '.join(step.cmd)}", flush=True)
    t = time.monotonic()
    with log.open("w") as f:
        try:
            rc = subprocess.run(
                step.cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=step.timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
            f.write(f"\n[bench] timed out after {step.timeout_s} s\n")
    tail = log.read_text().splitlines()[-25:]
    print("\n".join(tail))
    print(f"[bench] {step.name}: exit {rc} after {time.monotonic() - t:.0f} s", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="configurations to run, in order")
    ap.add_argument("--list", action="store_true", help="list the configurations and their steps")
    ap.add_argument("--wheels", type=Path, default=None, help="install these wheels for the steps first")
    ap.add_argument("--copy-to", type=Path, default=None, help="copy the result files written into DIR")
    args = ap.parse_args(argv)
    table = configs()
    if args.list or not args.names:
        for name, steps in table.items():
            print(name)
            for s in steps:
                print(f"  {s.name} ({s.timeout_s} s): {' '.join(s.cmd)}")
        return 0
    unknown = [n for n in args.names if n not in table]
    if unknown:
        print(f"unknown configuration(s) {unknown}; known: {', '.join(table)}", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    extra = [str(ROOT)] + ([_install_wheels(args.wheels)] if args.wheels else [])
    env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    started = time.time()
    failed = []
    for name in args.names:
        logdir = ROOT / "out" / "bench" / name
        logdir.mkdir(parents=True, exist_ok=True)
        failed += [f"{name}/{s.name}" for s in table[name] if run_step(s, logdir, env) != 0]
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for f in (ROOT / "benchmarks" / "results").glob("*.json"):
            if f.stat().st_mtime >= started:
                shutil.copy2(f, args.copy_to / f.name)
    print(f"[bench] {'FAILED: ' + ', '.join(failed) if failed else 'all steps passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
