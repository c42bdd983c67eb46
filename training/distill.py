"""`dinov3-train distill`: one frozen teacher trains one or more students at once.

Two objectives share one engine:

- ``mode: heads`` (the published multi-distillation recipe): the teacher is our own pretraining
  checkpoint *with* its DINO and iBOT heads. The teacher's pre-last-layer head outputs (the
  L2-normalised bottleneck) are computed once per step; every student applies the teacher's
  prototypes and Sinkhorn-Knopp to them and learns with DINO (global + local crops), iBOT on its
  **unmasked** global crops at random "masked" positions, and KoLeo. Students use drop-path 0.
- ``mode: features`` (``training.feature_distill``): a backbone-only teacher (the released DINOv3
  checkpoints); cosine/L2 on CLS and patch tokens through a learned projector plus Gram matching.

On one device all students consume the same teacher forward pass. Under ``torchrun`` every student
gets its own process subgroup (``ranks: [start, end)``); every rank runs the teacher on its slice
of the global batch, the teacher outputs and crops are all-gathered and re-split so each subgroup
sees the full global batch, and each subgroup averages its students' gradients by itself.

Every student keeps an EMA. Runs are resumable in chunks (``--max-steps``): each student's state
is checkpointed atomically, and the final students (and EMAs, optionally fp16) are written as plain
state_dicts in the official key layout, loadable with ``dinov3_ros.models.load_backbone``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.config import STAGE_RESUME_MAY_CHANGE, ConfigError, setup_errors
from training.feature_distill import (
    FeatureDistillConfig,
    FeatureDistillObjective,
    TeacherFeatures,
    align_patch_tokens,
    patch_grid,
)
from training.parallel import apply_activation_checkpointing
from training.sim import SimLossConfig, SimObjective

log = logging.getLogger("dinov3.distill")

__all__ = [
    "Batch",
    "DistillConfig",
    "Distiller",
    "StudentConfig",
    "Teacher",
    "add_arguments",
    "export_backbone",
    "load_teacher",
    "main",
]


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class StudentConfig:
    """One student: a backbone arch (any ViT incl. tiny, or ConvNeXt) and its process ranks."""

    name: str
    arch: str
    overrides: dict[str, Any] = field(default_factory=dict)
    ranks: tuple[int, int] | None = None  # [start, end) under torchrun; None = split evenly
    lr: float | None = None  # overrides train.lr for this student
    # our addition: start from the teacher's backbone and heads (same architecture only), so a short
    # distillation refines the teacher's features instead of first re-learning them from scratch
    init_from_teacher: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentConfig:
        if "arch" not in d:
            raise ValueError(f"student entry {d!r} has no 'arch'")
        bad = sorted(set(d) - {"name", "arch", "overrides", "ranks", "lr", "init_from_teacher"})
        if bad:
            raise ValueError(f"student entry {d!r}: unknown key(s) {bad}")
        ranks = d.get("ranks")
        if ranks is not None:
            if len(ranks) != 2 or int(ranks[0]) >= int(ranks[1]):
                raise ValueError(f"student ranks must be [start, end) with start < end, got {ranks}")
            ranks = (int(ranks[0]), int(ranks[1]))
        return cls(
            name=str(d.get("name", d["arch"])),
            arch=str(d["arch"]),
            overrides=dict(d.get("overrides") or {}),
            ranks=ranks,
            lr=None if d.get("lr") is None else float(d["lr"]),
            init_from_teacher=bool(d.get("init_from_teacher", False)),
        )


#: Every key a distillation config may set (values are the defaults). ``None`` marks free-form values.
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/distill",
    "seed": 0,
    "mode": "heads",  # heads (published recipe, teacher with DINO/iBOT heads) | features (head-free)
    "teacher": {
        # pretraining output dir / DCP checkpoint dir / .pth with backbone.*+heads, or (features) any
        # backbone file load_backbone reads, e.g. the released DINOv3 weights
        "checkpoint": None,
        "arch": None,  # needed when the checkpoint does not record it
        "overrides": None,  # build_backbone kwargs of a non-standard teacher, e.g. {depth: 2}
    },
    "students": [],  # [{name, arch, overrides: {...}, ranks: [start, end), lr, init_from_teacher}]
    "heads": {  # student DINO/iBOT heads (mode: heads); prototypes/bottleneck follow the teacher
        "hidden_dim": None,  # None: the teacher's
        "nlayers": 3,
        "init_last_layer_from_teacher": False,  # published: heads from scratch
    },
    "features": None,  # mode: features -> training.feature_distill.FeatureDistillConfig fields
    "loss": {
        "dino": 1.0,
        "ibot": 1.0,
        "koleo": 0.1,
        "local_weight": 1.0,
        "teacher_temp": 0.07,
        "student_temp": 0.1,
        "patch_distill": 0.0,  # our addition: 1 - cosine between student and teacher patch tokens
    },
    "optim": {
        "lr": 5.0e-4,
        "schedule": "cosine",  # cosine (to min_lr) | constant (after warmup)
        "min_lr": 1.0e-6,
        "warmup_iters": 100,
        "weight_decay": 0.04,
        "betas": [0.9, 0.99],
        "layer_decay": 0.99,
        "patch_embed_lr_mult": 0.2,
        "clip_grad": 3.0,
        "momentum_ema": 0.994,  # student EMA momentum, cosine to final_momentum_ema
        "final_momentum_ema": 1.0,
    },
    "crops": {
        "global_crops_size": 224,
        "local_crops_size": 96,
        "local_crops_number": 8,
        "global_crops_scale": [0.32, 1.0],
        "local_crops_scale": [0.05, 0.32],
        "horizontal_flips": False,
        "photometric": True,
        "object_zoom": 0.0,  # sim pool only: fraction of samples whose crops zoom on one object
    },
    "ibot": {"mask_probability": 0.5, "mask_ratio": [0.1, 0.5]},
    "data": {"sources": [{"type": "procedural", "weight": 1.0}], "num_workers": 4},
    "train": {
        "iterations": 1000,
        "batch_size_per_gpu": 32,  # images per rank (the teacher's slice of the global batch)
        "checkpoint_period": 100,
        "log_period": 10,
        "amp": "bf16",  # bf16 autocast on CUDA (fp32 on CPU) | fp32
        "max_seconds": None,  # checkpoint and stop after this much wall time (resumable)
        "activation_checkpointing": 0,  # the students' first N blocks recompute their activations
        "allow_config_change": False,  # resume a run whose saved config.yaml differs from this one
    },
    "export": {"fp16": True},
    # the simulator as a second teacher (training.sim; our addition): per-patch losses on the students
    "sim": {"enabled": False, "losses": {}, "pool": {}},
}


def build_config(
    raw: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Defaults <- ``raw`` <- ``section.key=value`` overrides, with unknown keys rejected."""
    from training.config import layered, validate_values

    return validate_values(
        layered(DEFAULTS, raw, overrides, "distillation"), DEFAULTS, _rules(), "distillation", _FREE_FORM
    )


_FREE_FORM = frozenset(
    {"students", "features", "teacher.overrides", "data.sources", "sim.losses", "sim.pool"}
)

RESUME_MAY_CHANGE = STAGE_RESUME_MAY_CHANGE


def _rules() -> dict[str, Any]:
    from training.config import CROP_RULES, Rule

    pos_int, nonneg, unit = Rule("int", 1), Rule("num", 0), Rule("num", 0, 1)
    pos = Rule("num", 0, lo_open=True)
    return {
        "output_dir": Rule("str"),
        "seed": Rule("int", 0),
        "mode": Rule("str", choices=("heads", "features")),
        "teacher.checkpoint": Rule("str", null=True),
        "teacher.arch": Rule("str", null=True),
        "heads.hidden_dim": Rule("int", 1, null=True),
        "heads.nlayers": pos_int,
        **{f"loss.{k}": nonneg for k in ("dino", "ibot", "koleo", "local_weight", "patch_distill")},
        "loss.teacher_temp": pos,
        "loss.student_temp": pos,
        "optim.lr": nonneg,
        "optim.min_lr": nonneg,
        "optim.schedule": Rule("str", choices=("cosine", "constant")),
        "optim.warmup_iters": Rule("num", 0),  # an int, or a fraction of train.iterations
        "optim.weight_decay": nonneg,
        "optim.betas": Rule("list", 0, 1, length=2, hi_open=True),
        "optim.layer_decay": Rule("num", 0, 1, lo_open=True),
        "optim.patch_embed_lr_mult": nonneg,
        "optim.clip_grad": nonneg,
        "optim.momentum_ema": unit,
        "optim.final_momentum_ema": unit,
        **CROP_RULES,
        "ibot.mask_probability": unit,
        "ibot.mask_ratio": Rule("list", 0, 1, length=2),
        "data.num_workers": Rule("int", 0),
        "train.iterations": pos_int,
        "train.batch_size_per_gpu": pos_int,
        "train.checkpoint_period": pos_int,
        "train.log_period": pos_int,
        "train.amp": Rule("str", choices=("bf16", "fp32")),
        "train.max_seconds": Rule("num", 0, null=True, lo_open=True),
        "train.activation_checkpointing": Rule("int", 0),
    }


def load_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a distillation YAML (optional ``_base_: other.yaml`` relative to it) and apply overrides."""
    from training.config import read_yaml_layers

    return build_config(read_yaml_layers(path), overrides)


@dataclass
class DistillConfig:
    """Validated distillation config (see ``DEFAULTS`` and ``training/configs/distill_*.yaml``)."""

    raw: dict[str, Any]
    output_dir: Path
    mode: str
    students: list[StudentConfig]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.raw.get(name) or {})

    @classmethod
    def from_dict(cls, raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> DistillConfig:
        raw = build_config(raw, overrides)
        if not raw["students"]:
            raise ValueError("distillation config needs a non-empty 'students' list")
        students = [StudentConfig.from_dict(s) for s in raw["students"]]
        names = [s.name for s in students]
        if len(set(names)) != len(names):
            raise ValueError(f"student names must be unique, got {names}")
        mode = str(raw["mode"])
        if mode not in ("heads", "features"):
            raise ValueError(f"mode must be 'heads' or 'features', got {mode!r}")
        FeatureDistillConfig.from_dict(raw.get("features"))  # validate early
        return cls(raw=raw, output_dir=Path(raw["output_dir"]), mode=mode, students=students)


# --------------------------------------------------------------------------------------------
# teacher


@dataclass
class Teacher:
    """Frozen teacher backbone, with DINO/iBOT heads for ``mode: heads``."""

    backbone: nn.Module
    dino_head: nn.Module | None = None
    ibot_head: nn.Module | None = None
    arch: str = ""

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.backbone, self.dino_head, self.ibot_head) if m is not None]

    def to(self, device: torch.device) -> Teacher:
        for m in self.modules():
            m.to(device)
        return self


def _split_prefixed(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {p: {} for p in prefixes}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p + "."):
                out[p][k[len(p) + 1 :]] = v
                break
    return out


def _head_from_state(sd: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a ``training.heads.DINOHead`` from its state_dict shapes."""
    from training.heads import DINOHead

    lin = sorted(
        (int(k.split(".")[1]), v) for k, v in sd.items() if k.startswith("mlp.") and k.endswith(".weight")
    )
    if "mlp.weight" in sd:  # nlayers == 1
        in_dim, bottleneck, hidden, nlayers = sd["mlp.weight"].shape[1], sd["mlp.weight"].shape[0], 0, 1
    elif lin:
        in_dim = lin[0][1].shape[1]
        hidden = lin[0][1].shape[0]
        bottleneck = lin[-1][1].shape[0]
        nlayers = len(lin)
    else:
        raise ValueError(f"not a DINOHead state_dict (keys {sorted(sd)[:5]}...)")
    out_dim = sd["last_layer.weight"].shape[0]
    head = DINOHead(in_dim, out_dim, hidden_dim=max(hidden, 1), bottleneck_dim=bottleneck, nlayers=nlayers)
    head.load_state_dict(sd)
    return head


def load_teacher(
    path: str | os.PathLike[str],
    arch: str | None = None,
    *,
    need_heads: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Teacher:
    """Load a frozen teacher.

    Accepted: a ``dinov3-train pretrain`` output directory (its ``config.yaml`` and the latest DCP
    checkpoint under ``ckpt/``: the EMA teacher's backbone, DINO and iBOT heads), one DCP checkpoint
    directory of such a run, a ``.pth`` dict with ``backbone.*``/``dino_head.*``/``ibot_head.*``
    keys (optionally under ``"teacher"``, with ``"arch"``), or (``need_heads=False``) any backbone file that
    ``dinov3_ros.models.load_backbone`` reads (e.g. the released DINOv3 weights). ``overrides`` are
    ``build_backbone`` arguments of a non-standard teacher (e.g. ``depth``); a checkpoint may record
    them as ``"backbone_overrides"``.
    """
    from dinov3_ros.models import build_backbone

    p = Path(path)
    if p.is_dir():
        return _freeze(_load_pretrain_dir(p, need_heads))
    if not p.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {p}")
    from training.checkpoint import safe_load

    obj = safe_load(p, "teacher checkpoint")
    sd: dict[str, Any] | None = None
    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        meta = obj
        for key in ("teacher", "model", "state_dict"):
            if isinstance(obj.get(key), dict) and any(str(k).startswith("backbone.") for k in obj[key]):
                sd = obj[key]
                break
        if sd is None and any(str(k).startswith("backbone.") for k in obj):
            sd = obj
    if sd is None:
        if need_heads:
            raise ValueError(
                f"{p} holds no teacher heads (no 'backbone.*'/'dino_head.*' keys); released DINOv3 "
                "checkpoints are backbone-only: use mode: features (head-free distillation)"
            )
        from dinov3_ros.models import load_backbone

        backbone = load_backbone(p, arch, **dict(overrides or {}))
        return _freeze(Teacher(backbone=backbone, arch=str(getattr(backbone, "arch", arch or ""))))
    parts = _split_prefixed(sd, ("backbone", "dino_head", "ibot_head"))
    arch = arch or meta.get("arch") or (meta.get("config") or {}).get("student", {}).get("arch")
    if not arch:
        raise ValueError(f"{p} does not record the teacher arch; set teacher.arch in the config")
    kw = dict(meta.get("backbone_overrides") or {})
    kw.update(overrides or {})
    kw.pop("drop_path_rate", None)
    backbone = build_backbone(str(arch), **kw)
    missing, unexpected = backbone.load_state_dict(parts["backbone"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"teacher backbone {arch!r} does not match {p}: missing {missing[:5]} unexpected {unexpected[:5]}"
        )
    teacher = Teacher(backbone=backbone, arch=str(arch))
    if need_heads:
        if not parts["dino_head"] or not parts["ibot_head"]:
            raise ValueError(f"{p} lacks dino_head.* or ibot_head.* weights needed by mode: heads")
        teacher.dino_head = _head_from_state(parts["dino_head"])
        teacher.ibot_head = _head_from_state(parts["ibot_head"])
    return _freeze(teacher)


def _load_pretrain_dir(p: Path, need_heads: bool) -> Teacher:
    """EMA teacher (backbone + heads) of a ``dinov3-train pretrain`` run from its DCP checkpoint."""
    import torch.distributed.checkpoint as dcp
    import yaml

    from training.checkpoint import find_latest_checkpoint
    from training.heads import DINOHead
    from training.meta_arch import build_backbone_from_config

    if (p / ".metadata").is_file():  # one checkpoint: <out>/ckpt/<iteration>
        ckpt, run_dir = p, p.parent.parent
    else:
        ckpt, run_dir = find_latest_checkpoint(p / "ckpt"), p
        if ckpt is None:
            raise FileNotFoundError(f"{p} holds no pretraining checkpoint (expected {p}/ckpt/<iteration>/)")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{cfg_path} not found: the teacher's pretraining config is needed to rebuild it"
        )
    pcfg = yaml.safe_load(cfg_path.read_text())
    backbone = build_backbone_from_config(pcfg["model"], drop_path=False)
    mods: dict[str, nn.Module] = {"backbone": backbone}
    dim = int(backbone.embed_dim)
    if need_heads:
        for name, sec in (("dino_head", pcfg["dino"]), ("ibot_head", pcfg["ibot"])):
            mods[name] = DINOHead(
                dim,
                sec["n_prototypes"],
                sec["hidden_dim"],
                sec["bottleneck_dim"],
                sec.get("nlayers", 3),
                norm_last_layer=bool(sec.get("norm_last_layer", False)),
            )
    state = {"model": {f"teacher.{m}.{k}": v for m, mod in mods.items() for k, v in mod.state_dict().items()}}
    dcp.load(state, checkpoint_id=str(ckpt))
    for m, mod in mods.items():
        pre = f"teacher.{m}."
        mod.load_state_dict({k[len(pre) :]: v for k, v in state["model"].items() if k.startswith(pre)})
    log.info("teacher: %s from %s", pcfg["model"]["arch"], ckpt)
    return Teacher(
        backbone=backbone,
        dino_head=mods.get("dino_head"),
        ibot_head=mods.get("ibot_head"),
        arch=str(pcfg["model"]["arch"]),
    )


def _freeze(t: Teacher) -> Teacher:
    for m in t.modules():
        m.eval()
        m.requires_grad_(False)
    return t


# --------------------------------------------------------------------------------------------
# batches and distributed helpers


@dataclass
class Batch:
    """Crop-major multi-crop batch of ``B`` images.

    ``global_crops [n_g*B, 3, G, G]``, ``local_crops [n_l*B, 3, L, L]`` (may be empty) and
    ``masks [n_g*B, N_teacher]`` bool (the random iBOT positions on the teacher's patch grid) and,
    when the loader drew them on the host, ``mask_indices``: the flat positions of ``masks`` (its
    ``flatten().nonzero()``), so selecting the masked rows on a GPU needs no wait for the device.
    """

    global_crops: torch.Tensor
    local_crops: torch.Tensor | None
    masks: torch.Tensor | None
    n_global: int = 2
    sim: Any = None  # training.sim.CropTargets of the global crops (crop-major), when sim is enabled
    mask_indices: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.global_crops.shape[0] // self.n_global

    @property
    def n_local(self) -> int:
        if self.local_crops is None or self.local_crops.numel() == 0:
            return 0
        return self.local_crops.shape[0] // self.batch_size

    def to(self, device: torch.device) -> Batch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        sim = None if self.sim is None else self.sim.to(device)
        return Batch(
            mv(self.global_crops),
            mv(self.local_crops),
            mv(self.masks),
            self.n_global,
            sim,
            mv(self.mask_indices),
        )


def _crop_major(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if x is None or n == 0 else x.reshape(n, x.shape[0] // n, *x.shape[1:])


def _gather_crop_major(x: torch.Tensor | None, n: int, world: int) -> torch.Tensor | None:
    """``[n*b, ...]`` on every rank -> ``[n, world*b, ...]`` (rank-major within each crop)."""
    if x is None or n == 0:
        return None
    xs = x.reshape(n, x.shape[0] // n, *x.shape[1:]).contiguous()
    if world == 1:
        return xs
    out = [torch.empty_like(xs) for _ in range(world)]
    dist.all_gather(out, xs)
    return torch.cat(out, dim=1)


def _masked_rows(x: torch.Tensor, masks: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``x [M, N, D]`` where ``masks [M, N]`` is set, in ``masks.nonzero()`` order; with
    ``indices`` (its flat positions, drawn on the host) a gather instead of a boolean index, which on a
    GPU waits for the device to count the rows."""
    if indices is None:
        return x[masks]
    return x.reshape(-1, x.shape[-1]).index_select(0, indices)


def _scatter_rows(rows: torch.Tensor, masks: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    """``[M, N, D]`` zeros with ``rows`` at the set positions of ``masks`` (inverse of :func:`_masked_rows`)."""
    dense = rows.new_zeros(*masks.shape, rows.shape[-1])
    if indices is None:
        dense[masks] = rows
        return dense
    return dense.reshape(-1, rows.shape[-1]).index_copy_(0, indices, rows).reshape(dense.shape)


def _slice_flat(x: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    """``[n, B, ...]`` -> crop-major flat ``[n*(hi-lo), ...]``."""
    if x is None:
        return None
    return x[:, lo:hi].reshape(-1, *x.shape[2:])


# --------------------------------------------------------------------------------------------
# students


class _Student(nn.Module):
    """A student backbone plus its trainable objective part (DINO/iBOT heads or a projector)."""

    def __init__(self, cfg: StudentConfig, backbone: nn.Module, objective: nn.ModuleDict) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.objective = objective

    def parts(self) -> nn.ModuleDict:
        """``ModuleDict(backbone, <objective parts>)`` as ``training.param_groups`` expects."""
        return nn.ModuleDict({"backbone": self.backbone, **dict(self.objective.items())})


def _build_student_backbone(cfg: StudentConfig) -> nn.Module:
    from dinov3_ros.models import build_backbone

    overrides = dict(cfg.overrides)
    overrides.setdefault("drop_path_rate", 0.0)  # published: students use drop-path 0
    return build_backbone(cfg.arch, **overrides)


# --------------------------------------------------------------------------------------------
# the engine


class Distiller:
    """Trains every student of this process from one teacher pass per step.

    :meth:`step` takes a :class:`Batch` of this rank's images; :attr:`teacher_forwards` counts the
    teacher backbone passes (one per step, whatever the number of students).
    """

    def __init__(self, cfg: DistillConfig, teacher: Teacher, device: torch.device | str = "cpu") -> None:
        from training.schedules import Schedule, run_iters

        self.cfg = cfg
        self.device = torch.device(device)
        self.optim_cfg = cfg.section("optim")
        self.loss_cfg = cfg.section("loss")
        self.train_cfg = cfg.section("train")
        self.feat_cfg = FeatureDistillConfig.from_dict(cfg.raw.get("features"))
        self.heads_cfg = cfg.section("heads")
        sim = cfg.section("sim")
        self.sim_cfg = SimLossConfig.from_dict(sim.get("losses")) if sim.get("enabled") else None
        self.teacher = teacher.to(self.device)
        if cfg.mode == "heads" and (teacher.dino_head is None or teacher.ibot_head is None):
            raise ValueError("mode: heads needs a teacher with DINO and iBOT heads")
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.groups = self._make_groups()
        o, total = self.optim_cfg, int(self.train_cfg["iterations"])
        warm = run_iters(o["warmup_iters"], total)
        self.lr_schedule = Schedule(
            peak=1.0,
            end=float(o["min_lr"]) / float(o["lr"]) if o["schedule"] == "cosine" else 1.0,
            warmup_iters=warm,
            cosine_iters=max(total - warm, 1) if o["schedule"] == "cosine" else 0,
        )
        m0, m1 = float(o["momentum_ema"]), float(o["final_momentum_ema"])
        self.momentum_schedule = Schedule(peak=m0, end=m1, cosine_iters=total if m1 != m0 else 0)
        self.students: dict[str, _Student] = {}
        self.emas: dict[str, nn.Module] = {}
        self.optims: dict[str, torch.optim.Optimizer] = {}
        for i, s in enumerate(cfg.students):
            if self.rank in range(*self.groups[s.name][0]):
                # initialisation depends on (seed, student index) only, not on the rank layout
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(cfg.raw["seed"]) * 1000 + i)
                    self._add_student(s)
        if not self.students:
            raise ValueError(f"rank {self.rank} belongs to no student's ranks range")
        self.iteration = 0
        self.teacher_forwards = 0
        # per step not yet read: (iteration, [(student, term names, values on the device, lr)])
        self.pending: list[tuple[int, list[tuple[str, list[str], torch.Tensor, float]]]] = []

    # ---------------------------------------------------------------- setup
    def _make_groups(self) -> dict[str, tuple[tuple[int, int], Any]]:
        """``name -> ((start, end), process group or None)``; one subgroup per student."""
        students = self.cfg.students
        if self.world == 1:
            return {s.name: ((0, 1), None) for s in students}
        if all(s.ranks is None for s in students):
            if self.world % len(students):
                raise ValueError(f"{self.world} ranks cannot be split evenly over {len(students)} students")
            k = self.world // len(students)
            ranges = [(i * k, (i + 1) * k) for i in range(len(students))]
        elif any(s.ranks is None for s in students):
            raise ValueError("give ranks for every student or for none")
        else:
            ranges = [s.ranks for s in students]  # type: ignore[misc]
        covered = sorted(r for a, b in ranges for r in range(a, b))
        if covered != list(range(self.world)):
            raise ValueError(f"student ranks {ranges} must partition the {self.world} ranks exactly")
        out = {}
        for s, (a, b) in zip(students, ranges):
            group = dist.new_group(list(range(a, b)))  # every rank creates every group, same order
            out[s.name] = ((a, b), group)
        return out

    def _add_student(self, s: StudentConfig) -> None:
        from training.heads import DINOHead
        from training.param_groups import build_param_groups

        backbone = _build_student_backbone(s).to(self.device)
        sdim = int(backbone.embed_dim)
        objective = nn.ModuleDict()
        if self.cfg.mode == "heads":
            nl = int(self.heads_cfg["nlayers"])
            for name, th in (("dino_head", self.teacher.dino_head), ("ibot_head", self.teacher.ibot_head)):
                assert th is not None
                kk, bn = (int(x) for x in th.last_layer.weight.shape)
                first = next(m for m in th.mlp.modules() if isinstance(m, nn.Linear))
                hidden = int(self.heads_cfg["hidden_dim"] or first.out_features)
                head = DINOHead(
                    sdim,
                    kk,
                    hidden_dim=hidden,
                    bottleneck_dim=bn,
                    nlayers=nl,
                    norm_last_layer=getattr(th, "norm_last_layer", False),
                )
                if self.heads_cfg["init_last_layer_from_teacher"]:
                    head.last_layer.load_state_dict(th.last_layer.state_dict())
                objective[name] = head
        else:
            tdim = int(self.teacher.backbone.embed_dim)
            objective["projector"] = FeatureDistillObjective(sdim, tdim, self.feat_cfg)
        if s.init_from_teacher:
            self._init_from_teacher(s, backbone, objective)
        if self.sim_cfg is not None:
            objective["sim"] = SimObjective(sdim, self.sim_cfg)
        student = _Student(s, backbone, objective.to(self.device))
        student.train()
        self.students[s.name] = student
        self.emas[s.name] = copy.deepcopy(backbone).eval().requires_grad_(False)
        o = self.optim_cfg
        groups = build_param_groups(student.parts(), float(o["layer_decay"]), float(o["patch_embed_lr_mult"]))
        for g in groups:
            g.pop("names", None)
            g["weight_decay"] = float(o["weight_decay"]) * g["wd_multiplier"]
        self.optims[s.name] = torch.optim.AdamW(
            groups, lr=float(s.lr or o["lr"]), betas=tuple(o["betas"]), fused=self.device.type == "cuda"
        )
        # after the EMA copy and the parameter groups: wrappers change neither parameters nor their names
        # in the state dict, only the module paths the groups and the EMA are built from
        apply_activation_checkpointing(backbone, int(self.train_cfg["activation_checkpointing"]))

    def _init_from_teacher(self, s: StudentConfig, backbone: nn.Module, objective: nn.ModuleDict) -> None:
        """Copy the teacher's backbone (and, in heads mode, its DINO/iBOT heads) into a student of the
        same shape; a clear error names the first mismatch otherwise."""
        pairs = [("backbone", backbone, self.teacher.backbone)]
        if self.cfg.mode == "heads":
            pairs += [(n, objective[n], getattr(self.teacher, n)) for n in ("dino_head", "ibot_head")]
        for name, dst, src in pairs:
            a, b = dst.state_dict(), src.state_dict()
            bad = sorted(set(a) ^ set(b)) or [k for k in a if a[k].shape != b[k].shape]
            if bad:
                raise ValueError(
                    f"student {s.name!r}: init_from_teacher needs the teacher's {name} shape "
                    f"(arch {self.teacher.arch or '?'} vs {s.arch}); first mismatch {bad[0]!r}"
                )
            dst.load_state_dict({k: v.detach().clone() for k, v in b.items()})

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.train_cfg["amp"] == "bf16"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ---------------------------------------------------------------- teacher pass
    @torch.no_grad()
    def _teacher_pass(self, batch: Batch) -> dict[str, Any]:
        """Teacher on this rank's images; returns crop-major tensors gathered over all ranks."""
        self.teacher_forwards += 1
        t = self.teacher
        n_g = batch.n_global
        with self._autocast():
            out = t.backbone.forward_features(batch.global_crops)
        cls, patch = out["x_norm_clstoken"], out["x_norm_patchtokens"]
        grid = patch_grid(patch.shape[1], batch.global_crops.shape[-2:])
        res: dict[str, Any] = {"grid": grid}
        if self.cfg.mode == "heads":
            if batch.masks is None or batch.masks.shape != patch.shape[:2]:
                raise ValueError(
                    f"mode: heads needs masks [n_g*B, {patch.shape[1]}] on the teacher grid {grid}, got "
                    f"{None if batch.masks is None else tuple(batch.masks.shape)}"
                )
            with self._autocast():
                cls_bn = t.dino_head(cls, no_last_layer=True)  # the L2-normalised bottleneck
                rows = t.ibot_head(_masked_rows(patch, batch.masks, batch.mask_indices), no_last_layer=True)
            dense = _scatter_rows(rows, batch.masks, batch.mask_indices)
            res["cls_bn"] = _gather_crop_major(cls_bn.float(), n_g, self.world)
            res["patch_bn"] = _gather_crop_major(dense, n_g, self.world)
            res["masks"] = _gather_crop_major(batch.masks, n_g, self.world)
            res["mask_indices"] = batch.mask_indices if self.world == 1 else None
            if float(self.loss_cfg.get("patch_distill", 0.0)) > 0:
                res["patch"] = _gather_crop_major(patch, n_g, self.world)
        else:
            res["cls"] = _gather_crop_major(cls, n_g, self.world)
            res["patch"] = _gather_crop_major(patch, n_g, self.world)
        res["global_crops"] = _gather_crop_major(batch.global_crops, n_g, self.world)
        if batch.sim is not None:
            res["sim"] = {k: _gather_crop_major(v, n_g, self.world) for k, v in vars(batch.sim).items()}
        res["local_crops"] = _gather_crop_major(batch.local_crops, batch.n_local, self.world)
        return res

    # ---------------------------------------------------------------- student losses
    def _slice_for(self, name: str, total: int) -> tuple[int, int]:
        (a, b), _ = self.groups[name]
        k = b - a
        if total % k:
            raise ValueError(f"global batch {total} is not divisible by the {k} ranks of student {name!r}")
        j, per = self.rank - a, total // k
        return j * per, (j + 1) * per

    def _heads_loss(
        self, st: _Student, tout: dict[str, Any], lo: int, hi: int, group: Any
    ) -> dict[str, torch.Tensor]:
        from training.losses import dino_loss_terms, ibot_loss, koleo_loss, sinkhorn_knopp

        lc = self.loss_cfg
        n_g, bs = tout["global_crops"].shape[0], hi - lo
        g = _slice_flat(tout["global_crops"], lo, hi)
        loc = _slice_flat(tout["local_crops"], lo, hi)
        masks = _slice_flat(tout["masks"], lo, hi)
        # host-drawn positions hold for the whole batch of one rank only
        idx = tout.get("mask_indices") if (lo, hi) == (0, tout["masks"].shape[1]) else None
        t = self.teacher
        assert t.dino_head is not None and t.ibot_head is not None
        with torch.no_grad():  # teacher prototypes + Sinkhorn-Knopp over the subgroup (= the global batch)
            t_cls = t.dino_head(_slice_flat(tout["cls_bn"], lo, hi), only_last_layer=True)
            t_cls = sinkhorn_knopp(t_cls, lc["teacher_temp"], group=group).reshape(n_g, bs, -1)
            t_rows = _masked_rows(_slice_flat(tout["patch_bn"], lo, hi), masks, idx)
            t_patch = t.ibot_head(t_rows.float(), only_last_layer=True)
            t_patch = sinkhorn_knopp(t_patch, lc["teacher_temp"], group=group)
        heads = st.objective
        with self._autocast():
            out_g = st.backbone.forward_features(g)  # unmasked student global crops
            s_cls = out_g["x_norm_clstoken"]
            s_patch = out_g["x_norm_patchtokens"]
            s_patch = align_patch_tokens(
                s_patch, patch_grid(s_patch.shape[1], g.shape[-2:]), tout["grid"], self.feat_cfg.align_mode
            )
            s_g = heads["dino_head"](s_cls).reshape(n_g, bs, -1)
            s_l = None
            if loc is not None:
                out_l = st.backbone.forward_features(loc)
                s_l = heads["dino_head"](out_l["x_norm_clstoken"]).reshape(-1, bs, s_g.shape[-1])
            s_masked = heads["ibot_head"](_masked_rows(s_patch, masks, idx))
        terms = dino_loss_terms(
            s_g.float(),
            t_cls,
            None if s_l is None else s_l.float(),
            student_temp=lc["student_temp"],
            local_weight=lc["local_weight"],
        )
        ibot = ibot_loss(s_masked.float(), t_patch, masks, lc["student_temp"])
        if lc["koleo"] and bs > 1:
            koleo = sum(koleo_loss(c) for c in s_cls.float().reshape(n_g, bs, -1))
        else:
            koleo = s_cls.new_zeros((), dtype=torch.float32)
        loss = lc["dino"] * terms["total"] + lc["ibot"] * ibot + lc["koleo"] * koleo
        out = {
            "loss": loss,
            "dino_global": terms["global"],
            "dino_local": terms["local"],
            "ibot": ibot,
            "koleo": torch.as_tensor(koleo),
        }
        out.update(self._extra_losses(st, out_g["x_norm_patchtokens"], tout, lo, hi, s_cls))
        out["loss"] = out["loss"] + out.pop("extra", 0.0)
        return out

    def _extra_losses(
        self,
        st: _Student,
        s_patch: torch.Tensor,
        tout: dict[str, Any],
        lo: int,
        hi: int,
        s_cls: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Our additions on the unmasked student patch tokens: patch-token distillation (1 - cosine with
        the teacher's) and the simulator losses; ``extra`` is their weighted sum."""
        from training.sim import CropTargets

        out: dict[str, torch.Tensor] = {}
        extra = s_patch.new_zeros((), dtype=torch.float32)
        w = float(self.loss_cfg.get("patch_distill", 0.0))
        if w > 0 and "patch" in tout:
            t_patch = _slice_flat(tout["patch"], lo, hi).float()
            cos = torch.nn.functional.cosine_similarity(s_patch.float(), t_patch, dim=-1)
            out["patch_distill"] = 1.0 - cos.mean()
            extra = extra + w * out["patch_distill"]
        if "sim" in tout and "sim" in st.objective:
            targets = CropTargets(**{k: _slice_flat(v, lo, hi) for k, v in tout["sim"].items()})
            sim = st.objective["sim"](s_patch, targets, cls_tokens=s_cls)
            extra = extra + sim.pop("sim")
            out.update(sim)
        out["extra"] = extra
        return out

    def _features_loss(self, st: _Student, tout: dict[str, Any], lo: int, hi: int) -> dict[str, torch.Tensor]:
        g = _slice_flat(tout["global_crops"], lo, hi)
        target = TeacherFeatures(
            cls=_slice_flat(tout["cls"], lo, hi), patch=_slice_flat(tout["patch"], lo, hi), grid=tout["grid"]
        )
        with self._autocast():
            return st.objective["projector"](st.backbone, g, target)

    # ---------------------------------------------------------------- one step
    @staticmethod
    def _sync_grads(st: _Student, group: Any, k: int) -> None:
        """Average gradients over the student's subgroup (one flat all-reduce)."""
        if k <= 1:
            return
        params = [p for p in st.parameters() if p.requires_grad]
        for p in params:  # same layout on every rank even if a head got no gradient here
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([gr.reshape(-1) for gr in grads])
        dist.all_reduce(flat, group=group)
        flat /= k
        off = 0
        for gr in grads:
            n = gr.numel()
            gr.copy_(flat[off : off + n].view_as(gr))
            off += n

    def step(self, batch: Batch, sync: bool = True) -> dict[str, dict[str, float]] | None:
        """One optimisation step of every local student from a single teacher pass.

        ``sync``: read the loss terms now (a non-finite loss raises before the update) and return them
        per student (steps queued before are read too, their values dropped). Otherwise they stay on
        the device for :meth:`flush` (no host-device synchronisation in the step; a non-finite loss
        raises there) and None is returned."""
        from training.meta_arch import ema_update

        batch = batch.to(self.device)
        tout = self._teacher_pass(batch)
        total = tout["global_crops"].shape[1]
        lr_scale = self.lr_schedule(self.iteration)
        momentum = self.momentum_schedule(self.iteration)
        clip = float(self.optim_cfg["clip_grad"] or 0)
        queued: list[tuple[str, list[str], torch.Tensor, float]] = []
        for name, st in self.students.items():
            (a, b), group = self.groups[name]
            lo, hi = self._slice_for(name, total)
            opt = self.optims[name]
            peak = float(st.cfg.lr or self.optim_cfg["lr"])
            for pg in opt.param_groups:
                pg["lr"] = peak * lr_scale * pg.get("lr_multiplier", 1.0)
            if self.cfg.mode == "heads":
                terms = self._heads_loss(st, tout, lo, hi, group)
            else:
                terms = self._features_loss(st, tout, lo, hi)
            loss = terms["loss"]
            if sync and not torch.isfinite(loss):
                raise FloatingPointError(
                    f"student {name!r}: non-finite loss {loss.item()} at iteration {self.iteration}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            self._sync_grads(st, group, b - a)
            if clip > 0:  # per submodule, as published
                for part in st.parts().values():
                    torch.nn.utils.clip_grad_norm_(part.parameters(), clip)
            opt.step()
            ema_update(self.emas[name], st.backbone, momentum)
            vals = torch.stack(
                [torch.as_tensor(v, device=loss.device).detach().float() for v in terms.values()]
            )
            queued.append((name, list(terms), vals, peak * lr_scale))
        self.pending.append((self.iteration, queued))
        self.iteration += 1
        return self.flush()[-1][1] if sync else None

    def flush(self) -> list[tuple[int, dict[str, dict[str, float]]]]:
        """The loss terms (and lr) of the steps queued since the last flush, oldest first, as
        ``(iteration, {student: {term: value}})``, read in one host-device synchronisation; raises
        ``FloatingPointError`` for the first non-finite loss, naming its student and iteration."""
        pending, self.pending = self.pending, []
        if not pending:
            return []
        flat = torch.cat([vals for _, queued in pending for _, _, vals, _ in queued]).tolist()
        rows, pos = [], 0
        for it, queued in pending:
            metrics: dict[str, dict[str, float]] = {}
            for name, keys, _, lr in queued:
                m = dict(zip(keys, flat[pos : pos + len(keys)]))
                pos += len(keys)
                if not math.isfinite(m["loss"]):
                    raise FloatingPointError(
                        f"student {name!r}: non-finite loss {m['loss']} at iteration {it}"
                    )
                metrics[name] = {**m, "lr": lr}
            rows.append((it, metrics))
        return rows

    # ---------------------------------------------------------------- checkpoints
    def _is_writer(self, name: str) -> bool:
        return self.rank == self.groups[name][0][0]

    def student_dir(self, name: str) -> Path:
        return self.cfg.output_dir / "students" / name

    def save_checkpoint(self) -> None:
        """Atomically write every local student's full state (one writer per subgroup)."""
        from training.checkpoint import capture_rng_state

        for name, st in self.students.items():
            if not self._is_writer(name):
                continue
            state = {
                "iteration": self.iteration,
                "teacher_forwards": self.teacher_forwards,
                "student": st.state_dict(),
                "ema": self.emas[name].state_dict(),
                "optimizer": self.optims[name].state_dict(),
                "arch": st.cfg.arch,
                "overrides": st.cfg.overrides,
                "mode": self.cfg.mode,
                "rng": capture_rng_state(),
            }
            _atomic_save(state, self.student_dir(name) / "checkpoint.pt")
        if self.world > 1:
            dist.barrier()

    def load_checkpoint(self) -> bool:
        """Resume every local student from its checkpoint; False when there is none."""
        from training.checkpoint import restore_rng_state, safe_load

        found: list[int | None] = []
        for name, st in self.students.items():
            p = self.student_dir(name) / "checkpoint.pt"
            if not p.is_file():
                found.append(None)
                continue
            # on the CPU: load_state_dict copies onto the parameters' device, RNG states must stay there
            state = safe_load(p, "distillation checkpoint", map_location="cpu")
            if state.get("arch") != st.cfg.arch or state.get("mode") != self.cfg.mode:
                raise ValueError(
                    f"{p} is a {state.get('arch')}/{state.get('mode')} checkpoint; the config wants "
                    f"{st.cfg.arch}/{self.cfg.mode}"
                )
            st.load_state_dict(state["student"])
            self.emas[name].load_state_dict(state["ema"])
            self.optims[name].load_state_dict(state["optimizer"])
            restore_rng_state(state["rng"])
            found.append(int(state["iteration"]))
            self.teacher_forwards = int(state.get("teacher_forwards", 0))
        if all(f is None for f in found):
            return False
        if any(f is None for f in found) or len(set(found)) != 1:
            raise RuntimeError(
                f"students' checkpoints are at different iterations {found}; "
                f"remove {self.cfg.output_dir}/students to restart"
            )
        self.iteration = int(found[0])  # type: ignore[arg-type]
        return True

    def export(self, fp16: bool = False) -> dict[str, dict[str, str]]:
        """Write each student's backbone and EMA as official-layout state_dicts (+ an fp16 EMA)."""
        written: dict[str, dict[str, str]] = {}
        for name, st in self.students.items():
            if not self._is_writer(name):
                continue
            d = self.student_dir(name)
            files = {
                "backbone": export_backbone(st.backbone, d / "backbone.pth"),
                "ema": export_backbone(self.emas[name], d / "backbone_ema.pth"),
            }
            if fp16:
                files["ema_fp16"] = export_backbone(self.emas[name], d / "backbone_ema_fp16.pth", fp16=True)
            meta = {
                "arch": st.cfg.arch,
                "overrides": st.cfg.overrides,
                "iteration": self.iteration,
                "mode": self.cfg.mode,
                "teacher": self.teacher.arch,
                "files": {k: Path(v).name for k, v in files.items()},
            }
            _atomic_write_text(d / "export.json", json.dumps(meta, indent=2))
            written[name] = files
        return written


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_backbone(backbone: nn.Module, path: str | os.PathLike[str], *, fp16: bool = False) -> str:
    """Save ``backbone.state_dict()`` (official key layout) as a plain ``.pth``; fp16 casts floats."""
    sd = {}
    for k, v in backbone.state_dict().items():
        v = v.detach().to("cpu").clone()
        if fp16 and v.is_floating_point():
            v = v.half()
        sd[k] = v
    p = Path(path)
    _atomic_save(sd, p)
    return str(p)


# --------------------------------------------------------------------------------------------
# data


def make_batches(
    cfg: DistillConfig, rank: int, world: int, start_iteration: int, teacher: nn.Module
) -> Iterator[Batch]:
    """Multi-crop batches of this rank from ``training.data``, addressed by iteration so a resumed run
    replays exactly the batches an uninterrupted one would have seen.

    Uses the config's ``data``, ``crops`` and ``ibot`` sections; masks are drawn on the teacher's
    patch grid and images are normalised with the teacher's mean/std.
    """
    from training.data import build_pretrain_loader

    tc, data = cfg.section("train"), cfg.section("data")
    loader = build_pretrain_loader(
        {**data, "crops": cfg.section("crops"), **cfg.section("ibot")},
        batch_size=int(tc["batch_size_per_gpu"]),
        patch_size=int(teacher.patch_size),
        rank=rank,
        world_size=world,
        start_iter=start_iteration,
        max_iter=int(tc["iterations"]),
        num_workers=int(data.get("num_workers", 0)),
        seed=int(cfg.raw["seed"]),
        mean=getattr(teacher, "norm_mean", None),
        std=getattr(teacher, "norm_std", None),
    )
    for collated in loader:
        yield Batch(
            collated["global_crops"],
            collated.get("local_crops"),
            collated["masks"],
            2,
            None,
            collated["mask_indices"],
        )


def _sim_batches(
    cfg: DistillConfig, rank: int, start_iteration: int, teacher: nn.Module, device: torch.device
) -> Iterator[Batch]:
    """Multi-view batches rendered on ``device`` (``training.sim``); masks on the teacher's grid."""
    from training.sim import SimBatches, view_spec

    tc = cfg.section("train")
    spec = view_spec(
        cfg.section("crops"),
        cfg.section("ibot"),
        int(teacher.patch_size),
        getattr(teacher, "norm_mean", None),
        getattr(teacher, "norm_std", None),
    )
    spec.n_classes = SimLossConfig.from_dict(cfg.section("sim").get("losses")).n_classes
    batches = SimBatches(
        cfg.section("sim").get("pool") or {},
        spec,
        int(tc["batch_size_per_gpu"]),
        device=device,
        seed=int(cfg.raw["seed"]) + 7919 * rank,
        start_iter=start_iteration,
        max_iter=int(tc["iterations"]),
        log=log.info if rank == 0 else None,
    )
    for b in batches:
        yield Batch(b["global_crops"], b.get("local_crops"), b["masks"], 2, b["sim"], b["mask_indices"])


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="distillation YAML (training/configs/distill_*.yaml)")
    parser.add_argument("--output-dir", default=None, help="shortcut for output_dir=...")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many more steps (a resumable chunk)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run even though this config differs from the one it started with",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (YAML values)")


def _init_distributed(device_kind: str) -> tuple[int, int, torch.device]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device_kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _teacher_hint(mode: str, checkpoint: str | None) -> str:
    what = (
        "teacher.checkpoint is not set" if not checkpoint else f"teacher checkpoint not found: {checkpoint}"
    )
    if mode == "heads":
        need = (
            "mode: heads distils a teacher with its DINO/iBOT heads, i.e. the output directory of a "
            "`dinov3-train pretrain` run. Train one first, e.g.\n"
            "  dinov3-train pretrain --config training/configs/vits16_1gpu.yaml   (writes runs/vits16_1gpu)\n"
            "  dinov3-train pretrain --config training/configs/tiny_cpu.yaml      (a CPU-sized try, runs/tiny_cpu)\n"
            "then pass it: teacher.checkpoint=runs/vits16_1gpu. For released backbone-only weights "
            "(no heads) use mode: features, e.g. training/configs/distill_features_vitl16.yaml"
        )
    else:
        need = (
            "mode: features distils any backbone file dinov3_ros.models.load_backbone reads (e.g. the "
            "official dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth, a gated download from Meta) or a "
            "`dinov3-train pretrain` output directory: teacher.checkpoint=/path/to/it"
        )
    return f"{what}. {need}"


def check_resume(cfg: DistillConfig) -> list[str]:
    """Refuse to resume students whose run started under another config (unless
    ``train.allow_config_change``); keeps the old ``config.yaml`` next to the new one when allowed."""
    from training.config import check_resume_config

    out = cfg.output_dir
    if not any((out / "students" / s.name / "checkpoint.pt").is_file() for s in cfg.students):
        return []
    allow = bool(cfg.section("train").get("allow_config_change"))
    changes = check_resume_config(
        out / "config.yaml",
        cfg.raw,
        RESUME_MAY_CHANGE,
        allow,
        f"to start over, use a new output_dir or remove {out / 'students'}",
    )
    if dist.is_initialized():
        dist.barrier()
    if changes and (not dist.is_initialized() or dist.get_rank() == 0):
        n = len(list(out.glob("config.before-*.yaml")))
        (out / "config.yaml").replace(out / f"config.before-{n}.yaml")
        log.info("resuming under a changed config (old one kept as config.before-%d.yaml): %s", n, changes)
    return changes


def run(
    cfg: DistillConfig,
    *,
    device: str = "auto",
    max_steps: int | None = None,
    teacher: Teacher | None = None,
) -> Distiller:
    """Build (or resume) the distiller and train until done or ``max_steps`` more steps ran; exports the
    students when the last iteration is reached."""
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    rank, world, dev = _init_distributed(kind)
    torch.manual_seed(int(cfg.raw["seed"]) + rank)
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    check_resume(cfg)
    if teacher is None:
        tsec = cfg.section("teacher")
        ck = tsec.get("checkpoint")
        if not ck or not Path(ck).exists():
            raise ConfigError(_teacher_hint(cfg.mode, ck))
        with setup_errors(f"the teacher from {ck}"):
            teacher = load_teacher(
                tsec["checkpoint"],
                tsec.get("arch"),
                need_heads=cfg.mode == "heads",
                overrides=tsec.get("overrides"),
            )
    with setup_errors("the students"):
        d = Distiller(cfg, teacher, dev)
        resumed = d.load_checkpoint()
    if rank == 0:
        from training.config import save_config

        save_config(cfg.raw, cfg.output_dir / "config.yaml")
    tc = d.train_cfg
    total = int(tc["iterations"])
    if rank == 0:
        log.info(
            "distill: %s, students %s (on this rank: %s), mode %s, world %d, at %d/%d",
            "resume" if resumed else "start",
            [s.name for s in cfg.students],
            list(d.students),
            cfg.mode,
            world,
            d.iteration,
            total,
        )
    stop = total if max_steps is None else min(total, d.iteration + max_steps)
    if d.iteration < stop:
        t0, n0 = time.perf_counter(), d.iteration
        batches = (
            _sim_batches(cfg, rank, d.iteration, teacher.backbone, dev)
            if cfg.section("sim").get("enabled")
            else make_batches(cfg, rank, world, d.iteration, teacher.backbone)
        )
        for batch in batches:
            d.step(batch, sync=False)
            late = tc.get("max_seconds") is not None and time.perf_counter() - t0 > float(tc["max_seconds"])
            save = d.iteration % int(tc["checkpoint_period"]) == 0 or d.iteration >= stop or late
            log_now = d.iteration % int(tc["log_period"]) == 0 or d.iteration == stop
            # read the queued losses before anything is written (a non-finite one raises here)
            rows = d.flush() if save or log_now else []
            if log_now and rank == 0:
                m = rows[-1][1]
                rate = (d.iteration - n0) / max(time.perf_counter() - t0, 1e-9)
                mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
                log.info(
                    "it %d/%d %.2f it/s mem %.1f GiB %s",
                    d.iteration,
                    total,
                    rate,
                    mem,
                    {n: {k: round(v, 4) for k, v in mm.items()} for n, mm in m.items()},
                )
            if save:
                d.save_checkpoint()
            if d.iteration >= stop:
                break
            if late:
                log.info("stopped by train.max_seconds at iteration %d; run again to continue", d.iteration)
                break
    d.flush()
    if d.iteration >= total:
        d.export(fp16=bool(cfg.section("export").get("fp16", True)))
    return d


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    overrides = list(args.overrides or [])
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.allow_config_change:
        overrides.append("train.allow_config_change=true")
    try:
        cfg = DistillConfig.from_dict(load_config(args.config), overrides)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e) if str(e).startswith("bad ") else f"bad config: {e}"
        print(f"dinov3-train distill: {msg}", file=sys.stderr)
        return 2
    try:
        d = run(cfg, device=args.device, max_steps=args.max_steps)
    except ConfigError as e:
        print(f"dinov3-train distill: {e}", file=sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 2
    done = d.iteration >= int(d.train_cfg["iterations"])
    if d.rank == 0:
        print(json.dumps({"iteration": d.iteration, "done": done, "output_dir": str(cfg.output_dir)}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
