"""Scaling wrappers: FSDP2 ``fully_shard`` per block, activation checkpointing, per-block ``torch.compile``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = [
    "GradientAverager",
    "apply_activation_checkpointing",
    "broadcast_module_state",
    "compile_blocks",
    "shard_model",
    "unit_modules",
]

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def unit_modules(backbone: nn.Module) -> list[nn.Module]:
    """The per-block units of a backbone: ViT ``blocks``; ConvNeXt ``stages`` and ``downsample_layers``."""
    units: list[nn.Module] = []
    for attr in ("blocks", "downsample_layers", "stages"):
        seq = getattr(backbone, attr, None)
        if isinstance(seq, (nn.ModuleList, nn.Sequential)):
            units += list(seq)
    return units


def _replace_units(backbone: nn.Module, fn, first: int | None = None) -> None:
    """``fn`` applied to each unit of each unit list (only its ``first`` units when given)."""
    for attr in ("blocks", "downsample_layers", "stages"):
        seq = getattr(backbone, attr, None)
        if isinstance(seq, (nn.ModuleList, nn.Sequential)):
            for i in range(len(seq) if first is None else min(first, len(seq))):
                seq[i] = fn(seq[i])


def apply_activation_checkpointing(backbone: nn.Module, mode: str | bool | int = "full") -> None:
    """Wrap blocks in a non-reentrant ``checkpoint_wrapper`` (state-dict keys are unchanged): every block
    with ``"full"``/``True``, the first ``mode`` blocks with an int (the memory of those blocks'
    activations traded for their forward once more), none with ``False``/``0``. Recomputation replays
    the same random state, so the step's results do not change."""
    if not mode:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    first = None if mode is True or mode == "full" else int(mode)
    _replace_units(
        backbone, lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT), first
    )


def compile_blocks(modules: Iterable[nn.Module], **kwargs) -> None:
    """``module.compile()`` in place on each block of the given backbones and on the given heads.

    Static shapes by default: a step sees a handful of crop shapes (global, local, Gram teacher), and
    with dynamic shapes the batch-subset stochastic depth (``B / keep`` from the symbolic batch size)
    fails dynamo's guard check on torch 2.11 with CUDA.
    """
    kwargs.setdefault("dynamic", False)
    for m in modules:
        units = unit_modules(m)
        for u in units or [m]:
            u.compile(**kwargs)


def shard_model(
    modules: Iterable[nn.Module],
    param_dtype: str = "bf16",
    reduce_dtype: str = "fp32",
    reshard_after_forward: bool = True,
) -> None:
    """FSDP2: ``fully_shard`` every block of each backbone, then the backbone root (heads: the module),
    with ``MixedPrecisionPolicy(param_dtype, reduce_dtype)``; ``forward_features`` and
    ``get_intermediate_layers`` are registered as FSDP forward methods."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mp = MixedPrecisionPolicy(param_dtype=_DTYPES[param_dtype], reduce_dtype=_DTYPES[reduce_dtype])
    for m in modules:
        units = unit_modules(m)
        for u in units:
            fully_shard(u, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        fully_shard(m, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        for name in ("forward_features", "get_intermediate_layers"):
            if hasattr(m, name):
                register_fsdp_forward_method(m, name)
        prev = None
        for u in units:  # neighbour prefetch
            if prev is not None:
                prev.set_modules_to_forward_prefetch([u])
                u.set_modules_to_backward_prefetch([prev])
            prev = u


def broadcast_module_state(modules: Iterable[nn.Module], src: int = 0, group=None) -> None:
    """Copy every parameter and buffer of ``modules`` from rank ``src`` to all ranks (in place), so
    data-parallel replicas start identical whatever each rank's random initialisation was."""
    import torch.distributed as dist

    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src, group=group)


class GradientAverager:
    """Data-parallel gradient synchronisation (what DDP does) for modules called any way, not only
    through ``forward``: after ``backward()``, :meth:`sync` averages the gradients of ``params`` over the
    ranks with one all-reduce per bucket of about ``bucket_mb`` MiB (flattened per dtype and device).
    Every rank must run the same graph, so that the same parameters have gradients everywhere."""

    def __init__(self, params: Iterable[nn.Parameter], bucket_mb: float = 25.0, group=None) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.group = group

    def _buckets(self) -> list[list[torch.Tensor]]:
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for p in self.params:
            if p.grad is None:  # unused this step (the same on every rank: they run the same graph)
                continue
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        buckets: list[list[torch.Tensor]] = []
        for grads in by_kind.values():
            cur: list[torch.Tensor] = []
            size = 0
            for g in grads:
                cur.append(g)
                size += g.numel() * g.element_size()
                if size >= self.bucket_bytes:
                    buckets.append(cur)
                    cur, size = [], 0
            if cur:
                buckets.append(cur)
        return buckets

    def sync(self) -> None:
        """Average the gradients over the ranks (call on every rank, after ``backward``)."""
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        world = dist.get_world_size(self.group)
        if world == 1:
            return
        pending = []
        for bucket in self._buckets():
            flat = _flatten_dense_tensors(bucket)
            pending.append((bucket, flat, dist.all_reduce(flat, group=self.group, async_op=True)))
        for bucket, flat, work in pending:
            work.wait()
            flat.div_(world)
            for g, v in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(v)
