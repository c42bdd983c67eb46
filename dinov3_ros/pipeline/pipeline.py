"""``Pipeline.process(frames, outputs)``: one batched engine pass, then only the requested heads.

The single implementation behind the live node and the offline tool. Output resolutions:

- ``features`` / ``features_pca``: the patch grid ``(h, w) = network (H, W) / patch``, covering the
  network canvas (letterbox padding included, see ``runtime.preprocess.Geometry``).
- ``depth``: ``PipelineConfig.depth_resolution`` = ``"input"`` (the image's H x W, intrinsics unchanged)
  or ``"network"`` (the canvas, padding = NaN, intrinsics from ``Geometry.scale_intrinsics``);
  ``FrameOutputs.depth_info`` always matches the depth image.
- ``points``: back-projected from network-resolution depth with the canvas intrinsics (optical frame).
- ``matches`` / ``objects`` / ``debug``: input pixels / input resolution.

Per-source state (PCA bases, the matching keyframe, the instance tracker) is keyed by ``Frame.source``.
Results are deterministic given the inputs and the sequence of frames per source.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from dinov3_ros.heads._common import to_host
from dinov3_ros.heads.correspondence import match
from dinov3_ros.heads.pca import PCAView
from dinov3_ros.heads.pointcloud import backproject
from dinov3_ros.heads.tokencut import TokenCutTracker
from dinov3_ros.pipeline.model import as_numpy
from dinov3_ros.pipeline.types import (
    OUTPUTS,
    CameraIntrinsics,
    Frame,
    FrameOutputs,
    MatchResult,
    ObjectsResult,
    PipelineConfig,
)
from dinov3_ros.pipeline.voxel import voxel_downsample
from dinov3_ros.runtime.preprocess import Geometry, Preprocessor

_LOG = logging.getLogger("dinov3_ros.pipeline")

#: threads for the stateless per-frame depth/points work (numpy/OpenCV release the GIL)
_GEO_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
#: ``on_ready(frame index, outputs, output names)`` of :meth:`Pipeline.finish`
ReadyCallback = Callable[[int, FrameOutputs, tuple[str, ...]], None]
_REMAP_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


@functools.lru_cache(maxsize=16)
def _grid_maps(geom: Geometry, gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
    """Input row -> patch row and input column -> patch column (nearest, pixel-centre convention;
    cached per geometry, read-only)."""
    H, W = geom.input_size
    un, _ = geom.input_to_network(np.arange(W, dtype=np.float64), np.zeros(W))
    _, vn = geom.input_to_network(np.zeros(H), np.arange(H, dtype=np.float64))
    p = geom.patch_size
    ci = np.clip(np.floor((un + 0.5) / p).astype(np.int64), 0, gw - 1)
    ri = np.clip(np.floor((vn + 0.5) / p).astype(np.int64), 0, gh - 1)
    ri.flags.writeable = ci.flags.writeable = False  # shared by every frame of this geometry
    return ri, ci


@functools.lru_cache(maxsize=16)
def _remap_maps(geom: Geometry, gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (x, y) of :func:`_grid_maps`: exact integer source coordinates."""
    ri, ci = _grid_maps(geom, gh, gw)
    H, W = ri.size, ci.size
    mx = np.ascontiguousarray(np.broadcast_to(ci.astype(np.float32)[None, :], (H, W)))
    my = np.ascontiguousarray(np.broadcast_to(ri.astype(np.float32)[:, None], (H, W)))
    mx.flags.writeable = my.flags.writeable = False
    return mx, my


#: outputs each output needs computed first
_DEPENDS = {"points": {"depth"}, "debug": {"features_pca"}}


@dataclass
class _Keyframe:
    tokens: torch.Tensor  # [h, w, C] patch grid of the keyframe (engine device)
    geom: Geometry
    stamp_ns: int
    frame_id: str
    age: int = 0


@dataclass
class InferHandle:
    """What :meth:`Pipeline.infer` hands to :meth:`Pipeline.finish` (tokens/depth on the device)."""

    frames: list[Frame]
    geoms: list[Geometry]
    tokens: torch.Tensor | None  # [B, h, w, C] float32
    depth_net: torch.Tensor | None  # [B, H, W] float32, scaled and clipped, network size
    want: set[str]
    cfg: PipelineConfig
    shared: dict[str, float]
    ready: Any = None  # CUDA event recorded after inference on the side stream


class _PcaBatch(list):
    """``finish``'s list of deferred PCA images, plus the images it already computed per batch
    (``pre``: ``id(frame)`` -> tensors in frame order) for sources with a fixed (fitted) basis."""

    def __init__(self) -> None:
        super().__init__()
        self.pre: dict[int, list[torch.Tensor]] = {}


def _float_tokens(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


@dataclass
class _SourceState:
    pca_rgb: PCAView | None = None
    pca_k: PCAView | None = None
    keyframe: _Keyframe | None = None
    tracker: TokenCutTracker | None = None
    grid: tuple[int, int, int, int] | None = None  # valid patch crop the tracker runs on


def resolve_outputs(outputs: Iterable[str]) -> set[str]:
    """Validate output names; returns them plus the outputs they depend on."""
    req = set(outputs)
    bad = sorted(req - set(OUTPUTS))
    if bad:
        raise ValueError(f"unknown output(s) {bad}; known: {list(OUTPUTS)}")
    full = set(req)
    for name in req:
        full |= _DEPENDS.get(name, set())
    return full


_LINALG_LOCK = threading.Lock()
_LINALG_WARM: set[str] = set()


def _warm_cuda_linalg(device: torch.device) -> None:
    """Load torch's CUDA linear-algebra libraries once, on this thread.

    Their lazy loading is not thread-safe: the first ``eigh`` racing from the head workers fails with
    "lazy wrapper should be called at most once" (seen on torch 2.11 + CUDA 13).
    """
    with _LINALG_LOCK:
        if str(device) in _LINALG_WARM:
            return
        a = torch.eye(2, device=device)
        torch.linalg.eigh(a)
        torch.linalg.svd(a)
        torch.linalg.solve(a, a)
        _LINALG_WARM.add(str(device))


class Pipeline:
    """Frames -> FrameOutputs. ``engine.run(batch)`` must return ``patch_tokens [B, h, w, C]``
    (and ``depth [B, 1, H, W]`` when it has a depth head); otherwise ``depth_head(tokens [B, C, h, w])``
    gives depth on the patch grid, upsampled bilinearly to the network size.
    """

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
    ) -> None:
        self.engine = engine
        self.depth_head = depth_head
        self.patch_size = int(patch_size)
        self.mean, self.std, self.device = mean, std, device
        if str(device).startswith("cuda"):
            _warm_cuda_linalg(torch.device(device))
        self._config = (config or PipelineConfig()).validate()
        self._pre = self._make_pre(self._config)
        self._states: dict[str, _SourceState] = {}
        self._lock = threading.Lock()
        self._warned_depth = False
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._side = threading.local()  # .stream: each head pool thread's own CUDA stream
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
        )

    def _make_pre(self, cfg: PipelineConfig) -> Preprocessor:
        return Preprocessor(tuple(cfg.resolution), self.patch_size, self.mean, self.std, self.device)

    @property
    def config(self) -> PipelineConfig:
        return self._config

    def set_config(self, config: PipelineConfig) -> None:
        """Swap settings (thread-safe; takes effect from the next ``process`` call).

        Changing the resolution or the PCA/feature settings resets the per-source state.
        """
        config.validate()
        with self._lock:
            old = self._config
            self._config = config
            if config.resolution != old.resolution:
                self._pre = self._make_pre(config)
                self._states.clear()
            elif (config.features_k, config.pca_mode) != (old.features_k, old.pca_mode):
                for st in self._states.values():
                    st.pca_k = st.pca_rgb = None

    def reset(self, source: str | None = None) -> None:
        """Forget per-source state (all sources if ``source`` is None)."""
        with self._lock:
            if source is None:
                self._states.clear()
            else:
                self._states.pop(source, None)

    def state_dict(self) -> dict[str, Any]:
        """Per-source state (PCA bases, keyframes, trackers), picklable; for checkpoint/resume."""
        import copy

        with self._lock:
            return copy.deepcopy(self._states)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        import copy

        with self._lock:
            self._states = copy.deepcopy(dict(state))

    # ------------------------------------------------------------------------------------------
    def process(self, frames: list[Frame], outputs: Iterable[str]) -> list[FrameOutputs]:
        """Run the engine once on all ``frames`` and compute ``outputs`` for each (in frame order).

        Same as ``finish(infer(frames, outputs))``.
        """
        return self.finish(self.infer(frames, outputs))

    def infer(self, frames: list[Frame], outputs: Iterable[str]) -> InferHandle:
        """Stage 1: preprocess + engine + depth head for the batch (touches no per-source state).

        Tokens and depth stay on the engine's device; pass the handle to :meth:`finish` (which must
        be called in ``infer`` order per source, as it advances the per-source state).
        """
        want = resolve_outputs(outputs)
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
            tokens_t = res["patch_tokens"]
            t2 = time.perf_counter()
            depth_net = None
            if "depth" in want and "depth" not in res and self.depth_head is None:
                # a backbone-only model: depth and points are unavailable, the other outputs still run
                if not self._warned_depth:
                    _LOG.warning("depth/points requested but the model has no depth head; they are skipped")
                    self._warned_depth = True
                want = want - {"depth", "points"}
            if "depth" in want:
                depth_net = self._depth(res, tokens_t, geoms[0].network_size)
                depth_net = torch.clamp(depth_net * cfg.depth_scale, cfg.min_depth, cfg.max_depth)
            tokens = _float_tokens(tokens_t)
            ready = None
            if stream is not None:
                ready = torch.cuda.Event()
                ready.record(stream)
            t3 = time.perf_counter()
        shared = {"preprocess": (t1 - t0) * 1e3, "engine": (t2 - t1) * 1e3, "depth_head": (t3 - t2) * 1e3}
        return InferHandle(list(frames), list(geoms), tokens, depth_net, want, cfg, shared, ready)

    def _infer_stream(self) -> Any:
        """CUDA: a side stream for preprocess + engine, so a batch's inference can overlap the heads
        of the previous one (the heads run on the default stream and wait for its event)."""
        dev = torch.device(self.device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=dev)
        return self._stream

    def finish(self, handle: InferHandle, on_ready: ReadyCallback | None = None) -> list[FrameOutputs]:
        """Stage 2: the per-frame heads of an :meth:`infer` handle (advances per-source state).

        ``on_ready(i, out, names)`` (optional) reports that outputs ``names`` of frame ``i`` are final
        in ``out`` as soon as they are, before the slower heads finish: a node publishes each output
        when it is ready. It is called on this thread, except for depth/points, objects and matches,
        which are reported from the threads that compute them the moment they are done (while the
        other heads still run), so it must be thread-safe.
        Every requested output is reported once; the results are the same with or without it.
        """
        h = handle
        if not h.frames:
            return []
        t0 = time.perf_counter()
        on_gpu = [x for x in (h.tokens, h.depth_net) if x is not None and x.is_cuda]
        if h.ready is not None and on_gpu:  # heads (default stream) wait for the inference stream
            cur = torch.cuda.current_stream(on_gpu[0].device)
            cur.wait_event(h.ready)
            for x in on_gpu:
                x.record_stream(cur)  # allocated on the inference stream, used here
        # one device->host copy per batch for what the messages need as numpy
        depth_np = to_host(h.depth_net) if h.depth_net is not None else None
        tok_np = to_host(h.tokens) if "features" in h.want and h.tokens.device.type != "cpu" else None
        h.shared["transfer"] = (time.perf_counter() - t0) * 1e3
        deps = [(h.depth_net[i], depth_np[i]) if depth_np is not None else None for i in range(len(h.frames))]
        geos: list[Future | None] = [None] * len(h.frames)
        if depth_np is not None and h.cfg.parallel_heads:
            # stateless depth/points of every frame start now, in parallel with the stateful heads
            ready = self._ready_event()  # one event for the whole batch (creating one costs driver time)
            geos = [
                self._submit("geo", _GEO_WORKERS, self._geometry, f, g, d, h.want, h.cfg, ready=ready)
                for f, g, d in zip(h.frames, h.geoms, deps)
            ]
        outs = []
        defer = _PcaBatch()  # features_pca images: one device->host copy per batch
        if "features_pca" in h.want and h.cfg.pca_mode == "fit_once" and h.tokens is not None:
            # a source whose basis is already fitted (and fixed) is coloured for the whole batch at once
            groups: dict[str, list[int]] = {}
            for i, frame in enumerate(h.frames):
                st = self._states.get(frame.source)
                pv = st.pca_rgb if st is not None else None
                if pv is not None and pv.fitted and pv.momentum == 0.0:
                    groups.setdefault(frame.source, []).append(i)
            for src, idx in groups.items():
                sel = h.tokens if len(idx) == len(h.frames) else h.tokens[idx]
                rgb = self._states[src].pca_rgb.transform_tensor(sel, mask_background=False)
                for j, i in enumerate(idx):
                    defer.pre.setdefault(id(h.frames[i]), []).append(rgb[j])
        for i, (frame, geom) in enumerate(zip(h.frames, h.geoms)):
            st = self._states.setdefault(frame.source, _SourceState())
            tn = tok_np[i] if tok_np is not None else None
            notify = functools.partial(on_ready, i) if on_ready is not None else None
            outs.append(
                self._heads(
                    frame,
                    geom,
                    h.tokens[i],
                    deps[i],
                    h.want,
                    h.cfg,
                    st,
                    dict(h.shared),
                    tn,
                    geos[i],
                    defer,
                    notify,
                )
            )
        if defer:
            t = time.perf_counter()
            imgs = torch.stack([r for _o, r in defer]).cpu().numpy()
            for (o, _r), img in zip(defer, imgs):
                o.features_pca = img
                o.timings_ms["features_pca"] += (time.perf_counter() - t) * 1e3 / len(defer)
            if on_ready is not None:
                index = {id(o): i for i, o in enumerate(outs)}
                for o, _r in defer:
                    on_ready(index[id(o)], o, ("features_pca",))
        return outs

    def _depth(self, res: dict[str, Any], tokens: Any, net: tuple[int, int]) -> torch.Tensor:
        if "depth" in res:
            d = res["depth"]
            d = d if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d))
        elif self.depth_head is not None:
            t = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens))
            with torch.inference_mode():
                head_dev = next(iter(self.depth_head.parameters()), t).device
                d = self.depth_head(t.permute(0, 3, 1, 2).float().to(head_dev))
        else:
            raise RuntimeError(
                "depth requested but the engine has no depth output and no depth head was given"
            )
        d = d.float()
        if d.dim() == 3:
            d = d[:, None]
        if tuple(d.shape[-2:]) != tuple(net):
            d = torch.nn.functional.interpolate(d, size=net, mode="bilinear", align_corners=False)
        return d[:, 0]

    # ------------------------------------------------------------------------------------------
    def _heads(
        self,
        frame: Frame,
        geom: Geometry,
        tok: torch.Tensor,
        depth: tuple[torch.Tensor, np.ndarray] | None,
        want: set[str],
        cfg: PipelineConfig,
        st: _SourceState,
        timings: dict[str, float],
        tok_np: np.ndarray | None = None,
        geo: Future | None = None,
        defer_pca: list | None = None,
        notify: Any = None,
    ) -> FrameOutputs:
        """Per-frame heads. ``tok`` [h, w, C] float32 on the engine's device; ``depth`` = (network-size
        clipped depth on the device, the same as numpy). Depth/points (stateless) run in a helper
        thread (``geo``: already submitted by :meth:`finish`), TokenCut and matching in one thread each
        (``parallel_heads``; one worker each keeps a source's frames in order), PCA here.
        ``notify(out, names)`` (optional) is called as each output becomes final (see :meth:`finish`)."""
        H, W = frame.image.shape[:2]
        out = FrameOutputs(frame.stamp_ns, frame.frame_id, frame.source, W, H, timings_ms=timings)
        h, w, _ = tok.shape
        valid = self._valid_patches(geom, h, w)
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            out.timings_ms[name] = (now - t) * 1e3
            t = now

        def ready(*names: str) -> None:
            if notify is not None:
                notify(out, names)

        # heads running in other threads: with ``notify`` each result is stored in ``out`` and reported
        # from that thread the moment it is done (depth/points while matches and TokenCut still run);
        # take() waits for it, and without ``notify`` stores and reports it here
        side: dict[str, tuple[Future, threading.Event | None, Callable[[Any], None], tuple[str, ...]]] = {}

        def watch(key: str, fut: Future, store: Callable[[Any], None], names: tuple[str, ...]) -> None:
            done = threading.Event() if notify is not None else None
            if done is not None:

                def report(f: Future) -> None:
                    try:
                        if f.exception() is None:
                            store(f.result())
                            ready(*names)
                    finally:
                        done.set()

                fut.add_done_callback(report)  # runs now if the head is already done
            side[key] = (fut, done, store, names)

        def take(key: str) -> None:
            fut, done, store, names = side.pop(key)
            if done is not None:  # stored and reported by the head's thread
                fut.result()  # its error, if any, is this frame's error
                done.wait()
            else:
                store(fut.result())
                ready(*names)

        def run_aside(name: str, fn: Any, *args: Any) -> None:
            """Head ``name`` (an output) in its own thread; one worker keeps a source's frames in order."""
            t0 = time.perf_counter()

            def store(res: Any) -> None:
                setattr(out, name, res)
                out.timings_ms[name] = (time.perf_counter() - t0) * 1e3  # wall time, overlapped

            watch(name, self._submit(name, 1, fn, *args), store, (name,))

        if cfg.parallel_heads:
            # TokenCut (the costliest head) and matching are independent of the other heads: they
            # start at once in their own threads instead of after the features' and PCA's messages
            if "objects" in want:
                run_aside("objects", self._objects, frame, geom, tok, valid, cfg, st)
            if "matches" in want:
                run_aside("matches", self._matches, frame, geom, tok, cfg, st)
        objects_future = side["objects"][0] if "objects" in side else None
        if geo is None and "depth" in want and depth is not None:
            if cfg.parallel_heads:
                geo = self._submit("geo", _GEO_WORKERS, self._geometry, frame, geom, depth, want, cfg)
            else:
                geo = Future()
                geo.set_result(self._geometry(frame, geom, depth, want, cfg))
        if geo is not None:

            def store_geometry(res: dict[str, Any]) -> None:
                for k in ("depth", "depth_info", "points", "points_rgb", "points_packed", "points_dense"):
                    setattr(out, k, res.get(k))
                out.timings_ms.update(res["timings"])

            watch("geo", geo, store_geometry, tuple(n for n in ("depth", "points") if n in want))

        momentum = 0.0 if cfg.pca_mode == "fit_once" else 1.0 - cfg.pca_momentum
        vmask = torch.from_numpy(valid.astype(np.float32))
        if "features" in want:
            if cfg.features_k > 0:
                if st.pca_k is None or st.pca_k.n_components != cfg.features_k:
                    st.pca_k = PCAView(cfg.features_k, whiten=False, momentum=momentum)
                st.pca_k.update(tok, fg_mask=vmask)
                out.features = as_numpy(st.pca_k.project(tok)).reshape(h, w, cfg.features_k)
            else:
                out.features = np.ascontiguousarray(tok_np if tok_np is not None else as_numpy(tok))
            lap("features")
            ready("features")
        if "features_pca" in want:
            if st.pca_rgb is None:
                st.pca_rgb = PCAView(3, momentum=momentum)
            pre = getattr(defer_pca, "pre", {}).get(id(frame))
            if pre:  # fixed basis: finish() coloured the batch in one go
                rgb_t = pre.pop(0)
            else:
                st.pca_rgb.update(tok, fg_mask=vmask)
                rgb_t = st.pca_rgb.transform_tensor(tok, mask_background=False)
            if defer_pca is not None and "debug" not in want:
                defer_pca.append((out, rgb_t))  # finish() copies the batch's images in one go
            else:
                out.features_pca = to_host(rgb_t)
            lap("features_pca")
            if out.features_pca is not None:  # else finish() reports it with the batch's copy
                ready("features_pca")
        debug_base = None
        if "debug" in want and cfg.parallel_heads and out.features_pca is not None:
            # the overlay's image part (input blended with PCA) needs nothing else: it is made while
            # matches and TokenCut run; only boxes and match lines are drawn at the end
            debug_base = self._pool("debug", 1).submit(self._debug_base, frame, geom, out.features_pca, cfg)
        if "matches" in side:
            take("matches")
            t = time.perf_counter()
        elif "matches" in want:
            out.matches = self._matches(frame, geom, tok, cfg, st)
            lap("matches")
            ready("matches")

        def take_geometry() -> None:
            nonlocal t
            t_geo = time.perf_counter()
            take("geo")
            out.timings_ms["geometry_wait"] = (time.perf_counter() - t_geo) * 1e3
            t = time.perf_counter()

        if "geo" in side and objects_future is not None and notify is None and not objects_future.done():
            wait([side["geo"][0], objects_future], return_when=FIRST_COMPLETED)
            if side["geo"][0].done() and not objects_future.done():  # depth/points before TokenCut ends
                take_geometry()
        if objects_future is not None:
            take("objects")
            t = time.perf_counter()
        elif "objects" in want:
            out.objects = self._objects(frame, geom, tok, valid, cfg, st)
            lap("objects")
            ready("objects")
        if "geo" in side:
            take_geometry()
        if "debug" in want:
            out.debug = self._debug(frame, geom, out, cfg, debug_base.result() if debug_base else None)
            lap("debug")
            ready("debug")
        return out

    def _ready_event(self) -> Any:
        """A CUDA event recorded now on the caller's stream (None off CUDA); shareable by many tasks."""
        dev = torch.device(self.device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            return None
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(dev))
        return ev

    def _submit(self, name: str, workers: int, fn: Any, *args: Any, ready: Any = None) -> Future:
        """Run ``fn(*args)`` in pool ``name``; on CUDA on that pool's own stream (after the work queued
        so far on the caller's stream, or after ``ready``), so a head's syncs never wait for another
        head's kernels."""
        dev = torch.device(self.device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            return self._pool(name, workers).submit(fn, *args)
        if ready is None:
            ready = self._ready_event()

        def run() -> Any:
            own = getattr(self._side, "stream", None)
            if own is None:
                own = self._side.stream = torch.cuda.Stream(device=dev)
            own.wait_event(ready)
            with torch.cuda.stream(own):
                return fn(*args)

        return self._pool(name, workers).submit(run)

    def _pool(self, name: str, workers: int) -> ThreadPoolExecutor:
        ex = self._executors.get(name)
        if ex is None:
            ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"dinov3_{name}")
            self._executors[name] = ex
        return ex

    def _geometry(
        self,
        frame: Frame,
        geom: Geometry,
        depth: tuple[torch.Tensor, np.ndarray],
        want: set[str],
        cfg: PipelineConfig,
    ) -> dict[str, Any]:
        """Depth image + intrinsics and the point cloud of one frame (stateless: any thread)."""
        H, W = frame.image.shape[:2]
        res: dict[str, Any] = {"points": None, "points_rgb": None, "timings": {}}
        t = time.perf_counter()
        K_in = frame.camera_info or CameraIntrinsics.from_fov(W, H, cfg.default_hfov_deg)
        d_dev, d = depth
        x0, y0, x1, y1 = geom.valid_box
        if cfg.depth_resolution == "input":
            res["depth"] = self._canvas_to_input(d, geom)
            res["depth_info"] = K_in
        else:
            d_canvas = np.full_like(d, np.nan)
            d_canvas[y0:y1, x0:x1] = d[y0:y1, x0:x1]
            res["depth"] = d_canvas
            Kn, (wn, hn) = geom.scale_intrinsics(K_in.K, geom.network_size)
            Pn = Kn @ np.linalg.solve(K_in.K, K_in.P) if K_in.P is not None else None
            res["depth_info"] = CameraIntrinsics(Kn, wn, hn, K_in.D.copy(), K_in.distortion_model, Pn)
        now = time.perf_counter()
        res["timings"]["depth"], t = (now - t) * 1e3, now
        if "points" in want:
            Kn, _ = geom.scale_intrinsics(K_in.K, geom.network_size)
            # back-projection on the depth's device; only the (smaller) cloud comes back
            dc = torch.full_like(d_dev, float("nan"))
            dc[y0:y1, x0:x1] = d_dev[y0:y1, x0:x1]
            cols = cols_t = None
            if cfg.points_color == "rgb":
                rgb_c = torch.from_numpy(self._canvas_rgb(frame.image, geom)).to(dc.device)
                pts_t, cols_t = backproject(dc, Kn, rgb_c, stride=cfg.points_stride)
                cols = to_host(cols_t, sync=False)
            else:
                pts_t = backproject(dc, Kn, stride=cfg.points_stride)
            pts_t = pts_t.to(torch.float32)
            if cfg.points_voxel > 0:
                pts = to_host(pts_t)
                res["points"], res["points_rgb"] = voxel_downsample(pts, cols, cfg.points_voxel)
            else:
                # the ~/points message rows ([x y z (rgb)] float32, rgb = 0x00RRGGBB bits) are packed on
                # the device: the host only copies them (no per-point repacking)
                packed_t = pts_t
                if cols_t is not None:
                    c = cols_t.to(torch.int32)
                    rgbf = ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(torch.float32)
                    packed_t = torch.cat([pts_t, rgbf[:, None]], 1)
                dense_t = torch.isfinite(pts_t).all().reshape(1)
                flag = to_host(dense_t, sync=False)
                packed = to_host(packed_t.contiguous())
                res["points"], res["points_rgb"] = packed[:, :3], cols
                res["points_packed"], res["points_dense"] = packed, bool(flag[0])
            res["timings"]["points"] = (time.perf_counter() - t) * 1e3
        return res

    @staticmethod
    def _valid_patches(geom: Geometry, h: int, w: int) -> np.ndarray:
        """Patches whose centre lies on image content (not letterbox padding)."""
        x0, y0, x1, y1 = geom.valid_box
        p = geom.patch_size
        cy = (np.arange(h) + 0.5) * p
        cx = (np.arange(w) + 0.5) * p
        return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]

    @staticmethod
    def _canvas_to_input(d: np.ndarray, geom: Geometry) -> np.ndarray:
        """Bilinear map of a network-canvas map ``[H, W]`` to input pixels (pixel-centre convention).

        Letterbox case: crop the content and resize (edges replicate content, no padding bleed);
        otherwise ``Geometry.to_input``.
        """
        if geom.offset_x >= 0 and geom.offset_y >= 0:
            ox, oy = int(geom.offset_x), int(geom.offset_y)
            rh, rw = geom.resized_size
            H, W = geom.input_size
            return cv2.resize(d[oy : oy + rh, ox : ox + rw], (W, H), interpolation=cv2.INTER_LINEAR)
        return geom.to_input(torch.from_numpy(d)[None])[0].numpy()

    @staticmethod
    def _canvas_rgb(image: np.ndarray, geom: Geometry) -> np.ndarray:
        H, W = geom.network_size
        rh, rw = geom.resized_size
        interp = cv2.INTER_AREA if rh < image.shape[0] else cv2.INTER_LINEAR
        r = cv2.resize(image, (rw, rh), interpolation=interp) if (rh, rw) != image.shape[:2] else image
        canvas = np.zeros((H, W, 3), np.uint8)
        ox, oy = int(geom.offset_x), int(geom.offset_y)
        sx0, sy0, dx0, dy0 = max(0, -ox), max(0, -oy), max(0, ox), max(0, oy)
        cw, ch = min(rw - sx0, W - dx0), min(rh - sy0, H - dy0)
        canvas[dy0 : dy0 + ch, dx0 : dx0 + cw] = r[sy0 : sy0 + ch, sx0 : sx0 + cw]
        return canvas

    def _matches(
        self, frame: Frame, geom: Geometry, tok: torch.Tensor, cfg: PipelineConfig, st: _SourceState
    ) -> MatchResult:
        kf = st.keyframe
        if kf is None or kf.tokens.shape != tok.shape or kf.geom != geom:
            st.keyframe = _Keyframe(tok, geom, frame.stamp_ns, frame.frame_id)
            e = np.zeros((0, 2), np.float32)
            return MatchResult(e, e.copy(), np.zeros(0, np.float32), np.zeros(0, bool), None, "")

        def to_input(pts: np.ndarray) -> np.ndarray:
            # patch-area coordinates ((col + 0.5) * p) -> pixel centres -> input pixels
            u, v = geom.network_to_input(pts[:, 0] - 0.5, pts[:, 1] - 0.5)
            return np.stack([u, v], 1)

        H, W = frame.image.shape[:2]
        m = match(
            kf.tokens,
            tok,
            patch_size=float(geom.patch_size),
            ratio=cfg.match_ratio if cfg.match_ratio < 1.0 else None,
            min_score=cfg.match_threshold,
            max_matches=cfg.match_max,
            to_input=to_input,
            verify_with="fundamental",
            ransac_threshold=geom.patch_size / max(geom.scale_x, 1e-9),
        )
        lim = np.array([W - 0.5, H - 0.5])
        inside = np.all((m.pts0 >= -0.5) & (m.pts0 <= lim), 1) & np.all((m.pts1 >= -0.5) & (m.pts1 <= lim), 1)
        res = MatchResult(
            m.pts0[inside].astype(np.float32),
            m.pts1[inside].astype(np.float32),
            m.scores[inside].astype(np.float32),
            m.inliers[inside].astype(bool),
            kf.stamp_ns,
            kf.frame_id,
        )
        kf.age += 1
        renew = (
            cfg.keyframe_policy == "previous"
            or (cfg.keyframe_policy == "interval" and kf.age >= cfg.keyframe_interval)
            or (cfg.keyframe_policy == "min_matches" and int(res.inlier.sum()) < cfg.keyframe_min_matches)
        )
        if renew:
            st.keyframe = _Keyframe(tok, geom, frame.stamp_ns, frame.frame_id)
        return res

    def _objects(
        self,
        frame: Frame,
        geom: Geometry,
        tok: torch.Tensor,
        valid: np.ndarray,
        cfg: PipelineConfig,
        st: _SourceState,
    ) -> ObjectsResult:
        rows, cols = np.nonzero(valid)
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        if st.tracker is None or st.grid != (r0, r1, c0, c1):
            # CPU: dense solves beat ARPACK up to a few thousand patches: a full eigh up to ~400, above
            # that only the needed eigenpair (LAPACK syevr, 3.5x faster than a full eigh at 1200); on a
            # GPU "auto" (dense / block subspace iteration on the device) avoids any host solve
            n = (r1 - r0) * (c1 - c0)
            method = "auto"
            if tok.device.type == "cpu" and n <= 2048:
                method = "dense" if n <= 400 else "cpu_dense"
            st.tracker = TokenCutTracker(k=cfg.max_objects, method=method)
            st.grid = (r0, r1, c0, c1)
        tr = st.tracker
        tr.k, tr.tau, tr.eps, tr.iou_threshold = (
            cfg.max_objects,
            cfg.tokencut_tau,
            cfg.tokencut_eps,
            cfg.track_iou,
        )
        tr.multi_kwargs = {
            "min_patches": cfg.min_object_patches,
            "max_eigenvalue": 1.0 - cfg.min_object_score,
        }
        objs = tr.update(tok[r0:r1, c0:c1].contiguous())
        max_id = 255 if cfg.mask_encoding == "mono8" else 65535
        grid = np.zeros(tok.shape[:2], np.uint16)
        ids, scores = [], []
        for o in objs:
            oid = o.track_id % max_id + 1
            grid[r0:r1, c0:c1][o.result.mask] = oid
            ids.append(oid)
            lam = o.result.eigenvalue
            scores.append(float(np.clip(1.0 - lam, 0.0, 1.0)) if np.isfinite(lam) else 0.0)
        ri, ci = _grid_maps(geom, grid.shape[0], grid.shape[1])
        mask = np.ascontiguousarray(self._grid_to_input(grid, geom))
        # boxes and areas from the grid: each patch maps to a product of input rows x columns, so this is
        # exact and costs O(objects x patches) instead of two passes over the input-size mask
        ny = np.bincount(ri, minlength=grid.shape[0])
        nx = np.bincount(ci, minlength=grid.shape[1])
        boxes, areas, keep = [], [], []
        for k, oid in enumerate(ids):
            cells = grid == oid
            ys = np.flatnonzero(cells.any(1)[ri])  # input rows whose grid row holds the object
            xs = np.flatnonzero(cells.any(0)[ci])
            area = int((ny[:, None] * nx[None, :])[cells].sum())
            if area == 0 or ys.size == 0 or xs.size == 0:
                continue  # the object lies in letterbox padding only
            boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
            areas.append(area)
            keep.append(k)
        return ObjectsResult(
            mask,
            np.asarray([ids[k] for k in keep], np.uint32),
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray([scores[k] for k in keep], np.float32),
            np.asarray(areas, np.uint32),
        )

    @staticmethod
    def _grid_to_input(grid: np.ndarray, geom: Geometry) -> np.ndarray:
        """Nearest-neighbour map of a patch-grid array ``[h, w(, c)]`` to input pixels ``[H, W(, c)]``.

        8/16-bit and float32 grids of up to 4 channels go through one ``cv2.remap`` with cached integer
        maps (the same picks, ~4x faster than two ``np.take`` and without the GIL); others use ``np.take``.
        """
        gh, gw = grid.shape[:2]
        c = grid.shape[2] if grid.ndim == 3 else 0
        if grid.dtype in _REMAP_DTYPES and c in (0, 3, 4) and grid.flags.c_contiguous:
            mx, my = _remap_maps(geom, gh, gw)
            return cv2.remap(grid, mx, my, cv2.INTER_NEAREST)
        ri, ci = _grid_maps(geom, gh, gw)
        return np.take(np.take(grid, ri, axis=0), ci, axis=1)

    @staticmethod
    def _debug_base(frame: Frame, geom: Geometry, pca_grid: np.ndarray, cfg: PipelineConfig) -> np.ndarray:
        """The overlay's image: the input blended with the PCA colours (``debug_alpha``)."""
        pca_in = np.ascontiguousarray(Pipeline._grid_to_input(pca_grid, geom))
        a = cfg.debug_alpha
        return cv2.addWeighted(frame.image, 1.0 - a, pca_in, a, 0.0)

    @staticmethod
    def _debug(
        frame: Frame, geom: Geometry, out: FrameOutputs, cfg: PipelineConfig, base: np.ndarray | None = None
    ) -> np.ndarray:
        """The overlay: :meth:`_debug_base` (or ``base``, made earlier) + object boxes + match lines."""
        assert out.features_pca is not None
        dbg = base if base is not None else Pipeline._debug_base(frame, geom, out.features_pca, cfg)
        if out.objects is not None:
            for (x0, y0, x1, y1), oid in zip(out.objects.boxes, out.objects.ids):
                col = tuple(int(c) for c in np.random.default_rng(int(oid)).integers(64, 256, 3))
                cv2.rectangle(dbg, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), col, 2)
        if out.matches is not None and len(out.matches):
            m = out.matches
            seg = np.stack([m.uv0, m.uv1], 1).astype(np.int32)  # [N, 2 points, (u, v)]
            for sel, col in ((~m.inlier, (255, 0, 0)), (m.inlier, (0, 255, 0))):  # inliers drawn last
                if sel.any():
                    cv2.polylines(dbg, list(seg[sel]), False, col, 1)  # one call for all segments
        return dbg
