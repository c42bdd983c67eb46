"""Sharded, atomic, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout: ``<root>/<iteration:08d>/`` holds the DCP shards of ``{"model": ..., "optimizer": ...}`` (the
whole meta-architecture: student, EMA teacher, Gram teacher) plus ``extra_rank<r>.pt`` (iteration,
RNG states, counters) of every rank. It is written to ``<root>/.tmp-<iteration>`` and renamed when all
ranks are done, so a crash mid-write leaves the previous checkpoint as the latest complete one.
Multi-node runs need ``<root>`` on a shared filesystem.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from dinov3_ros.fsutil import fsync_dir

from .distributed import barrier, get_rank, is_main_process

__all__ = [
    "capture_rng_state",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_backbone_weights",
    "load_checkpoint",
    "restore_rng_state",
    "safe_load",
    "save_checkpoint",
    "save_full_state_dict",
]

_CKPT_RE = re.compile(r"^\d{8}$")


def safe_load(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain data (``weights_only=True``: nothing in the file can
    run code). Raises ``ValueError`` naming ``what`` and the file when it holds anything else."""
    import pickle

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{p}: refused to load the {what}: it holds pickled Python objects besides tensors and plain "
            f"data, which could run code; nothing was executed ({first[:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(
            f"{p}: not a readable {what} (truncated or not written by torch.save): {e}"
        ) from None


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU + CUDA), numpy and python RNG states of this process, as tensors and plain data
    (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    """An RNG state as the CPU ByteTensor torch wants, whatever ``map_location`` the file was read with."""
    return t.detach().to("cpu", torch.uint8)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; accepts states loaded onto any device."""
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["gauss"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_cpu_bytes(t) for t in state["cuda"]])


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and _CKPT_RE.match(p.name) and (p / ".metadata").exists()
    )


def find_latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def _states(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_checkpoint(
    root: str | os.PathLike,
    iteration: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Collective: every rank calls it. Writes ``<root>/<iteration:08d>`` atomically (tmp dir + rename);
    ``extra`` (per rank) is stored with this rank's RNG state; older checkpoints beyond ``keep_last``
    are removed (``keep_last <= 0`` keeps all)."""
    root = Path(root)
    final = root / f"{iteration:08d}"
    tmp = root / f".tmp-{iteration:08d}"
    if is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    dcp.save(_states(model, optimizer), checkpoint_id=str(tmp))
    payload = {"iteration": int(iteration), "rng": capture_rng_state(), **dict(extra or {})}
    rank_file = tmp / f"extra_rank{get_rank()}.pt"
    torch.save(payload, rank_file.with_suffix(".part"))
    os.replace(rank_file.with_suffix(".part"), rank_file)
    barrier()
    if is_main_process():
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        if keep_last > 0:
            for old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    optional_prefixes: tuple[str, ...] = ("gram_teacher.",),
) -> dict[str, Any]:
    """Collective: load model (+ optimizer) shards from a checkpoint directory in place and return this
    rank's ``extra`` dict (rank 0's if the world size changed); restores the RNG states by default.

    Model keys under ``optional_prefixes`` that the checkpoint lacks (e.g. the Gram teacher when a
    pretraining checkpoint is continued by the Gram-anchoring stage) are left as they are and listed
    in ``extra["missing_optional"]``."""
    path = Path(path)
    if not (path / ".metadata").exists():
        raise FileNotFoundError(f"not a complete DCP checkpoint: {path}")
    state = _states(model, optimizer)
    stored = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    missing_optional = sorted(
        k for k in state["model"] if k.startswith(optional_prefixes) and f"model.{k}" not in stored
    )
    for k in missing_optional:
        state["model"].pop(k)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=not missing_optional))
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    f = path / f"extra_rank{get_rank()}.pt"
    if not f.exists():
        f = path / "extra_rank0.pt"
    extra = safe_load(f, "pretraining checkpoint state")
    if restore_rng and "rng" in extra:
        restore_rng_state(extra["rng"])
    extra["missing_optional"] = missing_optional
    return extra


def save_full_state_dict(path: str | os.PathLike, module: nn.Module) -> None:
    """Collective: gather ``module``'s full state dict (CPU) and write it on rank 0 atomically as a
    ``.pth`` (e.g. the EMA teacher backbone, loadable by ``dinov3_ros.models.load_backbone``)."""
    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main_process():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(sd, tmp)
        os.replace(tmp, path)
    barrier()


def load_backbone_weights(
    backbone: nn.Module, source: str | os.PathLike, prefix: str = "teacher.backbone."
) -> None:
    """Load backbone weights (unsharded module) from a ``.pth`` state dict (optionally nested under
    ``model``/``teacher``/``state_dict``, or prefixed ``backbone.``) or from a pretraining DCP checkpoint
    directory (the EMA teacher's backbone, keys ``model.<prefix>*``). Strict."""
    source = Path(source)
    own = backbone.state_dict()
    if source.is_dir():
        if not (source / ".metadata").exists():
            raise FileNotFoundError(f"{source} is not a DCP checkpoint (no .metadata)")
        state = {"model": {prefix + k: v.clone() for k, v in own.items()}}
        dcp.load(state, checkpoint_id=str(source))
        sd = {k[len(prefix) :]: v for k, v in state["model"].items()}
    elif source.is_file():
        sd = torch.load(source, map_location="cpu", weights_only=True)
        for key in ("model", "teacher", "state_dict"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
        for pre in (prefix, "backbone.", "module."):
            if any(k.startswith(pre) for k in sd):
                sd = {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)}
                break
    else:
        raise FileNotFoundError(f"backbone checkpoint not found: {source}")
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source}: state dict does not match the backbone (missing {missing[:5]}..., unexpected {unexpected[:5]}...)"
        )
    backbone.load_state_dict(sd, strict=True)
