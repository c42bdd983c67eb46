"""What a registered output (a "head") declares, and the context it computes in.

An output is a subclass of :class:`Output` in its own module of this package, instantiated once:

- ``name`` (the key in ``FrameOutputs.values`` and in ``--outputs``/``outputs.<name>``), ``order``
  (where its messages go in a frame's message sequence);
- ``requires``: outputs it reads, computed (and final) before it and requested with it; ``uses``:
  outputs it reads only when they are requested anyway;
- ``needs_depth``: it reads the network-resolution depth from inference; ``needs_intrinsics``: its
  value is metric geometry that is only right with the camera's calibration (the node skips it for a
  frame without a usable camera_info unless told to fall back); ``batch_copy``: its device
  result is copied to the host once per batch;
- ``worker``: where it runs when heads run in parallel - ``"finish"`` (the scheduler's finish thread,
  in frame order), ``"own"`` (a thread of its own, in frame order; for costly stateful heads) or
  ``"pool"`` (a shared pool, any order; stateless heads only);
- per-source state (:meth:`new_state`; ``state_resets``: settings whose change resets it);
- :meth:`compute` (one frame), optional :meth:`prepare` (once per batch, before any frame);
- ``topics``: how the value becomes messages (:class:`Topic`), ``tile``: its preview picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import Frame, FrameOutputs
from dinov3_ros.msgs.cdr import Parts


@dataclass(frozen=True)
class Topic:
    """One message of an output: topic ``suffix`` (below the node's ``~`` or the bag tool's namespace),
    ``msgtype``, and ``serialize(stamp_ns, frame_id, value, config) -> Parts``. ``needs_intrinsics``:
    this message states the camera's calibration (skipped like an output that needs it);
    ``deprecated``: set on an old name kept for one release, to the topic that replaces it (same message)."""

    suffix: str
    msgtype: str
    serialize: Callable[[int, str, Any, PipelineConfig], Parts]
    needs_intrinsics: bool = False
    deprecated: str = ""


@dataclass
class BatchContext:
    """One inference's results as the heads see them (tokens and depth on the engine's device)."""

    frames: list[Frame]
    geoms: list[Any]  # runtime.preprocess.Geometry per frame
    tokens: Any  # torch [B, h, w, C] float32
    depth_net: Any  # torch [B, H, W] float32 (network size, scaled and clipped) or None
    want: frozenset[str]  # every output computed for this batch (requirements included)
    cfg: PipelineConfig
    outs: list[FrameOutputs]
    states: list[dict[str, Any]]  # per frame: output name -> that source's state
    objects_head: Any = None  # TokenCut's learned token projection (heads.objects_head), or None
    cache: dict[str, Any] = field(default_factory=dict)  # per-batch values heads share (host copies)


@dataclass
class FrameJob:
    """What :meth:`Output.compute` gets for frame ``i`` of a batch."""

    batch: BatchContext
    i: int
    state: Any  # this output's state for the frame's source (None for stateless outputs)
    #: ``value(name)`` of another output of this frame: waits until it is final; None if not requested
    value: Callable[[str], Any] = lambda name: None

    @property
    def frame(self) -> Frame:
        return self.batch.frames[self.i]

    @property
    def geom(self) -> Any:
        return self.batch.geoms[self.i]

    @property
    def tokens(self) -> Any:
        """``[h, w, C]`` float32 patch tokens on the engine's device."""
        return self.batch.tokens[self.i]

    @property
    def cfg(self) -> PipelineConfig:
        return self.batch.cfg

    @property
    def out(self) -> FrameOutputs:
        return self.batch.outs[self.i]

    def valid(self) -> np.ndarray:
        """``[h, w]`` bool: the patches on image content (not letterbox padding); cached per frame."""
        key = f"valid.{self.i}"
        v = self.batch.cache.get(key)
        if v is None:
            from dinov3_ros.pipeline.grid import valid_patches

            h, w = self.batch.tokens.shape[1:3]
            v = self.batch.cache[key] = valid_patches(self.geom, h, w)
        return v

    def calibrated(self) -> bool:
        """Whether the frame came with usable intrinsics (not the fallback pinhole)."""
        return self.frame.camera_info is not None

    def intrinsics(self) -> Any:
        """The frame's intrinsics, or the fallback pinhole (``default_hfov_deg``) without any."""
        from dinov3_ros.core.camera import CameraIntrinsics

        f = self.frame
        H, W = f.image.shape[:2]
        return f.camera_info or CameraIntrinsics.from_fov(W, H, self.cfg.default_hfov_deg)


class Output:
    """Base class of a registered output (see the module doc)."""

    name: ClassVar[str]
    order: ClassVar[int]
    requires: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[tuple[str, ...]] = ()
    needs_depth: ClassVar[bool] = False
    needs_intrinsics: ClassVar[bool] = False
    worker: ClassVar[str] = "finish"
    #: ``compute`` returns a device tensor that is copied to the host once for the whole batch (unless
    #: another requested output reads it, then frame by frame)
    batch_copy: ClassVar[bool] = False
    state_resets: ClassVar[tuple[str, ...]] = ()
    #: state classes that may appear in saved pipeline state (resume); see pipeline.state
    state_types: ClassVar[tuple[type, ...]] = ()
    topics: ClassVar[tuple[Topic, ...]] = ()
    #: label of the preview tile (None: no tile)
    tile_label: ClassVar[str | None] = None

    def new_state(self) -> Any:
        """A fresh per-source state (``None`` for a stateless output)."""
        return None

    def prepare(self, batch: BatchContext) -> None:
        """Once per batch before any frame's heads (on the finish thread): batched host copies."""

    def compute(self, job: FrameJob) -> Any:
        """The output of one frame (stored in ``FrameOutputs.values[name]``)."""
        raise NotImplementedError

    def tile(self, value: Any, rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        """Preview tile (RGB uint8, ``size`` = (width, height)) and its caption."""
        raise NotImplementedError
