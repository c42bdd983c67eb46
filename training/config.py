"""Pretraining configuration: defaults, YAML files and ``section.key=value`` command-line overrides."""

from __future__ import annotations

import contextlib
import copy
import difflib
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "Rule",
    "apply_overrides",
    "config_changes",
    "load_config",
    "merge",
    "save_config",
    "validate",
    "validate_values",
]


class ConfigError(ValueError, KeyError):
    """A config that cannot be used: unknown key, wrong type, value out of range, or a changed config
    on resume. Its message is meant for the user as is (no traceback)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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
        "object_zoom": 0.0,  # sim pool only: fraction of samples whose crops zoom on one object
        "mixed": [],  # high-res adaptation: list of {global_crops_size, local_crops_size, gram_teacher_crops_size, ratio}
    },
    "data": {
        "sources": [{"type": "procedural", "weight": 1.0}],
        "num_workers": 4,
        "augment_on": "cpu",  # cpu: workers build the crops | device: workers decode, the device crops
    },
    "train": {
        "output_dir": "runs/pretrain",
        "iterations": 1000,
        "batch_size_per_gpu": 64,
        "seed": 0,
        "fsdp": "auto",  # older switch: true = train.parallel fsdp; false = ddp under torchrun
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
        "allow_config_change": False,  # resume a run whose saved config.yaml differs from this one
        "parallel": "auto",  # auto | ddp | fsdp | none (auto: with torchrun, DDP when the model fits one GPU)
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
            raise ConfigError(f"unknown config key {key!r}{_suggest(str(k), out, path)}")
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
        try:
            cur[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({first})") from None
        cfg = merge(cfg, nested)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults <- YAML file (optional ``_base_: other.yaml`` relative to it) <- overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    try:
        if path is not None:
            cfg = merge(cfg, _read_yaml(Path(path)))
        cfg = apply_overrides(cfg, overrides)
    except ConfigError as e:
        raise ConfigError(f"bad pretraining config: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"bad pretraining config: {path} is not valid YAML: {e}") from None
    return validate(cfg)


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Types and ranges of a pretraining config (numeric strings converted); raises :class:`ConfigError`."""
    return validate_values(cfg, DEFAULTS, RULES, "pretraining", FREE_FORM)


def layered(
    defaults: Mapping[str, Any], raw: Mapping[str, Any] | None, overrides: Sequence[str], what: str
) -> dict[str, Any]:
    """``defaults`` <- ``raw`` <- ``section.key=value`` overrides, unknown keys rejected as
    ``ValueError("bad <what> config: ...")``."""
    data = dict(raw or {})
    data.pop("_base_", None)
    try:
        return apply_overrides(merge(copy.deepcopy(dict(defaults)), data), list(overrides))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"bad {what} config: {e.args[0]}") from None


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


@contextlib.contextmanager
def setup_errors(what: str) -> Iterator[None]:
    """A ``ValueError``/``TypeError``/``KeyError``/``FileNotFoundError`` raised while a run is being set
    up (model, weights, data sources) becomes a :class:`ConfigError` naming ``what``: these come from
    the config or the files it names and deserve a message, not a traceback. Errors of the training
    loop itself are left alone."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"cannot set up {what}: {msg}") from e


def _dotted_keys(d: Mapping[str, Any], path: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{path}.{k}" if path else str(k)
        out.append(key)
        if isinstance(v, Mapping) and key not in FREE_FORM:
            out.extend(_dotted_keys(v, key))
    return out


def _suggest(name: str, section: Mapping[str, Any], path: str) -> str:
    """`` (did you mean 'x.y'?)`` from the keys of ``section``, or the list of its keys."""
    close = difflib.get_close_matches(name, [str(k) for k in section], n=1, cutoff=0.6)
    if close:
        return f" (did you mean {(f'{path}.' if path else '') + close[0]!r}?)"
    valid = ", ".join(sorted(str(k) for k in section))
    return f"; valid keys{f' in {path!r}' if path else ''}: {valid}"


class Rule:
    """Type and range of one config value: ``kind`` is ``int``, ``num`` (int or float), ``bool``, ``str``,
    ``list`` or ``any``; ``lo``/``hi`` bound numbers (``lo_open``/``hi_open`` for strict bounds);
    ``choices`` lists the allowed values; ``null`` lets the value be ``None``."""

    def __init__(
        self,
        kind: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        choices: Sequence[Any] | None = None,
        null: bool = False,
        lo_open: bool = False,
        hi_open: bool = False,
        length: int | None = None,
    ) -> None:
        self.kind, self.lo, self.hi, self.choices, self.null = kind, lo, hi, choices, null
        self.lo_open, self.hi_open, self.length = lo_open, hi_open, length

    def check(self, key: str, value: Any) -> tuple[Any, str | None]:
        """``(coerced value, None)`` or ``(value, problem)``."""
        if value is None:
            return value, None if self.null else f"{key} must not be null"
        if self.choices is not None:
            if value not in self.choices:
                return value, f"{key} must be one of {list(self.choices)}, got {value!r}"
            return value, None
        if self.kind == "bool":
            return value, None if isinstance(value, bool) else f"{key} must be true or false, got {value!r}"
        if self.kind == "str":
            return value, None if isinstance(value, str) else f"{key} must be a string, got {value!r}"
        if self.kind == "list":
            if not isinstance(value, list):
                return value, f"{key} must be a list, got {value!r}"
            if self.length is not None and len(value) != self.length:
                return value, f"{key} must be a list of {self.length}, got {value!r}"
            if self.lo is not None or self.hi is not None:
                for v in value:
                    _, err = Rule("num", self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open).check(
                        key, v
                    )
                    if err:
                        return value, f"{err} (in {value!r})"
            return value, None
        if self.kind in ("int", "num"):
            v = value
            if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
                try:
                    v = float(v)
                except ValueError:
                    return value, f"{key} must be a number, got {value!r}"
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return value, f"{key} must be a finite number, got {value!r}"
            if self.kind == "int":
                if float(v) != int(v):
                    return value, f"{key} must be an integer, got {value!r}"
                v = int(v)
            if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
                return value, f"{key} must be {'>' if self.lo_open else '>='} {self.lo}, got {value!r}"
            if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
                return value, f"{key} must be {'<' if self.hi_open else '<='} {self.hi}, got {value!r}"
            return v, None
        return value, None


def _rule_from_default(default: Any) -> Rule | None:
    if isinstance(default, bool):
        return Rule("bool")
    if isinstance(default, (int, float)):
        return Rule("num")
    if isinstance(default, str):
        return Rule("str")
    if isinstance(default, list):
        return Rule("list")
    return None


def validate_values(
    cfg: dict[str, Any],
    defaults: Mapping[str, Any],
    rules: Mapping[str, Rule],
    what: str,
    free_form: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Check every value of ``cfg`` against ``rules`` (dotted keys) or else the type of its default;
    numeric strings are converted. Returns the converted config; raises one :class:`ConfigError` that
    lists every problem."""
    out = copy.deepcopy(cfg)
    problems: list[str] = []

    def walk(node: dict[str, Any], dflt: Mapping[str, Any], path: str) -> None:
        for k in list(node):
            key = f"{path}.{k}" if path else str(k)
            v = node[k]
            if key in rules:
                node[k], err = rules[key].check(key, v)
            elif key in free_form or k not in dflt:
                continue
            elif isinstance(dflt[k], Mapping):
                if isinstance(v, dict):
                    walk(v, dflt[k], key)
                    continue
                err = f"{key} must be a mapping, got {v!r}"
            else:
                rule = _rule_from_default(dflt[k])
                if rule is None:
                    continue
                node[k], err = rule.check(key, v)
            if err:
                problems.append(err)

    walk(out, defaults, "")
    if problems:
        raise ConfigError(f"bad {what} config: " + "; ".join(problems))
    return out


def config_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``key: old -> new`` (keys in ``ignore``
    and below them are skipped)."""
    changes: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if path in ignore:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else str(k))
        elif a != b:
            changes.append(f"{path}: {_show(a)} -> {_show(b)}")

    walk(old, new, "")
    return changes


_MISSING = object()


def _show(v: Any) -> str:
    if v is _MISSING:
        return "(absent)"
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def read_saved_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``config.yaml`` a run wrote into its output directory, or ``None`` when there is none."""
    p = Path(path)
    if not p.is_file():
        return None
    data = yaml.safe_load(p.read_text())
    return data if isinstance(data, dict) else None


def check_resume_config(
    saved_path: str | os.PathLike,
    cfg: Mapping[str, Any],
    ignore: set[str] | frozenset[str],
    allow: bool,
    restart_hint: str,
) -> list[str]:
    """Compare ``cfg`` with the config a run saved when it started; raise :class:`ConfigError` naming
    the changes unless ``allow``. Returns the changes (empty when none or nothing was saved)."""
    saved = read_saved_config(saved_path)
    if saved is None:
        return []
    changes = config_changes(saved, cfg, ignore)
    if changes and not allow:
        shown = "\n  ".join(changes[:20]) + ("\n  ..." if len(changes) > 20 else "")
        raise ConfigError(
            f"{Path(saved_path).parent} holds a run started with a different config; resuming it would "
            f"mix two configs. Changed:\n  {shown}\n"
            f"To continue this run under the new config, pass --allow-config-change (or set "
            f"train.allow_config_change=true); {restart_hint}."
        )
    return changes


_POS_INT = Rule("int", 1)
_NONNEG_INT = Rule("int", 0)
_NONNEG = Rule("num", 0)
_POS = Rule("num", 0, lo_open=True)
_UNIT = Rule("num", 0, 1)
_ITERS = Rule("num", 0)  # an int, or a fraction in (0, 1) of train.iterations
_DTYPE = Rule("str", choices=("bf16", "fp16", "fp32"))

#: Types and ranges of the pretraining keys that the type of their default does not say enough about.
#: the multi-crop settings every trainer shares (pretraining and distillation)
CROP_RULES: dict[str, Rule] = {
    "crops.global_crops_size": _POS_INT,
    "crops.local_crops_size": _POS_INT,
    "crops.local_crops_number": _NONNEG_INT,
    "crops.global_crops_scale": Rule("list", 0, 1, length=2),
    "crops.local_crops_scale": Rule("list", 0, 1, length=2),
    "crops.object_zoom": Rule("num", 0, 1),
}

RULES: dict[str, Rule] = {
    "model.arch": Rule("str"),
    "dino.n_prototypes": _POS_INT,
    "dino.hidden_dim": _POS_INT,
    "dino.bottleneck_dim": _POS_INT,
    "dino.nlayers": _POS_INT,
    "dino.student_temp": _POS,
    "dino.koleo_loss_weight": _NONNEG,
    "dino.loss_weight": _NONNEG,
    "dino.koleo_group_size": Rule("int", 1, null=True),
    "ibot.loss_weight": _NONNEG,
    "ibot.n_prototypes": _POS_INT,
    "ibot.hidden_dim": _POS_INT,
    "ibot.bottleneck_dim": _POS_INT,
    "ibot.nlayers": _POS_INT,
    "ibot.mask_probability": _UNIT,
    "ibot.mask_ratio": Rule("list", 0, 1, length=2),
    "gram.update_frequency": _NONNEG_INT,
    "gram.it_first_update": _NONNEG_INT,
    "gram.max_updates": Rule("int", 0, null=True),
    "teacher.temp": _POS,
    "teacher.warmup_temp": _POS,
    "teacher.warmup_iters": _ITERS,
    "optim.lr": _NONNEG,
    "optim.min_lr": _NONNEG,
    "optim.scaling_rule": Rule("str", choices=("sqrt_wrt_1024", "linear_wrt_256", "none")),
    "optim.schedule": Rule("str", choices=("constant", "cosine")),
    "optim.warmup_iters": _ITERS,
    "optim.warmup_kind": Rule("str", choices=("linear", "cosine")),
    "optim.weight_decay": _NONNEG,
    "optim.weight_decay_end": _NONNEG,
    "optim.momentum_teacher": _UNIT,
    "optim.final_momentum_teacher": _UNIT,
    "optim.betas": Rule("list", 0, 1, length=2, hi_open=True),
    "optim.layer_decay": Rule("num", 0, 1, lo_open=True),
    "optim.patch_embed_lr_mult": _NONNEG,
    "optim.clip_grad_backbone": _NONNEG,
    "optim.clip_grad_heads": _NONNEG,
    "optim.freeze_last_layer_iters": _ITERS,
    **CROP_RULES,
    "crops.gram_teacher_crops_size": Rule("int", 1, null=True),
    "data.num_workers": _NONNEG_INT,
    "data.augment_on": Rule("str", choices=("cpu", "device")),
    "train.output_dir": Rule("str"),
    "train.iterations": _POS_INT,
    "train.batch_size_per_gpu": _POS_INT,
    "train.seed": _NONNEG_INT,
    "train.fsdp": Rule("any", choices=("auto", True, False)),
    "train.parallel": Rule("str", choices=("auto", "ddp", "fsdp", "none")),
    "train.param_dtype": _DTYPE,
    "train.reduce_dtype": _DTYPE,
    "train.activation_checkpointing": Rule("any", choices=(False, "full")),
    "train.checkpoint_period": _POS_INT,
    "train.keep_last": Rule("int"),
    "train.log_period": _POS_INT,
    "train.stop_at_iteration": Rule("int", 1, null=True),
    "train.max_seconds": Rule("num", 0, null=True, lo_open=True),
    "debug.nan_at_iteration": Rule("int", 0, null=True),
}

#: Keys of the distillation and depth-head configs (top-level ``output_dir``) that may differ when a run
#: resumes: where and how long it runs, logging, loader workers, memory traded for recomputation.
STAGE_RESUME_MAY_CHANGE = frozenset(
    {
        "output_dir",
        "train.max_seconds",
        "train.activation_checkpointing",
        "train.log_period",
        "train.checkpoint_period",
        "train.allow_config_change",
        "data.num_workers",
    }
)

#: Keys that may differ when a run resumes (where and how long it runs, logging, loader workers, where
#: the crops are built: a run moved to a host with fewer CPU cores may move them to the device).
RESUME_MAY_CHANGE = frozenset(
    {
        "train.output_dir",
        "train.resume",
        "train.allow_config_change",
        "train.stop_at_iteration",
        "train.max_seconds",
        "train.log_period",
        "train.tensorboard",
        "train.checkpoint_period",
        "train.keep_last",
        "train.save_teacher",
        "data.num_workers",
        "data.augment_on",
        "debug",
    }
)


# --------------------------------------------------------------------------------------------
# head-training commands (`dinov3-train depth`, `dinov3-train objects`)


def head_stage_rules() -> dict[str, Rule]:
    """The value rules every head-training config shares: its output, seed and frozen backbone."""
    return {
        "output_dir": Rule("str"),
        "seed": Rule("int", 0),
        "backbone.weights": Rule("str", null=True),
        "backbone.arch": Rule("str", null=True),
    }


def add_head_stage_arguments(parser: Any, config_help: str) -> None:
    """``--config``, the ``--output-dir`` / ``--backbone`` shortcuts, ``--device`` and the overrides."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--output-dir", default=None, help="shortcut for output_dir=...")
    parser.add_argument("--backbone", default=None, help="shortcut for backbone.weights=...")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (YAML values)")


def read_head_stage_config(
    load: Callable[[str, list[str]], dict[str, Any]], args: Any, prog: str
) -> dict[str, Any] | None:
    """``load(args.config, overrides)`` with the shortcuts of :func:`add_head_stage_arguments` (and
    ``--allow-config-change`` where the command has it) applied; a bad config is printed as
    ``prog: bad config: ...`` and gives None."""
    overrides = list(args.overrides or [])
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.backbone:
        overrides.append(f"backbone.weights={args.backbone}")
    if getattr(args, "allow_config_change", False):
        overrides.append("train.allow_config_change=true")
    try:
        return load(args.config, overrides)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e) if str(e).startswith("bad ") else f"bad config: {e}"
        print(f"{prog}: {msg}", file=sys.stderr)
        return None
