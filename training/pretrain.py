"""``dinov3-train pretrain``: DINOv3 self-supervised pretraining loop (1 process, torchrun, FSDP2).

dinov3-train pretrain --config training/configs/vits16_1gpu.yaml optim.lr=1e-4
torchrun --nproc_per_node 4 -m training.cli pretrain --config ... train.output_dir=runs/x
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import (
    find_latest_checkpoint,
    load_backbone_weights,
    load_checkpoint,
    save_checkpoint,
    save_full_state_dict,
)
from .config import (
    RESUME_MAY_CHANGE,
    ConfigError,
    check_resume_config,
    load_config,
    save_config,
    setup_errors,
    validate,
)
from .data import build_pretrain_loader
from .distributed import (
    barrier,
    get_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from .logger import MetricLogger
from .meta_arch import SSLMetaArch
from .parallel import (
    GradientAverager,
    apply_activation_checkpointing,
    broadcast_module_state,
    compile_blocks,
    shard_model,
)
from .param_groups import build_param_groups
from .schedules import build_schedules

__all__ = [
    "NonFiniteLossError",
    "PretrainState",
    "add_arguments",
    "build_training",
    "flush_scalars",
    "main",
    "run_pretraining",
    "train_step",
]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN/inf; no checkpoint is written for that iteration."""


class PretrainState:
    """Everything the loop needs: model, optimizer, schedules, device, and run bookkeeping."""

    def __init__(
        self,
        cfg: dict[str, Any],
        model: SSLMetaArch,
        optimizer: torch.optim.Optimizer,
        schedules: dict,
        device: torch.device,
        fsdp: bool,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.cfg, self.model, self.optimizer, self.schedules = cfg, model, optimizer, schedules
        self.device, self.fsdp, self.autocast_dtype = device, fsdp, autocast_dtype
        self.iteration = 0
        self.gram_updates = 0
        self.n_skipped = 0
        self.parallel = "fsdp" if fsdp else "none"  # none | ddp | fsdp
        self.grad_sync: GradientAverager | None = None
        # per step, on the device until flush_scalars: (iteration, keys, values, norm keys, norms,
        # finite flag, host-side scalars)
        self.pending: list[tuple] = []


def validate_config(cfg: dict[str, Any]) -> None:
    """Check types and ranges (numeric strings become numbers, in place) and reject settings that would
    not do what they say (raises :class:`training.config.ConfigError`, a ``ValueError``)."""
    checked = validate(cfg)
    cfg.clear()
    cfg.update(checked)
    gc = cfg["gram"]
    freq, first = int(gc.get("update_frequency", 0)), int(gc.get("it_first_update", 0))
    if gc.get("use") and gc.get("rep_update", True) and freq > 0 and first % freq:
        fires = -(-first // freq) * freq
        raise ConfigError(
            f"gram.it_first_update ({first}) is not a multiple of gram.update_frequency ({freq}): the "
            f"Gram teacher is refreshed when (iteration + 1) is a multiple of update_frequency, so the "
            f"first refresh would come at {fires}, not {first}"
        )


def trainable_modules(model: SSLMetaArch) -> torch.nn.ModuleDict:
    """The student's parts (backbone, dino_head, ibot_head) plus the simulator heads when enabled."""
    parts = dict(model.student.items())
    if model.sim is not None:
        parts["sim"] = model.sim
    return torch.nn.ModuleDict(parts)


#: Parameters + gradients + AdamW moments of the student (fp32) and the teachers' weights must stay
#: under this fraction of one GPU's memory for ``train.parallel: auto`` to pick DDP over FSDP2.
DDP_MEMORY_FRACTION = 0.35


def parallel_mode(cfg: dict[str, Any], model: SSLMetaArch, device: torch.device) -> str:
    """``none`` (one process), ``ddp`` (replicas, gradients averaged) or ``fsdp`` (FSDP2 shards) from
    ``train.parallel`` and the older ``train.fsdp``; ``auto`` under torchrun picks DDP when the model's
    training state fits comfortably on one device (:data:`DDP_MEMORY_FRACTION`), FSDP2 otherwise."""
    t = cfg["train"]
    mode, fsdp_opt = str(t.get("parallel", "auto")), t.get("fsdp", "auto")
    if mode == "auto" and fsdp_opt is True:
        mode = "fsdp"
    if mode != "auto":
        if mode == "none" and is_distributed():
            raise RuntimeError(
                "train.parallel=none under torchrun would train unrelated copies: use ddp or fsdp"
            )
        return mode
    if not is_distributed():
        return "none"
    if fsdp_opt is False or device.type != "cuda":
        return "ddp"
    student = sum(p.numel() for p in trainable_modules(model).parameters())
    others = sum(p.numel() for p in model.parameters()) - student
    need = 16 * student + 4 * others  # fp32 student weights, grads, two Adam moments; teacher weights
    return (
        "ddp"
        if need < DDP_MEMORY_FRACTION * torch.cuda.get_device_properties(device).total_memory
        else "fsdp"
    )


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


def build_training(cfg: dict[str, Any], backbone: torch.nn.Module | None = None) -> PretrainState:
    """Build model (student/teacher/Gram teacher), load initial weights, apply AC/compile/FSDP, optimizer
    and schedules. Call after :func:`training.distributed.init_distributed`."""
    validate_config(cfg)
    t = cfg["train"]
    device = _device()
    if t.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed = int(t["seed"]) + get_rank()
    torch.manual_seed(seed)  # numpy and python too: a run is reproducible whatever draws from them
    np.random.seed(seed)
    random.seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = SSLMetaArch(cfg, backbone=backbone)
    pre = cfg["model"].get("pretrained")
    if pre:
        # a .pth: backbone only; a pretraining checkpoint dir: its EMA teacher's backbone and both heads
        names = ("backbone", "dino_head", "ibot_head") if Path(pre).is_dir() else ("backbone",)
        for name in names:
            load_backbone_weights(model.student[name], pre, prefix=f"teacher.{name}.")
            model.teacher[name].load_state_dict(model.student[name].state_dict())
    if model.gram_teacher is not None:
        if cfg["gram"].get("ckpt"):
            load_backbone_weights(model.gram_teacher, cfg["gram"]["ckpt"])
        else:
            model.gram_teacher.load_state_dict(model.teacher.backbone.state_dict())
    model.to(device)
    mode = parallel_mode(cfg, model, device)
    fsdp = mode == "fsdp"
    if mode in ("fsdp", "ddp") and not is_distributed():
        raise RuntimeError(f"train.parallel={mode} needs a process group: launch with torchrun")
    grad_sync = None
    if mode == "ddp":
        broadcast_module_state([model])  # identical replicas (each rank drew its own initialisation)
        grad_sync = GradientAverager(trainable_modules(model).parameters())
    if t.get("activation_checkpointing"):
        apply_activation_checkpointing(model.student.backbone, t["activation_checkpointing"])
    if t.get("compile"):
        compile_blocks(
            [model.student.backbone, model.teacher.backbone, model.student.dino_head, model.student.ibot_head]
        )
    if fsdp:
        mods = [
            model.student.backbone,
            model.student.dino_head,
            model.student.ibot_head,
            model.teacher.backbone,
            model.teacher.dino_head,
            model.teacher.ibot_head,
        ]
        if model.gram_teacher is not None:
            mods.append(model.gram_teacher)
        if model.sim is not None:
            mods.append(model.sim)
        shard_model(mods, t.get("param_dtype", "bf16"), t.get("reduce_dtype", "fp32"))
    autocast_dtype = None
    if not fsdp and device.type == "cuda" and t.get("param_dtype", "bf16") != "fp32":
        autocast_dtype = _DTYPES[t["param_dtype"]]
    o = cfg["optim"]
    groups = build_param_groups(
        trainable_modules(model), float(o["layer_decay"]), float(o["patch_embed_lr_mult"])
    )
    for g in groups:
        g.pop("names")
    fused = device.type == "cuda" and not fsdp  # sharded (DTensor) parameters: foreach implementation
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(o["betas"]), weight_decay=0.0, fused=fused)
    global_batch = int(t["batch_size_per_gpu"]) * get_world_size()
    schedules = build_schedules(cfg, global_batch)
    state = PretrainState(cfg, model, optimizer, schedules, device, fsdp, autocast_dtype)
    state.parallel, state.grad_sync = mode, grad_sync
    return state


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor | None:
    params = [p for p in params if p.grad is not None]
    if not params or max_norm <= 0:
        return None
    n = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return n.full_tensor() if hasattr(n, "full_tensor") else n


def train_step(
    state: PretrainState, batch: dict[str, Any], it: int, *, sync: bool = True
) -> dict[str, float] | None:
    """One optimisation step at iteration ``it``: schedules -> losses -> finite check -> backward ->
    per-module clipping -> AdamW -> EMA -> Gram-teacher refresh. Returns logged scalars.

    ``sync=False`` keeps the step free of host-device synchronisation: the loss values, gradient norms
    and the finiteness flag stay on the device, queued in ``state``, and :func:`flush_scalars` reads
    them all at once (raising :class:`NonFiniteLossError` for the first non-finite iteration); returns
    ``None``. Steps after a non-finite loss still run until the next flush, which must come before
    anything is written."""
    cfg, model, opt, sch = state.cfg, state.model, state.optimizer, state.schedules
    lr, wd = sch["lr"](it), sch["wd"](it)
    last_mult = sch["last_layer_lr"](it)
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_multiplier"] * (last_mult if g["is_last_layer"] else 1.0)
        g["weight_decay"] = wd * g["wd_multiplier"]
    temp, mom = sch["teacher_temp"](it), sch["momentum"](it)
    local_w, gram_w = sch["local_weight"](it), sch["gram_weight"](it)
    gc = cfg["gram"]
    if model.gram_teacher is not None and not gc.get("ckpt") and isinstance(gc.get("loss_weight"), dict):
        if it == int(gc["loss_weight"].get("start_iter", 0)) and it > 0:
            model.update_gram_teacher()  # Gram switched on mid-run: anchor to the current EMA teacher
    batch = _to_device(batch, state.device)
    opt.zero_grad(set_to_none=True)
    ctx = (
        torch.autocast(state.device.type, dtype=state.autocast_dtype)
        if state.autocast_dtype is not None
        else torch.autocast(state.device.type, enabled=False)
    )
    with ctx:
        total, losses = model.forward_losses(
            batch, teacher_temp=temp, local_weight=local_w, gram_weight=gram_w
        )
    nan_it = cfg.get("debug", {}).get("nan_at_iteration")
    if nan_it is not None and it == int(nan_it):
        total = total * float("nan")
    finite = torch.isfinite(total.detach()).float()
    if is_distributed():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if sync and finite.item() < 1:
        vals = {k: float(v.detach()) for k, v in losses.items()}
        raise NonFiniteLossError(f"non-finite loss at iteration {it}: {vals}")
    total.backward()  # while the last layer is frozen its LR is 0: gradients and Adam moments are kept
    if state.grad_sync is not None:
        state.grad_sync.sync()  # DDP: every rank now holds the gradient of the global batch's mean loss
    o = cfg["optim"]
    norms = {
        f"grad_norm/{name}": _clip(
            list(mod.parameters()),
            float(o["clip_grad_backbone" if name == "backbone" else "clip_grad_heads"]),
        )
        for name, mod in trainable_modules(model).items()
    }
    opt.step()
    model.update_teacher(mom)
    if (
        model.gram_teacher is not None
        and gc.get("rep_update", True)
        and (it + 1) >= int(gc["it_first_update"])
        and int(gc["update_frequency"]) > 0
        and (it + 1) % int(gc["update_frequency"]) == 0
        and (gc.get("max_updates") is None or state.gram_updates < int(gc["max_updates"]))
    ):
        model.update_gram_teacher()
        state.gram_updates += 1
    keys = sorted(losses)
    # a fill on the device, not a host->device copy (which would wait for the queued work)
    skipped = torch.full((), float(batch.get("n_skipped", 0)), device=total.device)
    vec = torch.stack([losses[k].detach().float() for k in keys] + [skipped])
    if is_distributed():
        dist.all_reduce(vec)
        vec[:-1] /= get_world_size()
    host = dict(
        lr=lr,
        wd=wd,
        momentum=mom,
        teacher_temp=temp,
        local_weight=local_w,
        gram_weight=gram_w,
        gram_updates=float(state.gram_updates),
    )
    norm_keys = [k for k, v in norms.items() if v is not None]
    norm_vec = torch.stack([norms[k].detach().float().reshape(()) for k in norm_keys]) if norm_keys else None
    state.pending.append((it, keys, vec, norm_keys, norm_vec, finite, host))
    if not sync:
        return None
    row = flush_scalars(state)[-1]
    row.pop("iteration")
    return row


def flush_scalars(state: PretrainState) -> list[dict[str, float]]:
    """Read the scalars of the steps queued since the last flush (one host-device synchronisation),
    oldest first, each with its ``iteration``; raises :class:`NonFiniteLossError` for the first step
    whose loss was not finite (its values in the message)."""
    pending, state.pending = state.pending, []
    if not pending:
        return []
    flat = torch.cat(
        [torch.cat([v, f.reshape(1)] + ([n] if n is not None else [])) for _, _, v, _, n, f, _ in pending]
    ).tolist()
    rows: list[dict[str, float]] = []
    pos = 0
    for it, keys, vec, norm_keys, _, _, host in pending:
        vals = flat[pos : pos + vec.numel()]
        finite = flat[pos + vec.numel()]
        norm_vals = flat[pos + vec.numel() + 1 : pos + vec.numel() + 1 + len(norm_keys)]
        pos += vec.numel() + 1 + len(norm_keys)
        if finite < 1:
            shown = {k: v for k, v in zip(keys, vals[:-1])}
            raise NonFiniteLossError(f"non-finite loss at iteration {it}: {shown}")
        state.n_skipped += int(vals[-1])  # unreadable images skipped on all ranks
        out = {(k if k.startswith("stat/") else f"loss/{k}"): float(v) for k, v in zip(keys, vals[:-1])}
        out.update(dict(zip(norm_keys, norm_vals)))
        out.update(host)
        out["skipped_images"] = float(state.n_skipped)
        out["iteration"] = it
        rows.append(out)
    return rows


def _batches(cfg: dict[str, Any], state: PretrainState, start: int, stop: int, data_cfg: dict, mean, std):
    """The CPU multi-crop loader, the device-augmented one (``data.augment_on: device``), or the
    simulator's GPU batches when ``sim.enabled``."""
    t = cfg["train"]
    B = int(t["batch_size_per_gpu"])
    if cfg["sim"].get("enabled"):
        from .sim.loader import SimBatches, view_spec

        spec = view_spec(cfg["crops"], cfg["ibot"], state.model.patch_size, mean, std)
        spec.n_classes = state.model.sim.cfg.n_classes if state.model.sim is not None else spec.n_classes
        return SimBatches(
            cfg["sim"]["pool"],
            spec,
            B,
            device=state.device,
            seed=int(t["seed"]) + 7919 * get_rank(),
            start_iter=start,
            max_iter=stop,
            log=(lambda m: print(m, flush=True)) if is_main_process() else None,
        )
    common = {
        "batch_size": B,
        "patch_size": state.model.patch_size,
        "rank": get_rank(),
        "world_size": get_world_size(),
        "start_iter": start,
        "max_iter": stop,
        "num_workers": int(cfg["data"].get("num_workers", 0)),
        "seed": int(t["seed"]),
        "mean": mean,
        "std": std,
    }
    if cfg["data"].get("augment_on", "cpu") == "device":
        from .data.device_multicrop import build_device_pretrain_loader

        return build_device_pretrain_loader(data_cfg, device=state.device, **common)
    return build_pretrain_loader(data_cfg, **common)


def _past(deadline: float) -> bool:
    """Whether ``deadline`` (monotonic seconds) has passed on every rank (rank 0 decides)."""
    flag = torch.tensor([float(time.monotonic() > deadline)])
    if is_distributed():
        flag = flag.to(_device())
        dist.broadcast(flag, 0)
    return bool(flag.item())


def run_pretraining(cfg: dict[str, Any], backbone: torch.nn.Module | None = None) -> dict[str, Any]:
    """Train per ``cfg``; resumes from ``<output_dir>/ckpt`` when a checkpoint exists (``train.resume``).
    Returns ``{"iteration", "history": [scalars per logged iteration], "checkpoint", "skipped_images",
    "state": the PretrainState}``."""
    init_distributed()
    t = cfg["train"]
    out_dir = Path(t["output_dir"])
    ckpt_root = out_dir / "ckpt"
    validate_config(cfg)
    latest = find_latest_checkpoint(ckpt_root) if t.get("resume", True) else None
    if latest is not None:
        changes = check_resume_config(
            out_dir / "config.yaml",
            cfg,
            RESUME_MAY_CHANGE,
            bool(t.get("allow_config_change")),
            "to start over, use a new train.output_dir or --no-resume",
        )
        barrier()  # every rank has read the saved config before rank 0 moves it
        if changes and is_main_process():
            kept = out_dir / f"config.before-{int(latest.name):08d}.yaml"
            (out_dir / "config.yaml").replace(kept)
            print(
                f"resuming under a changed config ({len(changes)} keys; the old one is kept as {kept.name}):"
            )
            for c in changes:
                print(f"  {c}")
    with setup_errors("the model"):
        state = build_training(cfg, backbone)
        ps = state.model.patch_size
        sizes = [cfg["crops"]["global_crops_size"]] + [
            m.get("global_crops_size") for m in cfg["crops"].get("mixed") or [] if m.get("global_crops_size")
        ]
        if any(int(v) % ps for v in sizes):
            raise ConfigError(f"global crop sizes {sizes} must be multiples of the patch size {ps}")
    if is_main_process() and state.parallel != "none":
        print(f"data parallel: {state.parallel} over {get_world_size()} processes", flush=True)
    start = 0
    total_iters = int(t["iterations"])
    stop = int(t["stop_at_iteration"]) if t.get("stop_at_iteration") is not None else total_iters
    B = int(t["batch_size_per_gpu"])
    data_cfg = {
        **cfg["data"],
        "crops": cfg["crops"],
        "mask_probability": cfg["ibot"]["mask_probability"],
        "mask_ratio": cfg["ibot"]["mask_ratio"],
    }
    bb = state.model.student.backbone
    mean, std = getattr(bb, "norm_mean", None), getattr(bb, "norm_std", None)
    if latest is not None:
        with setup_errors(f"the run from its checkpoint {latest}"):
            extra = load_checkpoint(latest, state.model, state.optimizer, restore_rng=False)
        start = int(extra["next_iteration"])
        if extra["missing_optional"] and state.model.gram_teacher is not None and not cfg["gram"].get("ckpt"):
            state.model.update_gram_teacher()  # Gram stage continuing a pretraining run: anchor to its teacher
        state.gram_updates = int(extra.get("gram_updates", 0))
        state.n_skipped = int(extra.get("n_skipped", 0))
    state.iteration = start
    with setup_errors("the data"):
        data_iter = iter(_batches(cfg, state, start, min(stop, total_iters), data_cfg, mean, std))
    if latest is not None:
        from .checkpoint import restore_rng_state

        restore_rng_state(extra["rng"])
        if is_main_process():
            if start >= total_iters:
                print(f"{out_dir} is already finished (iteration {start} of {total_iters}); nothing to do")
            else:
                print(f"resumed from {latest} at iteration {start}", flush=True)
    if is_main_process():
        save_config(cfg, out_dir / "config.yaml")
    logger = MetricLogger(
        out_dir,
        total_iters,
        B * get_world_size(),
        bool(t.get("tensorboard", True)),
        enabled=is_main_process(),
    )
    history: list[dict[str, float]] = []
    period = int(t["checkpoint_period"])
    last_ckpt = latest
    it = start
    try:
        deadline = time.monotonic() + float(t["max_seconds"]) if t.get("max_seconds") else None
        end = min(stop, total_iters)
        for it in range(start, end):
            batch = next(data_iter)
            train_step(state, batch, it, sync=False)  # scalars stay on the device until the next flush
            state.iteration = it + 1
            log_now = it % int(t["log_period"]) == 0 or it + 1 == total_iters
            out_of_time = deadline is not None and _past(deadline) and it + 1 < end
            save_now = (it + 1) % period == 0 or it + 1 == total_iters or out_of_time
            if log_now or save_now or it + 1 == end:
                rows = flush_scalars(state)  # raises on a non-finite loss before anything is written
                history.extend(rows)
                if log_now:
                    last = dict(rows[-1])
                    last.pop("iteration")
                    logger.log(it, last)
            if save_now:
                extra = {
                    "next_iteration": it + 1,
                    "gram_updates": state.gram_updates,
                    "n_skipped": state.n_skipped,
                    "data_position": (it + 1) * B * get_world_size(),
                }
                last_ckpt = save_checkpoint(
                    ckpt_root, it + 1, state.model, state.optimizer, extra, int(t.get("keep_last", 3))
                )
            if out_of_time:
                if is_main_process():
                    print(f"stopped by train.max_seconds after iteration {it + 1}; run again to continue")
                break
        if t.get("save_teacher", True) and state.iteration == total_iters:
            save_full_state_dict(out_dir / "teacher_backbone.pth", state.model.teacher.backbone)
    finally:
        logger.close()
    return {
        "iteration": state.iteration,
        "history": history,
        "checkpoint": last_ckpt,
        "skipped_images": state.n_skipped,
        "state": state,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config (training/configs/*.yaml)")
    parser.add_argument("--output-dir", type=Path, default=None, help="shortcut for train.output_dir=...")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run even though this config differs from the one it started with",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (YAML values)")


def main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.no_resume:
        overrides.append("train.resume=false")
    if args.allow_config_change:
        overrides.append("train.allow_config_change=true")
    try:
        cfg = load_config(args.config, overrides)
        validate_config(cfg)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e) if str(e).startswith("bad ") else f"bad config: {e}"
        print(f"dinov3-train pretrain: {msg}", file=sys.stderr)
        return 2
    main_rank = True
    try:
        result = run_pretraining(cfg)
        main_rank = is_main_process()
        if is_distributed():
            dist.barrier()  # every rank done before any tears its process group down
    except ConfigError as e:
        if is_main_process():
            print(f"dinov3-train pretrain: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(
            f"dinov3-train pretrain: stopping: {e}; the last good checkpoint is left intact", file=sys.stderr
        )
        return 3
    finally:
        if is_distributed():
            dist.destroy_process_group()
    if main_rank:
        print(
            f"done: iteration {result['iteration']}, skipped images {result['skipped_images']}, "
            f"checkpoint {result['checkpoint']}"
        )
    return 0
