"""Building blocks of the DINOv3 ViT: patch embedding, RoPE, attention, FFNs, LayerScale, Block.

Parameter and buffer names follow the official checkpoints exactly (``patch_embed.proj``,
``rope_embed.periods``, ``attn.qkv.{weight,bias,bias_mask}``, ``ls1.gamma``, ``mlp.fc1`` or
``mlp.w1/w2/w3``), so ``load_state_dict(strict=True)`` works on Meta's files.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Rope = tuple[Tensor, Tensor]  # (sin, cos), each [HW, head_dim], fp32


def check_input_size(x: Tensor, patch_size: int) -> None:
    """ValueError unless ``x`` is ``[B, C, H, W]`` with H, W positive multiples of ``patch_size``.

    Works on symbolic shapes (torch.export / ONNX tracing): no ``int()`` conversion of H, W.
    """
    if x.ndim != 4:
        raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(x.shape)}")
    if torch.jit.is_tracing():  # legacy ONNX export: the sizes are traced values, checked at run time
        return
    H, W = x.shape[-2], x.shape[-1]
    if H % patch_size != 0 or W % patch_size != 0 or H < patch_size or W < patch_size:
        raise ValueError(
            f"input size {H}x{W} (HxW) is not a multiple of the patch size {patch_size}; "
            f"resize or pad to e.g. {max(patch_size, H // patch_size * patch_size)}x"
            f"{max(patch_size, W // patch_size * patch_size)} first"
        )


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution; tokens in row-major grid order."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """``(tokens [B, h*w, D], h, w)``; h, w come from the conv output (symbolic when exporting)."""
        f = self.proj(x)
        h, w = f.shape[-2], f.shape[-1]
        return f.flatten(2).transpose(1, 2), h, w

    def reset_parameters(self) -> None:
        k = 1 / (self.proj.in_channels * self.patch_size**2)
        nn.init.uniform_(self.proj.weight, -math.sqrt(k), math.sqrt(k))
        if self.proj.bias is not None:
            nn.init.uniform_(self.proj.bias, -math.sqrt(k), math.sqrt(k))


def bf16_round(t: Tensor) -> Tensor:
    """Round fp32 values to the nearest bf16 value (kept in fp32), as the released ``periods`` are."""
    return t.to(torch.bfloat16).to(torch.float32)


def rope_periods(head_dim: int, base: float = 100.0, *, round_bf16: bool = True) -> Tensor:
    """``periods[k] = base ** (2k / (head_dim/2))`` for ``k < head_dim/4`` (fp32, bf16-rounded by default)."""
    if head_dim % 4:
        raise ValueError(f"RoPE needs head_dim divisible by 4, got {head_dim}")
    n = head_dim // 4
    periods = base ** (2 * torch.arange(n, dtype=torch.float32) / (head_dim // 2))
    return bf16_round(periods) if round_bf16 else periods


class RopePositionEmbedding(nn.Module):
    """Axial 2-D RoPE with patch-centre coordinates in [-1, 1] ("separate" normalisation).

    ``forward(h, w)`` returns ``(sin, cos)``, each ``[h*w, head_dim]`` in fp32, laid out
    ``[y-freqs | x-freqs | y-freqs | x-freqs]`` (NeoX "half" pairing). The duplication is done with
    ``torch.cat`` (no ``tile``), so an ONNX export has no ``If`` node. The coordinate augmentations
    (``shift``, ``jitter``, ``rescale``) apply only in training mode and only when set.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        base: float = 100.0,
        shift_coords: float | None = None,
        jitter_coords: float | None = None,
        rescale_coords: float | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % (4 * num_heads):
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4*num_heads ({4 * num_heads})")
        self.head_dim = embed_dim // num_heads
        self.base = base
        self.shift_coords = shift_coords
        self.jitter_coords = jitter_coords
        self.rescale_coords = rescale_coords
        self.register_buffer("periods", torch.empty(self.head_dim // 4), persistent=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.periods.device.type != "meta":
            with torch.no_grad():
                self.periods.copy_(rope_periods(self.head_dim, self.base).to(self.periods.dtype))

    @property
    def augmenting(self) -> bool:
        """True when a forward draws random coordinates (training mode with an augmentation set)."""
        return self.training and any(
            v is not None for v in (self.shift_coords, self.jitter_coords, self.rescale_coords)
        )

    def coords(self, h: int, w: int, device: torch.device) -> Tensor:
        """Patch-centre coordinates ``[h*w, 2]`` as ``(y, x)`` in [-1, 1], augmented when training."""
        ch = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        cw = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        yy = ch[:, None].expand(h, w)
        xx = cw[None, :].expand(h, w)
        c = torch.stack((yy, xx), dim=-1).reshape(h * w, 2)
        c = 2.0 * c - 1.0
        if self.training:
            if self.shift_coords is not None:
                s = float(self.shift_coords)
                c = c + torch.empty(2, device=device, dtype=torch.float32).uniform_(-s, s)
            if self.jitter_coords is not None:
                lj = math.log(float(self.jitter_coords))
                c = c * torch.empty(2, device=device, dtype=torch.float32).uniform_(-lj, lj).exp()
            if self.rescale_coords is not None:
                lr = math.log(float(self.rescale_coords))
                c = c * torch.empty(1, device=device, dtype=torch.float32).uniform_(-lr, lr).exp()
        return c

    def forward(self, h: int, w: int) -> Rope:
        device = self.periods.device
        c = self.coords(h, w, device)
        periods = self.periods.to(torch.float32)
        angles = (2 * math.pi) * c[:, :, None] / periods[None, None, :]  # [HW, 2, D/4]
        angles = angles.flatten(1, 2)  # [HW, D/2] = [y | x]
        angles = torch.cat((angles, angles), dim=-1)  # [HW, D], no tile -> no ONNX If node
        return torch.sin(angles), torch.cos(angles)


def rotate_half(x: Tensor) -> Tensor:
    """``[a, b] -> [-b, a]`` split at the middle of the last dim."""
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def apply_rope(q: Tensor, k: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
    """Rotate the patch tokens of ``q, k`` ``[B, heads, N, hd]`` in fp32; prefix tokens are untouched."""
    sin, cos = rope
    n_patch = sin.shape[-2]
    prefix = q.shape[-2] - n_patch
    out = []
    for t in (q, k):
        dt = t.dtype
        tf = t.to(torch.float32)
        head, tail = tf[:, :, :prefix], tf[:, :, prefix:]
        tail = tail * cos + rotate_half(tail) * sin
        out.append(torch.cat((head, tail), dim=-2).to(dt))
    return out[0], out[1]


class LinearKMaskedBias(nn.Linear):
    """Fused qkv Linear whose bias is multiplied by ``bias_mask`` (q, v = 1; k = 0).

    ``bias_mask`` is a persistent buffer as in the official checkpoints. Unlike the reference it is
    initialised in the constructor, so a fresh model never holds NaN.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw) -> None:
        super().__init__(in_features, out_features, bias=bias, **kw)
        if out_features % 3:
            raise ValueError(f"qkv out_features must be divisible by 3, got {out_features}")
        if bias:
            self.register_buffer("bias_mask", torch.empty(out_features, device=self.weight.device))
            self.reset_mask()
        else:
            self.bias_mask = None

    def reset_mask(self) -> None:
        if self.bias_mask is not None and self.bias_mask.device.type != "meta":
            d = self.out_features // 3
            with torch.no_grad():
                self.bias_mask.fill_(1.0)
                self.bias_mask[d : 2 * d] = 0.0

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return F.linear(x, self.weight)
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused qkv, RoPE on q/k patch tokens, SDPA, output projection."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        mask_k_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        lin = LinearKMaskedBias if mask_k_bias else nn.Linear
        self.qkv = lin(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: Rope | None = None) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, hd]
        if rope is not None:
            q, k = apply_rope(q, k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj(out)


class Mlp(nn.Module):
    """``fc2(GELU(fc1 x))`` with exact GELU."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden(dim: int, ratio: float, align_to: int) -> int:
    """SwiGLU hidden width: ``int(dim*ratio*2/3)`` rounded up to a multiple of ``align_to``."""
    h = int(int(dim * ratio) * 2 / 3)
    return (h + align_to - 1) // align_to * align_to


class SwiGLUFFN(nn.Module):
    """``w3(silu(w1 x) * w2 x)``."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (init ``init_values``)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def _residual_subset(x: Tensor, fn, drop_rate: float) -> Tensor:
    """Stochastic depth by batch subsetting: run ``fn`` on a random subset, add it back scaled B/subset."""
    B = x.shape[0]
    keep = max(int(B * (1 - drop_rate)), 1)
    idx = torch.randperm(B, device=x.device)[:keep]
    res = fn(x[idx])
    return torch.index_add(x, 0, idx, res.to(x.dtype), alpha=B / keep)


class Block(nn.Module):
    """Pre-norm transformer block: ``x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        *,
        ffn: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        mask_k_bias: bool = True,
        layerscale_init: float | None = 1e-5,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(
            dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, mask_k_bias=mask_k_bias
        )
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ffn == "mlp":
            self.mlp: nn.Module = Mlp(dim, ffn_hidden, bias=ffn_bias)
        elif ffn.startswith("swiglu"):
            self.mlp = SwiGLUFFN(dim, ffn_hidden, bias=ffn_bias)
        else:
            raise ValueError(f"unknown ffn {ffn!r} (expected 'mlp' or 'swiglu*')")
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.drop_path = float(drop_path)

    def _attn_branch(self, x: Tensor, rope: Rope | None) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), rope))

    def _ffn_branch(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, rope: Rope | None = None) -> Tensor:
        if self.training and self.drop_path > 0.0:
            x = _residual_subset(x, lambda t: self._attn_branch(t, rope), self.drop_path)
            x = _residual_subset(x, self._ffn_branch, self.drop_path)
            return x
        x = x + self._attn_branch(x, rope)
        return x + self._ffn_branch(x)
