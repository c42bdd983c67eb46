"""PyTorch backend: fp32/fp16/bf16, SDPA, optional ``torch.compile`` and CUDA graphs for fixed shapes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Engine, EngineInfo
from .graph import DeployModel
from .weights import load_backbone, load_depth_head

__all__ = ["TorchEngine"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine(Engine):
    """Backbone (+ depth head) in PyTorch.

    ``precision`` casts the weights (fp16/bf16; RoPE stays fp32 inside the blocks) or, with
    ``autocast=True``, keeps fp32 weights under ``torch.autocast``. ``compile`` wraps the model in
    ``torch.compile(mode=compile_mode)``. ``cuda_graphs`` captures one graph per input
    shape/dtype on first use and replays it (CUDA only; inputs are copied into a static buffer).
    On CUDA the patch embedding runs as one GEMM; ``gelu_epilogue`` (fp16/bf16 on CUDA) fuses the MLP's
    GELU - as its tanh approximation - into the ``fc1`` GEMM (see ``InferenceViT.set_gelu_epilogue``).
    ``run`` also accepts uint8 ``[B, H, W, 3]`` RGB at the network size: normalisation then runs
    inside the same (compiled / graphed) forward.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        arch: str | None = None,
        weights: str | Path | None = None,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        depth_head: nn.Module | str | Path | None = None,
        compile: bool = False,
        compile_mode: str = "max-autotune-no-cudagraphs",
        cuda_graphs: bool = False,
        autocast: bool = False,
        input_size: tuple[int, int] | None = None,
        fast: bool = True,
        clone_outputs: bool = True,
        gelu_epilogue: bool = False,
        **_ignored: Any,
    ) -> None:
        if precision not in _DTYPES:
            raise ValueError(f"torch backend precision must be one of {sorted(_DTYPES)}, got {precision!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device")
        if model is None:
            model = load_backbone(arch, weights)
        head = load_depth_head(depth_head)
        dm = model if isinstance(model, DeployModel) else DeployModel(model.eval(), head, fast=fast)
        self.dtype = _DTYPES[precision]
        self.autocast = autocast and precision != "fp32"
        dm = dm.eval().to(self.device)
        if not self.autocast:
            dm = dm.to(self.dtype)
        if dm.vit is not None:  # RoPE periods stay fp32
            dm.vit.periods.data = dm.vit.periods.data.float()
        # in-graph normalisation constants stay exact fp32 (a bf16 std*255 would be off by ~0.2%)
        dm.mean255 = torch.tensor(dm.norm_mean, device=self.device).view(1, 3, 1, 1) * 255.0
        dm.std255 = torch.tensor(dm.norm_std, device=self.device).view(1, 3, 1, 1) * 255.0
        for p in dm.parameters():
            p.requires_grad_(False)
        if self.device.type == "cuda" and dm.vit is not None:
            dm.vit.patch_gemm = True  # patchify + GEMM: same math, faster than the strided conv
            if gelu_epilogue and self.dtype != torch.float32:
                dm.vit.set_gelu_epilogue(True)
        self.model = dm
        self._fn = torch.compile(dm, mode=compile_mode, dynamic=False) if compile else dm
        self.cuda_graphs = cuda_graphs
        self._graph_owned_outputs = bool(compile) and compile_mode == "reduce-overhead"
        self.clone_outputs = clone_outputs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        mode = ("compile:" + compile_mode if compile else "eager") + ("+cudagraphs" if cuda_graphs else "")
        if dm.vit is not None and any(getattr(b, "gelu_epilogue", False) for b in dm.vit.blocks):
            mode += "+gelu_epilogue"
        self.info = EngineInfo(
            backend="torch",
            precision=precision,
            device=str(self.device),
            arch=dm.arch,
            input_size=tuple(input_size) if input_size else None,
            patch_size=dm.patch_size,
            embed_dim=dm.embed_dim,
            norm_mean=dm.norm_mean,
            norm_std=dm.norm_std,
            outputs=tuple(dm.output_names),
            extra={"mode": mode, "autocast": self.autocast, "fast_vit": dm.vit is not None},
        )

    # -- execution ----------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        amp = torch.autocast(self.device.type, self.dtype) if self.autocast else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            return self._fn(x)

    def _graph_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(x.shape), x.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up (and compile/autotune) outside the capture
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a new batch shape (say, another camera joins) is captured while the heads'
            # threads keep running CUDA work; the default global mode would fail their calls
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self._forward(static_in)
            entry = (graph, static_in, static_out)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return tuple(o.clone() for o in static_out) if self.clone_outputs else static_out

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True)
        if x.dtype != torch.uint8 and not self.autocast:
            x = x.to(self.dtype)
        return x

    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._prepare(batch)
        vit = self.model.vit
        if vit is not None:  # fill the RoPE cache eagerly so compiled/captured graphs only read it
            hw = x.shape[1:3] if x.dtype == torch.uint8 else x.shape[-2:]
            vit.rope(hw[0] // vit.patch_size, hw[1] // vit.patch_size, x.device)
        if self.cuda_graphs:
            outs = self._graph_forward(x)
        else:
            outs = self._forward(x)
            if self._graph_owned_outputs and self.clone_outputs:  # reduce-overhead reuses its buffers
                outs = tuple(o.clone() for o in outs)
        return dict(zip(self.model.output_names, outs))

    def run(self, batch) -> dict[str, torch.Tensor]:
        """As :meth:`Engine.run`; also takes uint8 ``[B, H, W, 3]`` RGB (normalised in-graph)."""
        if isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8:
            if batch.dim() != 4 or batch.shape[-1] != 3:
                raise ValueError(f"uint8 batch must be [B, H, W, 3], got {tuple(batch.shape)}")
            p = self.info.patch_size
            if batch.shape[1] % p or batch.shape[2] % p:
                raise ValueError(f"uint8 batch {batch.shape[1]}x{batch.shape[2]} is not a multiple of {p}")
            return self._run(batch)
        return super().run(batch)
