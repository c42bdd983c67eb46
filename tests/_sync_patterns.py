"""A dispatch mode that records the ops which make the host wait for a CUDA device, seen on CPU."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class SyncPatterns(TorchDispatchMode):
    """Records the ops that wait for the device when their tensors are on CUDA, seen here on CPU: an
    index_put of a scalar (the host scalar is copied to the device), nonzero / masked_select / boolean
    indexing (the result's size is read back) and repeat_interleave without ``output_size``."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket.__name__)
        if name in ("index_put", "index_put_") and args[2].dim() == 0:
            self.found.append(f"{name} of a scalar")
        elif name in ("nonzero", "masked_select"):
            self.found.append(name)
        elif name == "index" and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.found.append("boolean indexing")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) < 4:
            self.found.append("repeat_interleave without output_size")
        return func(*args, **kwargs)
