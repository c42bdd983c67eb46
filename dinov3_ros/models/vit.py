"""DINOv3 Vision Transformer with the reference output API (``forward_features``,
``get_intermediate_layers``) and the official state_dict layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import Block, PatchEmbed, RopePositionEmbedding, check_input_size

LVD_MEAN = (0.485, 0.456, 0.406)
LVD_STD = (0.229, 0.224, 0.225)


def _trunc_normal_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        m.reset_parameters()


def _drop_path_rates(rate: float, depth: int, uniform: bool) -> list[float]:
    """Stochastic-depth rate per block: ``rate`` everywhere, or rising linearly from 0 to ``rate``."""
    if uniform:
        return [float(rate)] * depth
    return [float(rate) * i / max(depth - 1, 1) for i in range(depth)]


class DinoVisionTransformer(nn.Module):
    """ViT with ``[CLS, storage tokens, patches]`` layout, axial RoPE and LayerScale.

    Output dict keys: ``x_norm_clstoken`` [B,D], ``x_storage_tokens`` [B,R,D], ``x_norm_patchtokens``
    [B,HW,D], ``x_prenorm`` [B,1+R+HW,D], ``masks``.
    """

    def __init__(
        self,
        *,
        arch: str = "custom",
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        ffn: str = "mlp",
        ffn_hidden: int = 1536,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        mask_k_bias: bool = True,
        layerscale_init: float | None = 1e-5,
        norm_eps: float = 1e-5,
        n_storage_tokens: int = 4,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        rope_base: float = 100.0,
        rope_shift: float | None = None,
        rope_jitter: float | None = None,
        rope_rescale: float | None = None,
        untie_cls_and_patch_norms: bool = False,
        untie_global_and_local_cls_norm: bool = False,
        norm_mean: Sequence[float] = LVD_MEAN,
        norm_std: Sequence[float] = LVD_STD,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.num_features = self.embed_dim
        self.num_heads = int(num_heads)
        self.n_blocks = int(depth)
        self.n_storage_tokens = int(n_storage_tokens)
        self.norm_mean = tuple(float(v) for v in norm_mean)
        self.norm_std = tuple(float(v) for v in norm_std)
        self.untie_cls_and_patch_norms = untie_cls_and_patch_norms
        self.untie_global_and_local_cls_norm = untie_global_and_local_cls_norm

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = (
            nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim)) if n_storage_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.rope_embed = RopePositionEmbedding(
            embed_dim,
            num_heads,
            base=rope_base,
            shift_coords=rope_shift,
            jitter_coords=rope_jitter,
            rescale_coords=rope_rescale,
        )
        block_kw = dict(
            ffn=ffn,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            ffn_bias=ffn_bias,
            mask_k_bias=mask_k_bias,
            layerscale_init=layerscale_init,
            norm_eps=norm_eps,
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, ffn_hidden, drop_path=rate, **block_kw)
            for rate in _drop_path_rates(drop_path_rate, depth, drop_path_uniform)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.cls_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if untie_cls_and_patch_norms else None
        self.local_cls_norm = (
            nn.LayerNorm(embed_dim, eps=norm_eps) if untie_global_and_local_cls_norm else None
        )
        self.head = nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """Random init as in the reference (trunc-normal 0.02 Linear, zero biases, LayerScale, RoPE, mask)."""
        if self.cls_token.device.type == "meta":
            return
        with torch.no_grad():
            nn.init.normal_(self.cls_token, std=0.02)
            if self.storage_tokens is not None:
                nn.init.normal_(self.storage_tokens, std=0.02)
            nn.init.zeros_(self.mask_token)
            self.patch_embed.reset_parameters()
            self.rope_embed.reset_parameters()
            for m in self.modules():
                _trunc_normal_init(m)
                if hasattr(m, "reset_mask"):
                    m.reset_mask()
                if m.__class__.__name__ == "LayerScale":
                    m.reset_parameters()

    @property
    def drop_path_rate(self) -> float:
        """Largest stochastic-depth rate over the blocks."""
        return max((b.drop_path for b in self.blocks), default=0.0)

    def set_drop_path_rate(self, rate: float, uniform: bool = True) -> None:
        """Set the stochastic-depth rate (uniform, or linearly increasing to ``rate``) on every block."""
        n = len(self.blocks)
        for i, b in enumerate(self.blocks):
            b.drop_path = float(rate) if uniform else float(rate) * i / max(n - 1, 1)

    # ------------------------------------------------------------------ tokens
    def prepare_tokens_with_masks(
        self, x: Tensor, masks: Tensor | None = None
    ) -> tuple[Tensor, tuple[int, int]]:
        """Patch-embed ``x`` and prepend CLS + storage tokens; ``masks`` [B,HW] bool -> mask_token."""
        check_input_size(x, self.patch_size)
        x, h, w = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))
        B = x.shape[0]
        if masks is not None:
            if masks.shape != (B, h * w):
                raise ValueError(f"masks must be [B, h*w] = [{B}, {h * w}] bool, got {tuple(masks.shape)}")
            x = torch.where(masks.to(torch.bool).unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
            cls_token = self.cls_token
        else:
            cls_token = self.cls_token + 0 * self.mask_token  # keeps mask_token in the autograd graph
        parts = [cls_token.to(x.dtype).expand(B, -1, -1)]
        if self.storage_tokens is not None:
            parts.append(self.storage_tokens.to(x.dtype).expand(B, -1, -1))
        parts.append(x)
        return torch.cat(parts, dim=1), (h, w)

    def _run_blocks(
        self, xs: list[Tensor], hws: list[tuple[int, int]], upto: int | None = None, take=()
    ) -> list:
        """Run blocks on each token tensor; returns the outputs of blocks listed in ``take`` (for xs[0])."""
        n = len(self.blocks) if upto is None else upto
        per_block = self.rope_embed.augmenting  # reference: fresh (random) RoPE per block when augmenting
        ropes = None if per_block else [self.rope_embed(h, w) for h, w in hws]
        taken = []
        for i in range(n):
            blk = self.blocks[i]
            r = [self.rope_embed(h, w) for h, w in hws] if per_block else ropes
            xs = [blk(t, ri) for t, ri in zip(xs, r)]
            if i in take:
                taken.append(xs[0])
        return xs if not take else taken

    def _norm_outputs(self, x: Tensor, masks: Tensor | None, local: bool) -> dict[str, Tensor | None]:
        p = self.n_storage_tokens + 1
        if self.local_cls_norm is not None and local and self.training:
            cls_reg = self.local_cls_norm(x[:, :p])
            patch = self.norm(x[:, p:])
        elif self.cls_norm is not None:
            cls_reg = self.cls_norm(x[:, :p])
            patch = self.norm(x[:, p:])
        else:
            xn = self.norm(x)
            cls_reg, patch = xn[:, :p], xn[:, p:]
        return {
            "x_norm_clstoken": cls_reg[:, 0],
            "x_storage_tokens": cls_reg[:, 1:],
            "x_norm_patchtokens": patch,
            "x_prenorm": x,
            "masks": masks,
        }

    # ------------------------------------------------------------------ API
    def forward_features(self, x: Tensor | list[Tensor], masks: Tensor | list | None = None):
        """Dict of normed CLS / storage / patch tokens (or a list of dicts for a list input)."""
        if isinstance(x, (list, tuple)):
            return self.forward_features_list(list(x), masks)
        tokens, hw = self.prepare_tokens_with_masks(x, masks)
        (out,) = self._run_blocks([tokens], [hw])
        return self._norm_outputs(out, masks, local=False)

    def forward_features_list(self, xs: list[Tensor], masks_list: list | None = None) -> list[dict]:
        """Several crops (e.g. ``[global, local]``) through the blocks together; one dict each."""
        if masks_list is None:
            masks_list = [None] * len(xs)
        if len(masks_list) != len(xs):
            raise ValueError(f"got {len(xs)} inputs but {len(masks_list)} masks")
        toks, hws = [], []
        for x, m in zip(xs, masks_list):
            t, hw = self.prepare_tokens_with_masks(x, m)
            toks.append(t)
            hws.append(hw)
        outs = self._run_blocks(toks, hws)
        return [self._norm_outputs(o, m, local=(i == 1)) for i, (o, m) in enumerate(zip(outs, masks_list))]

    def _block_indices(self, n: int | Sequence[int]) -> list[int]:
        L = len(self.blocks)
        if isinstance(n, int):
            if not 1 <= n <= L:
                raise ValueError(f"n={n} must be in [1, {L}] (number of blocks)")
            return list(range(L - n, L))
        idx = [int(i) for i in n]
        if not idx:
            raise ValueError("n must be a positive int or a non-empty list of block indices")
        bad = [i for i in idx if not 0 <= i < L]
        if bad:
            raise ValueError(f"block indices {bad} out of range [0, {L - 1}]")
        return idx

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Patch tokens of the last ``n`` blocks (int) or of the listed 0-based blocks, reference semantics."""
        take = self._block_indices(n)
        tokens, (h, w) = self.prepare_tokens_with_masks(x)
        outs_by_idx = self._run_blocks([tokens], [(h, w)], upto=max(take) + 1, take=set(take))
        # _run_blocks returns in block order; map back to the requested order
        order = sorted(set(take))
        outputs = [outs_by_idx[order.index(i)] for i in take]
        if norm:
            p = self.n_storage_tokens + 1
            if self.cls_norm is not None:
                outputs = [torch.cat((self.cls_norm(o[:, :p]), self.norm(o[:, p:])), dim=1) for o in outputs]
            else:
                outputs = [self.norm(o) for o in outputs]
        p = self.n_storage_tokens + 1
        cls_tokens = [o[:, 0] for o in outputs]
        extra = [o[:, 1:p] for o in outputs]
        patches = [o[:, p:] for o in outputs]
        if reshape:
            B = x.shape[0]
            patches = [o.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for o in patches]
        if return_class_token and return_extra_tokens:
            return tuple(zip(patches, cls_tokens, extra))
        if return_class_token:
            return tuple(zip(patches, cls_tokens))
        if return_extra_tokens:
            return tuple(zip(patches, extra))
        return tuple(patches)

    def forward(self, x: Tensor | list[Tensor], masks=None, is_training: bool = False):
        """CLS embedding ``[B, D]`` (the dict of ``forward_features`` when ``is_training``)."""
        ret = self.forward_features(x, masks)
        if is_training:
            return ret
        if isinstance(ret, list):
            return [self.head(r["x_norm_clstoken"]) for r in ret]
        return self.head(ret["x_norm_clstoken"])
