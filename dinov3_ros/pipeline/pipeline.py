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

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from dinov3_ros.pipeline.heads_ops import (
    InstanceTracker,
    PCABasis,
    backproject,
    match_features,
    ransac_inliers,
    tokencut_instances,
    voxel_downsample,
)
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
from dinov3_ros.runtime.preprocess import Geometry, Preprocessor

#: outputs each output needs computed first
_DEPENDS = {"points": {"depth"}, "debug": {"features_pca"}}


@dataclass
class _Keyframe:
    feats: np.ndarray  # [N, C] features of valid patches
    uv: np.ndarray  # [N, 2] their centres in input pixels
    stamp_ns: int
    frame_id: str
    size: tuple[int, int]
    age: int = 0


@dataclass
class _SourceState:
    pca_rgb: PCABasis | None = None
    pca_k: PCABasis | None = None
    keyframe: _Keyframe | None = None
    tracker: InstanceTracker = field(default_factory=InstanceTracker)


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
        self._config = (config or PipelineConfig()).validate()
        self._pre = self._make_pre(self._config)
        self._states: dict[str, _SourceState] = {}
        self._lock = threading.Lock()

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

    # ------------------------------------------------------------------------------------------
    def process(self, frames: list[Frame], outputs: Iterable[str]) -> list[FrameOutputs]:
        """Run the engine once on all ``frames`` and compute ``outputs`` for each (in frame order)."""
        want = resolve_outputs(outputs)
        with self._lock:
            cfg, pre = self._config, self._pre
        if not frames:
            return []
        t0 = time.perf_counter()
        batch, geoms = pre([f.image for f in frames])
        t1 = time.perf_counter()
        res = self.engine.run(batch)
        tokens_t = res["patch_tokens"]
        t2 = time.perf_counter()
        depth_net = None
        if "depth" in want:
            depth_net = self._depth(res, tokens_t, geoms[0].network_size)
        tokens = as_numpy(tokens_t)
        t3 = time.perf_counter()
        shared = {"preprocess": (t1 - t0) * 1e3, "engine": (t2 - t1) * 1e3, "depth_head": (t3 - t2) * 1e3}
        outs = []
        for i, (frame, geom) in enumerate(zip(frames, geoms)):
            st = self._states.setdefault(frame.source, _SourceState())
            d = depth_net[i] if depth_net is not None else None
            outs.append(self._heads(frame, geom, tokens[i], d, want, cfg, st, dict(shared)))
        return outs

    def _depth(self, res: dict[str, Any], tokens: Any, net: tuple[int, int]) -> np.ndarray:
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
        return d[:, 0].cpu().numpy()

    # ------------------------------------------------------------------------------------------
    def _heads(
        self,
        frame: Frame,
        geom: Geometry,
        tok: np.ndarray,
        depth_net: np.ndarray | None,
        want: set[str],
        cfg: PipelineConfig,
        st: _SourceState,
        timings: dict[str, float],
    ) -> FrameOutputs:
        H, W = frame.image.shape[:2]
        out = FrameOutputs(frame.stamp_ns, frame.frame_id, frame.source, W, H, timings_ms=timings)
        h, w, C = tok.shape
        valid = self._valid_patches(geom, h, w)
        flat = tok.reshape(-1, C)
        vflat = flat[valid.ravel()]
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            out.timings_ms[name] = (now - t) * 1e3
            t = now

        if "features" in want:
            if cfg.features_k > 0:
                if st.pca_k is None or st.pca_k.comps.shape[1] != C:
                    st.pca_k = PCABasis.fit(vflat, cfg.features_k)
                elif cfg.pca_mode == "update":
                    st.pca_k.update(vflat, cfg.pca_momentum)
                out.features = st.pca_k.project(flat).reshape(h, w, cfg.features_k)
            else:
                out.features = np.ascontiguousarray(tok, dtype=np.float32)
            lap("features")
        if "features_pca" in want:
            if st.pca_rgb is None or st.pca_rgb.comps.shape[1] != C:
                st.pca_rgb = PCABasis.fit(vflat, 3)
            elif cfg.pca_mode == "update":
                st.pca_rgb.update(vflat, cfg.pca_momentum)
            out.features_pca = st.pca_rgb.to_rgb(flat).reshape(h, w, 3)
            lap("features_pca")
        K_in = frame.camera_info or CameraIntrinsics.from_fov(W, H, cfg.default_hfov_deg)
        if "depth" in want and depth_net is not None:
            d = np.clip(depth_net * cfg.depth_scale, cfg.min_depth, cfg.max_depth).astype(np.float32)
            x0, y0, x1, y1 = geom.valid_box
            d_canvas = np.full_like(d, np.nan)
            d_canvas[y0:y1, x0:x1] = d[y0:y1, x0:x1]
            if cfg.depth_resolution == "input":
                out.depth = geom.to_input(torch.from_numpy(d)[None])[0].numpy()
                out.depth_info = K_in
            else:
                out.depth = d_canvas
                Kn, (wn, hn) = geom.scale_intrinsics(K_in.K, geom.network_size)
                Pn = Kn @ np.linalg.solve(K_in.K, K_in.P) if K_in.P is not None else None
                out.depth_info = CameraIntrinsics(Kn, wn, hn, K_in.D.copy(), K_in.distortion_model, Pn)
            lap("depth")
            if "points" in want:
                Kn, _ = geom.scale_intrinsics(K_in.K, geom.network_size)
                pts, idx = backproject(d_canvas, Kn, cfg.points_stride)
                cols = None
                if cfg.points_color == "rgb":
                    cols = self._canvas_rgb(frame.image, geom).reshape(-1, 3)[idx]
                pts, cols = voxel_downsample(pts, cols, cfg.points_voxel)
                out.points, out.points_rgb = pts, cols
                lap("points")
        if "matches" in want:
            out.matches = self._matches(frame, geom, flat, valid, cfg, st)
            lap("matches")
        if "objects" in want:
            out.objects = self._objects(frame, geom, tok, valid, cfg, st)
            lap("objects")
        if "debug" in want:
            out.debug = self._debug(frame, geom, out, cfg)
            lap("debug")
        return out

    @staticmethod
    def _valid_patches(geom: Geometry, h: int, w: int) -> np.ndarray:
        """Patches whose centre lies on image content (not letterbox padding)."""
        x0, y0, x1, y1 = geom.valid_box
        p = geom.patch_size
        cy = (np.arange(h) + 0.5) * p
        cx = (np.arange(w) + 0.5) * p
        return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]

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
        self,
        frame: Frame,
        geom: Geometry,
        flat: np.ndarray,
        valid: np.ndarray,
        cfg: PipelineConfig,
        st: _SourceState,
    ) -> MatchResult:
        rows, cols = np.nonzero(valid)
        u, v = geom.patch_to_input(rows, cols)
        uv = np.stack([u, v], 1).astype(np.float32)
        feats = flat[valid.ravel()]
        size = frame.image.shape[:2]
        kf = st.keyframe
        if kf is None or kf.feats.shape[1] != feats.shape[1] or kf.size != size:
            st.keyframe = _Keyframe(feats, uv, frame.stamp_ns, frame.frame_id, size)
            e = np.zeros((0, 2), np.float32)
            return MatchResult(e, e.copy(), np.zeros(0, np.float32), np.zeros(0, bool), None, "")
        i0, i1, score = match_features(kf.feats, feats, cfg.match_ratio, cfg.match_threshold, cfg.match_max)
        uv0, uv1 = kf.uv[i0], uv[i1]
        inl = ransac_inliers(uv0, uv1, geom.patch_size / max(geom.scale_x, 1e-9))
        res = MatchResult(uv0, uv1, score, inl, kf.stamp_ns, kf.frame_id)
        kf.age += 1
        renew = (
            cfg.keyframe_policy == "previous"
            or (cfg.keyframe_policy == "interval" and kf.age >= cfg.keyframe_interval)
            or (cfg.keyframe_policy == "min_matches" and int(inl.sum()) < cfg.keyframe_min_matches)
        )
        if renew:
            st.keyframe = _Keyframe(feats, uv, frame.stamp_ns, frame.frame_id, size)
        return res

    def _objects(
        self,
        frame: Frame,
        geom: Geometry,
        tok: np.ndarray,
        valid: np.ndarray,
        cfg: PipelineConfig,
        st: _SourceState,
    ) -> ObjectsResult:
        rows, cols = np.nonzero(valid)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        lab_crop, scores = tokencut_instances(
            tok[r0:r1, c0:c1], cfg.tokencut_tau, cfg.tokencut_eps, cfg.max_objects, cfg.min_object_patches
        )
        labels = np.zeros(tok.shape[:2], np.int32)
        labels[r0:r1, c0:c1] = lab_crop
        max_id = 255 if cfg.mask_encoding == "mono8" else 65535
        ids = st.tracker.assign(labels, cfg.track_iou, max_id)
        grid = ids[labels].astype(np.float32)
        mask = geom.to_input(torch.from_numpy(grid)[None], mode="nearest")[0].numpy()
        mask = np.rint(mask).astype(np.uint16)
        obj_ids = ids[1:].astype(np.uint32)
        boxes = np.zeros((len(obj_ids), 4), np.float32)
        areas = np.zeros(len(obj_ids), np.uint32)
        keep = []
        for k, oid in enumerate(obj_ids):
            ys, xs = np.nonzero(mask == oid)
            if ys.size == 0:
                continue
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            areas[k] = ys.size
            keep.append(k)
        keep_a = np.asarray(keep, np.int64)
        return ObjectsResult(
            mask, obj_ids[keep_a], boxes[keep_a], scores[keep_a].astype(np.float32), areas[keep_a]
        )

    @staticmethod
    def _debug(frame: Frame, geom: Geometry, out: FrameOutputs, cfg: PipelineConfig) -> np.ndarray:
        assert out.features_pca is not None
        pca = torch.from_numpy(out.features_pca.astype(np.float32)).permute(2, 0, 1)
        pca_in = geom.to_input(pca, mode="nearest").permute(1, 2, 0).numpy()
        img = frame.image.astype(np.float32)
        dbg = np.clip(img * (1 - cfg.debug_alpha) + pca_in * cfg.debug_alpha + 0.5, 0, 255).astype(np.uint8)
        if out.objects is not None:
            for (x0, y0, x1, y1), oid in zip(out.objects.boxes, out.objects.ids):
                col = tuple(int(c) for c in np.random.default_rng(int(oid)).integers(64, 256, 3))
                cv2.rectangle(dbg, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), col, 2)
        if out.matches is not None and len(out.matches):
            for (u0, v0), (u1, v1), ok in zip(out.matches.uv0, out.matches.uv1, out.matches.inlier):
                col = (0, 255, 0) if ok else (255, 0, 0)
                cv2.line(dbg, (int(u0), int(v0)), (int(u1), int(v1)), col, 1)
        return dbg
