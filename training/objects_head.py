"""`dinov3-train objects`: train the objects head (TokenCut's token projection) on a frozen backbone.

Frames of synthetic scenes are rendered (:class:`dinov3_ros.synthetic.SceneGenerator`), the frozen
backbone gives their final-norm patch tokens once, and each patch is labelled with its majority
instance (background is one more instance). A linear map ``tokens @ W + b`` is trained with the
instance contrast loss of :mod:`training.sim.losses` over the views of one scene at a time: patches of
one instance are pulled above cosine ``pos_margin``, patches of different instances pushed below
``neg_margin``, the two sides of TokenCut's graph threshold (0.2). The run takes minutes on a CPU.

Held-out scenes (``data.val_seed``, disjoint from training and from ``dinov3-ros eval``'s seeds) score
TokenCut on the raw and on the projected tokens (mask IoU and CorLoc) and the share of patch pairs above
the threshold, into ``metrics.json`` beside ``objects_head.npz``
(:func:`dinov3_ros.heads.objects_head.save_objects_head`).
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

from training.config import ConfigError, setup_errors

log = logging.getLogger("dinov3.objects")

__all__ = [
    "DEFAULTS",
    "add_arguments",
    "build_config",
    "feature_model",
    "held_out",
    "load_config",
    "main",
    "pair_rates",
    "run",
    "train_projection",
]

#: Every key an objects-head config may set (values are the defaults).
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/objects_head",
    "seed": 0,
    # weights: a file or registry name; arch: when not inferable; overrides: build kwargs of a
    # non-standard backbone (e.g. {depth: 2})
    "backbone": {"weights": None, "arch": None, "overrides": None},
    "head": {"out_dim": 128, "pos_margin": 0.5, "neg_margin": -0.1},
    "data": {
        "image_sizes": [[224, 224]],  # [H, W] each; every scene is rendered at every size
        "scene_seed": 1,
        "scenes": 64,
        "frames_per_scene": 8,
        "val_seed": 200_011,  # never used in training nor by dinov3-ros eval (100003 / 100004)
        "val_scenes": 8,
    },
    "optim": {"lr": 3.0e-3, "weight_decay": 1.0e-4, "iterations": 600, "scenes_per_step": 8, "views": 4},
    "eval": {"tau": 0.2},
}


def _rules() -> dict[str, Any]:
    from training.config import Rule, head_stage_rules

    pos_int, nonneg = Rule("int", 1), Rule("num", 0)
    return {
        **head_stage_rules(),
        "head.out_dim": pos_int,
        "head.pos_margin": Rule("num", -1, 1),
        "head.neg_margin": Rule("num", -1, 1),
        "data.scene_seed": Rule("int", 0),
        "data.scenes": Rule("int", 2),
        "data.frames_per_scene": pos_int,
        "data.val_seed": Rule("int", 0),
        "data.val_scenes": pos_int,
        "optim.lr": nonneg,
        "optim.weight_decay": nonneg,
        "optim.iterations": pos_int,
        "optim.scenes_per_step": pos_int,
        "optim.views": pos_int,
        "eval.tau": Rule("num", -1, 1),
    }


def build_config(
    raw: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Defaults <- ``raw`` <- ``section.key=value`` overrides; unknown keys and bad values rejected."""
    from training.config import layered, validate_values

    cfg = validate_values(
        layered(DEFAULTS, raw, overrides, "objects"),
        DEFAULTS,
        _rules(),
        "objects",
        frozenset({"data.image_sizes", "backbone.overrides"}),
    )
    for size in cfg["data"]["image_sizes"]:
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and v > 0 and v % 16 == 0 for v in size)
        ):
            raise ConfigError(
                f"bad objects config: data.image_sizes entries must be [H, W] multiples of 16, got {size!r}"
            )
    if cfg["head"]["neg_margin"] >= cfg["head"]["pos_margin"]:
        raise ConfigError("bad objects config: head.neg_margin must be below head.pos_margin")
    if cfg["backbone"]["weights"] is None:
        raise ConfigError("bad objects config: backbone.weights is required (the frozen backbone's file)")
    return cfg


def load_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read an objects-head YAML (optional ``_base_``) and apply overrides."""
    from training.config import read_yaml_layers

    return build_config(read_yaml_layers(path), overrides)


# --------------------------------------------------------------------------------------------
# data


def feature_model(bcfg: dict[str, Any], device: str) -> Any:
    """The frozen backbone as ``dinov3_ros.eval`` sees it: final-norm patch tokens of RGB frames."""
    if bcfg.get("overrides"):
        from dinov3_ros.eval.features import BackboneFeatures
        from dinov3_ros.models.loading import load_backbone

        bb = load_backbone(bcfg["weights"], bcfg.get("arch"), **bcfg["overrides"])
        return BackboneFeatures(bb, name=str(bcfg["weights"]), device=device)
    from dinov3_ros.eval.baselines import resolve_model

    return resolve_model(str(bcfg["weights"]), device=device, arch=bcfg.get("arch"))


def render(seed: int, scenes: range, frames_per_scene: int, size: tuple[int, int]) -> list[Any]:
    """The frames of ``scenes`` of generator ``seed`` at ``size`` ``(H, W)``."""
    from dinov3_ros.synthetic.generator import SceneGenerator

    gen = SceneGenerator(seed=seed, width=size[1], height=size[0], frames_per_scene=frames_per_scene)
    return [f for s in scenes for f in gen.sequence(s)]


def token_set(model: Any, frames: list[Any], group_offset: int = 0) -> dict[str, np.ndarray]:
    """``tokens [N, P, C]``, per-patch ``labels [N, P]`` (majority instance, background 0) and
    ``groups [N]`` (scene index + ``group_offset``; a group's frames share instance ids)."""
    from dinov3_ros.eval.objects import instance_features

    toks = [model(np.stack([f.rgb for f in frames[i : i + 32]]))[0] for i in range(0, len(frames), 32)]
    x = np.concatenate(toks).astype(np.float32)
    labels = np.stack([instance_features(f, model.patch_size).argmax(-1) for f in frames])
    groups = np.array([f.scene_index + group_offset for f in frames])
    return {
        "tokens": x.reshape(len(frames), -1, x.shape[-1]),
        "labels": labels.reshape(len(frames), -1),
        "groups": groups,
    }


# --------------------------------------------------------------------------------------------
# training


def train_projection(
    sets: list[dict[str, np.ndarray]], cfg: dict[str, Any], device: str = "cpu"
) -> tuple[Any, list[float]]:
    """Fit ``W, b`` with the instance contrast loss, one term per sampled scene group; -> (ObjectsHead,
    loss per logging window). Sets of different image sizes are sampled alternately."""
    from dinov3_ros.heads.objects_head import ObjectsHead
    from training.sim.losses import instance_contrast_loss

    h, o = cfg["head"], cfg["optim"]
    rng = np.random.default_rng(int(cfg["seed"]))
    dim = sets[0]["tokens"].shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["seed"]))
        lin = torch.nn.Linear(dim, int(h["out_dim"])).to(device)
    opt = torch.optim.AdamW(lin.parameters(), lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
    iters = int(o["iterations"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    data = [
        (
            torch.from_numpy(s["tokens"]).to(device),
            torch.from_numpy(s["labels"]).long().to(device),
            s["groups"],
        )
        for s in sets
    ]
    history, window = [], []
    for it in range(iters):
        x, y, groups = data[it % len(data)]
        picked = _pick(groups, rng, int(o["scenes_per_step"]), int(o["views"]))
        loss = sum(
            instance_contrast_loss(
                lin(x[idx].reshape(1, -1, dim)), y[idx].reshape(1, -1), h["pos_margin"], h["neg_margin"]
            )
            for idx in picked
        ) / len(picked)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        window.append(float(loss.detach()))
        if (it + 1) % 100 == 0 or it + 1 == iters:
            history.append(float(np.mean(window)))
            log.info("it %d/%d loss %.4f", it + 1, iters, history[-1])
            window = []
    w = lin.weight.detach().cpu().numpy().T.copy()
    return ObjectsHead(w, lin.bias.detach().cpu().numpy().copy()), history


def _pick(groups: np.ndarray, rng: np.random.Generator, n: int, views: int) -> list[np.ndarray]:
    """``n`` distinct groups (fewer if there are fewer), ``views`` random frames of each."""
    uniq = np.unique(groups)
    chosen = rng.choice(uniq, min(n, len(uniq)), replace=False)
    return [rng.permutation(np.flatnonzero(groups == g))[:views] for g in chosen]


# --------------------------------------------------------------------------------------------
# held-out scores


def pair_rates(tokens: np.ndarray, labels: np.ndarray, tau: float) -> dict[str, float]:
    """Share of same-instance and different-instance patch pairs (within each frame) whose cosine
    exceeds ``tau``: TokenCut's graph joins the first and should not join the second."""
    same = diff = n_same = n_diff = 0
    for x, y in zip(tokens, labels):
        f = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        above = (f @ f.T) > tau
        eq = y[:, None] == y[None, :]
        np.fill_diagonal(eq, False)
        ne = y[:, None] != y[None, :]
        same, n_same = same + int((above & eq).sum()), n_same + int(eq.sum())
        diff, n_diff = diff + int((above & ne).sum()), n_diff + int(ne.sum())
    return {"same_above_tau": same / max(n_same, 1), "different_above_tau": diff / max(n_diff, 1)}


def held_out(model: Any, head: Any, frames: list[Any], tau: float) -> dict[str, dict[str, float]]:
    """TokenCut (IoU, CorLoc, CorLoc-any) and pair rates on ``frames``, on raw and projected tokens."""
    from dinov3_ros.eval.objects import evaluate_tokencut, tokencut_mask

    s = token_set(model, frames)
    h, w = frames[0].height // model.patch_size, frames[0].width // model.patch_size
    out = {}
    for name, toks in (("raw", s["tokens"]), ("projected", head.apply_numpy(s["tokens"]))):
        grid = toks.reshape(len(frames), h, w, -1)
        tc = evaluate_tokencut(frames, lambda i, fr, g=grid: tokencut_mask(g[i], tau)[0])
        out[name] = {k: float(tc[k]) for k in ("iou", "corloc", "corloc_any")} | pair_rates(
            toks, s["labels"], tau
        )
    return out


# --------------------------------------------------------------------------------------------
# the stage


def run(cfg: dict[str, Any], *, device: str = "auto") -> dict[str, Any]:
    """Render, extract, train, score; write ``objects_head.npz``, ``metrics.json`` and ``config.yaml``."""
    from dinov3_ros.fsutil import atomic_write_text
    from dinov3_ros.heads.objects_head import save_objects_head
    from training.config import save_config

    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    out = Path(cfg["output_dir"])
    d, b = cfg["data"], cfg["backbone"]
    t0 = time.perf_counter()
    with setup_errors("the objects head's backbone"):
        model = feature_model(b, kind)
    save_config(cfg, out / "config.yaml")
    sets = []
    for k, size in enumerate(d["image_sizes"]):
        frames = render(
            int(d["scene_seed"]), range(int(d["scenes"])), int(d["frames_per_scene"]), tuple(size)
        )
        sets.append(token_set(model, frames, group_offset=k * int(d["scenes"])))
        log.info("objects: %d frames at %s, %.0f s", len(frames), size, time.perf_counter() - t0)
    head, history = train_projection(sets, cfg, kind)
    arch = b["arch"] or getattr(getattr(model, "backbone", None), "arch", None) or "unknown"
    scores = {}
    for size in d["image_sizes"]:
        val = render(int(d["val_seed"]), range(int(d["val_scenes"])), int(d["frames_per_scene"]), tuple(size))
        scores[f"{size[0]}x{size[1]}"] = held_out(model, head, val, float(cfg["eval"]["tau"]))
    meta = {
        "arch": arch,
        "backbone": str(b["weights"]),
        "trained_on": {"seed": d["scene_seed"], "scenes": d["scenes"], "image_sizes": d["image_sizes"]},
    } | cfg["head"]
    save_objects_head(out / "objects_head.npz", head, meta)
    metrics = {"loss": history, "held_out": scores, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    for size, sc in scores.items():
        log.info(
            "held-out %s: TokenCut IoU %.3f -> %.3f, CorLoc %.3f -> %.3f",
            size,
            sc["raw"]["iou"],
            sc["projected"]["iou"],
            sc["raw"]["corloc"],
            sc["projected"]["corloc"],
        )
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.config import add_head_stage_arguments

    add_head_stage_arguments(parser, "objects-head YAML (training/recipes/default_objects.yaml)")


def main(args: argparse.Namespace) -> int:
    from training.config import read_head_stage_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    cfg = read_head_stage_config(load_config, args, "dinov3-train objects")
    if cfg is None:
        return 2
    try:
        metrics = run(cfg, device=args.device)
    except ConfigError as e:
        print(f"dinov3-train objects: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output_dir": cfg["output_dir"], "held_out": metrics["held_out"]}))
    return 0
