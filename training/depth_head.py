"""`dinov3-train depth`: train a depth head on a frozen backbone with synthetic ground truth.

Frames come from :class:`dinov3_ros.synthetic.SceneGenerator` rendered on the fly (deterministic per
sample index, so a resumed run sees the same data); the backbone is frozen and only a
:class:`~dinov3_ros.heads.depth.LinearDepthHead` (DINOv3 linear probe) or
:class:`~dinov3_ros.heads.depth.DPTHead` is trained with SigLoss (+ optional multi-scale gradient
matching on log depth), AdamW and gradient clipping (published probe settings by default).

Held-out scenes come from a separate generator seed (disjoint from the training scenes and from
``dinov3-ros eval``'s seed); AbsRel / RMSE / δ1 on them are written to ``metrics.json``. The head is
saved with :func:`dinov3_ros.heads.depth.save_head`, recording arch, layers, depth range, input size
and normalisation. Every ``checkpoint_period`` iterations the run is checkpointed and resumes there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.config import STAGE_RESUME_MAY_CHANGE, ConfigError, setup_errors

log = logging.getLogger("dinov3.depth")

__all__ = [
    "DEFAULTS",
    "DepthTrainer",
    "SyntheticDepthDataset",
    "add_arguments",
    "build_config",
    "evaluate",
    "load_config",
    "main",
    "run",
]

#: Every key a depth-head config may set (values are the defaults). ``None`` marks free-form values.
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/depth",
    "seed": 0,
    "backbone": {
        "weights": None,  # anything dinov3_ros.models.load_backbone reads; None: random init (a baseline)
        "arch": None,  # needed with weights=None or when the file does not tell
        "overrides": None,  # build_backbone kwargs of a non-standard backbone, e.g. {depth: 2}
    },
    "head": {
        "type": "linear",  # linear | dpt
        "layers": None,  # 0-based blocks; None: linear -> [last], dpt -> default_layers(arch)
        "n_bins": 256,  # dpt: null = regression
        "min_depth": 0.001,
        "max_depth": 10.0,
        "use_bn": True,
        "features": 64,  # dpt
        "out_channels": None,  # dpt; None: [D/8, D/4, D/2, D]
        "readout": "ignore",  # dpt: ignore | add | project
    },
    "data": {
        "image_size": [224, 224],  # [H, W], multiples of 16
        "frames_per_scene": 8,
        "scene_seed": 0,  # training scenes
        "val_seed": 50_021,  # held-out scenes (disjoint from training and from dinov3-ros eval's 100003)
        "val_scenes": 8,
        "val_frames_per_scene": 2,
        "hflip": True,
        "brightness": [0.75, 1.25],
        "num_workers": 4,
        "scene": None,  # extra SceneConfig fields (photo_prob, noise_std, ...)
        # Pre-rendered packs (`dinov3-ros synth --format folder`) instead of rendering on the fly, for
        # machines without open3d: frames must already be image_size; val_folder replaces the val scenes.
        "folder": None,
        "val_folder": None,
        # "pool": frames rendered on the training device into one pool per size (training.sim), with
        # iteration k using image_sizes[k % n] and batch_sizes[k % n]; "generator": on the fly in workers
        "source": "generator",
        "image_sizes": None,  # pool source: [[H, W], ...]; None = [image_size]
        "pool": {},  # training.sim.loader.DEFAULT_POOL fields (scenes, frames_per_scene, backend, ...)
    },
    "loss": {"sig": 1.0, "gradient": 0.0, "warm_up_iters": 100},
    "optim": {
        "lr": 3.0e-4,
        "min_lr": 0.0,
        "schedule": "cosine",  # cosine | constant
        "warmup_iters": 50,
        "weight_decay": 1.0e-4,
        "betas": [0.9, 0.99],
        "clip_grad": 35.0,
    },
    "train": {
        "iterations": 1000,
        "batch_size": 16,
        "checkpoint_period": 200,
        "log_period": 20,
        "amp": "bf16",  # backbone under bf16 autocast on CUDA; the head stays fp32
        "batch_sizes": None,  # pool source: one batch size per data.image_sizes entry
        "max_seconds": None,  # checkpoint and stop after this much wall time (resumable)
        "allow_config_change": False,  # resume a run whose saved config.yaml differs from this one
    },
}

_FREE_FORM = frozenset({"backbone.overrides", "data.scene", "data.pool", "head.out_channels"})

RESUME_MAY_CHANGE = STAGE_RESUME_MAY_CHANGE


def _rules() -> dict[str, Any]:
    from training.config import Rule, head_stage_rules

    pos_int, nonneg = Rule("int", 1), Rule("num", 0)
    return {
        **head_stage_rules(),
        "head.type": Rule("str", choices=("linear", "dpt")),
        "head.layers": Rule("list", null=True),
        "head.n_bins": Rule("int", 1, null=True),
        "head.min_depth": Rule("num", 0, lo_open=True),
        "head.max_depth": Rule("num", 0, lo_open=True),
        "head.features": pos_int,
        "head.readout": Rule("str", choices=("ignore", "add", "project")),
        "data.image_size": Rule("list", 1, length=2),
        "data.frames_per_scene": pos_int,
        "data.val_scenes": pos_int,
        "data.val_frames_per_scene": pos_int,
        "data.num_workers": Rule("int", 0),
        "data.folder": Rule("str", null=True),
        "data.val_folder": Rule("str", null=True),
        "data.source": Rule("str", choices=("generator", "pool")),
        "data.image_sizes": Rule("list", null=True),
        "loss.sig": nonneg,
        "loss.gradient": nonneg,
        "loss.warm_up_iters": Rule("int", 0),
        "optim.lr": nonneg,
        "optim.min_lr": nonneg,
        "optim.schedule": Rule("str", choices=("cosine", "constant")),
        "optim.warmup_iters": Rule("num", 0),
        "optim.weight_decay": nonneg,
        "optim.betas": Rule("list", 0, 1, length=2, hi_open=True),
        "optim.clip_grad": nonneg,
        "train.iterations": pos_int,
        "train.batch_size": pos_int,
        "train.checkpoint_period": pos_int,
        "train.log_period": pos_int,
        "train.amp": Rule("str", choices=("bf16", "fp32")),
        "train.batch_sizes": Rule("list", null=True),
        "train.max_seconds": Rule("num", 0, null=True, lo_open=True),
    }


def build_config(
    raw: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Defaults <- ``raw`` <- ``section.key=value`` overrides, unknown keys rejected."""
    from training.config import layered, validate_values

    cfg = validate_values(layered(DEFAULTS, raw, overrides, "depth"), DEFAULTS, _rules(), "depth", _FREE_FORM)
    if cfg["head"]["type"] not in ("linear", "dpt"):
        raise ValueError(f"head.type must be 'linear' or 'dpt', got {cfg['head']['type']!r}")
    h, w = (int(v) for v in cfg["data"]["image_size"])
    if h % 16 or w % 16 or h <= 0 or w <= 0:
        raise ValueError(f"data.image_size must be positive multiples of 16, got {[h, w]}")
    return cfg


def load_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a depth YAML (optional ``_base_``) and apply overrides."""
    from training.config import read_yaml_layers

    return build_config(read_yaml_layers(path), overrides)


# --------------------------------------------------------------------------------------------
# data


class SyntheticDepthDataset(Dataset):
    """Item ``k`` (or ``(_, k)`` from ``training.data.IterationBatchSampler``) = flat synthetic frame
    ``k``: ``(image [3,H,W] normalised, depth [1,H,W] metres)``, with a flip/brightness augmentation
    seeded by ``(seed, k)`` when ``augment``."""

    def __init__(
        self,
        image_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        seed: int = 0,
        frames_per_scene: int = 8,
        augment: bool = True,
        hflip: bool = True,
        brightness: tuple[float, float] = (0.75, 1.25),
        scene: dict[str, Any] | None = None,
        folder: str | os.PathLike[str] | None = None,
    ) -> None:
        H, W = image_size
        if folder is not None:
            from dinov3_ros.synthetic.writers import FolderFrames

            self.gen: Any = FolderFrames(folder)
            h, w = self.gen[0].depth.shape
            if (h, w) != (H, W):
                raise ValueError(f"depth pack {folder} holds {w}x{h} frames, data.image_size wants {W}x{H}")
        else:
            from dinov3_ros.synthetic import SceneGenerator

            self.gen = SceneGenerator(
                seed=seed, width=W, height=H, frames_per_scene=frames_per_scene, **(scene or {})
            )
        self.seed = seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment, self.hflip, self.brightness = augment, hflip, tuple(brightness)

    def __len__(self) -> int:
        return 2**31 - 1

    def frame(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.gen[int(k) % len(self.gen)] if hasattr(self.gen, "__len__") else self.gen[int(k)]
        img = torch.from_numpy(np.ascontiguousarray(f.rgb)).permute(2, 0, 1).float() / 255.0
        depth = torch.from_numpy(np.ascontiguousarray(f.depth)).float()[None]
        return img, depth

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        k = index[1] if isinstance(index, (tuple, list)) else index
        img, depth = self.frame(int(k))
        if self.augment:
            from training.data import sample_seed

            g = torch.Generator().manual_seed(sample_seed(self.seed + 17, int(k)))
            lo, hi = self.brightness
            img = (img * (lo + (hi - lo) * float(torch.rand((), generator=g)))).clamp(0, 1)
            if self.hflip and float(torch.rand((), generator=g)) < 0.5:
                img, depth = img.flip(-1), depth.flip(-1)
        return (img - self.mean) / self.std, depth


def _batches(cfg: dict[str, Any], tr: DepthTrainer, stop: int):
    """Training batches from iteration ``tr.iteration``: GPU-rendered pools or the on-the-fly dataset."""
    d, t = cfg["data"], cfg["train"]
    if d["source"] == "pool":
        from training.sim.depth_batches import PoolDepthBatches

        sizes = d["image_sizes"] or [d["image_size"]]
        return PoolDepthBatches(
            {
                **dict(d["pool"] or {}),
                "seed": int(d["scene_seed"]),
                "frames_per_scene": int(d["frames_per_scene"]),
            },
            sizes,
            t["batch_sizes"] or [int(t["batch_size"])] * len(sizes),
            seed=int(cfg["seed"]),
            mean=tr.mean,
            std=tr.std,
            device=tr.device,
            start=tr.iteration,
            stop=stop,
            hflip=bool(d["hflip"]),
            brightness=tuple(d["brightness"]),
        )
    if d["source"] != "generator":
        raise ValueError(f"data.source must be 'generator' or 'pool', got {d['source']!r}")
    ds = SyntheticDepthDataset(
        tuple(d["image_size"]),
        tr.mean,
        tr.std,
        seed=int(d["scene_seed"]),
        frames_per_scene=int(d["frames_per_scene"]),
        augment=True,
        hflip=bool(d["hflip"]),
        brightness=tuple(d["brightness"]),
        scene=d["scene"],
        folder=d["folder"],
    )
    return _loader(ds, int(t["batch_size"]), tr.iteration, stop, int(cfg["seed"]), int(d["num_workers"]))


def _loader(ds: Dataset, batch_size: int, start: int, total: int, seed: int, workers: int) -> DataLoader:
    from training.data import IterationBatchSampler

    sampler = IterationBatchSampler(batch_size, 0, 1, start, (1.0,), seed, total)
    return DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # its own generator: the loader does not draw from the global RNG, so a resumed run's stream
        # matches an uninterrupted one (the frames are addressed by sample index either way)
        generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(start)),
    )


# --------------------------------------------------------------------------------------------
# model


def _load_backbone(bcfg: dict[str, Any]) -> nn.Module:
    from dinov3_ros.models import build_backbone

    kw = dict(bcfg.get("overrides") or {})
    if bcfg.get("weights"):
        from dinov3_ros.models.loading import load_backbone

        return load_backbone(bcfg["weights"], bcfg.get("arch"), **kw)
    if not bcfg.get("arch"):
        raise ValueError("backbone.arch is required when backbone.weights is null (random init)")
    bb = build_backbone(bcfg["arch"], **kw)
    if hasattr(bb, "init_weights"):
        bb.init_weights()
    return bb


def head_layers(cfg: dict[str, Any], backbone: nn.Module) -> list[int]:
    """Block indices the head reads (config, or the arch defaults)."""
    from dinov3_ros.heads.depth import default_layers

    h = cfg["head"]
    n_blocks = int(getattr(backbone, "n_blocks", 0) or len(getattr(backbone, "blocks", [])))
    if h["layers"] is not None:
        layers = [int(i) for i in h["layers"]]
        bad = [i for i in layers if not 0 <= i < n_blocks]
        if bad:
            raise ValueError(
                f"head.layers {bad} outside 0..{n_blocks - 1} of {getattr(backbone, 'arch', '?')}"
            )
        return layers
    if h["type"] == "linear":
        return [n_blocks - 1]
    arch = str(getattr(backbone, "arch", ""))
    if n_blocks == 12 or arch not in ("vits16", "vitb16", "vitl16", "vit7b16"):
        return default_layers(n_blocks=n_blocks)
    return default_layers(arch)


def build_head(cfg: dict[str, Any], backbone: nn.Module, layers: list[int]) -> nn.Module:
    from dinov3_ros.heads.depth import DPTHead, LinearDepthHead

    h = cfg["head"]
    dim, ps = int(backbone.embed_dim), int(backbone.patch_size)
    if h["type"] == "linear":
        return LinearDepthHead(
            dim,
            n_bins=int(h["n_bins"] or 256),
            min_depth=h["min_depth"],
            max_depth=h["max_depth"],
            n_layers=len(layers),
            use_bn=bool(h["use_bn"]),
            patch_size=ps,
        )
    if len(layers) != 4:
        raise ValueError(f"a DPT head reads 4 layers, got {layers}")
    return DPTHead(
        dim,
        features=int(h["features"]),
        out_channels=h["out_channels"],
        readout=h["readout"],
        use_bn=bool(h["use_bn"]),
        n_bins=None if h["n_bins"] is None else int(h["n_bins"]),
        min_depth=h["min_depth"],
        max_depth=h["max_depth"],
        patch_size=ps,
        layers=layers,
    )


class DepthTrainer:
    """Frozen backbone + trainable head, optimiser, schedule, checkpoint/resume."""

    def __init__(
        self, cfg: dict[str, Any], device: torch.device | str = "cpu", backbone: nn.Module | None = None
    ):
        from dinov3_ros.heads.losses import SigLoss
        from training.schedules import Schedule, run_iters

        self.cfg = cfg
        self.device = torch.device(device)
        self.backbone = (backbone if backbone is not None else _load_backbone(cfg["backbone"])).to(
            self.device
        )
        self.backbone.eval().requires_grad_(False)
        self.arch = str(cfg["backbone"].get("arch") or getattr(self.backbone, "arch", "custom"))
        self.layers = head_layers(cfg, self.backbone)
        self.head = build_head(cfg, self.backbone, self.layers).to(self.device)
        o, total = cfg["optim"], int(cfg["train"]["iterations"])
        self.optimizer = torch.optim.AdamW(
            self.head.parameters(),
            lr=float(o["lr"]),
            betas=tuple(o["betas"]),
            weight_decay=float(o["weight_decay"]),
            fused=self.device.type == "cuda",
        )
        warm = run_iters(o["warmup_iters"], total)
        cosine = o["schedule"] == "cosine"
        self.lr = Schedule(
            peak=float(o["lr"]),
            end=float(o["min_lr"]) if cosine else float(o["lr"]),
            warmup_iters=warm,
            cosine_iters=max(total - warm, 1) if cosine else 0,
        )
        self.sig = SigLoss(warm_up_iters=int(cfg["loss"]["warm_up_iters"])).to(self.device)
        self.iteration = 0
        self.mean = tuple(float(v) for v in getattr(self.backbone, "norm_mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in getattr(self.backbone, "norm_std", (0.229, 0.224, 0.225)))

    @property
    def ckpt_path(self) -> Path:
        return Path(self.cfg["output_dir"]) / "checkpoint.pt"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> Any:
        enabled = self.device.type == "cuda" and self.cfg["train"]["amp"] == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled):
            if self.cfg["head"]["type"] == "dpt" and self.cfg["head"]["readout"] != "ignore":
                outs = self.backbone.get_intermediate_layers(
                    images, n=self.layers, reshape=True, return_class_token=True
                )
                return [(p.float(), c.float()) for p, c in outs]
            outs = self.backbone.get_intermediate_layers(images, n=self.layers, reshape=True)
        return [o.float() for o in outs]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.features(images)
        return self.head(feats, images.shape[-2:])

    def loss(self, pred: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
        from dinov3_ros.heads.losses import gradient_matching_loss

        lc = self.cfg["loss"]
        valid = depth > 0
        terms = {"sig": self.sig(pred, depth, valid)}
        total = lc["sig"] * terms["sig"]
        if lc["gradient"]:
            lp = torch.log(pred.clamp_min(1e-3))
            lt = torch.log(depth.clamp_min(1e-3))
            terms["gradient"] = gradient_matching_loss(lp, lt, valid)
            total = total + lc["gradient"] * terms["gradient"]
        terms["loss"] = total
        return terms

    def step(self, images: torch.Tensor, depth: torch.Tensor) -> dict[str, float]:
        self.head.train()
        images, depth = images.to(self.device, non_blocking=True), depth.to(self.device, non_blocking=True)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr(self.iteration)
        terms = self.loss(self.predict(images), depth)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"non-finite depth loss at iteration {self.iteration}")
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        clip = float(self.cfg["optim"]["clip_grad"] or 0)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.head.parameters(), clip)
        self.optimizer.step()
        self.iteration += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    # ---------------------------------------------------------------- persistence
    def save_checkpoint(self) -> None:
        from training.checkpoint import capture_rng_state

        state = {
            "iteration": self.iteration,
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sig": self.sig.state_dict(),
            "rng": capture_rng_state(),
            "arch": self.arch,
            "head_type": self.cfg["head"]["type"],
        }
        _atomic_save(state, self.ckpt_path)

    def load_checkpoint(self) -> bool:
        from training.checkpoint import restore_rng_state

        if not self.ckpt_path.is_file():
            return False
        from training.checkpoint import safe_load

        state = safe_load(self.ckpt_path, "depth-head checkpoint", map_location=self.device)
        if state.get("head_type") != self.cfg["head"]["type"]:
            raise ValueError(
                f"{self.ckpt_path} holds a {state.get('head_type')} head, the config wants {self.cfg['head']['type']}"
            )
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sig.load_state_dict(state["sig"])
        restore_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        return True

    def head_meta(self) -> dict[str, Any]:
        H, W = (int(v) for v in self.cfg["data"]["image_size"])
        return {
            "arch": self.arch,
            "layers": list(self.layers),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "input_size": [H, W],
            "trained_on": f"dinov3_ros.synthetic (seed {int(self.cfg['data']['scene_seed'])})",
            "iterations": self.iteration,
            "backbone_weights": str(self.cfg["backbone"].get("weights")),
        }

    def save_head(self, path: str | os.PathLike[str]) -> None:
        from dinov3_ros.heads.depth import save_head

        save_head(path, self.head, self.head_meta())


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(trainer: DepthTrainer, *, batch_size: int = 8) -> dict[str, float]:
    """AbsRel / RMSE / δ1 (and the other published depth metrics) on held-out synthetic scenes."""
    from dinov3_ros.eval.metrics import depth_metrics, mean_metrics

    d = trainer.cfg["data"]
    ds = SyntheticDepthDataset(
        tuple(d["image_size"]),
        trainer.mean,
        trainer.std,
        seed=int(d["val_seed"]),
        frames_per_scene=int(d["val_frames_per_scene"]),
        augment=False,
        scene=d["scene"],
        folder=d["val_folder"],
    )
    n = int(d["val_scenes"]) * int(d["val_frames_per_scene"])
    if d["val_folder"] is not None:
        n = len(ds.gen)
    trainer.head.eval()
    items = []
    for s in range(0, n, batch_size):
        batch = [ds[k] for k in range(s, min(n, s + batch_size))]
        imgs = torch.stack([b[0] for b in batch]).to(trainer.device)
        pred = trainer.predict(imgs).float().cpu().numpy()
        for p, (_, gt) in zip(pred, batch):
            items.append(depth_metrics(np.clip(p[0], 1e-3, None), gt[0].numpy()))
    trainer.head.train()
    out = mean_metrics(items)
    out["frames"] = len(items)
    return out


# --------------------------------------------------------------------------------------------
# CLI


def run(
    cfg: dict[str, Any], *, device: str = "auto", max_steps: int | None = None
) -> tuple[DepthTrainer, dict | None]:
    """Train (resuming when a checkpoint exists) until done or ``max_steps`` more steps; when done,
    evaluate, save ``depth_head.pt`` and ``metrics.json``."""
    from training.config import save_config

    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    torch.manual_seed(int(cfg["seed"]))
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(cfg["output_dir"])
    if (out / "checkpoint.pt").is_file():
        from training.config import check_resume_config

        changes = check_resume_config(
            out / "config.yaml",
            cfg,
            RESUME_MAY_CHANGE,
            bool(cfg["train"].get("allow_config_change")),
            f"to start over, use a new output_dir or remove {out / 'checkpoint.pt'}",
        )
        if changes:
            n = len(list(out.glob("config.before-*.yaml")))
            (out / "config.yaml").replace(out / f"config.before-{n}.yaml")
            log.info(
                "resuming under a changed config (old one kept as config.before-%d.yaml): %s", n, changes
            )
    with setup_errors("the depth head and its backbone"):
        tr = DepthTrainer(cfg, kind)
        resumed = tr.load_checkpoint()
    save_config(cfg, out / "config.yaml")
    t = cfg["train"]
    total = int(t["iterations"])
    stop = total if max_steps is None else min(total, tr.iteration + max_steps)
    log.info(
        "depth: %s %s head on %s, layers %s, at %d/%d",
        "resume" if resumed else "start",
        cfg["head"]["type"],
        tr.arch,
        tr.layers,
        tr.iteration,
        total,
    )
    if tr.iteration < stop:
        loader = _batches(cfg, tr, stop)
        t0, n0 = time.perf_counter(), tr.iteration
        for images, depth in loader:
            m = tr.step(images, depth)
            if tr.iteration % int(t["log_period"]) == 0 or tr.iteration == stop:
                rate = (tr.iteration - n0) * int(t["batch_size"]) / max(time.perf_counter() - t0, 1e-9)
                log.info(
                    "it %d/%d %.1f img/s %s",
                    tr.iteration,
                    total,
                    rate,
                    {k: round(v, 4) for k, v in m.items()},
                )
            late = t["max_seconds"] is not None and time.perf_counter() - t0 > float(t["max_seconds"])
            if tr.iteration % int(t["checkpoint_period"]) == 0 or tr.iteration >= stop or late:
                tr.save_checkpoint()
            if tr.iteration >= stop or late:
                break
    metrics = None
    if tr.iteration >= total:
        metrics = evaluate(tr)
        tr.save_head(out / "depth_head.pt")
        tmp = out / ".metrics.json.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "iterations": tr.iteration,
                    "arch": tr.arch,
                    "head": cfg["head"]["type"],
                    "held_out": metrics,
                },
                indent=2,
            )
        )
        os.replace(tmp, out / "metrics.json")
        log.info(
            "held-out: abs_rel %.4f rmse %.4f delta1 %.4f",
            metrics["abs_rel"],
            metrics["rmse"],
            metrics["delta1"],
        )
    return tr, metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.config import add_head_stage_arguments

    add_head_stage_arguments(parser, "depth-head YAML (training/configs/depth_*.yaml)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many more steps (a resumable chunk)"
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run even though this config differs from the one it started with",
    )


def main(args: argparse.Namespace) -> int:
    from training.config import read_head_stage_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    cfg = read_head_stage_config(load_config, args, "dinov3-train depth")
    if cfg is None:
        return 2
    try:
        tr, metrics = run(cfg, device=args.device, max_steps=args.max_steps)
    except ConfigError as e:
        print(f"dinov3-train depth: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "iteration": tr.iteration,
                "done": metrics is not None,
                "held_out": metrics,
                "output_dir": cfg["output_dir"],
            }
        )
    )
    return 0
