"""Image preprocessing for the backbone: resize (aspect kept) -> pad/crop to the patch grid -> normalise.

Every frame keeps a :class:`Geometry` so any network output maps back to input pixels and to the
camera intrinsics. Pixel coordinates follow the ROS/OpenCV convention: integer coordinates are pixel
centres, and resizing is ``align_corners=False`` (pixel-area) resampling, so a point ``u`` in the input
maps to ``(u + 0.5) * s - 0.5`` in the resized image.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dinov3_ros.core.camera import scale_matrix

# read-only frames (views of message buffers) are only read here; torch's warning about them is noise
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)

__all__ = ["Geometry", "Preprocessor", "parse_target", "to_rgb_uint8"]

Target = int | tuple[int, int]


@dataclass(frozen=True)
class Geometry:
    """How one input image was placed into the network canvas.

    ``network = input * scale + offset`` in pixel-area coordinates (edges), i.e. for pixel-centre
    coordinates ``u_net = (u_in + 0.5) * scale_x - 0.5 + offset_x``. A positive offset is padding,
    a negative one is cropping.
    """

    input_size: tuple[int, int]  # (H, W) of the original image
    network_size: tuple[int, int]  # (H, W) of the network input (multiple of patch_size)
    resized_size: tuple[int, int]  # (H, W) of the resized content before pad/crop
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    patch_size: int

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (h, w)."""
        return self.network_size[0] // self.patch_size, self.network_size[1] // self.patch_size

    @property
    def valid_box(self) -> tuple[int, int, int, int]:
        """Network-pixel box ``(x0, y0, x1, y1)`` (exclusive end) holding image content, not padding."""
        x0 = max(0, round(self.offset_x))
        y0 = max(0, round(self.offset_y))
        x1 = min(self.network_size[1], round(self.offset_x + self.resized_size[1]))
        y1 = min(self.network_size[0], round(self.offset_y + self.resized_size[0]))
        return x0, y0, x1, y1

    def input_to_network(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Map input pixel centres (u=x, v=y) to network pixel coordinates."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        return (u + 0.5) * self.scale_x - 0.5 + self.offset_x, (v + 0.5) * self.scale_y - 0.5 + self.offset_y

    def network_to_input(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Map network pixel coordinates back to input pixel coordinates (exact inverse)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        return (u + 0.5 - self.offset_x) / self.scale_x - 0.5, (v + 0.5 - self.offset_y) / self.scale_y - 0.5

    def patch_to_input(
        self, row: np.ndarray | float, col: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Centre of patch ``(row, col)`` of the grid, in input pixels ``(u, v)``."""
        p = self.patch_size
        un = (np.asarray(col, dtype=np.float64) + 0.5) * p - 0.5
        vn = (np.asarray(row, dtype=np.float64) + 0.5) * p - 0.5
        return self.network_to_input(un, vn)

    def output_to_input(
        self, u: np.ndarray | float, v: np.ndarray | float, output_size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map pixel centres of an output map of ``output_size`` (H, W) spanning the network canvas to input pixels."""
        sx = self.network_size[1] / output_size[1]
        sy = self.network_size[0] / output_size[0]
        un = (np.asarray(u, dtype=np.float64) + 0.5) * sx - 0.5
        vn = (np.asarray(v, dtype=np.float64) + 0.5) * sy - 0.5
        return self.network_to_input(un, vn)

    def scale_intrinsics(
        self, K: np.ndarray | Sequence[float], output_size: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Intrinsics of an output map covering the network canvas.

        ``K`` is the input camera's 3x3 matrix (or its 9 row-major values). ``output_size`` (H, W)
        defaults to the network size; the patch grid is ``geometry.grid_size``. Returns ``(K', (width,
        height))`` as for a CameraInfo.
        """
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        oh, ow = output_size if output_size is not None else self.network_size
        gx = ow / self.network_size[1]
        gy = oh / self.network_size[0]
        sx, sy = self.scale_x * gx, self.scale_y * gy
        out = scale_matrix(K, sx, sy, self.offset_x * gx, self.offset_y * gy)
        return out, (int(ow), int(oh))

    def to_input(self, output: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Resample an output map ``[C, h, w]`` (spanning the network canvas) to the input size ``[C, H, W]``."""
        if output.dim() != 3:
            raise ValueError(f"to_input expects [C, h, w], got shape {tuple(output.shape)}")
        oh, ow = output.shape[-2:]
        H, W = self.input_size
        # Sample grid: input pixel centres -> output-map coordinates (normalised, align_corners=False).
        u = torch.arange(W, dtype=torch.float64)
        v = torch.arange(H, dtype=torch.float64)
        un = ((u + 0.5) * self.scale_x + self.offset_x) * (ow / self.network_size[1])
        vn = ((v + 0.5) * self.scale_y + self.offset_y) * (oh / self.network_size[0])
        gx = (un / ow * 2 - 1).to(torch.float32)
        gy = (vn / oh * 2 - 1).to(torch.float32)
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].to(output.device)
        src = output[None].float()
        kw = {"align_corners": False, "padding_mode": "border"}
        return F.grid_sample(src, grid, mode=mode, **kw)[0].to(output.dtype)


def parse_target(spec: str | int | Sequence[int]) -> Target:
    """``"480x640"`` / ``(480, 640)`` -> fixed network (H, W); ``"448"`` / ``448`` -> short side."""
    if isinstance(spec, int):
        return spec
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", spec)
        if m:
            return int(m.group(1)), int(m.group(2))
        if spec.strip().isdigit():
            return int(spec)
        raise ValueError(f"target {spec!r}: expected 'HxW' or a short-side length")
    vals = tuple(int(v) for v in spec)
    if len(vals) == 1:
        return vals[0]
    if len(vals) != 2:
        raise ValueError(f"target {spec!r}: expected (H, W)")
    return vals[0], vals[1]


def to_rgb_uint8(image: np.ndarray, encoding: str | None = None) -> np.ndarray:
    """Convert grayscale / RGBA / BGR(A) / 16-bit / float images to contiguous RGB uint8 HxWx3."""
    img = np.asarray(image)
    enc = (encoding or "").lower()
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"empty image of shape {img.shape}")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {img.dtype} (uint8, uint16 or float in [0, 1])")
    c = img.shape[2]
    if c == 1:
        img = np.repeat(img, 3, axis=2)
    elif c == 4:
        img = img[:, :, :3]
    if enc.startswith("bgr"):
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Preprocessor:
    """Resize keeping the aspect ratio, pad (or crop) to a multiple of ``patch_size``, normalise.

    ``target`` is a short-side length (int) or a fixed network size ``(H, W)`` (multiples of
    ``patch_size``) into which frames are letterboxed. ``fit="pad"`` pads the resized image up to the
    patch grid (nothing is lost); ``fit="crop"`` centre-crops it down (short-side targets only; a fixed
    size always letterboxes). Frames of different sizes in one batch share one network size.
    Work happens on ``device``: uint8 is uploaded, then converted there.
    """

    def __init__(
        self,
        target: Target | str,
        patch_size: int = 16,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        device: str | torch.device = "cpu",
        *,
        fit: str = "pad",
        dtype: torch.dtype = torch.float32,
        antialias: bool = True,
    ) -> None:
        self.target = parse_target(target) if not isinstance(target, int) else target
        self.patch_size = int(patch_size)
        if fit not in ("pad", "crop"):
            raise ValueError(f"fit must be 'pad' or 'crop', got {fit!r}")
        self.fit = fit
        if isinstance(self.target, tuple):
            h, w = self.target
            if h <= 0 or w <= 0 or h % self.patch_size or w % self.patch_size:
                raise ValueError(
                    f"network size {h}x{w} must be positive multiples of patch size {self.patch_size}"
                )
        elif self.target < self.patch_size:
            raise ValueError(f"short side {self.target} is smaller than the patch size {self.patch_size}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.antialias = antialias
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def for_grid(cls, grid: tuple[int, int], patch_size: int = 16, **kwargs) -> Preprocessor:
        """Letterbox into a fixed patch grid ``(rows, cols)`` (network size = grid x patch size)."""
        gh, gw = (int(v) for v in grid)
        return cls((gh * patch_size, gw * patch_size), patch_size, **kwargs)

    # -- geometry -------------------------------------------------------------------------------
    def _resized(self, h: int, w: int) -> tuple[int, int]:
        if isinstance(self.target, tuple):
            H, W = self.target
            s = min(H / h, W / w)
            return max(1, min(H, round(h * s))), max(1, min(W, round(w * s)))
        s = self.target / min(h, w)
        return max(1, round(h * s)), max(1, round(w * s))

    def plan(self, sizes: Sequence[tuple[int, int]]) -> list[Geometry]:
        """Geometries for a batch of input sizes ``[(H, W), ...]`` sharing one network size."""
        if not sizes:
            raise ValueError("empty batch")
        p = self.patch_size
        resized = [self._resized(h, w) for h, w in sizes]
        if isinstance(self.target, tuple):
            net = self.target
        elif self.fit == "pad":
            net = (_round_up(max(r[0] for r in resized), p), _round_up(max(r[1] for r in resized), p))
        else:
            net = (max(p, min(r[0] for r in resized) // p * p), max(p, min(r[1] for r in resized) // p * p))
        out = []
        for (h, w), (rh, rw) in zip(sizes, resized):
            out.append(
                Geometry(
                    input_size=(h, w),
                    network_size=net,
                    resized_size=(rh, rw),
                    scale_x=rw / w,
                    scale_y=rh / h,
                    offset_x=float((net[1] - rw) // 2),
                    offset_y=float((net[0] - rh) // 2),
                    patch_size=p,
                )
            )
        return out

    # -- pixels ---------------------------------------------------------------------------------
    def _upload(self, image: np.ndarray | torch.Tensor, encoding: str | None) -> torch.Tensor:
        """-> float32 [1, 3, H, W] in 0..255 on the device."""
        if isinstance(image, torch.Tensor):
            t = image
            if t.dim() == 2:
                t = t[:, :, None]
            if t.dim() != 3 or t.shape[2] not in (1, 3, 4):
                raise ValueError(f"image tensor must be HxW or HxWxC (C in 1,3,4), got {tuple(t.shape)}")
            t = t.to(self.device, non_blocking=True)
            if t.dtype != torch.uint8:
                t = (t.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
            if t.shape[2] == 1:
                t = t.expand(-1, -1, 3)
            t = t[:, :, :3]
            if (encoding or "").lower().startswith("bgr"):
                t = t.flip(2)
        else:
            t = torch.from_numpy(to_rgb_uint8(image, encoding)).to(self.device, non_blocking=True)
        return t.permute(2, 0, 1)[None].float()

    def __call__(
        self,
        images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        encoding: str | None = None,
    ) -> tuple[torch.Tensor, list[Geometry]]:
        """Preprocess one image or a list -> ``(batch [B, 3, H, W], [Geometry] * B)``."""
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim <= 3:
            images = [images]
        images = list(images)
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        geoms = self.plan(sizes)
        H, W = geoms[0].network_size
        batch = torch.zeros((len(images), 3, H, W), dtype=torch.float32, device=self.device)
        # numpy frames of one size go up in one (pinned, on CUDA) copy and are resized together; the
        # per-sample arithmetic is the same as one by one, so the result is identical
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            if isinstance(im, np.ndarray):
                groups.setdefault(sizes[i], []).append(i)
        done: set[int] = set()
        for idx in groups.values():
            if len(idx) > 1:
                arrs = [to_rgb_uint8(images[i], encoding) for i in idx]
                self._place(batch, idx, self._upload_many(arrs), geoms[idx[0]])
                done.update(idx)
        for i, (im, g) in enumerate(zip(images, geoms)):
            if i in done:
                continue
            self._place(batch, [i], self._upload(im, encoding), g)
        return batch.to(self.dtype), geoms

    def _upload_many(self, arrs: list[np.ndarray]) -> torch.Tensor:
        """Same-size RGB uint8 arrays -> float32 [N, 3, H, W] in 0..255 on the device (one copy)."""
        h, w = arrs[0].shape[:2]
        pin = self.device.type == "cuda"
        host = torch.empty((len(arrs), h, w, 3), dtype=torch.uint8, pin_memory=pin)
        if torch.get_num_threads() == 1:
            # one call for the batch: the GIL is released once, not once per frame (the offline tool
            # on CUDA runs torch with one thread)
            torch.stack([torch.from_numpy(np.ascontiguousarray(a)) for a in arrs], out=host)
        else:  # torch's parallel copy collapses when other threads keep the cores busy
            hn = host.numpy()
            for k, a in enumerate(arrs):
                hn[k] = a
        t = host.to(self.device, non_blocking=pin)
        return t.permute(0, 3, 1, 2).float()

    def _place(self, batch: torch.Tensor, idx: list[int], x: torch.Tensor, g: Geometry) -> None:
        """Resize ``x`` [N, 3, h, w] (0..255) as ``g`` says, normalise, write into ``batch[idx]``."""
        H, W = g.network_size
        rh, rw = g.resized_size
        if (rh, rw) != g.input_size:
            down = rh < g.input_size[0] or rw < g.input_size[1]
            x = F.interpolate(
                x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=self.antialias and down
            )
        x = (x - self.mean) / self.std
        # Place content at the offset; negative offsets crop.
        ox, oy = int(g.offset_x), int(g.offset_y)
        sx0, sy0 = max(0, -ox), max(0, -oy)
        dx0, dy0 = max(0, ox), max(0, oy)
        cw = min(rw - sx0, W - dx0)
        ch = min(rh - sy0, H - dy0)
        src = x[:, :, sy0 : sy0 + ch, sx0 : sx0 + cw]
        if len(idx) == 1:
            batch[idx[0], :, dy0 : dy0 + ch, dx0 : dx0 + cw] = src[0]
        elif idx == list(range(idx[0], idx[0] + len(idx))):
            batch[idx[0] : idx[0] + len(idx), :, dy0 : dy0 + ch, dx0 : dx0 + cw] = src
        else:
            batch[idx, :, dy0 : dy0 + ch, dx0 : dx0 + cw] = src
