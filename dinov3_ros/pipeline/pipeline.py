"""``Pipeline``: frames -> one batched engine pass -> the requested registered outputs.

The single implementation behind the live node and the bag tool. :meth:`Pipeline.infer` runs
preprocessing, the engine and the depth head (on CUDA on a stream of its own, so a batch's inference
overlaps the previous batch's heads); :meth:`Pipeline.finish` runs the heads (``pipeline.outputs``)
through :class:`~dinov3_ros.pipeline.executor.HeadRunner` and advances the per-source state (PCA
bases, keyframes, object tracks, keyed by ``Frame.source``). Results depend only on the inputs and the
sequence of frames per source. Output resolutions: features on the patch grid of the network canvas
(letterbox padding included, see ``runtime.preprocess.Geometry``); depth at the input or network size
(``depth_resolution``); matches, objects and debug in input pixels.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import Frame, FrameOutputs
from dinov3_ros.pipeline import state as state_io
from dinov3_ros.pipeline.executor import HeadRunner, ReadyCallback
from dinov3_ros.pipeline.outputs import REGISTRY, BatchContext, resolve
from dinov3_ros.runtime.preprocess import Geometry, Preprocessor

_LOG = logging.getLogger("dinov3_ros.pipeline")


@dataclass
class InferHandle:
    """What :meth:`Pipeline.infer` hands to :meth:`Pipeline.finish` (tokens and depth on the device)."""

    frames: list[Frame]
    geoms: list[Geometry]
    tokens: torch.Tensor | None  # [B, h, w, C] float32
    depth_net: torch.Tensor | None  # [B, H, W] float32, scaled and clipped, network size
    want: frozenset[str]
    cfg: PipelineConfig
    shared: dict[str, float]  # timings of the batch (ms)
    ready: Any = None  # CUDA event recorded after inference on the inference stream


_LINALG_LOCK = threading.Lock()
_LINALG_WARM: set[str] = set()


def _warm_cuda_linalg(device: torch.device) -> None:
    """Load torch's CUDA linear-algebra libraries once, on this thread: their lazy loading is not
    thread-safe, and the heads' threads would race to it."""
    with _LINALG_LOCK:
        if str(device) in _LINALG_WARM:
            return
        a = torch.eye(2, device=device)
        torch.linalg.eigh(a)
        torch.linalg.svd(a)
        torch.linalg.solve(a, a)
        _LINALG_WARM.add(str(device))


class Pipeline:
    """Frames -> FrameOutputs. ``engine.run(batch)`` returns ``patch_tokens [B, h, w, C]`` (and
    ``depth [B, 1, H, W]`` when it has a depth head); otherwise ``depth_head(tokens [B, C, h, w])``
    gives depth on the patch grid, upsampled bilinearly to the network size. ``objects_head`` maps the
    tokens before TokenCut (the ``objects`` output; None: TokenCut cuts the raw tokens)."""

    def __init__(
        self,
        engine: Any,
        config: PipelineConfig | None = None,
        depth_head: Any | None = None,
        *,
        patch_size: int = 16,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        device: str = "cpu",
        objects_head: Any | None = None,
    ) -> None:
        self.engine = engine
        self.depth_head = depth_head
        self.objects_head = objects_head
        self.patch_size = int(patch_size)
        self.mean, self.std, self.device = mean, std, str(device)
        if self.device.startswith("cuda"):
            _warm_cuda_linalg(torch.device(self.device))
        self._config = self._checked(config or PipelineConfig())
        self._pre = self._make_pre(self._config)
        self._states: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._warned_depth = False
        self._runner = HeadRunner(self.device)
        self._stream: Any = None

    @classmethod
    def from_model(cls, model: Any, config: PipelineConfig | None = None, device: str = "cpu") -> Pipeline:
        """Build from a :class:`dinov3_ros.pipeline.model.LoadedModel`."""
        return cls(
            model.engine,
            config,
            model.depth_head,
            patch_size=model.patch_size,
            mean=model.mean,
            std=model.std,
            device=device,
            objects_head=getattr(model, "objects_head", None),
        )

    def _make_pre(self, cfg: PipelineConfig) -> Preprocessor:
        return Preprocessor(tuple(cfg.resolution), self.patch_size, self.mean, self.std, self.device)

    def close(self) -> None:
        """Stop the heads' worker threads."""
        self._runner.close()

    # -- configuration and state ------------------------------------------------------------------
    @property
    def config(self) -> PipelineConfig:
        return self._config

    def set_config(self, config: PipelineConfig) -> None:
        """Swap settings (thread-safe; from the next batch). A new resolution resets every source's
        state; a setting in an output's ``state_resets`` resets that output's state."""
        self._checked(config)
        with self._lock:
            old, self._config = self._config, config
            if config.resolution != old.resolution:
                self._pre = self._make_pre(config)
                self._states.clear()
                return
            changed = {f.name for f in fields(config) if getattr(config, f.name) != getattr(old, f.name)}
            for name, head in REGISTRY.items():
                if changed & set(head.state_resets):
                    for st in self._states.values():
                        st.pop(name, None)

    def _checked(self, config: PipelineConfig) -> PipelineConfig:
        """``config`` validated, and checked against what this pipeline has loaded."""
        config.validate()
        if config.pca_space == "objects" and self.objects_head is None:
            raise ValueError(
                "pca_space 'objects' needs an objects head; none is loaded (use 'auto' or 'features')"
            )
        return config

    def reset(self, source: str | None = None) -> None:
        """Forget per-source state (all sources if ``source`` is None)."""
        with self._lock:
            if source is None:
                self._states.clear()
            else:
                self._states.pop(source, None)

    def state_dict(self) -> tuple[Any, dict[str, np.ndarray]]:
        """Per-source state as plain data: ``(JSON-able tree, {key: array})`` (see ``pipeline.state``)."""
        with self._lock:
            return state_io.to_plain(self._states)

    def load_state_dict(self, state: tuple[Any, dict[str, np.ndarray]]) -> None:
        """Restore what :meth:`state_dict` returned."""
        tree, arrays = state
        restored = state_io.from_plain(tree, arrays, self.device)
        with self._lock:
            self._states = dict(restored)

    # -- processing -------------------------------------------------------------------------------
    def process(self, frames: list[Frame], outputs: Iterable[str]) -> list[FrameOutputs]:
        """Run the engine once on all ``frames`` and compute ``outputs`` for each (in frame order)."""
        return self.finish(self.infer(frames, outputs))

    def infer(self, frames: list[Frame], outputs: Iterable[str]) -> InferHandle:
        """Stage 1: preprocess + engine + depth head for the batch (touches no per-source state).

        Tokens and depth stay on the engine's device; pass the handle to :meth:`finish`, in ``infer``
        order per source (it advances the per-source state).
        """
        want = resolve(outputs)
        with self._lock:
            cfg, pre = self._config, self._pre
        if not frames:
            return InferHandle([], [], None, None, want, cfg, {})
        stream = self._infer_stream()
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            batch, geoms = pre([f.image for f in frames])
            t1 = time.perf_counter()
            res = self.engine.run(batch)
            t2 = time.perf_counter()
            want = self._without_depth(want, res)
            depth_net = None
            if any(REGISTRY[n].needs_depth for n in want):
                d = self._depth(res, geoms[0].network_size)
                depth_net = torch.clamp(d * cfg.depth_scale, cfg.min_depth, cfg.max_depth)
            tokens = res["patch_tokens"]
            tokens = (
                tokens.detach().float()
                if isinstance(tokens, torch.Tensor)
                else torch.from_numpy(np.asarray(tokens, dtype=np.float32))
            )
            ready = None
            if stream is not None:
                ready = torch.cuda.Event()
                ready.record(stream)
            t3 = time.perf_counter()
        shared = {"preprocess": (t1 - t0) * 1e3, "engine": (t2 - t1) * 1e3, "depth_head": (t3 - t2) * 1e3}
        return InferHandle(list(frames), list(geoms), tokens, depth_net, want, cfg, shared, ready)

    def _without_depth(self, want: frozenset[str], res: dict[str, Any]) -> frozenset[str]:
        """A backbone without a depth head: outputs that need depth are skipped (warned once)."""
        if "depth" in res or self.depth_head is not None:
            return want
        skip = {n for n in want if REGISTRY[n].needs_depth}
        grew = True
        while grew:  # and what requires a skipped output (depth/points, odometry need depth)
            more = {n for n in want if set(REGISTRY[n].requires) & skip} - skip
            skip |= more
            grew = bool(more)
        if skip and not self._warned_depth:
            _LOG.warning("%s requested but the model has no depth head; skipped", ", ".join(sorted(skip)))
            self._warned_depth = True
        return frozenset(want - skip)

    def _infer_stream(self) -> Any:
        """CUDA: a side stream for preprocessing + engine, so a batch's inference overlaps the heads of
        the previous one (the heads wait for its event)."""
        dev = torch.device(self.device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=dev)
        return self._stream

    def _depth(self, res: dict[str, Any], net: tuple[int, int]) -> torch.Tensor:
        if "depth" in res:
            d = res["depth"]
            d = d if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d))
        else:
            t = res["patch_tokens"]
            t = t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
            with torch.inference_mode():
                head_dev = next(iter(self.depth_head.parameters()), t).device
                d = self.depth_head(t.permute(0, 3, 1, 2).float().to(head_dev))
        d = d.float()
        if d.dim() == 3:
            d = d[:, None]
        if tuple(d.shape[-2:]) != tuple(net):
            d = torch.nn.functional.interpolate(d, size=net, mode="bilinear", align_corners=False)
        return d[:, 0]

    def finish(self, handle: InferHandle, on_ready: ReadyCallback | None = None) -> list[FrameOutputs]:
        """Stage 2: the heads of an :meth:`infer` handle (advances the per-source state).

        ``on_ready(i, out, names)`` (optional, thread-safe) is called as soon as outputs ``names`` of
        frame ``i`` are final in ``out``, from whichever thread computed them, before slower heads end;
        every computed output is reported once. The results do not depend on it.
        """
        h = handle
        if not h.frames:
            return []
        self._wait_inference(h)
        outs = [
            FrameOutputs(
                f.stamp_ns,
                f.frame_id,
                f.source,
                f.image.shape[1],
                f.image.shape[0],
                timings_ms=dict(h.shared),
            )
            for f in h.frames
        ]
        heads = [head for name, head in REGISTRY.items() if name in h.want]
        with self._lock:
            states = [self._states.setdefault(f.source, {}) for f in h.frames]
            for st in states:
                for head in heads:
                    if head.name not in st:
                        s = head.new_state()
                        if s is not None:
                            st[head.name] = s
        batch = BatchContext(
            h.frames, h.geoms, h.tokens, h.depth_net, h.want, h.cfg, outs, states, self.objects_head
        )
        self._runner.run(batch, heads, on_ready)
        return outs

    @staticmethod
    def _wait_inference(h: InferHandle) -> None:
        """The heads (on this thread's stream and their own) start after the inference stream."""
        on_gpu = [x for x in (h.tokens, h.depth_net) if x is not None and x.is_cuda]
        if h.ready is not None and on_gpu:
            cur = torch.cuda.current_stream(on_gpu[0].device)
            cur.wait_event(h.ready)
            for x in on_gpu:
                x.record_stream(cur)  # allocated on the inference stream, used here
