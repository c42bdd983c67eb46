"""Pretraining configuration: defaults, YAML files and ``section.key=value`` command-line overrides."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULTS", "apply_overrides", "load_config", "merge", "save_config"]

#: Every key a pretraining config may set (values are the defaults). Sections listed in ``FREE_FORM``
#: accept any keys.
DEFAULTS: dict[str, Any] = {
    "model": {
        "arch": "vits16",
        # kwargs of dinov3_ros.models.build_backbone (drop_path_rate, rope_rescale, rope_shift, rope_jitter, ...)
        "backbone": {"drop_path_rate": 0.0, "rope_rescale": 2.0},
        "pretrained": None,  # .pth or pretraining checkpoint dir: initial student + teacher backbone
    },
    "dino": {
        "loss_weight": 1.0,
        "n_prototypes": 65536,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "norm_last_layer": False,  # unit-norm prototypes (DINOv1/v2); DINOv3 uses raw ones
        "student_temp": 0.1,
        "local_weight": 1.0,  # number or schedule dict (training.schedules)
        "koleo_loss_weight": 0.1,
        "koleo_distributed": False,
        "koleo_group_size": 16,
    },
    "ibot": {
        "loss_weight": 1.0,
        "n_prototypes": 65536,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "norm_last_layer": False,
        "mask_probability": 0.5,
        "mask_ratio": [0.1, 0.5],
    },
    "gram": {
        "use": False,
        "loss_weight": 0.0,  # number or schedule dict
        "ckpt": None,  # Gram teacher backbone (.pth or checkpoint dir); None: copy of the EMA teacher
        "rep_update": True,
        "it_first_update": 0,
        "update_frequency": 10000,
        "max_updates": None,  # None: unlimited (as the reference); N: at most N refreshes
        "normalize": True,
        "img_level": True,
        "remove_neg": False,
        "always_compute": False,  # also compute (and log) the Gram loss while its weight is 0
    },
    "teacher": {"temp": 0.07, "warmup_temp": 0.04, "warmup_iters": 0},
    "optim": {
        "lr": 5.0e-5,
        "scaling_rule": "sqrt_wrt_1024",
        "schedule": "constant",
        "warmup_iters": 0,
        "warmup_kind": "linear",
        "min_lr": 1.0e-6,
        "weight_decay": 0.04,
        "weight_decay_end": 0.04,
        "momentum_teacher": 0.994,
        "final_momentum_teacher": 0.994,
        "betas": [0.9, 0.99],
        "layer_decay": 0.98,
        "patch_embed_lr_mult": 0.2,
        "clip_grad_backbone": 3.0,
        "clip_grad_heads": 3.0,
        "freeze_last_layer_iters": 0,
    },
    "crops": {
        "global_crops_size": 256,
        "local_crops_size": 112,
        "local_crops_number": 8,
        "global_crops_scale": [0.32, 1.0],
        "local_crops_scale": [0.05, 0.32],
        "gram_teacher_crops_size": None,
        "horizontal_flips": False,
        "photometric": True,  # colour jitter, grayscale, blur, solarize (false: geometric crops only)
        "mixed": [],  # high-res adaptation: list of {global_crops_size, local_crops_size, gram_teacher_crops_size, ratio}
    },
    "data": {"sources": [{"type": "procedural", "weight": 1.0}], "num_workers": 4},
    "train": {
        "output_dir": "runs/pretrain",
        "iterations": 1000,
        "batch_size_per_gpu": 64,
        "seed": 0,
        "fsdp": "auto",  # auto: when launched with torchrun; true; false
        "param_dtype": "bf16",
        "reduce_dtype": "fp32",
        "activation_checkpointing": False,  # false | full
        "compile": False,
        "checkpoint_period": 1000,
        "keep_last": 3,
        "log_period": 10,
        "tensorboard": True,
        "save_teacher": True,
        "resume": True,
        "deterministic": False,
        "stop_at_iteration": None,  # end this run early (the schedules still span train.iterations)
        "max_seconds": None,  # checkpoint and stop after this much wall time (resumable), e.g. a time slot
    },
    # the simulator as a second teacher (training.sim; our addition, off in the paper configs)
    "sim": {
        "enabled": False,
        "losses": {},  # training.sim.SimLossConfig fields (weights, margins, temperature)
        "pool": {},  # training.sim.loader.DEFAULT_POOL fields (size, resolution, seed, renderer)
    },
    "debug": {"nan_at_iteration": None},  # test hook: poison the loss at this iteration
}
FREE_FORM = {
    "model.backbone",
    "data.sources",
    "crops.mixed",
    "dino.local_weight",
    "gram.loss_weight",
    "gram.ckpt",
    "model.pretrained",
    "sim.losses",
    "sim.pool",
    "data.pool",
}


def merge(
    base: dict[str, Any], update: Mapping[str, Any], path: str = "", strict: bool = True
) -> dict[str, Any]:
    """Recursive merge of ``update`` into a copy of ``base``; unknown keys raise ``KeyError`` when strict."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{path}.{k}" if path else str(k)
        free = key in FREE_FORM
        if strict and k not in out and not free:
            raise KeyError(f"unknown config key {key!r}")
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v, key, strict and not free)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to ``cfg``."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        nested: dict[str, Any] = {}
        cur = nested
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(raw)
        cfg = merge(cfg, nested)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults <- YAML file (optional ``_base_: other.yaml`` relative to it) <- overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = merge(cfg, _read_yaml(Path(path)))
    return apply_overrides(cfg, overrides)


def layered(
    defaults: Mapping[str, Any], raw: Mapping[str, Any] | None, overrides: Sequence[str], what: str
) -> dict[str, Any]:
    """``defaults`` <- ``raw`` <- ``section.key=value`` overrides, unknown keys rejected as
    ``ValueError("bad <what> config: ...")``."""
    data = dict(raw or {})
    data.pop("_base_", None)
    try:
        return apply_overrides(merge(copy.deepcopy(dict(defaults)), data), list(overrides))
    except KeyError as e:
        raise ValueError(f"bad {what} config: {e.args[0]}") from None


def read_yaml_layers(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config with its ``_base_: other.yaml`` chain merged in (bases first), no defaults applied."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config must be a mapping")
    base = data.pop("_base_", None)
    if base:
        data = merge(read_yaml_layers(p.parent / base), data, strict=False)
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping")
    base = data.pop("_base_", None)
    if base:
        data = merge(merge(copy.deepcopy(DEFAULTS), _read_yaml(path.parent / base)), data)
    return data


def save_config(cfg: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    os.replace(tmp, path)
