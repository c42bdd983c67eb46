"""DINOv3 ConvNeXt backbones with the ViT output API (pooled "CLS", no storage tokens).

Keys match the official checkpoints: ``downsample_layers.{i}.{j}``, ``stages.{s}.{b}.{dwconv,norm,
pwconv1,pwconv2,gamma}``, ``norm`` and ``norms.3`` (the same LayerNorm module registered twice).
With ``patch_size=16`` the stride-32 patch maps are bilinearly resampled to the /16 grid so dense
heads see the same grid as a ViT/16; otherwise ``patch_size`` reports the native stride 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import check_input_size
from .vit import LVD_MEAN, LVD_STD


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dim of ``[B, C, H, W]``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv7 -> LN -> Linear 4x -> GELU -> Linear -> gamma, residual (optional per-sample drop path)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.drop_path = float(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        y = y.permute(0, 3, 1, 2)
        if self.training and self.drop_path > 0.0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).add_(keep).floor_()
            y = y * mask / keep
        return x + y


class ConvNeXtBackbone(nn.Module):
    """ConvNeXt with ``forward_features`` / ``get_intermediate_layers`` like the ViT."""

    def __init__(
        self,
        *,
        arch: str = "custom",
        in_chans: int = 3,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        patch_size: int | None = None,
        norm_mean: Sequence[float] = LVD_MEAN,
        norm_std: Sequence[float] = LVD_STD,
    ) -> None:
        super().__init__()
        if patch_size not in (None, 16, 32):
            raise ValueError(
                f"ConvNeXt patch_size must be None/32 (native) or 16 (resampled), got {patch_size}"
            )
        self.arch = arch
        self.depths = tuple(int(d) for d in depths)
        self.dims = tuple(int(d) for d in dims)
        self.embed_dim = self.dims[-1]
        self.num_features = self.embed_dim
        self.n_storage_tokens = 0
        self.n_blocks = len(self.dims)
        self.stride = 32
        self.resample = patch_size == 16
        self.patch_size = 16 if self.resample else 32
        self.norm_mean = tuple(float(v) for v in norm_mean)
        self.norm_std = tuple(float(v) for v in norm_std)

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                ChannelsFirstLayerNorm(dims[0], eps=1e-6),
            )
        )
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(
                    ChannelsFirstLayerNorm(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dims[i], 2, 2)
                )
            )
        total = sum(self.depths)
        rates = [float(drop_path_rate) * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        cur = 0
        for d, dim in zip(self.depths, self.dims):
            self.stages.append(
                nn.Sequential(*[ConvNeXtBlock(dim, rates[cur + j], layer_scale_init) for j in range(d)])
            )
            cur += d
        self.norm = nn.LayerNorm(self.dims[-1], eps=1e-6)
        self.norms = nn.ModuleList([nn.Identity() for _ in range(len(dims) - 1)])
        self.norms.append(self.norm)
        self.head = nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """trunc-normal 0.02 conv/linear weights, zero biases."""
        if self.norm.weight.device.type == "meta":
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _check(self, x: Tensor) -> None:
        check_input_size(x, 16)

    def _patch_grid(self, x: Tensor) -> tuple[int, int]:
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def _maybe_resample(self, fmap: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.resample:
            return F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
        return fmap

    def forward_features(self, x: Tensor | list[Tensor], masks: Tensor | list[Tensor | None] | None = None):
        """Dict with pooled CLS, empty storage tokens, patch tokens on the stride-32 (or /16) grid."""
        if isinstance(x, (list, tuple)):
            mlist = masks if isinstance(masks, (list, tuple)) else [masks] * len(x)
            if len(mlist) != len(x):
                raise ValueError(f"got {len(mlist)} masks for {len(x)} crops")
            return [self.forward_features(t, m) for t, m in zip(x, mlist)]
        if masks is not None:
            raise ValueError("ConvNeXt backbones do not support token masks")
        self._check(x)
        grid = self._patch_grid(x)
        x = x.to(self.norm.weight.dtype)
        for ds, st in zip(self.downsample_layers, self.stages):
            x = st(ds(x))
        pooled = x.mean(dim=(-2, -1))
        fmap = self._maybe_resample(x, grid)
        tokens = torch.cat((pooled.unsqueeze(1), fmap.flatten(2).transpose(1, 2)), dim=1)
        xn = self.norm(tokens)
        return {
            "x_norm_clstoken": xn[:, 0],
            "x_storage_tokens": xn[:, 1:1],
            "x_norm_patchtokens": xn[:, 1:],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last ``n`` stages (or the listed stages); only stage 3 has a norm (``norms``)."""
        L = len(self.stages)
        if isinstance(n, int):
            if not 1 <= n <= L:
                raise ValueError(f"n={n} must be in [1, {L}] (number of stages)")
            take = list(range(L - n, L))
        else:
            take = [int(i) for i in n]
            if not take or any(not 0 <= i < L for i in take):
                raise ValueError(f"stage indices {take} out of range [0, {L - 1}]")
        self._check(x)
        grid = self._patch_grid(x)
        B = x.shape[0]
        x = x.to(self.norm.weight.dtype)
        feats: dict[int, tuple[Tensor, Tensor]] = {}
        for i in range(max(take) + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in take:
                feats[i] = (x.mean(dim=(-2, -1)), self._maybe_resample(x, grid))
        patches, cls_tokens = [], []
        for i in take:
            pooled, fmap = feats[i]
            C, h, w = fmap.shape[1:]
            tok = fmap.flatten(2).transpose(1, 2)
            if norm:
                tok, pooled = self.norms[i](tok), self.norms[i](pooled)
            if reshape:
                tok = tok.transpose(1, 2).reshape(B, C, h, w)
            patches.append(tok)
            cls_tokens.append(pooled)
        extra = [p.new_zeros(B, 0, p.shape[1] if reshape else p.shape[-1]) for p in patches]
        if return_class_token and return_extra_tokens:
            return tuple(zip(patches, cls_tokens, extra))
        if return_class_token:
            return tuple(zip(patches, cls_tokens))
        if return_extra_tokens:
            return tuple(zip(patches, extra))
        return tuple(patches)

    def forward(self, x: Tensor, masks=None, is_training: bool = False):
        """Pooled embedding ``[B, C]`` (the dict when ``is_training``)."""
        ret = self.forward_features(x, masks)
        if is_training:
            return ret
        if isinstance(ret, list):
            return [self.head(r["x_norm_clstoken"]) for r in ret]
        return self.head(ret["x_norm_clstoken"])
