"""Speed table of a `calibrate.sh` run: frames/s rendered, iterations/s and peak memory per stage, and
the iterations of each stage that fit a time budget."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

_POOL = re.compile(r"sim pool: (\d+) frames of (\d+)x(\d+) rendered in ([\d.]+) s")
_DISTILL = re.compile(r"it (\d+)/\d+ ([\d.]+) it/s")
_DEPTH = re.compile(r"it (\d+)/\d+ ([\d.]+) img/s")


def report(out: Path, budget: float) -> dict:
    """Parse the run under ``out`` into ``{stage: {...}}``."""
    log = (out / "recipe.log").read_text()
    pools = [(int(n), float(s)) for n, _, _, s in _POOL.findall(log)]
    res: dict = {}
    teacher = [json.loads(line) for line in (out / "teacher/metrics.jsonl").read_text().splitlines() if line]
    last = teacher[-1]
    res["teacher"] = {"it_s": last["it_s"], "mem_gb": last.get("mem_gb")}
    dist = _DISTILL.findall(log)
    if dist:
        res["student"] = {"it_s": float(dist[-1][1])}
    depth = _DEPTH.findall(log)
    if depth:
        res["depth"] = {"img_s": float(depth[-1][1])}
    if pools:
        res["render_frames_s"] = [round(n / max(s, 1e-9), 1) for n, s in pools]
    for k in ("teacher", "student"):
        if k in res:
            res[k]["iters_in_budget"] = int(res[k]["it_s"] * budget)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the calibrate.sh output directory")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds per training stage")
    args = ap.parse_args(argv)
    try:
        res = report(args.out, args.budget)
    except (FileNotFoundError, IndexError, ValueError) as e:
        print(f"calibrate_report: {args.out} is not a finished calibrate.sh run: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
