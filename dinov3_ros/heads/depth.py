"""Metric depth heads on frozen patch features, and the head file format.

``LinearDepthHead`` - the DINOv3 linear probe: last-layer (final-LayerNorm'd) patch tokens ->
BatchNorm -> 1x1 conv to ``n_bins`` logits; bin weights ``ReLU(logit) + 0.1`` normalised to sum 1;
depth = expected bin centre (``n_bins`` uniform centres over ``[min_depth, max_depth]``); bilinear
upsampling to the output size. Depth is a convex combination of bin centres and bilinear weights are
convex, so the output always lies in ``[min_depth, max_depth]``.

``DPTHead`` - DPT on four intermediate layers (reassemble with readout ignore/add/project, optional
BatchNorm, 1x1 projection, resample x4/x2/x1/x0.5, 3x3 conv; RefineNet fusion with residual conv units
coarse -> fine; up-conv head to ``n_bins`` bins, or ``n_bins=None`` to a regressed depth mapped into
the range by a sigmoid).

Inputs are what ``backbone.get_intermediate_layers(x, n=layers, reshape=True, norm=True)`` returns:
``[B, C, h, w]`` tensors, or ``(patches, cls[, extra])`` tuples with ``return_class_token=True``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinov3_ros.fsutil import atomic_write

__all__ = [
    "DEFAULT_LAYERS",
    "DPTHead",
    "LinearDepthHead",
    "bins_to_depth",
    "default_layers",
    "load_head",
    "save_head",
]

#: 0-based block indices of the four DPT layers per architecture (DINOv2/DINOv3 depth configs).
DEFAULT_LAYERS: dict[str, list[int]] = {
    "vitt16": [2, 5, 8, 11],
    "vits16": [2, 5, 8, 11],
    "vits16plus": [2, 5, 8, 11],
    "vitb16": [2, 5, 8, 11],
    "vitl16": [4, 11, 17, 23],
    "vitl16plus": [4, 11, 17, 23],
    "vith16plus": [7, 15, 23, 31],
    "vit7b16": [9, 19, 29, 39],
}


def default_layers(arch: str | None = None, n_blocks: int | None = None) -> list[int]:
    """Four DPT layer indices for an arch name (``vits16``, ``vitl16``, ...) or a block count."""
    if arch is not None:
        a = arch.lower().replace("_", "").replace("-", "").replace("dinov3", "")
        if a in DEFAULT_LAYERS:
            return list(DEFAULT_LAYERS[a])
        for key, size in (("7b", 40), ("vitl", 24), ("vith", 32), ("vitb", 12), ("vits", 12)):
            if key in a:
                return default_layers(n_blocks=size)
        if n_blocks is None:
            raise ValueError(f"unknown arch {arch!r}: pass n_blocks or explicit layers")
    if n_blocks is None:
        raise ValueError("default_layers needs an arch name or n_blocks")
    if n_blocks == 12:
        return [2, 5, 8, 11]
    if n_blocks == 24:
        return [4, 11, 17, 23]
    if n_blocks == 40:
        return [9, 19, 29, 39]
    if n_blocks < 4:
        raise ValueError(f"n_blocks must be >= 4 for four DPT layers, got {n_blocks}")
    return [round((i + 1) * n_blocks / 4) - 1 for i in range(4)]


def bins_to_depth(logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[B, K, H, W]`` logits -> ``[B, 1, H, W]`` expected depth with weights ReLU + 0.1, sum-normalised."""
    w = F.relu(logits) + 0.1
    w = w / w.sum(1, keepdim=True)
    return torch.einsum("bkhw,k->bhw", w, centres.to(w.dtype))[:, None]


def _split(x: Any, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(patches [B, C, h, w], cls [B, C] | None) from a tensor or a get_intermediate_layers tuple."""
    cls = None
    if isinstance(x, (tuple, list)):
        if not x:
            raise ValueError(f"{name}: empty tuple")
        cls = x[1] if len(x) > 1 else None
        x = x[0]
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{name}: expected patch features [B, C, h, w] (get_intermediate_layers(..., reshape=True)), got {shape}"
        )
    return x, cls


def _out_size(h: int, w: int, patch_size: int, output_size: Sequence[int] | None) -> tuple[int, int]:
    if output_size is None:
        return h * patch_size, w * patch_size
    H, W = (int(s) for s in output_size)
    if H <= 0 or W <= 0:
        raise ValueError(f"output_size must be positive, got {tuple(output_size)}")
    return H, W


class _DepthBase(nn.Module):
    head_type = "base"

    def _init_range(self, n_bins: int | None, min_depth: float, max_depth: float) -> None:
        if not (0.0 <= min_depth < max_depth) or not math.isfinite(max_depth):
            raise ValueError(
                f"depth range must satisfy 0 <= min_depth < max_depth < inf, got [{min_depth}, {max_depth}]"
            )
        if n_bins is not None and n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.min_depth, self.max_depth, self.n_bins = float(min_depth), float(max_depth), n_bins
        if n_bins is not None:
            self.register_buffer(
                "bin_centres", torch.linspace(min_depth, max_depth, n_bins), persistent=False
            )

    def _to_depth(self, out: torch.Tensor) -> torch.Tensor:
        if self.n_bins is not None:
            return bins_to_depth(out, self.bin_centres)
        # regression: sigmoid into the range (keeps gradients everywhere, unlike a clamp)
        return self.min_depth + (self.max_depth - self.min_depth) * torch.sigmoid(out)


class LinearDepthHead(_DepthBase):
    """DINOv3 linear depth probe: BatchNorm + 1x1 conv to bins -> expected depth, upsampled."""

    head_type = "linear"

    def __init__(
        self,
        embed_dim: int,
        n_bins: int = 256,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
        *,
        n_layers: int = 1,
        use_bn: bool = True,
        patch_size: int = 16,
        dropout: float = 0.0,
        upsample_logits: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or n_layers < 1:
            raise ValueError(f"embed_dim and n_layers must be >= 1, got {embed_dim}, {n_layers}")
        self._init_range(n_bins, min_depth, max_depth)
        self.config = dict(
            embed_dim=embed_dim,
            n_bins=n_bins,
            min_depth=float(min_depth),
            max_depth=float(max_depth),
            n_layers=n_layers,
            use_bn=use_bn,
            patch_size=patch_size,
            dropout=dropout,
            upsample_logits=upsample_logits,
        )
        self.embed_dim, self.patch_size, self.upsample_logits = embed_dim, patch_size, upsample_logits
        ch = embed_dim * n_layers
        self.bn = nn.BatchNorm2d(ch) if use_bn else nn.Identity()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(ch, n_bins, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def _input(self, features: Any) -> torch.Tensor:
        single_tuple = (
            isinstance(features, (tuple, list))
            and len(features) in (2, 3)
            and isinstance(features[0], torch.Tensor)
            and features[0].ndim == 4
            and isinstance(features[1], torch.Tensor)
            and features[1].ndim == 2
        )
        if isinstance(features, (tuple, list)) and not single_tuple:
            if not features:
                raise ValueError("features: empty sequence of layers")
            xs = [_split(f, f"features[{i}]")[0] for i, f in enumerate(features)]
            x = torch.cat(xs, 1) if len(xs) > 1 else xs[0]
        else:
            x = _split(features, "features")[0]
        if x.shape[1] != self.conv.in_channels:
            raise ValueError(
                f"features: {x.shape[1]} channels, head expects {self.conv.in_channels} "
                f"(embed_dim {self.embed_dim} x n_layers {self.config['n_layers']})"
            )
        return x

    def logits(self, features: Any) -> torch.Tensor:
        """Bin logits ``[B, n_bins, h, w]`` at patch resolution."""
        return self.conv(self.dropout(self.bn(self._input(features))))

    def forward(self, features: Any, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """Metric depth ``[B, 1, H, W]`` (default size: patch grid x patch size)."""
        lg = self.logits(features)
        H, W = _out_size(lg.shape[-2], lg.shape[-1], self.patch_size, output_size)
        if self.upsample_logits:
            lg = F.interpolate(lg, size=(H, W), mode="bilinear", align_corners=False)
            return bins_to_depth(lg, self.bin_centres)
        d = bins_to_depth(lg, self.bin_centres)
        return F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False)


class _RCU(nn.Module):
    """Residual conv unit: ReLU -> conv3x3 -> ReLU -> conv3x3, plus identity."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """RefineNet feature fusion: ``out = RCU2(x + RCU1(skip))``, bilinear up (x2 or to size), 1x1."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.rcu1, self.rcu2 = _RCU(ch), _RCU(ch)
        self.out_conv = nn.Conv2d(ch, ch, 1)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = x + self.rcu1(skip)
        x = self.rcu2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(_DepthBase):
    """DPT depth head on four intermediate layers -> metric depth ``[B, 1, H, W]``."""

    head_type = "dpt"

    def __init__(
        self,
        embed_dim: int,
        *,
        features: int = 256,
        out_channels: Sequence[int] | None = None,
        readout: str = "ignore",
        use_bn: bool = False,
        n_bins: int | None = 256,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
        patch_size: int = 16,
        layers: Sequence[int] | None = None,
        head_channels: int = 32,
    ) -> None:
        super().__init__()
        if readout not in ("ignore", "add", "project"):
            raise ValueError(f"readout must be ignore, add or project, got {readout!r}")
        oc = (
            list(out_channels)
            if out_channels is not None
            else [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        )
        if len(oc) != 4 or min(oc) < 1:
            raise ValueError(f"out_channels must be 4 positive ints, got {oc}")
        if layers is not None and len(layers) != 4:
            raise ValueError(f"layers must list 4 block indices, got {list(layers)}")
        self._init_range(n_bins, min_depth, max_depth)
        self.config = dict(
            embed_dim=embed_dim,
            features=features,
            out_channels=oc,
            readout=readout,
            use_bn=use_bn,
            n_bins=n_bins,
            min_depth=float(min_depth),
            max_depth=float(max_depth),
            patch_size=patch_size,
            layers=None if layers is None else [int(i) for i in layers],
            head_channels=head_channels,
        )
        self.embed_dim, self.patch_size, self.readout = embed_dim, patch_size, readout
        self.layers = self.config["layers"]
        if readout == "project":
            self.readout_proj = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in range(4)
            )
        self.norms = nn.ModuleList((nn.BatchNorm2d(embed_dim) if use_bn else nn.Identity()) for _ in range(4))
        self.projects = nn.ModuleList(nn.Conv2d(embed_dim, c, 1) for c in oc)
        self.resize = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1),
            ]
        )
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in oc)
        self.fusion = nn.ModuleList(_Fusion(features) for _ in range(4))
        out_dim = n_bins if n_bins is not None else 1
        self.head1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.head2 = nn.Sequential(
            nn.Conv2d(features // 2, head_channels, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(head_channels, out_dim, 1),
        )

    def _reassemble(self, i: int, x: Any) -> torch.Tensor:
        p, cls = _split(x, f"layers[{i}]")
        if p.shape[1] != self.embed_dim:
            raise ValueError(f"layers[{i}]: {p.shape[1]} channels, head expects embed_dim {self.embed_dim}")
        if self.readout != "ignore":
            if cls is None:
                raise ValueError(
                    f"readout={self.readout!r} needs the class token: pass get_intermediate_layers(..., return_class_token=True)"
                )
            if self.readout == "add":
                p = p + cls[:, :, None, None]
            else:
                B, C, h, w = p.shape
                t = p.flatten(2).transpose(1, 2)
                t = torch.cat([t, cls[:, None].expand(-1, t.shape[1], -1)], -1)
                p = self.readout_proj[i](t).transpose(1, 2).reshape(B, C, h, w)
        p = self.norms[i](p)
        return self.layer_rn[i](self.resize[i](self.projects[i](p)))

    def forward(self, layers: Sequence[Any], output_size: Sequence[int] | None = None) -> torch.Tensor:
        """``layers``: 4 outputs of ``get_intermediate_layers`` (shallow -> deep) -> depth ``[B, 1, H, W]``."""
        if isinstance(layers, torch.Tensor) or len(layers) != 4:
            raise ValueError(
                f"layers: expected a sequence of 4 layer outputs, got {type(layers).__name__} of length {len(layers)}"
            )
        l1, l2, l3, l4 = (self._reassemble(i, x) for i, x in enumerate(layers))
        h, w = _split(layers[0], "layers[0]")[0].shape[-2:]
        p4 = self.fusion[3](l4, size=l3.shape[-2:])
        p3 = self.fusion[2](p4, l3, size=l2.shape[-2:])
        p2 = self.fusion[1](p3, l2, size=l1.shape[-2:])
        p1 = self.fusion[0](p2, l1)
        H, W = _out_size(h, w, self.patch_size, output_size)
        out = self.head1(p1)
        out = F.interpolate(
            out, size=(h * self.patch_size, w * self.patch_size), mode="bilinear", align_corners=True
        )
        d = self._to_depth(self.head2(out))
        if tuple(d.shape[-2:]) != (H, W):
            d = F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False)
        return d


# ----------------------------------------------------------------------------------------------
# head files

FORMAT = "dinov3_ros.depth_head"
VERSION = 1
HEAD_TYPES: dict[str, type[_DepthBase]] = {"linear": LinearDepthHead, "dpt": DPTHead}
#: meta keys every head file records (values JSON-able)
META_KEYS = (
    "arch",
    "embed_dim",
    "layers",
    "min_depth",
    "max_depth",
    "n_bins",
    "normalization",
    "input_size",
    "patch_size",
)


def _check_meta(meta: dict[str, Any], where: str) -> None:
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{where}: meta is missing {missing} (required: {list(META_KEYS)})")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: meta must be JSON-serialisable ({e})") from None
    if not isinstance(meta["arch"], str) or not meta["arch"]:
        raise ValueError(f"{where}: meta['arch'] must be a non-empty string")
    norm = meta["normalization"]
    if not (isinstance(norm, dict) and len(norm.get("mean", ())) == 3 and len(norm.get("std", ())) == 3):
        raise ValueError(
            f"{where}: meta['normalization'] must be {{'mean': [3 floats], 'std': [3 floats]}}, got {norm!r}"
        )
    if not (isinstance(meta["input_size"], list) and len(meta["input_size"]) == 2):
        raise ValueError(f"{where}: meta['input_size'] must be [H, W], got {meta['input_size']!r}")
    if not (isinstance(meta["layers"], list) and all(isinstance(i, int) for i in meta["layers"])):
        raise ValueError(f"{where}: meta['layers'] must be a list of ints, got {meta['layers']!r}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def save_head(path: str | os.PathLike, head: _DepthBase, meta: dict[str, Any]) -> None:
    """Write ``head`` (state_dict + constructor config) and ``meta`` atomically to ``path``.

    ``meta`` must give ``arch``, ``normalization`` (``{'mean': [...], 'std': [...]}``), ``input_size``
    ``[H, W]`` and ``layers`` (the DPT head's own ``layers`` are used if set); ``embed_dim``,
    ``min_depth``, ``max_depth``, ``n_bins`` and ``patch_size`` are filled from the head and must agree
    if given. The file loads with ``torch.load(weights_only=True)``.
    """
    if not isinstance(head, _DepthBase) or head.head_type not in HEAD_TYPES:
        raise TypeError(f"head: expected LinearDepthHead or DPTHead, got {type(head).__name__}")
    cfg = _jsonable(dict(head.config))
    full = _jsonable(dict(meta))
    derived = {k: cfg[k] for k in ("embed_dim", "min_depth", "max_depth", "n_bins", "patch_size")}
    if head.head_type == "dpt" and cfg.get("layers") is not None:
        derived["layers"] = cfg["layers"]
    for k, v in derived.items():
        if k in full and full[k] != v:
            raise ValueError(f"meta[{k!r}] = {full[k]!r} disagrees with the head ({v!r})")
        full[k] = v
    full["head_type"] = head.head_type
    _check_meta(full, "save_head")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "head_type": head.head_type,
        "config": cfg,
        "meta": full,
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
    }
    with atomic_write(path) as f:
        torch.save(payload, f)


def load_head(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    expect_arch: str | None = None,
    expect_embed_dim: int | None = None,
) -> tuple[_DepthBase, dict[str, Any]]:
    """Load a head file -> ``(head in eval mode, meta)``; every inconsistency is a clear ``ValueError``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"head file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure uniformly
        raise ValueError(f"{path}: not a readable head file ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dinov3_ros depth head file (format tag missing)")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path}: unsupported head file version {payload.get('version')!r} (expected {VERSION})"
        )
    ht = payload.get("head_type")
    if ht not in HEAD_TYPES:
        raise ValueError(f"{path}: unknown head type {ht!r} (known: {sorted(HEAD_TYPES)})")
    meta, cfg, sd = payload.get("meta"), payload.get("config"), payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(cfg, dict) or not isinstance(sd, dict):
        raise ValueError(f"{path}: corrupt head file (meta/config/state_dict missing)")
    _check_meta(meta, path)
    if expect_arch is not None and meta["arch"] != expect_arch:
        raise ValueError(f"{path}: head was trained for arch {meta['arch']!r}, backbone is {expect_arch!r}")
    if expect_embed_dim is not None and meta["embed_dim"] != expect_embed_dim:
        raise ValueError(
            f"{path}: head expects embed_dim {meta['embed_dim']}, backbone has {expect_embed_dim}"
        )
    cfg = dict(cfg)
    embed_dim = cfg.pop("embed_dim")
    try:
        head = HEAD_TYPES[ht](embed_dim, **cfg)
    except TypeError as e:
        raise ValueError(f"{path}: head config does not match {HEAD_TYPES[ht].__name__} ({e})") from None
    try:
        head.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the recorded config: {e}") from None
    return head.eval(), meta
