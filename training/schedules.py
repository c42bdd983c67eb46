"""Iteration schedules: warmup (linear/cosine) -> constant or cosine decay, with an optional delayed start.

A schedule is a dict (config section) with keys
``start_iter`` (default 0; before it the value is ``before``), ``warmup_iters``, ``warmup_start``,
``warmup_kind`` (``linear``|``cosine``), ``peak``, ``cosine_iters`` (0 = stay at ``peak``; ``-1`` =
until ``total_iters``) and ``end``. After the cosine the value stays at ``end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Schedule",
    "build_schedules",
    "constant",
    "run_iters",
    "scaled_lr",
    "warmup_constant",
    "warmup_cosine",
]


@dataclass(frozen=True)
class Schedule:
    """See the module docstring; ``schedule(it)`` gives the value at iteration ``it``."""

    peak: float
    end: float | None = None
    warmup_iters: int = 0
    warmup_start: float = 0.0
    warmup_kind: str = "linear"
    cosine_iters: int = 0
    start_iter: int = 0
    before: float | None = None
    total_iters: int | None = None

    def __post_init__(self) -> None:
        if self.warmup_kind not in ("linear", "cosine"):
            raise ValueError(f"warmup_kind must be 'linear' or 'cosine', got {self.warmup_kind!r}")

    def __call__(self, it: int) -> float:
        end = self.peak if self.end is None else self.end
        if it < self.start_iter:
            return self.warmup_start if self.before is None else self.before
        t = it - self.start_iter
        if t < self.warmup_iters:
            f = t / self.warmup_iters
            if self.warmup_kind == "cosine":
                f = 0.5 * (1 - math.cos(math.pi * f))
            return self.warmup_start + (self.peak - self.warmup_start) * f
        t -= self.warmup_iters
        n = self.cosine_iters
        if n < 0:
            n = max(1, (self.total_iters or 1) - self.start_iter - self.warmup_iters)
        if n == 0 or t >= n:
            return end if n else self.peak
        return end + 0.5 * (self.peak - end) * (1 + math.cos(math.pi * t / n))

    @classmethod
    def from_config(cls, spec: Any, total_iters: int | None = None) -> Schedule:
        """A number (constant) or a dict with the fields above."""
        if isinstance(spec, (int, float)):
            return cls(peak=float(spec))
        if isinstance(spec, Schedule):
            return spec
        if not isinstance(spec, dict) or "peak" not in spec:
            raise ValueError(f"schedule must be a number or a dict with 'peak', got {spec!r}")
        known = {f for f in cls.__dataclass_fields__}
        bad = set(spec) - known
        if bad:
            raise ValueError(f"unknown schedule key(s) {sorted(bad)}; valid: {sorted(known)}")
        kw = dict(spec)
        kw.setdefault("total_iters", total_iters)
        return cls(**kw)


def constant(value: float) -> Schedule:
    return Schedule(peak=value)


def warmup_constant(peak: float, warmup_iters: int, start: float = 0.0, kind: str = "linear") -> Schedule:
    """DINOv3: warmup then constant."""
    return Schedule(peak=peak, warmup_iters=warmup_iters, warmup_start=start, warmup_kind=kind)


def warmup_cosine(
    peak: float, end: float, warmup_iters: int, total_iters: int, start: float = 0.0
) -> Schedule:
    """Linear warmup then cosine to ``end`` at ``total_iters``."""
    return Schedule(
        peak=peak,
        end=end,
        warmup_iters=warmup_iters,
        warmup_start=start,
        cosine_iters=total_iters - warmup_iters,
    )


def scaled_lr(lr: float, rule: str, global_batch: int) -> float:
    """LR scaling rules: ``sqrt_wrt_1024`` (lr·4·√(B/1024)), ``linear_wrt_256`` (lr·B/256), ``none``."""
    if rule == "sqrt_wrt_1024":
        return lr * 4.0 * math.sqrt(global_batch / 1024.0)
    if rule == "linear_wrt_256":
        return lr * global_batch / 256.0
    if rule in ("none", None):
        return lr
    raise ValueError(f"unknown lr scaling rule {rule!r} (sqrt_wrt_1024, linear_wrt_256, none)")


def run_iters(value: float | int, total: int) -> int:
    """An iteration count from a config: an int as is, a float in ``(0, 1)`` as that fraction of the run
    (so a short recipe keeps its warmups when ``train.iterations`` changes)."""
    if isinstance(value, float) and 0.0 < value < 1.0:
        return max(1, round(value * total))
    if float(value) != int(value) or int(value) < 0:
        raise ValueError(f"iteration count must be an int >= 0 or a fraction in (0, 1), got {value!r}")
    return int(value)


def build_schedules(cfg: dict[str, Any], global_batch: int) -> dict[str, Schedule]:
    """Schedules of a pretraining config: ``lr``, ``wd``, ``momentum``, ``teacher_temp``,
    ``last_layer_lr`` (0 while frozen), ``local_weight`` (DINO local term), ``gram_weight``.
    ``optim.warmup_iters``, ``teacher.warmup_iters`` and ``optim.freeze_last_layer_iters`` may be
    fractions of ``train.iterations`` (see :func:`run_iters`)."""
    o, total = cfg["optim"], int(cfg["train"]["iterations"])
    peak = scaled_lr(float(o["lr"]), o.get("scaling_rule", "sqrt_wrt_1024"), global_batch)
    warm = run_iters(o.get("warmup_iters", 0), total)
    kind = o.get("schedule", "constant")
    if kind == "constant":
        lr = Schedule(peak=peak, warmup_iters=warm, warmup_kind=o.get("warmup_kind", "linear"))
    elif kind == "cosine":
        lr = Schedule(
            peak=peak,
            end=float(o.get("min_lr", 0.0)),
            warmup_iters=warm,
            warmup_kind=o.get("warmup_kind", "linear"),
            cosine_iters=-1,
            total_iters=total,
        )
    else:
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {kind!r}")
    wd0, wd1 = (
        float(o.get("weight_decay", 0.04)),
        float(o.get("weight_decay_end", o.get("weight_decay", 0.04))),
    )
    m0, m1 = (
        float(o.get("momentum_teacher", 0.994)),
        float(o.get("final_momentum_teacher", o.get("momentum_teacher", 0.994))),
    )
    cos_or_const = -1 if kind == "cosine" else 0
    t = cfg["teacher"]
    freeze = run_iters(o.get("freeze_last_layer_iters", 0), total)
    return {
        "lr": lr,
        "wd": Schedule(peak=wd0, end=wd1, cosine_iters=-1 if wd1 != wd0 else cos_or_const, total_iters=total),
        "momentum": Schedule(peak=m0, end=m1, cosine_iters=-1 if m1 != m0 else 0, total_iters=total),
        "teacher_temp": Schedule(
            peak=float(t.get("temp", 0.07)),
            warmup_start=float(t.get("warmup_temp", t.get("temp", 0.07))),
            warmup_iters=run_iters(t.get("warmup_iters", 0), total),
        ),
        "last_layer_lr": Schedule(peak=1.0, start_iter=freeze, before=0.0),
        "local_weight": Schedule.from_config(cfg["dino"].get("local_weight", 1.0), total),
        "gram_weight": Schedule.from_config(cfg["gram"].get("loss_weight", 0.0), total),
    }
